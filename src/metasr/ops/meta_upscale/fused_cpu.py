"""The intervals order of the ``torch`` backend as a fused C++/OpenMP CPU kernel (opt-in).

``docs/design.md`` §3 counts the exact "intervals" order at about ``2·k²·Cin·Cout``
multiply-adds per output pixel (twice ×4's per-phase order) at scales with about one
``(Δv, Δh)`` pair per output pixel (2.37×3.13, 1.13×3.91), where features-first pays its
``(hid' + 1)·Cout``-channel LR convolution; in dense tensor ops it is slow because every output
pixel gathers its own window. This module runs it as a C++ kernel that reads each output pixel's
window straight from the padded channels-last input (measured 2.7–3.3× ×4's cost per output
pixel against the torch backend's 4.6–8.6×: ``docs/benchmarks.md``).

**Opt-in.** The kernel is compiled on first use (``torch.utils.cpp_extension.load_inline``,
``-O3 -march=native -fopenmp``, about 30 s, into torch's extensions cache, where later processes
find it) and only when ``METASR_CPU_KERNELS=1`` is set (as BasicSR's ``BASICSR_JIT``); without
it nothing here compiles or imports anything. ``import metasr`` never builds it.
:func:`unavailable_reason` says why it cannot be used (variable unset, no C++ compiler, the
build failed with its first line). The dispatch in :mod:`.torch_chunked` takes it where it can
run (:func:`call_reasons`) and its counted cost (:func:`intervals_cost`, forward, or forward and
backward under autograd) is below the order chosen otherwise.

**The order** (Linear-ReLU-Linear predictor, best restricted first by
:func:`.relu_domain.restrict_to_domain`): for a row phase ``Δv`` each hidden unit's
pre-activation is ``z_j = s_j·Δh + c_j(Δv)`` (the column part of the position encoding is
affine in ``Δh``, :func:`geometry_reason`), so along the sorted column offsets it switches at
most once; between switches the active set ``S`` is fixed and the weight is affine in ``Δh``::

    W(Δv, Δh) = Δh·B_S + C_S,  B_S = Σ_{j∈S} s_j·w2_j,  C_S = Σ_{j∈S} c_j(Δv)·w2_j + b2.

Host side (:func:`kernel_tables`): each unit's switching column phase per row phase (a
``searchsorted`` of its threshold ``-c_j/s_j``), the active set at the smallest ``Δh`` and its
``B, C`` (one matmul over all row phases), the padded channels-last input (:mod:`.padding`, so
periodic longitude wraps as everywhere else). Kernel (OpenMP over row phases): start from that
``B, C`` (``2·Cout·k²·Cin`` values, in cache), walk the column phases in increasing ``Δh``,
apply each switch as a rank-1 update (``±s_j·w2_j``, ``±c_j·w2_j``), and contract every output
pixel's window (``k`` tap rows of ``k·Cin`` contiguous values) with ``B`` and ``C``:
``y = Δh·(X·B) + X·C``. The pixels of one interval (all its column phases, output rows and
images) are contracted four at a time, two table rows per pass, so each table value is loaded
once per four windows. A unit whose threshold falls on a column offset is classified either
side; ReLU is continuous there, so the result differs by rounding only.

**Backward** (:class:`_Intervals`; C++ ``backward``, OpenMP over row phases as the forward).
The host side is plain torch (``x`` → padded channels-last ``xp``; ``w1, b1`` → slopes ``s_j``
and ``c_j(Δv)``; ``w2, b2`` → ``w2r`` and the initial ``B, C``), so autograd needs only the
gradients of those five; the switching positions are integers (piecewise constant, as ReLU's
kink). The kernel replays the forward's sweep: per pixel ``dX += Σ_o g[o]·(Δh·B[o] + C[o])``
(into a per-thread copy of ``dxp``: windows of different row phases overlap) and running sums
``P_B += g·Δh ⊗ X``, ``P_C += g ⊗ X`` over the row phase. A switch changed ``B, C`` for every
pixel after it, so its gradient reads ``Total − P`` at the switch: the ``−P`` part is added at
the switch, the ``Total`` part once the row phase ends (``d init = Total``). Per pixel it is
twice the forward's multiply-adds, so a training step is about three forwards.

The output is in the geometry's computed order (rows and columns sorted by LR index), as every
order returns it; :func:`.tables.restore_order` applies a coordinate grid's permutation.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import warnings
from types import ModuleType

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from ...geometry import Geometry
from .. import memory
from .padding import pad_window
from .params import MLPParams, PredictorParams
from .tables import as_index, phases

__all__ = [
    "ENV_VAR",
    "call_reasons",
    "estimate_intervals_bytes",
    "geometry_reason",
    "intervals_cost",
    "kernel_tables",
    "load_extension",
    "meta_upscale_intervals",
    "unavailable_reason",
]

#: The opt-in: set to ``1`` to let metasr compile and use its C++ CPU kernel.
ENV_VAR = "METASR_CPU_KERNELS"


_CPP = r"""
#include <torch/extension.h>
#include <omp.h>
#include <algorithm>
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
// slower; benchmarks/fused_intervals.py compares the whole call with `pixel` alone.)
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

// The tables both sweeps read (kernel_tables' output, in ARGS order) as sizes and pointers.
template <typename T>
struct Sweep {
  int64_t k, N, Hp, Wp, C, Dv, hid, kC, F, Dh, rowstride;
  const T *X, *I0, *Wr, *S, *CV, *es, *dh;
  const int64_t *ep, *epos, *eu, *rp, *rr, *ri, *cp, *cc, *ci;
  Sweep(const std::vector<torch::Tensor>& t, int64_t k)
      : k(k), N(t[0].size(0)), Hp(t[0].size(1)), Wp(t[0].size(2)), C(t[0].size(3)),
        Dv(t[1].size(0) / 2), hid(t[2].size(0)), kC(k * C), F(k * kC),
        Dh(t[12].size(0) - 1), rowstride(Wp * C),
        X(t[0].data_ptr<T>()), I0(t[1].data_ptr<T>()), Wr(t[2].data_ptr<T>()),
        S(t[3].data_ptr<T>()), CV(t[4].data_ptr<T>()), es(t[8].data_ptr<T>()),
        dh(t[15].data_ptr<T>()), ep(t[5].data_ptr<int64_t>()), epos(t[6].data_ptr<int64_t>()),
        eu(t[7].data_ptr<int64_t>()), rp(t[9].data_ptr<int64_t>()),
        rr(t[10].data_ptr<int64_t>()), ri(t[11].data_ptr<int64_t>()),
        cp(t[12].data_ptr<int64_t>()), cc(t[13].data_ptr<int64_t>()),
        ci(t[14].data_ptr<int64_t>()) {}
};

// Switch e of row phase v (unit j, sign σ): B += σ·s_j·w2_j, C += σ·c_j(Δv)·w2_j (OF values).
template <typename T>
static inline void apply_switch(const Sweep<T>& s, int64_t e, int64_t v, int64_t OF, T* tb,
                                T* tc) {
  const int64_t j = s.eu[e];
  const T sb = s.es[e] * s.S[j], sc = s.es[e] * s.CV[v * s.hid + j];
  const T* wj = s.Wr + j * OF;
#pragma omp simd
  for (int64_t f = 0; f < OF; ++f) {
    tb[f] += sb * wj[f];
    tc[f] += sc * wj[f];
  }
}

template <typename T>
static void run(const Sweep<T>& s, torch::Tensor& y, int64_t nthreads, bool blocked) {
  const int64_t O = y.size(1), H = y.size(2), W = y.size(3);
  const int64_t O2 = 2 * O, TF = O2 * s.F, HW = H * W;
  T* Y = y.data_ptr<T>();
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<T> tab(TF);
    std::vector<const T*> pb;  // window of each pending pixel
    std::vector<int64_t> po;   // its output offset (n, 0, i, j)
    std::vector<T> pd;         // its Δh
    std::vector<T> acc(O2), acc4(4 * O2);
#pragma omp for schedule(dynamic, 1)
    for (int64_t v = 0; v < s.Dv; ++v) {
      if (s.rp[v] == s.rp[v + 1]) continue;
      std::memcpy(tab.data(), s.I0 + v * O * s.F, O * s.F * sizeof(T));
      std::memcpy(tab.data() + O * s.F, s.I0 + (s.Dv + v) * O * s.F, O * s.F * sizeof(T));
      int64_t e = s.ep[v];
      pb.clear(); po.clear(); pd.clear();
      // Pending pixels share the current table: they are contracted when the next switch
      // comes (or the row phase ends), four at a time where the blocked path is on.
      auto flush = [&]() {
        const int64_t np_ = (int64_t)pb.size();
        int64_t p = 0;
        if (blocked) {
          for (; p + 4 <= np_; p += 4) {
            pixel4<T>(pb.data() + p, s.rowstride, s.k, s.kC, tab.data(), s.F, O2, acc4.data());
            for (int u = 0; u < 4; ++u)
              for (int64_t o = 0; o < O; ++o)
                Y[po[p + u] + o * HW] = pd[p + u] * acc4[u * O2 + o] + acc4[u * O2 + O + o];
          }
        }
        for (; p < np_; ++p) {
          pixel<T>(pb[p], s.rowstride, s.k, s.kC, tab.data(), s.F, O2, acc.data());
          for (int64_t o = 0; o < O; ++o) Y[po[p] + o * HW] = pd[p] * acc[o] + acc[O + o];
        }
        pb.clear(); po.clear(); pd.clear();
      };
      for (int64_t q = 0; q < s.Dh; ++q) {
        if (e < s.ep[v + 1] && s.epos[e] == q) flush();
        // Switches at this column phase: rank-1 updates of B (slope) and C (c_j(Δv)).
        for (; e < s.ep[v + 1] && s.epos[e] == q; ++e)
          apply_switch(s, e, v, O * s.F, tab.data(), tab.data() + O * s.F);
        for (int64_t a = s.rp[v]; a < s.rp[v + 1]; ++a) {
          const int64_t i = s.rr[a];
          for (int64_t b = s.cp[q]; b < s.cp[q + 1]; ++b) {
            const int64_t jcol = s.cc[b];
            for (int64_t n = 0; n < s.N; ++n) {
              pb.push_back(s.X + ((n * s.Hp + s.ri[i]) * s.Wp + s.ci[jcol]) * s.C);
              po.push_back(n * O * HW + i * W + jcol);
              pd.push_back(s.dh[jcol]);
            }
          }
        }
      }
      flush();
    }
  }
}

// Fills y (N, O, H, W), allocated by the caller, in the geometry's computed order; `t` is
// kernel_tables' output in ARGS order.
void forward(std::vector<torch::Tensor> t, torch::Tensor y, int64_t k, int64_t nthreads,
             bool blocked) {
  AT_DISPATCH_FLOATING_TYPES(t[0].scalar_type(), "metasr_intervals_cpu", [&] {
    run<scalar_t>(Sweep<scalar_t>(t, k), y, nthreads, blocked);
  });
}

// Backward of one to four pixels sharing the tables (tb, tc: B and C; pB, pC: the running
// sums): d[u] (u < np, F values each, zeroed here) = Σ_o a[u][o]·B[o] + b[u][o]·C[o], the
// gradient of pixel u's window, is left in `d` for the caller to add into the window (windows
// may overlap); pB[o] += Σ_u a[u][o]·X_u, pC[o] += Σ_u b[u][o]·X_u, so each table and sum value
// is loaded once per four windows.
template <typename T, int NP>
static inline void pixel_bwd(const T* const* base, int64_t rowstride, int64_t k, int64_t kC,
                             const T* tb, const T* tc, T* pB, T* pC, int64_t F, int64_t O,
                             const T* a, const T* b, T* d) {
  std::fill(d, d + NP * F, T(0));
  for (int64_t o = 0; o < O; ++o) {
    T ao[NP], bo[NP];
    for (int u = 0; u < NP; ++u) { ao[u] = a[u * O + o]; bo[u] = b[u * O + o]; }
    for (int64_t ky = 0; ky < k; ++ky) {
      const int64_t off = o * F + ky * kC;
      const T* bt = tb + off;
      const T* ct = tc + off;
      T* pb = pB + off;
      T* pc = pC + off;
      const T* xr[NP];
      T* dr[NP];
      for (int u = 0; u < NP; ++u) {
        xr[u] = base[u] + ky * rowstride;
        dr[u] = d + u * F + ky * kC;
      }
#pragma omp simd
      for (int64_t q = 0; q < kC; ++q) {
        const T bv = bt[q], cv = ct[q];
        T sb = pb[q], sc = pc[q];
        for (int u = 0; u < NP; ++u) {
          const T xv = xr[u][q];
          dr[u][q] += ao[u] * bv + bo[u] * cv;
          sb += ao[u] * xv;
          sc += bo[u] * xv;
        }
        pb[q] = sb;
        pc[q] = sc;
      }
    }
  }
}

// Backward of `run`: replays its sweep (same tables, same order of pixels and switches).
// For a pixel p with window X_p, offset Δh_p and upstream g_p: dX_p += Σ_o g_p[o]·(Δh_p·B[o] +
// C[o]) into this thread's copy of dxp (windows of different row phases overlap), and
// P_B[o] += g_p[o]·Δh_p·X_p, P_C[o] += g_p[o]·X_p: running sums over the row phase so far. A
// switch e (unit j, sign σ) changed B by σ·s_j·w2_j and C by σ·c_j(Δv)·w2_j for every pixel
// after it, so its gradient reads R(e) = Total − P(e): the prefix part is subtracted at the
// switch, the total added once the row phase is done (then also d init = Total).
template <typename T>
static void run_backward(const Sweep<T>& s, const torch::Tensor& gy, torch::Tensor& dxp_t,
                         torch::Tensor& dinit, torch::Tensor& dw2_t, torch::Tensor& dslope_t,
                         torch::Tensor& dcdv, int64_t nthreads) {
  const int64_t O = gy.size(1), H = gy.size(2), W = gy.size(3);
  const int64_t OF = O * s.F, HW = H * W, xsize = s.N * s.Hp * s.Wp * s.C;
  const int64_t nt = dxp_t.size(0);
  const T* G = gy.data_ptr<T>();
  T* DI = dinit.data_ptr<T>();
  T* DCV = dcdv.data_ptr<T>();
#pragma omp parallel num_threads(nthreads)
  {
    const int64_t t = omp_get_thread_num() % nt;
    T* DX = dxp_t.data_ptr<T>() + t * xsize;
    T* DW = dw2_t.data_ptr<T>() + t * s.hid * OF;
    T* DS = dslope_t.data_ptr<T>() + t * s.hid;
    std::vector<T> tab(2 * OF), pre(2 * OF), a(4 * O), b(4 * O), d(4 * s.F);
    std::vector<int64_t> pb, po;  // pending pixels: window offset, output offset
    std::vector<T> pd;            // their Δh
    std::vector<const T*> xs(4);
#pragma omp for schedule(dynamic, 1)
    for (int64_t v = 0; v < s.Dv; ++v) {
      if (s.rp[v] == s.rp[v + 1]) continue;
      std::memcpy(tab.data(), s.I0 + v * OF, OF * sizeof(T));
      std::memcpy(tab.data() + OF, s.I0 + (s.Dv + v) * OF, OF * sizeof(T));
      std::fill(pre.begin(), pre.end(), T(0));
      T* tb = tab.data();
      T* tc = tab.data() + OF;
      T* pB = pre.data();
      T* pC = pre.data() + OF;
      int64_t e = s.ep[v];
      pb.clear(); po.clear(); pd.clear();
      // Pending pixels share the current tables and sums; contracted before the next switch
      // (or at the row phase's end), four at a time.
      auto flush = [&]() {
        const int64_t np_ = (int64_t)pb.size();
        for (int64_t p = 0; p < np_; p += 4) {
          const int m = (int)std::min<int64_t>(4, np_ - p);
          for (int u = 0; u < m; ++u) {
            xs[u] = s.X + pb[p + u];
            for (int64_t o = 0; o < O; ++o) {
              b[u * O + o] = G[po[p + u] + o * HW];
              a[u * O + o] = b[u * O + o] * pd[p + u];
            }
          }
          if (m == 4)
            pixel_bwd<T, 4>(xs.data(), s.rowstride, s.k, s.kC, tb, tc, pB, pC, s.F, O, a.data(),
                            b.data(), d.data());
          else
            for (int u = 0; u < m; ++u)
              pixel_bwd<T, 1>(xs.data() + u, s.rowstride, s.k, s.kC, tb, tc, pB, pC, s.F, O,
                              a.data() + u * O, b.data() + u * O, d.data() + u * s.F);
          for (int u = 0; u < m; ++u) {
            T* dx = DX + pb[p + u];
            const T* du = d.data() + u * s.F;
            for (int64_t ky = 0; ky < s.k; ++ky) {
#pragma omp simd
              for (int64_t qq = 0; qq < s.kC; ++qq)
                dx[ky * s.rowstride + qq] += du[ky * s.kC + qq];
            }
          }
        }
        pb.clear(); po.clear(); pd.clear();
      };
      // Switch e's gradients read the sums pB, pC with weight w: −1 at the switch (the pixels
      // before it), +1 once the row phase is done (all its pixels).
      auto switch_grads = [&](int64_t ev, T w) {
        const int64_t j = s.eu[ev];
        const T sg = w * s.es[ev], sj = s.S[j], cj = s.CV[v * s.hid + j];
        const T* wj = s.Wr + j * OF;
        T* dwj = DW + j * OF;
        T db = 0, dc = 0;
#pragma omp simd reduction(+ : db, dc)
        for (int64_t f = 0; f < OF; ++f) {
          db += wj[f] * pB[f];
          dc += wj[f] * pC[f];
          dwj[f] += sg * (sj * pB[f] + cj * pC[f]);
        }
        DS[j] += sg * db;
        DCV[v * s.hid + j] += sg * dc;
      };
      for (int64_t q = 0; q < s.Dh; ++q) {
        if (e < s.ep[v + 1] && s.epos[e] == q) flush();
        for (; e < s.ep[v + 1] && s.epos[e] == q; ++e) {
          switch_grads(e, T(-1));  // the prefix part, before the switch changes the tables
          apply_switch(s, e, v, OF, tb, tc);
        }
        for (int64_t r = s.rp[v]; r < s.rp[v + 1]; ++r) {
          const int64_t i = s.rr[r];
          for (int64_t c = s.cp[q]; c < s.cp[q + 1]; ++c) {
            const int64_t jcol = s.cc[c];
            for (int64_t n = 0; n < s.N; ++n) {
              pb.push_back(((n * s.Hp + s.ri[i]) * s.Wp + s.ci[jcol]) * s.C);
              po.push_back(n * O * HW + i * W + jcol);
              pd.push_back(s.dh[jcol]);
            }
          }
        }
      }
      flush();
      // The row phase's totals: d init, and the suffix parts of its switches' gradients.
      std::memcpy(DI + v * OF, pB, OF * sizeof(T));
      std::memcpy(DI + (s.Dv + v) * OF, pC, OF * sizeof(T));
      for (int64_t e2 = s.ep[v]; e2 < s.ep[v + 1]; ++e2) switch_grads(e2, T(1));
    }
  }
}

// Gradients of `forward` given gy (N, O, H, W): fills dinit, dcdv (owned by one row phase
// each) and per-thread partials dxp_t (T, N, Hp, Wp, C), dw2_t (T, hid, O·F), dslope_t (T, hid),
// all zero-initialised by the caller, who sums the partials.
void backward(std::vector<torch::Tensor> t, torch::Tensor gy, torch::Tensor dxp_t,
              torch::Tensor dinit, torch::Tensor dw2_t, torch::Tensor dslope_t,
              torch::Tensor dcdv, int64_t k, int64_t nthreads) {
  AT_DISPATCH_FLOATING_TYPES(t[0].scalar_type(), "metasr_intervals_cpu_backward", [&] {
    run_backward<scalar_t>(Sweep<scalar_t>(t, k), gy, dxp_t, dinit, dw2_t, dslope_t, dcdv,
                           nthreads);
  });
}
"""

#: Name of the extension in torch's extensions cache (``TORCH_EXTENSIONS_DIR`` or
#: ``~/.cache/torch_extensions``), keyed by the source: ``load_inline`` keeps one build per name
#: and rebuilds it when the source differs, so two metasr versions sharing the cache (an old and a
#: new checkout in one benchmark) would otherwise rebuild each other's on every switch.
_EXT_NAME = "metasr_intervals_cpu_" + hashlib.sha256(_CPP.encode()).hexdigest()[:12]

#: The kernel's tensor arguments in order (then the output, ``k``, the threads, ``blocked``).
ARGS = (
    "xp init w2r slope cdv ev_ptr ev_pos ev_unit ev_sign row_ptr rows row_idx cpos_ptr cols "
    "col_idx col_off"
).split()

_lock = threading.Lock()
#: The built extension, or the reason it could not be built (at most one build per process).
_built: dict[str, object] = {}


def _compiler() -> str:
    """The C++ compiler torch's extension builder runs (``CXX``, else ``c++``)."""
    return os.environ.get("CXX", "c++")


def unavailable_reason() -> str | None:
    """Why the fused CPU kernel cannot be used in this process (``None``: it can).

    With ``METASR_CPU_KERNELS=1`` set this builds the extension on its first call (about 30 s
    the first time on a machine, then loaded from torch's extensions cache) and keeps the
    result; without it nothing is compiled or imported.

    Returns:
        ``None``, or one line: the variable is unset, no C++ compiler or ``ninja`` is on the
        path, or the build failed (its error's first line).
    """
    if os.environ.get(ENV_VAR, "") != "1":
        return f"the compiled CPU kernel is opt-in: set {ENV_VAR}=1 (first use compiles, ~30 s)"
    with _lock:
        if "ext" in _built:
            return None
        if "error" in _built:
            return str(_built["error"])
        if shutil.which(_compiler()) is None:
            return f"{ENV_VAR}=1 but no C++ compiler: {_compiler()!r} is not on the path"
        if shutil.which("ninja") is None:
            return f"{ENV_VAR}=1 but torch's extension builder needs ninja (pip install ninja)"
        try:
            _built["ext"] = _build()
        except Exception as e:  # noqa: BLE001 - any build error becomes the reason
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            _built["error"] = f"{ENV_VAR}=1 but building the CPU kernel failed: {first}"
            warnings.warn(str(_built["error"]), RuntimeWarning, stacklevel=2)
            return str(_built["error"])
    return None


def _build() -> ModuleType:
    """Compile (or load from torch's extensions cache) the kernel."""
    from torch.utils.cpp_extension import load_inline

    return load_inline(
        name=_EXT_NAME,
        cpp_sources=_CPP,
        functions=["forward", "backward"],
        extra_cflags=["-O3", "-march=native", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )


def load_extension() -> ModuleType:
    """The built extension (built on first use, see :func:`unavailable_reason`).

    Raises:
        RuntimeError: with the reason, when it cannot be used.
    """
    why = unavailable_reason()
    if why is not None:
        raise RuntimeError(why)
    return _built["ext"]  # type: ignore[return-value]


#: The two things the kernel cannot compute (:func:`geometry_reason`).
_NEEDS_MLP = "the fused CPU kernel needs the Linear-ReLU-Linear predictor"
_NEEDS_AFFINE = "the fused CPU kernel needs column positions affine in the column offset"


def _column_direction(geom: Geometry) -> tuple[np.ndarray, np.ndarray] | None:
    """``(e, c0)`` with ``col_pos[j] = c0 + col_off[j]·e`` at every column phase, or ``None``
    when the column part of the positions is not affine in ``Δh``."""
    cf, _ = phases(geom.col_off)
    dh = geom.col_off[cf]
    if len(cf) > 1:
        e = (geom.col_pos[cf[1]] - geom.col_pos[cf[0]]) / (dh[1] - dh[0])
    else:
        e = np.zeros(geom.col_pos.shape[1])
    c0 = geom.col_pos[cf[0]] - dh[0] * e
    if not np.allclose(geom.col_pos[cf], c0 + dh[:, None] * e, rtol=0, atol=1e-12):
        return None
    return e, c0


def geometry_reason(params: PredictorParams, geom: Geometry) -> str | None:
    """Why the kernel cannot compute this predictor and geometry (``None``: it can).

    It needs Linear-ReLU-Linear (:class:`.params.MLPParams`) and a column part of the
    positions that is affine in ``Δh`` (both encodings, every request kind today).
    """
    if not isinstance(params, MLPParams):
        return _NEEDS_MLP
    if _column_direction(geom) is None:
        return _NEEDS_AFFINE
    return None


def call_reasons(
    x: torch.Tensor, params: PredictorParams, geom: Geometry, build: bool = True
) -> list[str]:
    """Why the fused kernel cannot run this call (empty: it can), cheapest checks first.

    The build (:func:`unavailable_reason`) is attempted only when the opt-in is set, the call
    is otherwise eligible and ``build`` is true, so no call that could not use it ever compiles
    it. Gradients are no reason: the kernel has a backward (:class:`_Intervals`).

    Args:
        x: ``(N, Cin, h, w)`` in the compute dtype (only device, dtype are read).
        build: check (and on first use build) the extension; ``False`` leaves that to the
            caller (the dispatch first compares counted costs).
    """
    if os.environ.get(ENV_VAR, "") != "1":
        return [str(unavailable_reason())]
    reasons = []
    if x.device.type != "cpu":
        reasons.append(f"the fused CPU kernel runs on CPU, not {x.device.type}")
    if x.dtype not in (torch.float32, torch.float64):
        reasons.append(f"the fused CPU kernel computes in float32/float64, not {x.dtype}")
    why = geometry_reason(params, geom)
    if why is not None:
        reasons.append(why)
    if not reasons and build:
        why = unavailable_reason()
        if why is not None:
            reasons.append(why)
    return reasons


# Counted cost, in the units of :mod:`.phase_grouped`'s (one multiply-add of the LR
# convolution). Measured on this project's machine (2 threads, 2026-12-07,
# benchmarks/fused_intervals.py at 2.37×3.13 and 1.13×3.91 on 1×64×128²): the kernel's
# multiply-adds run at about the convolution's rate; the host tables took 6–10 ms, about
# 2000 units per (row phase, restricted unit) entry once the init matmul (a GEMM, half a unit per
# multiply-add) and the padded copy (30 units per element, as a gathered element there) are
# counted.
_KERNEL_MAC = 1.0
_GEMM_MAC = 0.5
_MOVE = 30.0
_ENTRY = 2000.0


def intervals_cost(params: MLPParams, geom: Geometry, n: int, grad: bool = False) -> float:
    """Counted cost of :func:`meta_upscale_intervals` (units of :mod:`.phase_grouped`).

    ``2·N·H·W·k²·Cin·Cout`` kernel multiply-adds, at most one rank-1 update of the
    ``2·Cout·k²·Cin`` table per row phase and unit, the initial tables (one GEMM of
    ``2·Dv × hid'`` by ``hid' × Cout·k²·Cin``), the host's per-entry work and the padded copy.
    With ``grad`` the backward is added: per pixel twice the forward's products (the window's
    gradient and the tables') counted as three times (the backward kernel measured 2.4–2.9× the
    forward kernel's time, 2 threads, 2026-12-07), per switch two dot products and two updates
    more, twice (prefix, then total), and the initial GEMM's backward.
    """
    k, C, O = params.kernel_size, params.in_channels, params.out_channels
    width = k * k * C * O
    Dv = len(phases(geom.row_off)[0])
    entries = Dv * params.hidden
    # Threads share the row phases: with few of them (×2: 2) some threads idle.
    threads = max(1, torch.get_num_threads())
    balance = -(-Dv // threads) * threads / Dv
    pixels, switches = 2 * n * geom.H * geom.W * width, 2 * entries * width
    if grad:
        pixels, switches = 4 * pixels, 5 * switches
    kernel = (pixels + switches) * balance
    padded = n * C * (geom.h + k - 1) * (geom.w + k - 1) * (2 if grad else 1)
    init = 2 * entries * width * (3 if grad else 1)  # the initial tables' GEMM
    return _KERNEL_MAC * kernel + _GEMM_MAC * init + _ENTRY * entries + _MOVE * padded


def estimate_intervals_bytes(
    x: torch.Tensor, params: MLPParams, geom: Geometry, item: int, grad: bool = False
) -> int:
    """Peak bytes of :func:`meta_upscale_intervals` (output included), ``item`` bytes per value.

    Counts the output, the padded input and its channels-last copy, the second layer laid out
    per unit (``hid'·Cout·k²·Cin``) and the initial tables (``2·Dv·Cout·k²·Cin``, with the GEMM's
    operands), the per-row-phase host tables (``Dv·hid'`` thresholds, positions and switches in
    float64/int64), the index maps, and per thread one table and the pending pixels of one
    interval (at most every pixel of a row phase: a pointer, an offset and ``Δh`` each, in
    vectors that may hold up to twice that as they grow). With ``grad`` also the backward's:
    the output's gradient, per thread a copy of the padded input's gradient and of the second
    layer's, the initial tables' gradient and two running sums, and the gradients autograd
    carries back to ``x`` (unpadded, channels-first) and the predictor.
    """
    N, C, h, w = x.shape
    k, O, hid = params.kernel_size, params.out_channels, params.hidden
    F = k * k * C
    Dv = len(phases(geom.row_off)[0])
    H, W = geom.H, geom.W
    out = N * O * H * W
    padded = N * C * (h + k - 1) * (w + k - 1)
    tabs = hid * O * F + 2 * Dv * O * F + 2 * Dv * hid + O * F
    host = 8 * 8 * Dv * hid + 8 * 4 * (H + W)
    rows_per_phase = int(np.bincount(phases(geom.row_off)[1]).max())
    threads = max(1, torch.get_num_threads())
    per_thread = 2 * O * F * item + 2 * 24 * rows_per_phase * W * N
    total = (out + 2 * padded + tabs) * item + host + threads * per_thread
    if grad:
        per_thread_bwd = (padded + hid * O * F + hid + 4 * O * F) * item
        grads = out + 2 * padded + N * C * h * w + tabs + 2 * Dv * hid
        total += threads * per_thread_bwd + grads * item
    return total


def kernel_tables(x: torch.Tensor, params: MLPParams, geom: Geometry) -> dict[str, torch.Tensor]:
    """Everything the kernel reads besides the output, built on the host.

    Args:
        x: ``(N, Cin, h, w)`` on CPU, float32 or float64.
        params: Linear-ReLU-Linear in ``x``'s dtype; restrict it first
            (:func:`.relu_domain.restrict_to_domain`) or every unit is carried.
        geom: a geometry whose column positions are affine in ``Δh`` (:func:`geometry_reason`).

    Returns:
        The kernel's arguments by name (:data:`ARGS`), plus ``events`` (the number of
        switches, a 0-d tensor) for reports.

    Raises:
        ValueError: for a geometry :func:`geometry_reason` refuses.
    """
    direction = _column_direction(geom)
    if direction is None:
        raise ValueError(_NEEDS_AFFINE)
    e, c0 = direction
    dt, dev = x.dtype, x.device
    C, k, O = params.in_channels, params.kernel_size, params.out_channels
    rf, rph = phases(geom.row_off)
    cf, cph = phases(geom.col_off)
    dh_ph = geom.col_off[cf]
    # z = s·Δh + c(Δv) per unit, in float64 (torch ops, so the predictor's gradients flow).
    w1 = params.w1.to(torch.float64)
    slope_t = w1 @ torch.as_tensor(e, dtype=torch.float64)  # (hid,)
    rpos = torch.as_tensor(geom.row_pos[rf] + geom.const_pos + c0, dtype=torch.float64)
    cdv_t = rpos @ w1.T + params.b1.to(torch.float64)  # (Dv, hid)
    slope, cdv = slope_t.detach().numpy(), cdv_t.detach().numpy()
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
    evv, evj = np.nonzero(ev)
    evq = pos[evv, evj]
    srt = np.lexsort((evj, evq, evv))  # by row phase, then column position
    evv, evj, evq = evv[srt], evj[srt], evq[srt]
    ev_sign = np.where(slope[evj] > 0, 1.0, -1.0)
    ev_ptr = np.r_[0, np.cumsum(np.bincount(evv, minlength=Dv))]
    # Second layer as (hid, O, ky, kx, Cin): a tap row of the window is k·Cin contiguous values.
    hid = params.hidden
    w2r = params.w2.view(C, k, k, O, hid).permute(4, 3, 1, 2, 0).reshape(hid, -1)
    b2r = params.b2.view(C, k, k, O).permute(3, 1, 2, 0).reshape(-1)
    s_t, c_t = slope_t.to(dt), cdv_t.to(dt)
    m0 = torch.as_tensor(on0, dtype=dt)
    # B then C at the smallest Δh of every row phase: (2·Dv, O·k·k·Cin).
    init = torch.cat([(m0 * s_t) @ w2r, (m0 * c_t) @ w2r + b2r])
    # Output rows per row phase, output columns per sorted column phase.
    rank = np.empty(Dh, dtype=np.int64)
    rank[order] = np.arange(Dh)
    qcol = rank[cph]
    # Padded (zeros, or wrapped columns with periodic_lon), channels-last.
    xp = pad_window(x, k, geom.periodic_lon).permute(0, 2, 3, 1).contiguous()
    return dict(
        xp=xp,
        init=init.contiguous(),
        w2r=w2r.contiguous(),
        slope=s_t,
        cdv=c_t.contiguous(),
        ev_ptr=as_index(ev_ptr, dev),
        ev_pos=as_index(evq, dev),
        ev_unit=as_index(evj, dev),
        ev_sign=torch.as_tensor(ev_sign, dtype=dt),
        row_ptr=as_index(np.r_[0, np.cumsum(np.bincount(rph, minlength=Dv))], dev),
        rows=as_index(np.argsort(rph, kind="stable"), dev),
        row_idx=as_index(geom.row_idx, dev),
        cpos_ptr=as_index(np.r_[0, np.cumsum(np.bincount(qcol, minlength=Dh))], dev),
        cols=as_index(np.argsort(qcol, kind="stable"), dev),
        col_idx=as_index(geom.col_idx, dev),
        col_off=torch.as_tensor(geom.col_off, dtype=dt),
        events=torch.tensor(len(evq)),
    )


def run_kernel(
    ext: ModuleType,
    tables: dict[str, torch.Tensor],
    y: torch.Tensor,
    k: int,
    blocked: bool = True,
) -> torch.Tensor:
    """Fill ``y (N, Cout, H, W)`` from :func:`kernel_tables`' output with the kernel.

    Args:
        blocked: four pixels per table pass (the default); ``False`` runs one pixel at a time
            (``benchmarks/fused_intervals.py`` compares them).
    """
    ext.forward([tables[a] for a in ARGS], y, k, torch.get_num_threads(), blocked)
    return y


#: The tables :class:`_Intervals` differentiates (the others are integer or constant).
_DIFF = ("xp", "init", "w2r", "slope", "cdv")


class _Intervals(torch.autograd.Function):
    """The kernel with its backward (:func:`run_kernel`; the C++ ``backward`` replays it).

    Inputs are the five differentiable tables (:data:`_DIFF`: padded channels-last input,
    initial ``B, C``, second layer per unit, slopes, ``c_j(Δv)``), then the integer tables; the
    host side that builds them from ``x`` and the predictor is plain torch, so autograd carries
    these gradients on to ``x`` and every predictor parameter. The switching positions are
    integers: piecewise constant, like ReLU's kink.
    """

    @staticmethod
    def forward(ctx, ext, tables, shape, k, *diff):  # type: ignore[override]
        full = {**tables, **dict(zip(_DIFF, diff, strict=True))}
        y = run_kernel(ext, full, memory.empty_output(shape, diff[0]), k)
        ctx.ext, ctx.k = ext, k
        ctx.save_for_backward(*(full[a] for a in ARGS))
        return y

    @staticmethod
    @once_differentiable  # the C++ backward records no graph: double backward raises
    def backward(ctx, gy):  # type: ignore[override]
        saved = dict(zip(ARGS, ctx.saved_tensors, strict=True))
        xp, init, w2r, slope, cdv = (saved[a] for a in _DIFF)
        threads = torch.get_num_threads()
        dxp = xp.new_zeros((threads, *xp.shape))
        dinit = torch.zeros_like(init)
        dw2 = w2r.new_zeros((threads, *w2r.shape))
        dslope = slope.new_zeros((threads, *slope.shape))
        dcdv = torch.zeros_like(cdv)
        gy = gy.to(xp.dtype).contiguous()
        args = [saved[a] for a in ARGS]
        ctx.ext.backward(args, gy, dxp, dinit, dw2, dslope, dcdv, ctx.k, threads)
        return None, None, None, None, dxp.sum(0), dinit, dw2.sum(0), dslope.sum(0), dcdv


def meta_upscale_intervals(x: torch.Tensor, params: MLPParams, geom: Geometry) -> torch.Tensor:
    """Meta-Upscale by the fused CPU kernel, differentiable in ``x`` and ``params``.

    Args:
        x: ``(N, Cin, h, w)`` on CPU, float32 or float64.
        params: Linear-ReLU-Linear in ``x``'s dtype (restricted, as the torch backend does).
        geom: output geometry (:func:`geometry_reason` must accept it).

    Returns:
        ``(N, Cout, H, W)`` in the geometry's computed order, as the other orders; under
        autograd its backward is the C++ ``backward`` (:class:`_Intervals`).

    Raises:
        RuntimeError: the kernel is not available (:func:`unavailable_reason`).
        ValueError: a geometry or predictor it cannot compute.
    """
    ext = load_extension()
    if not isinstance(params, MLPParams):
        raise ValueError(_NEEDS_MLP)
    tables = kernel_tables(x, params, geom)  # refuses a geometry it cannot compute
    shape = (x.shape[0], params.out_channels, geom.H, geom.W)
    if not any(tables[a].requires_grad for a in _DIFF):
        return run_kernel(ext, tables, memory.empty_output(shape, x), params.kernel_size)
    diff = [tables.pop(a) for a in _DIFF]
    return _Intervals.apply(ext, tables, shape, params.kernel_size, *diff)
