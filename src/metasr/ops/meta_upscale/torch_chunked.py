"""Memory-bounded Meta-Upscale in plain PyTorch (the ``torch`` backend).

Two evaluation orders of the same function, chosen per call by counted cost:

* **per-phase** (few distinct offsets, e.g. integer and simple rational scales): predict the
  weights of the ``Dv·Dh`` distinct ``(Δv, Δh)`` pairs only, apply them all with one LR
  convolution with ``Dv·Dh·Cout`` output channels, and gather each output pixel from its phase.
  Plain autograd; its largest tensor is ``N·Cout·Dv·Dh·h·w``.
* **features-first** (``DESIGN.md`` §3, any scale): with ``hid(p) = ReLU(A[i] + Bc[j] + c)`` and
  ``Z = conv(x, W2)``, ``B = conv(x, b2)`` at LR resolution,
  ``y[n,o,p] = Σ_h hid(p)[h]·Z[n,h,o,q] + B[n,o,q]``. A custom ``autograd.Function`` does the
  contraction in chunks of output rows and recomputes ``hid`` in backward, so neither the
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
from ._common import MLPParams, as_float, as_index, new_output, phases

TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (5e-2, 5e-2),
}

#: Elements of temporary storage one chunk of output rows may use (32 MiB in float32).
DEFAULT_CHUNK_ELEMENTS = 1 << 23

Order = Literal["auto", "per_phase", "features_first"]


def meta_upscale_torch(
    x: torch.Tensor,
    params: MLPParams,
    geom: Geometry,
    order: Order = "auto",
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Meta-Upscale without the output-resolution tensors.

    Args:
        x: ``(N, Cin, h, w)``.
        params: MLP tensors in ``x``'s dtype.
        geom: output geometry.
        order: ``"auto"`` picks by cost; the others force one evaluation order (tests, benchmarks).
        chunk_elements: temporary-storage budget of one chunk of the features-first contraction.

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
        y = _features_first(x, params, geom, col_first, col_phase, chunk_elements)
    else:
        raise ValueError(f"order must be 'auto', 'per_phase' or 'features_first', got {order!r}")
    return y.to(in_dtype)


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
    r = F.conv2d(x, weights.reshape(Dv * Dh * O, C, k, k), padding=k // 2)  # (N, Dv·Dh·O, h, w)
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
    chunk_elements: int,
) -> torch.Tensor:
    """LR convolution to ``Z`` then the chunked contraction. Shapes as the public function."""
    N, C, h, w = x.shape
    k, O, hid = params.kernel_size, params.out_channels, params.hidden
    K = hid + 1  # hid channels of Z plus the bias map B, contracted with a constant 1
    wz = params.w2.view(C, k, k, O, hid).permute(4, 3, 0, 1, 2)  # (hid, O, C, k, k)
    wb = params.b2.view(C, k, k, O).permute(3, 0, 1, 2).unsqueeze(0)  # (1, O, C, k, k)
    weight = torch.cat([wz, wb], dim=0).reshape(K * O, C, k, k)
    z = F.conv2d(x, weight, padding=k // 2)  # (N, K·O, h, w)
    # (h, w, N, O, K): one LR row is a contiguous (w·N·O, K) matrix for the contraction.
    z = z.view(N, K, O, h, w).permute(3, 4, 0, 2, 1).contiguous()
    # First MLP layer, separably: W1·(row_pos[i] + col_pos[j] + const) + b1 = A[i] + Bc[j] + c.
    a = F.linear(as_float(geom.row_pos, x), params.w1)  # (H, hid)
    bc = F.linear(as_float(geom.col_pos[col_first], x), params.w1)  # (Dc, hid)
    c = F.linear(as_float(geom.const_pos[None], x), params.w1, params.b1)[0]  # (hid,)
    dev = x.device
    return _FeaturesFirstContraction.apply(
        z,
        a,
        bc,
        c,
        as_index(geom.row_idx, dev),
        as_index(geom.col_idx, dev),
        as_index(col_phase, dev),
        chunk_elements,
    )


def _hid_ext(pre: torch.Tensor) -> torch.Tensor:
    """``[ReLU(pre), 1]`` along the last axis: ``(..., hid)`` → ``(..., hid + 1)``."""
    return torch.cat([F.relu(pre), pre.new_ones(pre.shape[:-1] + (1,))], dim=-1)


class _FeaturesFirstContraction(torch.autograd.Function):
    """``y[n,o,i,j] = Σ_k hidext(i,j)[k] · Z[i'(i), j'(j), n, o, k]``, chunked over output rows.

    Inputs:
        z: ``(h, w, N, O, K)``, ``K = hid + 1`` (last channel: the bias map).
        a: ``(H, hid)`` row term, ``bc: (Dc, hid)`` column term per column phase, ``c: (hid,)``.
        row_idx ``(H,)``, col_idx ``(W,)``, col_phase ``(W,)``: int64 maps.

    Two ways to treat columns, chosen by cost:

    * *phase mode* (``Dc·w ≤ 2·W``): for one output row, multiply the LR row of ``Z``
      ``(w·N·O, K)`` by the ``Dc`` distinct ``hid`` vectors, then pick each output column's
      ``(phase, j')`` entry. No column gather of ``Z`` at all; exact work for integer scales.
    * *gather mode*: gather the LR row's columns ``(W, N·O, K)`` and do one GEMV per pixel.

    Backward recomputes ``hid`` (storing it costs ``H·W·hid`` values) and accumulates ``dZ`` with
    ``index_add_`` along the LR row and column maps.
    """

    @staticmethod
    def forward(ctx, z, a, bc, c, row_idx, col_idx, col_phase, chunk_elements):
        h, w, N, O, K = z.shape
        H, W, Dc = a.shape[0], col_idx.shape[0], bc.shape[0]
        NO = N * O
        phase_mode = Dc * w <= 2 * W
        per_row = (w * NO * K + Dc * w * NO) if phase_mode else (2 * W * NO * K)
        rows = max(1, min(H, chunk_elements // max(per_row, 1)))
        flat_idx = col_phase * w + col_idx  # (W,) index into (Dc·w)
        y = new_output((N, O, H, W), z)
        y_rows = y.view(NO, H, W)
        for i0 in range(0, H, rows):
            i1 = min(H, i0 + rows)
            ri = row_idx[i0:i1]
            zr = z.index_select(0, ri)  # (ni, w, N, O, K)
            if phase_mode:
                hx = _hid_ext(a[i0:i1, None, :] + bc[None] + c)  # (ni, Dc, K)
                t = torch.bmm(hx, zr.view(i1 - i0, w * NO, K).transpose(1, 2))  # (ni, Dc, w·NO)
                yc = t.view(i1 - i0, Dc * w, NO).index_select(1, flat_idx)  # (ni, W, NO)
            else:
                hx = _hid_ext(a[i0:i1, None, :] + bc.index_select(0, col_phase)[None] + c)
                zc = zr.view(i1 - i0, w, NO, K).index_select(1, col_idx)  # (ni, W, NO, K)
                yc = torch.matmul(zc, hx.unsqueeze(-1)).squeeze(-1)  # (ni, W, NO)
            y_rows[:, i0:i1, :] = yc.permute(2, 0, 1)
        ctx.save_for_backward(z, a, bc, c, row_idx, col_idx, col_phase)
        ctx.phase_mode = phase_mode
        ctx.rows = rows
        return y

    @staticmethod
    def backward(ctx, dy):
        z, a, bc, c, row_idx, col_idx, col_phase = ctx.saved_tensors
        h, w, N, O, K = z.shape
        H, W, Dc, hid = a.shape[0], col_idx.shape[0], bc.shape[0], a.shape[1]
        NO = N * O
        need_z = ctx.needs_input_grad[0]
        need_mlp = any(ctx.needs_input_grad[1:4])
        dz = torch.zeros_like(z) if need_z else None
        da = torch.zeros_like(a) if need_mlp else None
        dbc_cols = a.new_zeros((Dc if ctx.phase_mode else W, hid)) if need_mlp else None
        dy_rows = dy.reshape(NO, H, W)
        flat_idx = col_phase * w + col_idx
        for i0 in range(0, H, ctx.rows):
            i1 = min(H, i0 + ctx.rows)
            ni = i1 - i0
            ri = row_idx[i0:i1]
            zr = z.index_select(0, ri)  # (ni, w, N, O, K)
            dyc = dy_rows[:, i0:i1, :].permute(1, 2, 0)  # (ni, W, NO)
            if ctx.phase_mode:
                pre = a[i0:i1, None, :] + bc[None] + c  # (ni, Dc, hid)
                hx = _hid_ext(pre)
                dt = dyc.new_zeros((ni, Dc * w, NO)).index_add_(1, flat_idx, dyc)
                dt = dt.view(ni, Dc, w * NO)
                zr2 = zr.view(ni, w * NO, K)
                if need_mlp:
                    dhx = torch.bmm(dt, zr2)  # (ni, Dc, K)
                if need_z:
                    dzr = torch.bmm(dt.transpose(1, 2), hx)  # (ni, w·NO, K)
                    dz.index_add_(0, ri, dzr.view(ni, w, N, O, K))
            else:
                pre = a[i0:i1, None, :] + bc.index_select(0, col_phase)[None] + c  # (ni, W, hid)
                hx = _hid_ext(pre)
                zc = zr.view(ni, w, NO, K).index_select(1, col_idx)  # (ni, W, NO, K)
                if need_mlp:
                    dhx = torch.matmul(dyc.unsqueeze(-2), zc).squeeze(-2)  # (ni, W, K)
                if need_z:
                    dzc = dyc.unsqueeze(-1) * hx.unsqueeze(-2)  # (ni, W, NO, K)
                    dzr = zr.new_zeros((ni, w, NO, K)).index_add_(1, col_idx, dzc)
                    dz.index_add_(0, ri, dzr.view(ni, w, N, O, K))
            if need_mlp:
                dpre = dhx[..., :hid] * (pre > 0)
                da[i0:i1] = dpre.sum(1)
                dbc_cols += dpre.sum(0)
        if need_mlp:
            if ctx.phase_mode:
                dbc = dbc_cols
            else:
                dbc = bc.new_zeros(bc.shape).index_add_(0, col_phase, dbc_cols)
            dc = da.sum(0)
        else:
            dbc = dc = None
        return dz, da, dbc, dc, None, None, None, None
