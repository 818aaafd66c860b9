"""Where features-first's time goes at 2.37×3.13 and 1.13×3.91 (issue 27), phase by phase.

On a 1×64×128² input (64 → 3 channels, seeded ``Pos2Weight(64, 3)``), 1 thread, interleaved
rounds, medians of wall and process CPU time, this times the parts of the torch backend's
features-first order separately:

* ``restrict``: the hidden layer restricted to the call (``ops/meta_upscale/relu_domain.py``);
* ``conv``: the LR convolution to ``Z`` (``(hid' + 1)·Cout`` channels);
* ``activations``: forming ``ReLU(A[i] + Bc[j] + c)`` of every chunk, alone;
* ``contraction``: the custom ``autograd.Function`` forward (activations included);
* ``contraction bwd``: its backward (activations recomputed), to ``Z`` and the first layer;
* ``conv bwd``: the convolution's backward to ``x`` and the predictor's weights;

and, as the reference, the whole op at ×4 (per phase), forward and training step. Each part is
also given per output pixel against ×4's forward (or step, for the backward parts).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/contraction_split.py --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import metasr
from metasr.geometry import build_geometry
from metasr.ops.meta_upscale import torch_chunked as tc
from metasr.ops.meta_upscale.params import (
    MLPParams,
    features_first_weight,
    features_first_z,
    separable_first_layer,
)
from metasr.ops.meta_upscale.tables import as_float, phases


def parts(x: torch.Tensor, phi: metasr.Pos2Weight, scale) -> dict:
    """The timed callables of features-first at ``scale`` (module docstring)."""
    N, _, h, w = x.shape
    geom = build_geometry(h, w, scale=scale)
    p = MLPParams.from_module(phi, torch.float32)
    with torch.no_grad():
        rp = tc._restricted(p, geom)
    cf, cph = phases(geom.col_off)
    O, hid = rp.out_channels, rp.hidden
    z = features_first_z(x, rp).permute(2, 3, 0, 1).reshape(h, w, N * O, hid + 1).detach()
    with torch.no_grad():
        tens = separable_first_layer(
            rp,
            as_float(geom.row_pos, x),
            as_float(geom.col_pos[cf], x),
            as_float(geom.const_pos, x),
        )
    columns = tc._columns(geom.col_idx, cph, len(cf), w, N, O, x.device)
    chunks = tc._row_chunks(geom.row_idx, columns.slot_bytes(hid, 4), x.device)
    hidden = tc._SeparableHidden(geom.H, len(cf), hid)
    zg = z.clone().requires_grad_(True)
    tg = [t.clone().requires_grad_(True) for t in tens]
    dy = torch.randn(N, O, geom.H, geom.W)
    xg = x.clone().requires_grad_(True)
    weight = features_first_weight(rp).detach().requires_grad_(True)
    dzc = torch.randn(N, weight.shape[0], h, w)

    def activations():
        hidden.bind(tens, columns.slot_phase, columns.groups)
        for _, rows, R, m in chunks:
            hidden.strip(rows, R, m)
        hidden.unbind()

    def contraction():
        with torch.no_grad():
            tc._FeaturesFirstContraction.apply(z, columns, chunks, hidden, *tens)

    def contraction_fb():
        y = tc._FeaturesFirstContraction.apply(zg, columns, chunks, hidden, *tg)
        torch.autograd.grad(y, [zg, *tg], dy)

    def conv_fb():
        zc = torch.nn.functional.conv2d(xg, weight, padding=1)
        torch.autograd.grad(zc, [xg, weight], dzc)

    def restrict():
        with torch.no_grad():
            tc._restricted(p, geom)

    def conv():
        with torch.no_grad():
            features_first_z(x, rp)

    return {
        "restrict": restrict,
        "conv": conv,
        "activations": activations,
        "contraction": contraction,
        "contraction fwd+bwd": contraction_fb,
        "conv fwd+bwd": conv_fb,
        "_px": geom.H * geom.W,
        "_hid": hid,
        "_cols": (columns.groups, columns.width, columns.b),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    phi = metasr.Pos2Weight(64, 3, 3)
    x = torch.randn(1, 64, 128, 128)
    g4 = build_geometry(128, 128, scale=4.0)

    def x4_fwd():
        with torch.no_grad():
            tc.meta_upscale_torch(x, MLPParams.from_module(phi, torch.float32), g4)

    def x4_step():
        xg = x.detach().requires_grad_(True)
        y = tc.meta_upscale_torch(xg, MLPParams.from_module(phi, torch.float32), g4)
        y.backward(torch.ones_like(y))
        phi.zero_grad(set_to_none=True)

    cases = {("×4", "fwd"): x4_fwd, ("×4", "step"): x4_step}
    info = {}
    for s in [(2.37, 3.13), (1.13, 3.91)]:
        ps = parts(x, phi, s)
        label = f"{s[0]}×{s[1]}"
        info[label] = (ps.pop("_px"), ps.pop("_hid"), ps.pop("_cols"))
        cases.update({(label, k): f for k, f in ps.items()})
    for f in cases.values():  # warm-up
        f()
    wall: dict = {}
    cpu: dict = {}
    for _ in range(args.repeat):
        for key, f in cases.items():
            t0, c0 = time.perf_counter(), time.process_time()
            f()
            wall.setdefault(key, []).append(time.perf_counter() - t0)
            cpu.setdefault(key, []).append(time.process_time() - c0)
    med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in cases}
    px4 = g4.H * g4.W
    print(f"1 thread, medians of {args.repeat} interleaved rounds; torch {torch.__version__}")
    for label, (px, hid, (G, L, b)) in info.items():
        print(f"{label}: {px} output px, hid' {hid}, gather blocks G={G} L={L} b={b}")
    print("| scale | part | wall ms | CPU ms | CPU per px vs ×4 fwd | vs ×4 step |")
    print("|---|---|---|---|---|---|")
    for (label, part), (t, c) in med.items():
        px = px4 if label == "×4" else info[label][0]
        f4, s4 = med[("×4", "fwd")][1] / px4, med[("×4", "step")][1] / px4
        print(
            f"| {label} | {part} | {t * 1e3:.1f} | {c * 1e3:.1f} | {c / px / f4:.2f}× | "
            f"{c / px / s4:.2f}× |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
