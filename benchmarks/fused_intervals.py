"""A fused CPU kernel for the intervals order of Meta-Upscale (issue 27; prototype, forward only).

``docs/design.md`` §3 counts the exact "intervals" order at about ``2·k²·Cin·Cout``
multiply-adds per output pixel (twice ×4's per-phase order) at scales with about one
``(Δv, Δh)`` pair per output pixel, and ``benchmarks/relu_intervals.py`` measured it in dense
tensor ops far slower than features-first, because every output pixel gathers its own window in
memory. This script measures the claim that a fused CPU kernel would reach ×4's order of cost: a
C++ kernel built at run time (``torch.utils.cpp_extension.load_inline``, OpenMP) that reads each
output pixel's window straight from the padded channels-last input and contracts it with the
interval's tables, which it keeps per row phase in a small buffer updated along ``Δh``.

The order (Linear-ReLU-Linear predictor, restricted to the call's switching units by
:func:`metasr.ops.meta_upscale.relu_domain.restrict_to_domain`; asymmetric encoding, zero
padding): for a row phase ``Δv`` each hidden unit's pre-activation is ``z_j = s_j·Δh + c_j(Δv)``,
so along the sorted column offsets it switches at most once, and between switches the active
set ``S`` is fixed and the weight is affine in ``Δh``::

    W(Δv, Δh) = Δh·B_S + C_S,  B_S = Σ_{j∈S} s_j·w2_j,  C_S = Σ_{j∈S} c_j(Δv)·w2_j + b2.

Host side (torch/NumPy, "tables"): the geometry, the restriction, each unit's switching column
phase per row phase (a ``searchsorted`` of its threshold ``-c_j/s_j``), the active set at the
smallest ``Δh`` and its ``B, C`` (one matmul over all row phases), the padded input. Kernel
(OpenMP over row phases): start from that ``B, C`` (``2·Cout·k²·Cin`` values, in cache), walk the
column phases in increasing ``Δh``, apply each switch as a rank-1 update (``±s_j·w2_j``,
``±c_j·w2_j``), and contract every output pixel's window (``k`` tap rows of ``k·Cin`` contiguous
values each) with ``B`` and ``C``: ``y = Δh·(X·B) + X·C``. The pixels of one interval (all its
column phases, output rows and batch images) are collected and contracted four at a time, so
each table value is loaded once per four windows (``blocked``; without it, one at a time).

It checks the kernel against the spec (``backend="naive"``) in float64 on small inputs (exit 1
if it fails), against the torch backend in float32 on 1×64×128², and times, in one process with
interleaved rounds (medians; wall and process CPU time), ×4 by ``metasr.meta_upscale`` (its
per-phase order) and 2.37×3.13 and 1.13×3.91 by the torch backend and by the fused kernel
(everything from the geometry on included, and the host-side tables also reported alone).
Compile time is reported separately. Not a backend: forward only, no autograd.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/fused_intervals.py --repeat 7
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from torch.utils.cpp_extension import load_inline

import metasr
from metasr.geometry import Geometry, build_geometry
from metasr.ops.meta_upscale.params import MLPParams
from metasr.ops.meta_upscale.relu_domain import restrict_to_domain
from metasr.ops.meta_upscale.tables import phases

CPP = r"""
#include <torch/extension.h>
#include <omp.h>
#include <cstring>
#include <vector>

// One output pixel: acc[o2] = sum over the window of x * tab[o2] (o2 < 2*O: B rows then C rows).
template <typename T>
static inline void pixel(const T* base, int64_t rowstride, int64_t k, int64_t kC,
                         const T* tab, int64_t F, int64_t O2, T* acc) {
  for (int64_t o2 = 0; o2 < O2; ++o2) {
    T a = 0;
    const T* tr = tab + o2 * F;
    for (int64_t ky = 0; ky < k; ++ky) {
      const T* xr = base + ky * rowstride;
      const T* t = tr + ky * kC;
#pragma omp simd reduction(+ : a)
      for (int64_t q = 0; q < kC; ++q) a += xr[q] * t[q];
    }
    acc[o2] = a;
  }
}

// Four pixels sharing one table, two table rows at a time: 8 accumulators, so each table value
// is loaded once for the four windows and each window value once for the two rows. (Tried on
// the kernel alone: one row at a time, and all 2*O rows in 64-byte vector accumulators, were
// slower; the script's table compares the whole call with `pixel`, one pixel at a time.)
template <typename T>
static inline void pixel4(const T* const* base, int64_t rowstride, int64_t k, int64_t kC,
                          const T* tab, int64_t F, int64_t O2, T* acc) {
  for (int64_t o2 = 0; o2 < O2; o2 += 2) {
    T a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
    for (int64_t ky = 0; ky < k; ++ky) {
      const T* x0 = base[0] + ky * rowstride;
      const T* x1 = base[1] + ky * rowstride;
      const T* x2 = base[2] + ky * rowstride;
      const T* x3 = base[3] + ky * rowstride;
      const T* t = tab + o2 * F + ky * kC;
      const T* t2 = t + F;
#pragma omp simd reduction(+ : a0, a1, a2, a3, b0, b1, b2, b3)
      for (int64_t q = 0; q < kC; ++q) {
        const T tv = t[q], uv = t2[q];
        a0 += x0[q] * tv;
        a1 += x1[q] * tv;
        a2 += x2[q] * tv;
        a3 += x3[q] * tv;
        b0 += x0[q] * uv;
        b1 += x1[q] * uv;
        b2 += x2[q] * uv;
        b3 += x3[q] * uv;
      }
    }
    T* r = acc + o2;
    r[0] = a0; r[O2] = a1; r[2 * O2] = a2; r[3 * O2] = a3;
    r[1] = b0; r[O2 + 1] = b1; r[2 * O2 + 1] = b2; r[3 * O2 + 1] = b3;
  }
}

template <typename T>
static void run(const torch::Tensor& xp, const torch::Tensor& init, const torch::Tensor& w2r,
                const torch::Tensor& slope, const torch::Tensor& cdv,
                const torch::Tensor& ev_ptr, const torch::Tensor& ev_pos,
                const torch::Tensor& ev_unit, const torch::Tensor& ev_sign,
                const torch::Tensor& row_ptr, const torch::Tensor& rows,
                const torch::Tensor& row_idx, const torch::Tensor& cpos_ptr,
                const torch::Tensor& cols, const torch::Tensor& col_idx,
                const torch::Tensor& col_off, torch::Tensor& y, int64_t k, int64_t nthreads,
                bool blocked) {
  const int64_t N = xp.size(0), Hp = xp.size(1), Wp = xp.size(2), C = xp.size(3);
  const int64_t O = y.size(1), H = y.size(2), W = y.size(3);
  const int64_t Dv = init.size(0) / 2, hid = w2r.size(0);
  const int64_t kC = k * C, F = k * kC, O2 = 2 * O, TF = O2 * F;
  const int64_t Dh = cpos_ptr.size(0) - 1;
  const T* X = xp.data_ptr<T>();
  const T* I0 = init.data_ptr<T>();
  const T* Wr = w2r.data_ptr<T>();
  const T* S = slope.data_ptr<T>();
  const T* CV = cdv.data_ptr<T>();
  const int64_t* ep = ev_ptr.data_ptr<int64_t>();
  const int64_t* epos = ev_pos.data_ptr<int64_t>();
  const int64_t* eu = ev_unit.data_ptr<int64_t>();
  const T* es = ev_sign.data_ptr<T>();
  const int64_t* rp = row_ptr.data_ptr<int64_t>();
  const int64_t* rr = rows.data_ptr<int64_t>();
  const int64_t* ri = row_idx.data_ptr<int64_t>();
  const int64_t* cp = cpos_ptr.data_ptr<int64_t>();
  const int64_t* cc = cols.data_ptr<int64_t>();
  const int64_t* ci = col_idx.data_ptr<int64_t>();
  const T* dh = col_off.data_ptr<T>();
  T* Y = y.data_ptr<T>();
  const int64_t rowstride = Wp * C, HW = H * W;
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<T> tab(TF);
    std::vector<const T*> pb;  // window of each pending pixel
    std::vector<int64_t> po;   // its output offset (n, 0, i, j)
    std::vector<T> pd;         // its Δh
    std::vector<T> acc(O2), acc4(4 * O2);
#pragma omp for schedule(dynamic, 1)
    for (int64_t v = 0; v < Dv; ++v) {
      if (rp[v] == rp[v + 1]) continue;
      std::memcpy(tab.data(), I0 + v * O * F, O * F * sizeof(T));
      std::memcpy(tab.data() + O * F, I0 + (Dv + v) * O * F, O * F * sizeof(T));
      int64_t e = ep[v];
      pb.clear(); po.clear(); pd.clear();
      // Pending pixels share the current table: they are contracted when the next switch
      // comes (or the row phase ends), four at a time where the blocked path is on.
      auto flush = [&]() {
        const int64_t np_ = (int64_t)pb.size();
        int64_t p = 0;
        if (blocked) {
          for (; p + 4 <= np_; p += 4) {
            pixel4<T>(pb.data() + p, rowstride, k, kC, tab.data(), F, O2, acc4.data());
            for (int u = 0; u < 4; ++u)
              for (int64_t o = 0; o < O; ++o)
                Y[po[p + u] + o * HW] = pd[p + u] * acc4[u * O2 + o] + acc4[u * O2 + O + o];
          }
        }
        for (; p < np_; ++p) {
          pixel<T>(pb[p], rowstride, k, kC, tab.data(), F, O2, acc.data());
          for (int64_t o = 0; o < O; ++o) Y[po[p] + o * HW] = pd[p] * acc[o] + acc[O + o];
        }
        pb.clear(); po.clear(); pd.clear();
      };
      for (int64_t q = 0; q < Dh; ++q) {
        if (e < ep[v + 1] && epos[e] == q) flush();
        // Switches at this column phase: rank-1 updates of B (slope) and C (c_j(Δv)).
        for (; e < ep[v + 1] && epos[e] == q; ++e) {
          const int64_t j = eu[e];
          const T sb = es[e] * S[j], sc = es[e] * CV[v * hid + j];
          const T* wj = Wr + j * O * F;
          T* tb = tab.data();
          T* tc = tab.data() + O * F;
#pragma omp simd
          for (int64_t f = 0; f < O * F; ++f) {
            tb[f] += sb * wj[f];
            tc[f] += sc * wj[f];
          }
        }
        for (int64_t a = rp[v]; a < rp[v + 1]; ++a) {
          const int64_t i = rr[a];
          for (int64_t b = cp[q]; b < cp[q + 1]; ++b) {
            const int64_t jcol = cc[b];
            for (int64_t n = 0; n < N; ++n) {
              pb.push_back(X + ((n * Hp + ri[i]) * Wp + ci[jcol]) * C);
              po.push_back(n * O * HW + i * W + jcol);
              pd.push_back(dh[jcol]);
            }
          }
        }
      }
      flush();
    }
  }
}

torch::Tensor forward(torch::Tensor xp, torch::Tensor init, torch::Tensor w2r,
                      torch::Tensor slope, torch::Tensor cdv, torch::Tensor ev_ptr,
                      torch::Tensor ev_pos, torch::Tensor ev_unit, torch::Tensor ev_sign,
                      torch::Tensor row_ptr, torch::Tensor rows, torch::Tensor row_idx,
                      torch::Tensor cpos_ptr, torch::Tensor cols, torch::Tensor col_idx,
                      torch::Tensor col_off, int64_t O, int64_t H, int64_t W, int64_t k,
                      int64_t nthreads, bool blocked) {
  auto y = torch::empty({xp.size(0), O, H, W}, xp.options());
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "fused_intervals", [&] {
    run<scalar_t>(xp, init, w2r, slope, cdv, ev_ptr, ev_pos, ev_unit, ev_sign, row_ptr, rows,
                  row_idx, cpos_ptr, cols, col_idx, col_off, y, k, nthreads, blocked);
  });
  return y;
}
"""


#: The kernel's arguments in order (before the thread count and ``blocked``).
ARGS = (
    "xp init w2r slope cdv ev_ptr ev_pos ev_unit ev_sign row_ptr rows row_idx cpos_ptr cols "
    "col_idx col_off O H W k"
).split()


def build_extension(verbose: bool = False):
    """Compile the kernel (g++ -O3 -march=native -fopenmp; build folder under /tmp)."""
    build = "/tmp/metasr_fused_intervals_build"
    shutil.rmtree(build, ignore_errors=True)  # a real compile each run, timed by the caller
    os.makedirs(build)
    return load_inline(
        name="metasr_fused_intervals",
        cpp_sources=CPP,
        functions=["forward"],
        extra_cflags=["-O3", "-march=native", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        build_directory=build,
        verbose=verbose,
    )


def _long(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.long)


def tables(x: torch.Tensor, params: MLPParams, geom: Geometry) -> dict:
    """Everything the kernel reads, built on the host (the "tables" part of the timing).

    Args:
        x: ``(N, Cin, h, w)``.
        params: the Linear-ReLU-Linear predictor in ``x``'s dtype (restricted here).
        geom: an asymmetric-encoding geometry without ``periodic_lon``.

    Returns:
        The kernel's arguments by name.
    """
    if geom.periodic_lon or geom.row_order is not None or geom.col_order is not None:
        raise ValueError("prototype: zero padding and sorted rows/columns only")
    p = restrict_to_domain(params, geom)
    dt = x.dtype
    C, k, O, hid = p.in_channels, p.kernel_size, p.out_channels, p.hidden
    rf, rph = phases(geom.row_off)
    cf, cph = phases(geom.col_off)
    # The column part of a position is Δh times a fixed direction (asymmetric encoding).
    dh_ph = geom.col_off[cf]
    if len(cf) > 1:
        e = (geom.col_pos[cf[1]] - geom.col_pos[cf[0]]) / (dh_ph[1] - dh_ph[0])
    else:
        e = np.zeros(geom.col_pos.shape[1])
    c0 = geom.col_pos[cf[0]] - dh_ph[0] * e
    if not np.allclose(geom.col_pos[cf], c0 + dh_ph[:, None] * e, rtol=0, atol=1e-12):
        raise ValueError("prototype: the column part of the positions must be affine in Δh")
    w1 = p.w1.detach().double().numpy()
    b1 = p.b1.detach().double().numpy()
    slope = w1 @ e  # (hid,)
    cdv = (geom.row_pos[rf] + geom.const_pos + c0) @ w1.T + b1  # (Dv, hid): z = s·Δh + c
    # Column phases in increasing Δh; each unit's switching position per row phase.
    order = np.argsort(dh_ph, kind="stable")
    dh_sorted = dh_ph[order]
    Dv, Dh = len(rf), len(cf)
    with np.errstate(divide="ignore", invalid="ignore"):
        thr = -cdv / slope
    pos = np.zeros(thr.shape, dtype=np.int64)  # first sorted column phase past the switch
    for units, side in ((slope > 0, "right"), (slope < 0, "left")):
        t_u = thr[:, units]
        pos[:, units] = np.searchsorted(dh_sorted, t_u.ravel(), side=side).reshape(t_u.shape)
    on0 = np.where(slope > 0, pos == 0, np.where(slope < 0, pos > 0, cdv > 0))
    ev = (slope != 0) & (pos > 0) & (pos < Dh)
    evv, evj = np.nonzero(ev)  # row-major: grouped by row phase
    evq = pos[evv, evj]
    srt = np.lexsort((evj, evq, evv))
    evv, evj, evq = evv[srt], evj[srt], evq[srt]
    ev_sign = np.where(slope[evj] > 0, 1.0, -1.0)
    ev_ptr = np.r_[0, np.cumsum(np.bincount(evv, minlength=Dv))]
    # Second layer as (hid, O, ky, kx, Cin): a tap row of the window is k·Cin contiguous values.
    w2r = p.w2.detach().view(C, k, k, O, hid).permute(4, 3, 1, 2, 0).reshape(hid, O * k * k * C)
    b2r = p.b2.detach().view(C, k, k, O).permute(3, 1, 2, 0).reshape(O * k * k * C)
    s_t = torch.as_tensor(slope, dtype=dt)
    c_t = torch.as_tensor(cdv, dtype=dt)
    m0 = torch.as_tensor(on0, dtype=dt)
    # B then C at the smallest Δh of every row phase: (2·Dv, O·k·k·Cin), one matmul.
    init = torch.cat([m0 * s_t, m0 * c_t]) @ w2r
    init[Dv:] += b2r
    # Output rows per row phase, output columns per sorted column phase.
    rank = np.empty(Dh, dtype=np.int64)
    rank[order] = np.arange(Dh)
    qcol = rank[cph]
    cols = np.argsort(qcol, kind="stable")
    rows = np.argsort(rph, kind="stable")
    # Zero-padded, channels-last: one copy (F.pad then a permuted copy cost twice as much).
    r = k // 2
    N, _, h, w = x.shape
    xp = x.new_zeros(N, h + 2 * r, w + 2 * r, C)
    xp[:, r : r + h, r : r + w].copy_(x.permute(0, 2, 3, 1))
    return dict(
        xp=xp,
        init=init.contiguous(),
        w2r=w2r.contiguous(),
        slope=s_t,
        cdv=c_t.contiguous(),
        ev_ptr=_long(ev_ptr),
        ev_pos=_long(evq),
        ev_unit=_long(evj),
        ev_sign=torch.as_tensor(ev_sign, dtype=dt),
        row_ptr=_long(np.r_[0, np.cumsum(np.bincount(rph, minlength=Dv))]),
        rows=_long(rows),
        row_idx=_long(geom.row_idx),
        cpos_ptr=_long(np.r_[0, np.cumsum(np.bincount(qcol, minlength=Dh))]),
        cols=_long(cols),
        col_idx=_long(geom.col_idx),
        col_off=torch.as_tensor(geom.col_off, dtype=dt),
        O=O,
        H=geom.H,
        W=geom.W,
        k=k,
        events=len(evq),
    )


def fused(ext, x, phi, scale, threads: int, blocked: bool = True) -> torch.Tensor:
    """The whole call: geometry, tables, kernel."""
    h, w = x.shape[-2:]
    geom = build_geometry(h, w, scale=scale)
    t = tables(x, MLPParams.from_module(phi, x.dtype), geom)
    return ext.forward(*(t[a] for a in ARGS), threads, blocked)


def check(ext, threads: int) -> bool:
    """Float64 against the spec (small), float32 against the torch backend (1×64×128²)."""
    ok = True
    torch.manual_seed(1)
    phi64 = metasr.Pos2Weight(8, 3, 3).double()
    for sc in [(2.37, 3.13), (1.13, 3.91)]:
        for n, h, w in ((1, 13, 11), (2, 13, 11), (2, 24, 20)):
            x = torch.randn(n, 8, h, w, dtype=torch.float64)
            with torch.no_grad():
                ref = metasr.meta_upscale(x, phi64, scale=sc, backend="naive")
                for blocked in (False, True):
                    y = fused(ext, x, phi64, sc, threads, blocked)
                    err = (y - ref).abs().max().item()
                    ok &= err < 1e-10
                    print(
                        f"check float64 {n}x8x{h}x{w} {sc[0]}x{sc[1]} blocked={blocked}: max abs "
                        f"diff vs naive {err:.2e} (|ref| max {ref.abs().max():.2f})"
                    )
    torch.manual_seed(0)
    phi = metasr.Pos2Weight(64, 3, 3)
    x = torch.randn(1, 64, 128, 128)
    for sc in [(2.37, 3.13), (1.13, 3.91)]:
        with torch.no_grad():
            ref = metasr.meta_upscale(x, phi, scale=sc, backend="torch")
            y = fused(ext, x, phi, sc, threads)
        t = tables(x, MLPParams.from_module(phi, torch.float32), build_geometry(128, 128, scale=sc))
        print(
            f"check float32 1x64x128² {sc[0]}x{sc[1]}: max abs diff vs torch backend "
            f"{(y - ref).abs().max().item():.2e} (|ref| max {ref.abs().max():.2f}); "
            f"row phases {t['init'].shape[0] // 2}, restricted hidden {t['w2r'].shape[0]}, "
            f"switches {t['events']}"
        )
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-time", action="store_true", help="compile and check only")
    args = ap.parse_args()
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    torch.set_num_threads(threads)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"commit {commit}, torch {torch.__version__}, {threads} threads")
    t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    ext = build_extension()
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"compile: {time.perf_counter() - t0:.1f} s wall, "
        f"{c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime:.1f} s CPU of the compiler"
    )
    if not check(ext, threads):
        print("FAILED: float64 check")
        return 1
    if args.no_time:
        return 0
    torch.manual_seed(0)
    phi = metasr.Pos2Weight(64, 3, 3)
    x = torch.randn(1, 64, 128, 128)
    scales = [(2.37, 3.13), (1.13, 3.91)]
    px = {4.0: 512 * 512}
    for s in scales:
        g = build_geometry(128, 128, scale=s)
        px[s] = g.H * g.W

    def run(case):
        v, s = case
        with torch.no_grad():
            if v == "fused":
                return fused(ext, x, phi, s, threads)
            if v == "fused-simple":
                return fused(ext, x, phi, s, threads, blocked=False)
            if v == "tables":
                h, w = x.shape[-2:]
                return tables(x, MLPParams.from_module(phi, x.dtype), build_geometry(h, w, scale=s))
            return metasr.meta_upscale(x, phi, scale=s, backend="torch")

    cases = [("torch", 4.0)]
    cases += [(v, s) for s in scales for v in ("torch", "fused", "fused-simple", "tables")]
    wall: dict = {}
    cpu: dict = {}
    for c in cases:  # warm-up
        run(c)
    for _ in range(args.repeat):
        for c in cases:
            t0, c0 = time.perf_counter(), time.process_time()
            run(c)
            wall.setdefault(c, []).append(time.perf_counter() - t0)
            cpu.setdefault(c, []).append(time.process_time() - c0)
    print(f"{threads} threads, medians of {args.repeat} interleaved rounds, 1x64x128², k=3, 64→3")
    print("| case | ms | ns per output px | vs ×4 per px | CPU ms | CPU vs ×4 per px |")
    print("|---|---|---|---|---|---|")
    ref = statistics.median(wall[("torch", 4.0)]) / px[4.0]
    cref = statistics.median(cpu[("torch", 4.0)]) / px[4.0]
    for v, s in cases:
        t = statistics.median(wall[(v, s)])
        c = statistics.median(cpu[(v, s)])
        name = {"torch": "torch backend", "fused": "fused kernel (all)"}.get(v, v)
        if v == "fused-simple":
            name = "fused kernel, 1 pixel at a time (all)"
        if v == "tables":
            name = "fused: host tables alone"
        sc = "×4" if s == 4.0 else f"{s[0]}×{s[1]}"
        print(
            f"| {sc} {name} | {t * 1e3:.1f} | {t * 1e9 / px[s]:.0f} | {t / px[s] / ref:.2f}× | "
            f"{c * 1e3:.1f} | {c / px[s] / cref:.2f}× |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
