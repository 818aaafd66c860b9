"""Exact faster orders for scales with about one (Δv, Δh) pair per output pixel (issue 27).

At 2.37×3.13 and 1.13×3.91 on a 128² input there are 237×314 and 113×391 distinct offset
pairs, about as many as output pixels, so predicting a weight per pair does not amortise and
the ``torch`` backend keeps features-first. This script measures, in one process and
interleaved (medians), the features-first order of the torch backend as it was at a git
revision (``before``, default ``main``: its module file loaded beside today's), today's
(``today``: the hidden units restricted to the call's positions,
:mod:`metasr.ops.meta_upscale.relu_domain`, and the contraction as batched matmuls per chunk of
LR rows), today's without the restriction (``unrestricted``), and a prototype of another exact
order (forward only, defined here only):

* ``intervals``: for a fixed row offset ``Δv`` each hidden unit switches at one ``Δh``, so
  within an interval of the active set ``S`` the weight is affine, ``W = Δh·B_S + C_S``;
  ``B_S, C_S`` for all intervals come from signed cumulative sums over the switching units, and
  each output pixel is ``Δh·(X_q·B_S) + X_q·C_S``, contracted per group ``(Δv, S)`` with one
  batched matmul over groups (windows gathered per output pixel).

Each is also compared per output pixel with the ×4 per-phase order, forward and training step
(forward + backward to the input and every predictor parameter). It also prints the counts
behind the cost argument (units that switch, interval groups, pairs) and checks both exact
orders against the float64 spec on a small input. With ``--others``, ×2.3, ×3.7 and 2.5×3.5
(the auto order, ``before`` and today's) run in the same rounds. Every case is reported in wall
time and in the process's CPU time (with 1 thread, the time it actually ran on a shared
machine). Run it from the repository (``git show``).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/relu_intervals.py --repeat 3 --before 6ff8397 \
        --no-intervals --others
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
import types
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

import metasr
from metasr.geometry import build_geometry
from metasr.ops.meta_upscale import torch_chunked
from metasr.ops.meta_upscale.params import MLPParams
from metasr.ops.meta_upscale.relu_domain import restrict_to_domain, unit_states
from metasr.ops.meta_upscale.tables import as_float, phases
from metasr.ops.meta_upscale.torch_chunked import meta_upscale_torch

CHUNK = 16 << 20

#: Today's features-first: the torch backend without the restriction to the call's positions.
UNRESTRICTED = mock.patch.object(torch_chunked, "_restricted", lambda params, geom: params)


def interval_groups(params: MLPParams, geom):
    """Group every (row phase, column phase) pair by its active set: ``(gid (Dv, Dh), G)``,
    and per group its row phase, mask ``(G, hid)`` and whether it starts a row phase."""
    rf, _ = phases(geom.row_off)
    cf, _ = phases(geom.col_off)
    w1 = params.w1.detach().double().numpy()
    b1 = params.b1.detach().double().numpy()
    a = geom.row_pos[rf] @ w1.T
    bc = geom.col_pos[cf] @ w1.T
    c = geom.const_pos @ w1.T + b1
    on = (a[:, None, :] + bc[None, :, :] + c) > 0  # (Dv, Dh, hid)
    order = np.argsort(geom.col_off[cf], kind="stable")
    so = on[:, order]
    change = np.ones(so.shape[:2], dtype=bool)
    change[:, 1:] = (so[:, 1:] != so[:, :-1]).any(-1)
    gid_sorted = np.cumsum(change.reshape(-1)).reshape(change.shape) - 1
    gid = np.empty_like(gid_sorted)
    gid[:, order] = gid_sorted
    G = int(gid_sorted[-1, -1]) + 1
    first = np.flatnonzero(change.reshape(-1))
    mask = so.reshape(-1, so.shape[-1])[first]  # (G, hid)
    row = np.repeat(np.arange(len(rf)), change.sum(1))  # (G,) row phase of each group
    return gid, G, mask, row, change.sum(1)


def meta_upscale_intervals(x: torch.Tensor, params: MLPParams, geom, groups) -> torch.Tensor:
    """Forward of the interval order (prototype; N = 1, zero padding, no autograd)."""
    gid, G, mask, grow, per_row = groups
    N, C, h, w = x.shape
    k, O = params.kernel_size, params.out_channels
    rf, rph = phases(geom.row_off)
    cf, cph = phases(geom.col_off)
    Dv = len(rf)
    w1, b1, w2, b2 = params.w1, params.b1, params.w2, params.b2
    # z_j(dv, dh) = a_j·dh + c_j(dv): a_j from the column part, c_j from rows + constants.
    pos_dv = as_float(geom.row_pos[rf] + geom.const_pos, x)  # (Dv, P)
    slope = (
        w1
        @ as_float(geom.col_pos[cf[1]] - geom.col_pos[cf[0]], x)
        / float(geom.col_off[cf[1]] - geom.col_off[cf[0]])
    )  # (hid,) dz/dΔh (the column part is Δh times a fixed vector)
    base = F.linear(as_float(geom.col_pos[cf[0]], x), w1) - slope * float(geom.col_off[cf[0]])
    cdv = F.linear(pos_dv, w1, b1) + base  # (Dv, hid): z = slope·dh + cdv
    # Signed change of the mask from one group to the next within a row phase; the first group
    # of a row phase starts from the empty set. Cumulative sums over (Dv, Imax) padded groups.
    m = torch.as_tensor(mask, dtype=x.dtype)
    prev = torch.zeros_like(m)
    starts = np.r_[0, np.cumsum(per_row)[:-1]]
    notfirst = np.ones(G, dtype=bool)
    notfirst[starts] = False
    later = np.flatnonzero(notfirst)
    prev[torch.as_tensor(later)] = m[torch.as_tensor(later - 1)]
    d = (m - prev).to_sparse()
    Imax = int(per_row.max())
    slot = np.arange(G) - np.repeat(starts, per_row)
    gi = torch.as_tensor(grow * Imax + slot)
    cg = cdv[torch.as_tensor(grow)]  # (G, hid)
    dB = torch.sparse.mm(d * slope, w2.T)  # (G, width)
    dC = torch.sparse.mm((d.to_dense() * cg).to_sparse(), w2.T)
    width = w2.shape[0]
    B = torch.zeros(Dv * Imax, width, dtype=x.dtype).index_copy_(0, gi, dB)
    Cm = torch.zeros(Dv * Imax, width, dtype=x.dtype).index_copy_(0, gi, dC)
    B = B.view(Dv, Imax, width).cumsum(1).view(-1, width).index_select(0, gi)
    Cm = (Cm.view(Dv, Imax, width).cumsum(1).view(-1, width) + b2).index_select(0, gi)
    # (G, C, k, k, O) → (G, k·k·C, 2·O): features (ky, kx, c) as unfold gives (c, ky, kx)...
    # keep unfold's (c, ky, kx) order: weights index ((c·k + ky)·k + kx)·O + o.
    BC = torch.stack([B.view(G, -1, O), Cm.view(G, -1, O)], dim=2).view(G, -1, 2 * O)
    cols = F.unfold(x, k, padding=k // 2)[0].T.contiguous()  # (h·w, C·k·k)
    # Output pixels sorted by group.
    H, W = geom.H, geom.W
    g_pix = gid[rph[:, None], cph[None, :]].reshape(-1)
    q_pix = (geom.row_idx[:, None] * w + geom.col_idx[None, :]).reshape(-1)
    dh_pix = np.broadcast_to(geom.col_off[None, :], (H, W)).reshape(-1)
    order = np.argsort(g_pix, kind="stable")
    cnt = np.bincount(g_pix, minlength=G)
    cmax = int(cnt.max())
    slotp = np.arange(H * W) - np.repeat(np.r_[0, np.cumsum(cnt)[:-1]], cnt)
    tab_q = np.zeros((G, cmax), dtype=np.int64)
    tab_p = np.full((G, cmax), H * W, dtype=np.int64)
    tab_q[g_pix[order], slotp] = q_pix[order]
    tab_p[g_pix[order], slotp] = order
    dh_t = torch.zeros(H * W + 1, dtype=x.dtype)
    dh_t[:-1] = as_float(dh_pix, x)
    y = torch.empty((H * W + 1, O), dtype=x.dtype)
    F_ = cols.shape[1]
    step = max(1, CHUNK // (cmax * F_ * x.element_size()))
    tq = torch.as_tensor(tab_q)
    tp = torch.as_tensor(tab_p)
    for g0 in range(0, G, step):
        g1 = min(G, g0 + step)
        win = cols.index_select(0, tq[g0:g1].reshape(-1)).view(g1 - g0, cmax, F_)
        r = torch.bmm(win, BC[g0:g1])  # (g, cmax, 2·O)
        p = tp[g0:g1].reshape(-1)
        r = r.view(-1, 2, O)
        y.index_copy_(0, p, torch.addcmul(r[:, 1], r[:, 0], dh_t[p][:, None]))
    return y[:-1].T.reshape(1, O, H, W)


def counts(phi, label):
    for sc in [(2.37, 3.13), (1.13, 3.91)]:
        geom = build_geometry(128, 128, scale=sc)
        p = MLPParams.from_module(phi, torch.float32)
        on, sw = unit_states(p, geom)
        gid, G, *_ = interval_groups(p, geom)
        rp = restrict_to_domain(p, geom)
        Dv, Dh = gid.shape
        print(
            f"counts {label} {sc[0]}x{sc[1]} 128²: pairs {Dv}x{Dh}={Dv * Dh}, output px "
            f"{geom.H * geom.W}, units on {on.sum()} switch {sw.sum()} off "
            f"{p.hidden - on.sum() - sw.sum()}, restricted hidden {rp.hidden}, "
            f"interval groups {G}"
        )


def check(phi):
    """Both orders against the float64 spec on a small input at the two scales."""
    phi64 = metasr.Pos2Weight(8, 3, 3).double()
    torch.manual_seed(1)
    for sc in [(2.37, 3.13), (1.13, 3.91)]:
        x = torch.randn(1, 8, 9, 11, dtype=torch.float64)
        geom = build_geometry(9, 11, scale=sc)
        ref = metasr.meta_upscale(x, phi64, scale=sc, backend="naive")
        p = MLPParams.from_module(phi64, torch.float64)
        a = meta_upscale_torch(x, p, geom, order="features_first")
        b = meta_upscale_intervals(x, p, geom, interval_groups(p, geom))
        print(
            f"check {sc}: restricted max err {(a - ref).abs().max():.2e}, "
            f"intervals {(b - ref).abs().max():.2e} (|ref| {ref.abs().max():.2f})"
        )


def load_before(rev: str):
    """``torch_chunked`` as it is at git revision ``rev``, as a module beside today's (its
    relative imports resolve to today's package; the file alone is taken from ``rev``)."""
    src = subprocess.run(
        ["git", "show", f"{rev}:src/metasr/ops/meta_upscale/torch_chunked.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    mod = types.ModuleType("metasr.ops.meta_upscale._torch_chunked_before")
    mod.__package__ = "metasr.ops.meta_upscale"
    exec(compile(src, f"{rev}:torch_chunked.py", "exec"), mod.__dict__)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--before", default="main", help="git revision of the 'before' variant")
    ap.add_argument("--no-step", action="store_true")
    ap.add_argument("--no-intervals", action="store_true")
    ap.add_argument(
        "--others",
        action="store_true",
        help="also ×2.3, ×3.7 and 2.5×3.5 (auto order, before and today) in the same rounds",
    )
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    torch.manual_seed(0)
    phi = metasr.Pos2Weight(64, 3, 3)
    check(phi)
    from metasr.checkpoints import load_model

    counts(phi, "init")
    counts(load_model("default").model.upsample.phi, "bundled")
    before = load_before(args.before)
    x = torch.randn(1, 64, 128, 128)
    others = [2.3, 3.7, (2.5, 3.5)] if args.others else []
    geoms = {
        s: build_geometry(128, 128, scale=s) for s in [4.0, (2.37, 3.13), (1.13, 3.91), *others]
    }
    p = MLPParams.from_module(phi, torch.float32)
    groups = {s: interval_groups(p, geoms[s]) for s in [(2.37, 3.13), (1.13, 3.91)]}

    def op(variant, xx, q, g):
        if variant in ("x4", "auto"):
            return meta_upscale_torch(xx, q, g)
        if variant == "before-auto":
            return before.meta_upscale_torch(xx, q, g)
        if variant == "before":
            return before.meta_upscale_torch(xx, q, g, order="features_first")
        if variant == "unrestricted":  # today's contraction, every hidden unit
            with UNRESTRICTED:
                return meta_upscale_torch(xx, q, g, order="features_first")
        return meta_upscale_torch(xx, q, g, order="features_first")  # "today"

    def fwd(variant, s):
        g = geoms[s]
        with torch.no_grad():
            if variant == "intervals":
                return meta_upscale_intervals(x, p, g, groups[s])
            return op(variant, x, p, g)

    def step(variant, s):
        xg = x.detach().requires_grad_(True)
        y = op(variant, xg, MLPParams.from_module(phi, torch.float32), geoms[s])
        y.backward(torch.ones_like(y))
        phi.zero_grad(set_to_none=True)
        return y

    ff = ("before", "unrestricted", "today")
    cases = [("fwd", "x4", 4.0)]
    for s in [(2.37, 3.13), (1.13, 3.91)]:
        cases += [("fwd", v, s) for v in ff + (() if args.no_intervals else ("intervals",))]
    cases += [("fwd", v, s) for s in others for v in ("before-auto", "auto")]
    if not args.no_step:
        cases += [("step", "x4", 4.0)]
        cases += [("step", v, s) for s in [(2.37, 3.13), (1.13, 3.91)] for v in ff]
        cases += [("step", v, s) for s in others for v in ("before-auto", "auto")]
    wall: dict = {}
    cpu: dict = {}  # process CPU time: with 1 thread, the time this process actually ran
    px = {s: g.H * g.W for s, g in geoms.items()}
    for kind, v, s in cases:  # warm-up
        (fwd if kind == "fwd" else step)(v, s)
    for _ in range(args.repeat):
        for kind, v, s in cases:
            t0, c0 = time.perf_counter(), time.process_time()
            (fwd if kind == "fwd" else step)(v, s)
            wall.setdefault((kind, v, s), []).append(time.perf_counter() - t0)
            cpu.setdefault((kind, v, s), []).append(time.process_time() - c0)
    print(f"{torch.get_num_threads()} threads, medians of {args.repeat} interleaved rounds")
    print("| case | ms | ns per output px | vs ×4 per px | CPU ms | CPU vs ×4 per px |")
    print("|---|---|---|---|---|---|")
    for kind, v, s in cases:
        t = statistics.median(wall[(kind, v, s)])
        ref = statistics.median(wall[(kind, "x4", 4.0)]) / px[4.0]
        c = statistics.median(cpu[(kind, v, s)])
        cref = statistics.median(cpu[(kind, "x4", 4.0)]) / px[4.0]
        sc = "4" if s == 4.0 else (f"{s[0]}×{s[1]}" if isinstance(s, tuple) else f"{s}")
        print(
            f"| {kind} {v} ×{sc} | {t * 1e3:.1f} | {t * 1e9 / px[s]:.0f} | "
            f"{t / px[s] / ref:.2f}× | {c * 1e3:.1f} | {c / px[s] / cref:.2f}× |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
