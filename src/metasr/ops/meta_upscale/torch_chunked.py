"""Memory-bounded Meta-Upscale in plain PyTorch (the ``torch`` backend).

Two evaluation orders of the same function, chosen per call by counted cost:

* **per-phase** (few distinct offsets, e.g. integer and simple rational scales): predict the
  weights of the ``Dv·Dh`` distinct ``(Δv, Δh)`` pairs only, apply them all with one LR
  convolution with ``Dv·Dh·Cout`` output channels, and gather each output pixel from its phase.
  Plain autograd; its largest tensor is ``N·Cout·Dv·Dh·h·w``.
* **features-first** (``DESIGN.md`` §3, any scale): with ``hid(p) = ReLU(A[i] + Bc[j] + c)`` and
  ``Z = conv(x, W2)``, ``B = conv(x, b2)`` at LR resolution,
  ``y[n,o,p] = Σ_h hid(p)[h]·Z[n,h,o,q] + B[n,o,q]``. A custom ``autograd.Function`` does the
  contraction one LR row (and its strip of output rows) at a time and recomputes ``hid`` in
  backward, so neither the
  per-pixel weights, nor ``hid`` or the gathered ``Z`` of the whole output, ever exist.

Per-phase costs ``Dv·Dh·Cout`` conv channels; features-first costs ``(hidden+1)·Cout`` conv
channels plus the contraction, so per-phase is used when ``Dv·Dh ≤ hidden + 1``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ...geometry import Geometry
from .. import memory
from .padding import lr_conv2d
from .params import MLPParams, features_first_z, needs_grad, separable_first_layer
from .tables import as_float, as_index, phases

#: (rtol, atol) against the float64 spec, as :data:`.naive.TOLERANCES` (float32 on CUDA: with
#: cuDNN's TF32 off). On CPU, float16/bfloat16 compute in float32 and only round the inputs and
#: the output, well inside these bounds.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (5e-2, 5e-2),
}

Order = Literal["auto", "per_phase", "features_first"]


def meta_upscale_torch(
    x: torch.Tensor,
    params: MLPParams,
    geom: Geometry,
    order: Order = "auto",
) -> torch.Tensor:
    """Meta-Upscale without the output-resolution tensors.

    Args:
        x: ``(N, Cin, h, w)``.
        params: MLP tensors in ``x``'s dtype.
        geom: output geometry.
        order: ``"auto"`` picks by cost; the others force one evaluation order (tests, benchmarks).

    Returns:
        ``(N, Cout, H, W)`` in ``x``'s dtype.
    """
    in_dtype = x.dtype
    if x.device.type == "cpu" and in_dtype in (torch.float16, torch.bfloat16):
        # CPU half-precision GEMMs are slow and accumulate poorly; compute in float32.
        x = x.float()
        params = params.to(torch.float32)
    row_first, row_phase = phases(geom.row_off)
    col_first, col_phase = phases(geom.col_off)
    if order == "auto":
        few_phases = len(row_first) * len(col_first) <= params.hidden + 1
        order = "per_phase" if few_phases else "features_first"
    if order == "per_phase":
        y = _per_phase(x, params, geom, row_first, row_phase, col_first, col_phase)
    elif order == "features_first":
        y = _features_first(x, params, geom, col_first, col_phase)
    else:
        raise ValueError(f"order must be 'auto', 'per_phase' or 'features_first', got {order!r}")
    return y.to(in_dtype)


def estimate_bytes(x: torch.Tensor, params: MLPParams, geom: Geometry) -> int:
    """Peak bytes of :func:`meta_upscale_torch` (order ``"auto"``), host and device together.

    Counts the output, the LR-resolution tensor of the chosen order (the per-phase convolution
    ``N·Dv·Dh·Cout·h·w`` with the int64 gather index ``Cout·H·W`` and its broadcast temporaries;
    or ``Z`` ``N·h·w·Cout·(hid+1)`` with the largest strip temporaries), and under autograd the
    gradients of both.

    Args:
        x: ``(N, Cin, h, w)`` (only its shape, dtype, device and ``requires_grad`` are read).
    """
    N, C, h, w = x.shape
    O, hid = params.out_channels, params.hidden
    H, W = geom.H, geom.W
    out = N * O * H * W
    item = x.element_size()
    half_on_cpu = x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16)
    cs = 4 if half_on_cpu else item  # compute dtype's size
    grad = needs_grad(x, params)
    Dv, Dh = len(phases(geom.row_off)[0]), len(phases(geom.col_off)[0])
    total = N * C * h * w * cs if half_on_cpu else 0  # float32 copy of x
    total += out * (item if half_on_cpu else 0)  # the final cast back
    if Dv * Dh <= hid + 1:  # per-phase
        lr = N * Dv * Dh * O * h * w * cs
        index = 8 * (2 * O * H * W + 2 * H * W)  # int64 flat index, broadcast temporaries
        total += lr + index + out * cs
        if grad:
            total += 2 * lr + out * cs  # index_select's zero-filled gradient, then conv's
    else:  # features-first
        K = hid + 1
        z = N * h * w * O * K * cs
        m = int(np.max(np.diff(np.flatnonzero(np.r_[True, np.diff(geom.row_idx) != 0, True]))))
        # hid of a strip exists three times over at the peak (its pre-activation, ReLU, concat).
        if Dh * w <= 2 * W:  # phase mode
            strip = 3 * m * Dh * K + N * m * Dh * w * O + N * m * W * O
        else:
            strip = 3 * m * W * K + N * W * O * K + N * W * O * m
        total += z + N * C * h * w * cs + (H + Dh) * hid * cs + strip * cs + out * cs
        if grad:
            # dZ and its contiguous copy for the convolution's backward, dy, strip, dA
            total += 2 * z + out * cs + strip * cs + H * hid * cs
    return total


def _per_phase(
    x: torch.Tensor,
    params: MLPParams,
    geom: Geometry,
    row_first: np.ndarray,
    row_phase: np.ndarray,
    col_first: np.ndarray,
    col_phase: np.ndarray,
) -> torch.Tensor:
    """Weights per distinct ``(Δv, Δh)``; one LR conv; gather. Shapes as the public function."""
    N, C, h, w = x.shape
    k, O = params.kernel_size, params.out_channels
    Dv, Dh = len(row_first), len(col_first)
    pos = (
        geom.row_pos[row_first][:, None, :] + geom.col_pos[col_first][None, :, :] + geom.const_pos
    )  # (Dv, Dh, P), float64
    weights = params.predict(as_float(pos.reshape(Dv * Dh, -1), x))  # (Dv·Dh, C·k·k·O)
    weights = weights.view(Dv * Dh, C, k, k, O).permute(0, 4, 1, 2, 3)
    r = lr_conv2d(x, weights.reshape(Dv * Dh * O, C, k, k), geom.periodic_lon)  # (N, Dv·Dh·O, h, w)
    # Flat index of y[n, o, i, j] in r[n]: ((pv·Dh + ph)·O + o)·h·w + i'·w + j'.
    phase = row_phase[:, None] * Dh + col_phase[None, :]  # (H, W)
    lr = geom.row_idx[:, None] * w + geom.col_idx[None, :]  # (H, W)
    flat = (phase[None] * O + np.arange(O)[:, None, None]) * (h * w) + lr[None]  # (O, H, W)
    y = r.reshape(N, -1).index_select(1, as_index(flat.reshape(-1), x.device))
    return y.view(N, O, geom.H, geom.W)


def _features_first(
    x: torch.Tensor,
    params: MLPParams,
    geom: Geometry,
    col_first: np.ndarray,
    col_phase: np.ndarray,
) -> torch.Tensor:
    """LR convolution to ``Z`` then the row-by-row contraction. Shapes as the public function."""
    N, _, h, w = x.shape
    O, hid = params.out_channels, params.hidden
    K = hid + 1  # hid channels of Z plus the bias map B, contracted with a constant 1
    # Channels-last Z: one LR row of it is a contiguous (w·O, K) matrix per sample.
    z = features_first_z(x, params, geom.periodic_lon).permute(0, 2, 3, 1).reshape(N, h, w, O, K)
    # First MLP layer, separably: W1·(row_pos[i] + col_pos[j] + const) + b1 = A[i] + Bc[j] + c.
    a, bc, c = separable_first_layer(  # (H, hid), (Dc, hid), (hid,)
        params,
        as_float(geom.row_pos, x),
        as_float(geom.col_pos[col_first], x),
        as_float(geom.const_pos, x),
    )
    # Output rows of one LR row form a contiguous run (the row map is non-decreasing).
    starts = np.flatnonzero(np.r_[True, np.diff(geom.row_idx) != 0])
    ends = np.r_[starts[1:], geom.H]
    cells = tuple(zip(geom.row_idx[starts].tolist(), starts.tolist(), ends.tolist(), strict=True))
    dev = x.device
    return _FeaturesFirstContraction.apply(
        z, a, bc, c, as_index(geom.col_idx, dev), as_index(col_phase, dev), cells
    )


def _hid_ext(pre: torch.Tensor) -> torch.Tensor:
    """``[ReLU(pre), 1]`` along the last axis: ``(..., hid)`` → ``(..., hid + 1)``."""
    return torch.cat([F.relu(pre), pre.new_ones(pre.shape[:-1] + (1,))], dim=-1)


class _FeaturesFirstContraction(torch.autograd.Function):
    """``y[n,o,i,j] = Σ_k hidext(i,j)[k] · Z[n, i'(i), j'(j), o, k]``, one LR row at a time.

    Inputs:
        z: ``(N, h, w, O, K)`` contiguous, ``K = hid + 1`` (last channel: the bias map).
        a: ``(H, hid)`` row term, ``bc: (Dc, hid)`` column term per column phase, ``c: (hid,)``.
        col_idx ``(W,)``, col_phase ``(W,)``: int64 column maps.
        cells: ``(r, s, e)`` per LR row ``r``: output rows ``s..e-1`` read it.

    Work is done per LR row ``r`` and all of its ``m = e - s`` output rows together, so ``Z``
    is never gathered along rows and ``dZ[:, r]`` is written once, without any scatter. Temporary
    storage is one strip of the output (``m`` rows) times a small factor. Columns are treated in
    one of two ways, chosen by cost:

    * *phase mode* (``Dc·w ≤ 2·W``, e.g. any scale whose columns have few distinct offsets):
      one GEMM ``(m·Dc, K) × (K, w·O)`` of the ``Dc`` distinct ``hid`` vectors of each output row
      with the LR row of ``Z``, then each output column picks its ``(phase, j')`` entry. No
      column gather; exact work for integer scales.
    * *gather mode*: gather the LR row's columns ``(W, O, K)`` once, then one small GEMM per
      output column over its ``m`` rows.

    Backward recomputes ``hid`` (storing it would cost ``H·W·hid`` values).
    """

    @staticmethod
    def forward(ctx, z, a, bc, c, col_idx, col_phase, cells):
        N, h, w, O, K = z.shape
        H, W, Dc = a.shape[0], col_idx.shape[0], bc.shape[0]
        phase_mode = Dc * w <= 2 * W
        flat_idx = col_phase * w + col_idx  # (W,) index into the (Dc·w) axis
        bc_cols = bc if phase_mode else bc.index_select(0, col_phase)  # (Dc or W, hid)
        y = memory.empty_output((N, O, H, W), z)
        for r, s, e in cells:
            m = e - s
            hx = _hid_ext(a[s:e, None, :] + bc_cols[None] + c)  # (m, Dc or W, K)
            if phase_mode:
                zr = z[:, r].view(N, w * O, K)
                t = torch.matmul(hx.view(m * Dc, K), zr.transpose(1, 2))  # (N, m·Dc, w·O)
                yc = t.view(N, m, Dc * w, O).index_select(2, flat_idx)  # (N, m, W, O)
                y[:, :, s:e, :] = yc.permute(0, 3, 1, 2)
            else:
                zc = z[:, r].index_select(1, col_idx)  # (N, W, O, K)
                yc = torch.matmul(zc, hx.permute(1, 2, 0))  # (N, W, O, m)
                y[:, :, s:e, :] = yc.permute(0, 2, 3, 1)
        ctx.save_for_backward(z, a, bc, c, col_idx, col_phase)
        ctx.phase_mode = phase_mode
        ctx.cells = cells
        return y

    @staticmethod
    def backward(ctx, dy):
        z, a, bc, c, col_idx, col_phase = ctx.saved_tensors
        N, h, w, O, K = z.shape
        W, Dc, hid = col_idx.shape[0], bc.shape[0], a.shape[1]
        need_z = ctx.needs_input_grad[0]
        need_mlp = any(ctx.needs_input_grad[1:4])
        # LR rows that no output row reads (none for scales >= 1) keep a zero gradient.
        dz = z.new_zeros(z.shape) if need_z else None
        da = torch.zeros_like(a) if need_mlp else None
        bc_cols = bc if ctx.phase_mode else bc.index_select(0, col_phase)
        dbc_cols = torch.zeros_like(bc_cols) if need_mlp else None
        flat_idx = col_phase * w + col_idx
        for r, s, e in ctx.cells:
            m = e - s
            pre = a[s:e, None, :] + bc_cols[None] + c  # (m, Dc or W, hid)
            hx = _hid_ext(pre)
            dyc = dy[:, :, s:e, :].permute(0, 2, 3, 1)  # (N, m, W, O)
            if ctx.phase_mode:
                dt = dyc.new_zeros((N, m, Dc * w, O)).index_add_(2, flat_idx, dyc)
                dt = dt.view(N, m * Dc, w * O)
                if need_mlp:
                    zr = z[:, r].view(N, w * O, K)
                    dhx = torch.matmul(dt, zr).sum(0).view(m, Dc, K)
                if need_z:
                    dz[:, r] = torch.matmul(dt.transpose(1, 2), hx.view(m * Dc, K)).view(N, w, O, K)
            else:
                zc = z[:, r].index_select(1, col_idx)  # (N, W, O, K)
                dyt = dyc.permute(2, 1, 0, 3).reshape(W, m, N * O)  # (W, m, N·O)
                if need_mlp:
                    zt = zc.transpose(0, 1).reshape(W, N * O, K)
                    dhx = torch.bmm(dyt, zt).transpose(0, 1)  # (m, W, K)
                if need_z:
                    dzc = torch.bmm(dyt.transpose(1, 2), hx.transpose(0, 1))  # (W, N·O, K)
                    dzc = dzc.view(W, N, O, K).transpose(0, 1)  # (N, W, O, K)
                    dz[:, r] = dz.new_zeros((N, w, O, K)).index_add_(1, col_idx, dzc)
            if need_mlp:
                dpre = dhx[..., :hid] * (pre > 0)
                da[s:e] = dpre.sum(1)
                dbc_cols += dpre.sum(0)
        if need_mlp:
            if ctx.phase_mode:
                dbc = dbc_cols
            else:
                dbc = torch.zeros_like(bc).index_add_(0, col_phase, dbc_cols)
            dc = da.sum(0)
        else:
            dbc = dc = None
        return dz, da, dbc, dc, None, None, None
