"""Fused features-first Meta-Upscale in Triton (the ``triton`` backend).

Same algebra as the features-first order of :mod:`.torch_chunked` (``docs/design.md`` §3):

    Z = conv2d(x, [W2 | b2])                      # (N, Cout·(hid+1), h, w), cuDNN, LR resolution
    pre(i, j) = A[i] + Bc[phase(j)] + c           # first MLP layer, separable
    y[n,o,i,j] = Σ_k ReLU(pre(i,j))[k] · Z[n,o,k,i',j'] + Z[n,o,hid,i',j']

The convolution and the three small linear maps are ordinary PyTorch (autograd differentiates
them); the per-output-pixel contraction and its backward are Triton kernels. ``hid`` is recomputed
in registers from ``A`` and ``Bc`` wherever it is needed and no per-output-pixel intermediate is
ever written to global memory: forward writes ``y`` only, backward writes ``dZ`` (LR resolution)
and small per-program partial sums of the first-layer gradients.

Layout of ``Z``: channels-last ``(N, h, w, Cout, hid+1)`` in memory (the logical shape is the conv's
``(N, Cout·(hid+1), h, w)``), so the ``hid`` values of one LR pixel and output channel are
contiguous (vectorised loads along the contracted axis) and one LR pixel's whole ``Cout·(hid+1)``
block is one contiguous run. The last of the ``hid+1`` channels is the bias map ``B``.

Kernels (all deterministic: every output element is written by exactly one program, with a fixed
summation order, and there are no atomics):

* forward, one program per (LR row, block of LR columns, sample, block of ``Cout``): the program
  reads that tile of ``Z`` once and keeps it on chip while it loops over the output pixels of
  those LR cells (the output rows of the LR row × the output columns of each LR column), so each
  ``Z`` value is read from HBM once. ``_fwd_dot_kernel`` (float16/bfloat16) contracts on tensor
  cores; ``_fwd_fma_kernel`` (float32, where tensor cores would round to tf32, and very wide
  hidden layers) on CUDA cores.
* ``_dz_kernel``: the same tiling (plus a block of ``hid``), accumulating
  ``dZ = Σ_{p in cell} hid(p)·dy(p)`` for each LR pixel in registers; one store per element.
* ``_dpre_kernel``: ``dpre(p) = [pre(p) > 0] · Σ_{n,o} Z[n,o,:,q(p)]·dy[n,o,p]`` for a block of
  output columns × a group of LR rows × a block of ``hid``; writes the row sums per (column
  block, output row) and the column sums per (row group, output column). PyTorch sums the first,
  ``_phase_sum_kernel`` folds the second into one gradient per column phase.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # pragma: no cover - the dispatcher checks for triton first
    raise ImportError(
        "the 'triton' backend needs the triton package (pip install triton; it ships with "
        "CUDA builds of torch)"
    ) from exc

from ...geometry import Geometry
from .. import memory
from .params import MLPParams, features_first_z, needs_grad, separable_first_layer
from .tables import phases

__all__ = ["TOLERANCES", "meta_upscale_triton"]

#: (rtol, atol) against the float64 spec, per compute dtype. Accumulation is float32 in every
#: case; the half-precision errors come from ``x``, the parameters, ``Z``, ``y`` and (tensor-core
#: forward) ``hid`` being rounded to the compute dtype, as in the spec run in that dtype. On CUDA
#: the float32 figure assumes cuDNN's TF32 mode is off (``torch.backends.cudnn.allow_tf32``).
TOLERANCES = {
    torch.float32: (1e-4, 1e-5),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (5e-2, 5e-2),
}

#: Register budget (fp32 elements) of the largest tile of one CUDA-core program; 8192 over 4
#: warps is 64 registers per thread, which leaves room for the operands and the product.
_TILE_ELEMS = 8192
_NUM_WARPS = 4
#: Block-size bounds (powers of two). Module constants so that tests can shrink them and exercise
#: partial blocks and multi-block reductions on tiny inputs.
_FWD_MAX_BLOCK_Q = 16  # LR columns per CUDA-core forward program
_MAX_BLOCK_O = 4  # output channels per CUDA-core program (Cout is 1 or 3 in practice)
_DZ_BLOCK_Q = 16  # LR columns per dZ program
_DZ_MAX_BLOCK_K = 64  # hid channels per dZ program
_DPRE_BLOCK_J = 64  # output columns per dpre program
_DPRE_MAX_BLOCK_K = 16  # hid channels per dpre program
#: Tensor-core forward: used for float16/bfloat16 when the padded hidden width is at most this
#: (the ``hid`` operand of a 16-row chunk then fits one warp's registers).
_DOT_MAX_HID = 256
_DOT_MAX_BLOCK_O = 16
#: (width BLOCK_Q·BLOCK_O of the Z operand, output columns per chunk = rows of the product).
#: One warp per 16 rows; a 32-wide operand on one warp spills, so it always gets 32 rows.
_DOT_SHAPES = ((16, 16), (16, 32), (32, 32))


# --------------------------------------------------------------------------------------- kernels
#
# Index conventions shared by the kernels. z is channels-last, so the value of hidden unit k for
# output channel o at LR pixel (n, r, q) is at ((n·h + r)·w + q)·O·K + o·K + k, K = hid + 1 (the
# last unit, k = hid, is the bias map). y and dy are contiguous (N, O, H, W). Row/column "cells":
# output rows row_ptr[r] .. row_ptr[r+1]-1 map to LR row r, likewise columns with col_ptr.


@triton.jit
def _fwd_fma_kernel(
    z_ptr,
    ac_ptr,
    bct_ptr,
    row_ptr_ptr,
    col_ptr_ptr,
    col_phase_ptr,
    y_ptr,
    h,
    w,
    H,
    W,
    O,
    hid,
    n_phases,
    HID_P: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_O: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """y for the output pixels of the cells of LR row ``pid1``, LR columns of block ``pid0``.

    CUDA-core version (float32, or a hidden width too large for the tensor-core kernel).
    ac ``(H, hid)``, bct ``(hid, Dc)`` (transposed Bc), float32.

    The tile of Z, ``(HID_P, BLOCK_O, BLOCK_Q)``, is read once and kept in registers for every
    output pixel of the cells. Per output pixel, ``hid`` is formed and contracted with the tile.
    The tile is indexed (k, o, q) and ``Bc`` is read transposed on purpose: the hidden-unit
    gather then has no contiguous axis, so Triton lays the product out with output pixels across
    lanes and most of the ``hid`` sum inside each thread. (Laid out along the contiguous ``hid``
    axis of z, the sum would cost five shuffles per output value.)
    """
    pid_q = tl.program_id(0)
    lr = tl.program_id(1)
    pid_no = tl.program_id(2)
    n_ob = tl.cdiv(O, BLOCK_O)
    n = pid_no // n_ob
    ob = pid_no % n_ob
    K = hid + 1
    q = (pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q))[None, None, :]
    o = (ob * BLOCK_O + tl.arange(0, BLOCK_O))[None, :, None]
    k = tl.arange(0, HID_P)[:, None, None]
    qm = q < w
    om = o < O
    km = k < hid

    zpix = ((n * h + lr).to(tl.int64) * w + q) * (O * K)  # (1, 1, BQ)
    zt = tl.load(z_ptr + zpix + o * K + k, mask=km & om & qm, other=0.0).to(tl.float32)
    zb = tl.load(z_ptr + zpix + o * K + hid, mask=om & qm, other=0.0).to(tl.float32)  # (1, BO, BQ)

    c0 = tl.load(col_ptr_ptr + q, mask=qm, other=0)
    ncols = tl.load(col_ptr_ptr + q + 1, mask=qm, other=0) - c0  # output columns per LR column
    smax = tl.max(tl.max(tl.max(ncols, axis=2), axis=1), axis=0)
    r0 = tl.load(row_ptr_ptr + lr)
    r1 = tl.load(row_ptr_ptr + lr + 1)
    yrow = (n * O + o).to(tl.int64) * H  # (1, BO, 1)
    bc_k = bct_ptr + k * n_phases  # (HID_P, 1, 1)
    for i in range(r0, r1):
        if EVEN_K:
            a = tl.load(ac_ptr + i * hid + k)  # (HID_P, 1, 1)
        else:
            a = tl.load(ac_ptr + i * hid + k, mask=km, other=0.0)
        for s in range(0, smax):
            valid = s < ncols
            j = c0 + s
            ph = tl.load(col_phase_ptr + j, mask=valid, other=0)  # phase 0 is a safe dummy
            if EVEN_K:
                bcv = tl.load(bc_k + ph)  # (HID_P, 1, BQ)
            else:
                bcv = tl.load(bc_k + ph, mask=km, other=0.0)
            hv = tl.maximum(a + bcv, 0.0)  # 0 in the padding of hid
            yv = tl.sum(zt * hv, axis=0, keep_dims=True) + zb  # (1, BO, BQ)
            tl.store(y_ptr + (yrow + i) * W + j, yv.to(y_ptr.dtype.element_ty), mask=om & valid)


@triton.jit
def _fwd_dot_kernel(
    z_ptr,
    ac_ptr,
    bc_ptr,
    row_ptr_ptr,
    col_ptr_ptr,
    col_idx_ptr,
    col_phase_ptr,
    y_ptr,
    h,
    w,
    H,
    W,
    O,
    hid,
    HID_P: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_J: tl.constexpr,
    EVEN_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    """Tensor-core version of the forward for float16/bfloat16 ``z`` (same grid and output).

    The Z tile of ``BLOCK_Q`` LR columns × ``BLOCK_O`` channels is the ``(HID_P, BQ·BO)`` right
    operand of ``tl.dot``, read once. For a chunk of ``BLOCK_J`` output columns of one output row,
    ``hid`` ``(BLOCK_J, HID_P)`` is the left operand; the product holds every output column against
    every LR column of the tile and each column keeps its own LR column's entries. Computing the
    unused ones is free on tensor cores, and the per-pixel work left on CUDA cores is forming
    ``hid``: about three times fewer instructions than the CUDA-core contraction. ``hid`` is
    rounded to z's dtype for the product (the spec computes it in that dtype too); accumulation
    is float32. ac ``(H, hid)``, bc ``(Dc, hid)``, float32. ``DOT_DTYPE`` is z's dtype, except
    float32 under the Triton interpreter for bfloat16 (its ``tl.dot`` mishandles bfloat16).
    """
    pid_q = tl.program_id(0)
    lr = tl.program_id(1)
    pid_no = tl.program_id(2)
    n_ob = tl.cdiv(O, BLOCK_O)
    n = pid_no // n_ob
    ob = pid_no % n_ob
    K = hid + 1
    NQO: tl.constexpr = BLOCK_Q * BLOCK_O
    q0 = pid_q * BLOCK_Q
    cc = tl.arange(0, NQO)  # column c of the operand is (LR column c // BO, channel c % BO)
    cq = q0 + cc // BLOCK_O
    co = ob * BLOCK_O + cc % BLOCK_O
    cm = (cq < w) & (co < O)
    k = tl.arange(0, HID_P)
    km = k < hid
    zcol = ((n * h + lr).to(tl.int64) * w + cq) * (O * K) + co * K  # (NQO,)
    zt = tl.load(z_ptr + zcol[None, :] + k[:, None], mask=km[:, None] & cm[None, :], other=0.0)
    zt = zt.to(DOT_DTYPE)  # (HID_P, NQO)
    zb = tl.load(z_ptr + zcol + hid, mask=cm, other=0.0).to(tl.float32)  # (NQO,)

    cs = tl.load(col_ptr_ptr + q0)
    ce = tl.load(col_ptr_ptr + tl.minimum(q0 + BLOCK_Q, w))  # output columns [cs, ce)
    r0 = tl.load(row_ptr_ptr + lr)
    r1 = tl.load(row_ptr_ptr + lr + 1)
    o = ob * BLOCK_O + tl.arange(0, BLOCK_O)
    om = o < O
    yrow = (n * O + o).to(tl.int64) * H  # (BO,)
    q_loc = tl.arange(0, BLOCK_Q)
    for j0 in range(cs, ce, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        jm = j < ce
        ph = tl.load(col_phase_ptr + j, mask=jm, other=0)
        qj = tl.load(col_idx_ptr + j, mask=jm, other=-1) - q0  # local LR column, -1: none
        own = q_loc[None, :, None] == qj[:, None, None]  # (BJ, BQ, 1)
        # The column part of the first layer is the same for every output row of the cell.
        if EVEN_K:
            bcv = tl.load(bc_ptr + ph[:, None] * hid + k[None, :])  # (BJ, HID_P)
        else:
            bcv = tl.load(bc_ptr + ph[:, None] * hid + k[None, :], mask=km[None, :], other=0.0)
        yptr = y_ptr + yrow[None, :] * W + j[:, None]
        ymask = jm[:, None] & om[None, :]
        for i in range(r0, r1):
            if EVEN_K:
                a = tl.load(ac_ptr + i * hid + k)
            else:
                a = tl.load(ac_ptr + i * hid + k, mask=km, other=0.0)
            hv = tl.maximum(a[None, :] + bcv, 0.0).to(DOT_DTYPE)  # (BJ, HID_P)
            yall = tl.dot(hv, zt) + zb[None, :]  # (BJ, NQO), float32
            yall = tl.reshape(yall, (BLOCK_J, BLOCK_Q, BLOCK_O))
            yv = tl.sum(tl.where(own, yall, 0.0), axis=1)  # (BJ, BO)
            tl.store(yptr + i * W, yv.to(y_ptr.dtype.element_ty), mask=ymask)


@triton.jit
def _dz_kernel(
    dy_ptr,
    ac_ptr,
    bc_ptr,
    row_ptr_ptr,
    col_ptr_ptr,
    col_phase_ptr,
    dz_ptr,
    h,
    w,
    H,
    W,
    O,
    hid,
    BLOCK_Q: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """dZ of the cells of LR row ``pid1``, LR column block ``pid0``, for one (sample, Cout block,
    hid block) ``pid2``.

    ``dZ[n,o,k,q] = Σ_{p in cell(q)} ReLU(pre(p))[k]·dy[n,o,p]`` accumulated in registers (an
    outer product per output pixel, no reduction across lanes); the bias channel gets ``Σ dy``
    (stored by the hid-block-0 programs). Every dz element is written exactly once, zeros for
    LR pixels that no output pixel maps to. ac ``(H, hid)``, bc ``(Dc, hid)``, float32.
    """
    pid_q = tl.program_id(0)
    lr = tl.program_id(1)
    pid = tl.program_id(2)
    n_kb = tl.cdiv(hid, BLOCK_K)
    n_ob = tl.cdiv(O, BLOCK_O)
    kb = pid % n_kb
    ob = (pid // n_kb) % n_ob
    n = pid // (n_kb * n_ob)
    K = hid + 1
    q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    o = ob * BLOCK_O + tl.arange(0, BLOCK_O)
    k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    qm = q < w
    om = o < O
    km = k < hid

    c0 = tl.load(col_ptr_ptr + q, mask=qm, other=0)
    ncols = tl.load(col_ptr_ptr + q + 1, mask=qm, other=0) - c0
    smax = tl.max(ncols, axis=0)
    r0 = tl.load(row_ptr_ptr + lr)
    r1 = tl.load(row_ptr_ptr + lr + 1)
    yrow = (n * O + o).to(tl.int64) * H  # (BO,)
    acc = tl.zeros((BLOCK_Q, BLOCK_O, BLOCK_K), dtype=tl.float32)
    accb = tl.zeros((BLOCK_Q, BLOCK_O), dtype=tl.float32)
    for i in range(r0, r1):
        if EVEN_K:
            a = tl.load(ac_ptr + i * hid + k)
        else:
            a = tl.load(ac_ptr + i * hid + k, mask=km, other=0.0)
        for s in range(0, smax):
            valid = s < ncols
            j = c0 + s
            ph = tl.load(col_phase_ptr + j, mask=valid, other=0)  # phase 0 is a safe dummy
            if EVEN_K:
                bcv = tl.load(bc_ptr + ph[:, None] * hid + k[None, :])
            else:
                bcv = tl.load(bc_ptr + ph[:, None] * hid + k[None, :], mask=km[None, :], other=0.0)
            hv = tl.maximum(a[None, :] + bcv, 0.0)  # (BQ, BK)
            g = tl.load(
                dy_ptr + (yrow[None, :] + i) * W + j[:, None],
                mask=valid[:, None] & om[None, :],
                other=0.0,
            ).to(tl.float32)  # (BQ, BO); 0 outside the cell, so dummy columns add nothing
            acc += g[:, :, None] * hv[:, None, :]
            accb += g

    zpix = ((n * h + lr).to(tl.int64) * w + q) * (O * K)
    doff = zpix[:, None, None] + (o[:, None] * K + k[None, :])[None, :, :]
    dmask = qm[:, None, None] & om[None, :, None] & km[None, None, :]
    tl.store(dz_ptr + doff, acc.to(dz_ptr.dtype.element_ty), mask=dmask)
    tl.store(
        dz_ptr + zpix[:, None] + (o * K + hid)[None, :],
        accb.to(dz_ptr.dtype.element_ty),
        mask=qm[:, None] & om[None, :] & (kb == 0),
    )


@triton.jit
def _dpre_kernel(
    z_ptr,
    dy_ptr,
    ac_ptr,
    bc_ptr,
    row_idx_ptr,
    row_ptr_ptr,
    col_idx_ptr,
    col_phase_ptr,
    dac_part_ptr,
    dbc_part_ptr,
    N,
    h,
    w,
    H,
    W,
    O,
    hid,
    lr_rows_per_group,
    BLOCK_J: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """Partial sums of ``dpre`` for output column block ``pid0``, LR row group ``pid1``, hid
    block ``pid2``.

    ``dpre[i,j,k] = [pre > 0] · Σ_{n,o} Z[n,o,k,i',j']·dy[n,o,i,j]`` is formed for one output row
    at a time (element-wise multiply-adds, looping over n and o) and reduced right away: over the
    block's columns into ``dac_part[pid0, i, k]`` (``(n_col_blocks, H, hid)``) and over the
    group's rows into ``dbc_part[pid1, j, k]`` (``(n_row_groups, W, hid)``). Both are written
    exactly once.
    """
    pid_j = tl.program_id(0)
    grp = tl.program_id(1)
    kb = tl.program_id(2)
    K = hid + 1
    j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    jm = j < W
    km = k < hid
    jk_mask = jm[:, None] & km[None, :]
    q = tl.load(col_idx_ptr + j, mask=jm, other=0)
    ph = tl.load(col_phase_ptr + j, mask=jm, other=0)
    if EVEN_K:
        bcv = tl.load(bc_ptr + ph[:, None] * hid + k[None, :])
    else:
        bcv = tl.load(bc_ptr + ph[:, None] * hid + k[None, :], mask=km[None, :], other=0.0)

    lr_lo = grp * lr_rows_per_group
    lr_hi = tl.minimum(lr_lo + lr_rows_per_group, h)
    i0 = tl.load(row_ptr_ptr + lr_lo)
    i1 = tl.load(row_ptr_ptr + lr_hi)
    acc_col = tl.zeros((BLOCK_J, BLOCK_K), dtype=tl.float32)
    for i in range(i0, i1):
        lr = tl.load(row_idx_ptr + i)
        dh = tl.zeros((BLOCK_J, BLOCK_K), dtype=tl.float32)
        for n in range(0, N):
            zpix = ((n * h + lr).to(tl.int64) * w + q) * (O * K)  # (BJ,)
            for o in range(0, O):
                zt = tl.load(
                    z_ptr + zpix[:, None] + (o * K + k)[None, :], mask=jk_mask, other=0.0
                ).to(tl.float32)  # (BJ, BK), re-read from cache for each output row
                g = tl.load(
                    dy_ptr + ((n * O + o).to(tl.int64) * H + i) * W + j, mask=jm, other=0.0
                ).to(tl.float32)  # (BJ,)
                dh += zt * g[:, None]
        if EVEN_K:
            a = tl.load(ac_ptr + i * hid + k)
        else:
            a = tl.load(ac_ptr + i * hid + k, mask=km, other=0.0)
        dp = tl.where(a[None, :] + bcv > 0.0, dh, 0.0)  # ReLU'(pre), as torch: 0 at pre == 0
        tl.store(
            dac_part_ptr + (pid_j.to(tl.int64) * H + i) * hid + k,
            tl.sum(dp, axis=0),
            mask=km,
        )
        acc_col += dp
    tl.store(
        dbc_part_ptr + (grp.to(tl.int64) * W + j[:, None]) * hid + k[None, :],
        acc_col,
        mask=jk_mask,
    )


@triton.jit
def _phase_sum_kernel(
    part_ptr,
    perm_ptr,
    seg_ptr,
    out_ptr,
    G,
    W,
    hid,
    BLOCK_K: tl.constexpr,
):
    """``out[d, k] = Σ_g Σ_{j: phase(j) = d} part[g, j, k]``, in a fixed order.

    part ``(G, W, hid)``; perm ``(W,)``: columns sorted by phase; seg ``(Dc+1,)``: start of each
    phase in ``perm``; out ``(Dc, hid)``.
    """
    d = tl.program_id(0)
    k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    km = k < hid
    s0 = tl.load(seg_ptr + d)
    s1 = tl.load(seg_ptr + d + 1)
    acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for g in range(0, G):
        for t in range(s0, s1):
            col = tl.load(perm_ptr + t)
            acc += tl.load(part_ptr + (g * W + col).to(tl.int64) * hid + k, mask=km, other=0.0)
    tl.store(out_ptr + d * hid + k, acc, mask=km)


# -------------------------------------------------------------------------------------- launchers


@dataclass(frozen=True)
class _IndexMaps:
    """Device tables of one output grid: int32 index maps and float32 position encodings.

    Attributes:
        row_idx: ``(H,)`` LR row of each output row.  col_idx: ``(W,)`` LR column.
        row_ptr: ``(h+1,)`` first output row of each LR row (cells are contiguous runs).
        col_ptr: ``(w+1,)`` first output column of each LR column.
        col_phase: ``(W,)`` column phase (index into ``Bc``).
        phase_perm: ``(W,)`` columns sorted by phase.  phase_seg: ``(Dc+1,)`` phase starts.
        row_pos: ``(H, P)``, col_pos: ``(Dc, P)`` (one row per phase), const_pos: ``(P,)``:
            the position encoding's parts, float32.
        col_ptr_host: ``col_ptr`` on the host, for choosing tile sizes without a device sync.
    """

    row_idx: torch.Tensor
    row_ptr: torch.Tensor
    col_idx: torch.Tensor
    col_ptr: torch.Tensor
    col_phase: torch.Tensor
    phase_perm: torch.Tensor
    phase_seg: torch.Tensor
    row_pos: torch.Tensor
    col_pos: torch.Tensor
    const_pos: torch.Tensor
    col_ptr_host: np.ndarray

    @property
    def h(self) -> int:
        return self.row_ptr.shape[0] - 1

    @property
    def w(self) -> int:
        return self.col_ptr.shape[0] - 1

    @property
    def H(self) -> int:
        return self.row_idx.shape[0]

    @property
    def W(self) -> int:
        return self.col_idx.shape[0]

    @property
    def num_phases(self) -> int:
        return self.phase_seg.shape[0] - 1


#: Recently used grids. A training run cycles through a few dozen scales and inference repeats
#: one; rebuilding the tables costs host work and about ten small host-to-device copies per call,
#: which is comparable to the whole kernel time on small inputs.
_MAPS_CACHE: OrderedDict[tuple, _IndexMaps] = OrderedDict()
_MAPS_CACHE_SIZE = 64


def _index_maps(geom: Geometry, device: torch.device) -> _IndexMaps:
    """The :class:`_IndexMaps` of ``geom`` on ``device`` (cached by value)."""
    key = (
        str(device),
        geom.h,
        geom.w,
        geom.pos_encoding,
        geom.r_v,
        geom.r_h,
        geom.row_idx.tobytes(),
        geom.col_idx.tobytes(),
        geom.row_off.tobytes(),
        geom.col_off.tobytes(),
    )
    maps = _MAPS_CACHE.get(key)
    if maps is None:
        maps = _build_index_maps(geom, device)
        _MAPS_CACHE[key] = maps
        if len(_MAPS_CACHE) > _MAPS_CACHE_SIZE:
            _MAPS_CACHE.popitem(last=False)
    else:
        _MAPS_CACHE.move_to_end(key)
    return maps


def _build_index_maps(geom: Geometry, device: torch.device) -> _IndexMaps:
    def ints(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a, dtype=np.int32), device=device)

    def floats(a: np.ndarray) -> torch.Tensor:
        # float64 → float32 on the host: the same rounding as the spec's cast, one copy.
        return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32), device=device)

    col_first, col_phase = phases(geom.col_off)
    # row_idx/col_idx are non-decreasing, so the output rows of LR row r are
    # [row_ptr[r], row_ptr[r+1]); LR rows that no output row maps to get an empty range.
    row_ptr = np.searchsorted(geom.row_idx, np.arange(geom.h + 1), side="left")
    col_ptr = np.searchsorted(geom.col_idx, np.arange(geom.w + 1), side="left")
    perm = np.argsort(col_phase, kind="stable")
    seg = np.searchsorted(col_phase[perm], np.arange(len(col_first) + 1), side="left")
    return _IndexMaps(
        row_idx=ints(geom.row_idx),
        row_ptr=ints(row_ptr),
        col_idx=ints(geom.col_idx),
        col_ptr=ints(col_ptr),
        col_phase=ints(col_phase),
        phase_perm=ints(perm),
        phase_seg=ints(seg),
        row_pos=floats(geom.row_pos),
        col_pos=floats(geom.col_pos[col_first]),
        const_pos=floats(geom.const_pos),
        col_ptr_host=col_ptr,
    )


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _fma_tiles(hid: int, O: int) -> tuple[int, int, int]:
    """``(HID_P, BLOCK_Q, BLOCK_O)`` of the CUDA-core forward tile ``(HID_P, BLOCK_O, BLOCK_Q)``.

    The whole ``hid`` axis must fit (the tile of Z is reused from registers for every output
    pixel of the cells); Cout blocks shrink first so that a program keeps about 8 LR columns,
    enough output pixels per step to hide the per-step overhead.
    """
    hid_p = _pow2(hid)
    block_o = min(_pow2(O), max(1, _TILE_ELEMS // (8 * hid_p)), _MAX_BLOCK_O)
    block_q = min(_FWD_MAX_BLOCK_Q, max(1, _TILE_ELEMS // (hid_p * block_o)))
    return hid_p, block_q, block_o


def _dot_tiles(maps: _IndexMaps, hid: int, O: int) -> tuple[int, int, int, int]:
    """``(HID_P, BLOCK_Q, BLOCK_O, BLOCK_J)`` of the tensor-core forward, chosen by counted work.

    A program's output columns are processed in chunks of ``BLOCK_J``; the masked tail of the
    last chunk still costs the full ``hid`` formation, so the LR-column block is sized to make
    the column spans fill the chunks. Work model per chunk and output row: ``BLOCK_J·hid``
    element-wise operations plus the product at about 1/32 of that rate per operand column,
    plus a per-program share for reading the Z tile.
    """
    hid_p = max(16, _pow2(hid))
    block_o = min(_pow2(O), _DOT_MAX_BLOCK_O)
    ptr, w = maps.col_ptr_host, maps.w
    best: tuple[float, int, int] | None = None
    for n_cols, block_j in _DOT_SHAPES:
        block_q = max(1, n_cols // block_o)
        if block_q * block_o != n_cols:  # tl.dot needs every dimension >= 16
            continue
        starts = np.arange(0, w, block_q)
        spans = ptr[np.minimum(starts + block_q, w)] - ptr[starts]
        chunks = -(-spans // block_j)
        cost = float(chunks.sum()) * block_j * (1 + n_cols / 32) + len(starts) * n_cols / 4
        if best is None or cost < best[0]:
            best = (cost, block_q, block_j)
    assert best is not None
    return hid_p, best[1], block_o, best[2]


def _dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """Operand dtype of the tensor-core product: z's, except where the interpreter cannot."""
    if dtype == torch.float16:
        return tl.float16
    if os.environ.get("TRITON_INTERPRET") == "1":
        return tl.float32  # the interpreter's tl.dot reads bfloat16 operands as integers
    return tl.bfloat16


def _num_programs_target(device: torch.device) -> int:
    """About four waves of programs (enough to fill the GPU; any value is correct)."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _launch_fwd(
    z: torch.Tensor, ac: torch.Tensor, bc: torch.Tensor, maps: _IndexMaps, hid: int, O: int
) -> torch.Tensor:
    """``y (N, O, H, W)`` in z's dtype from channels-last ``z`` and float32 ``ac``, ``bc``."""
    N = z.shape[0]
    h, w, H, W = maps.h, maps.w, maps.H, maps.W
    y = memory.empty_output((N, O, H, W), z)
    half = z.dtype in (torch.float16, torch.bfloat16)
    if half and max(16, _pow2(hid)) <= _DOT_MAX_HID:
        hid_p, block_q, block_o, block_j = _dot_tiles(maps, hid, O)
        grid = (triton.cdiv(w, block_q), h, N * triton.cdiv(O, block_o))
        _fwd_dot_kernel[grid](
            z,
            ac,
            bc,
            maps.row_ptr,
            maps.col_ptr,
            maps.col_idx,
            maps.col_phase,
            y,
            h,
            w,
            H,
            W,
            O,
            hid,
            HID_P=hid_p,
            BLOCK_Q=block_q,
            BLOCK_O=block_o,
            BLOCK_J=block_j,
            EVEN_K=hid_p == hid,
            DOT_DTYPE=_dot_dtype(z.dtype),
            num_warps=block_j // 16,
        )
        return y
    hid_p, block_q, block_o = _fma_tiles(hid, O)
    grid = (triton.cdiv(w, block_q), h, N * triton.cdiv(O, block_o))
    _fwd_fma_kernel[grid](
        z,
        ac,
        bc.t().contiguous(),  # (hid, Dc): see the kernel's docstring
        maps.row_ptr,
        maps.col_ptr,
        maps.col_phase,
        y,
        h,
        w,
        H,
        W,
        O,
        hid,
        maps.num_phases,
        HID_P=hid_p,
        BLOCK_Q=block_q,
        BLOCK_O=block_o,
        EVEN_K=hid_p == hid,
        num_warps=_NUM_WARPS,
    )
    return y


def _launch_dz(
    dy: torch.Tensor,
    ac: torch.Tensor,
    bc: torch.Tensor,
    maps: _IndexMaps,
    like_z: torch.Tensor,
    hid: int,
    O: int,
) -> torch.Tensor:
    """``dZ`` with ``like_z``'s shape, dtype and channels-last layout, from contiguous ``dy``."""
    N = dy.shape[0]
    h, w, H, W = maps.h, maps.w, maps.H, maps.W
    block_o = min(_pow2(O), _MAX_BLOCK_O)
    block_k = min(_pow2(hid), _DZ_MAX_BLOCK_K)
    block_q = _DZ_BLOCK_Q
    # Allocated as (N, h, w, O·K) and viewed as NCHW: exactly z's channels-last strides.
    dz = memory.empty_output((N, h, w, O * (hid + 1)), like_z).permute(0, 3, 1, 2)
    grid = (
        triton.cdiv(w, block_q),
        h,
        N * triton.cdiv(O, block_o) * triton.cdiv(hid, block_k),
    )
    _dz_kernel[grid](
        dy,
        ac,
        bc,
        maps.row_ptr,
        maps.col_ptr,
        maps.col_phase,
        dz,
        h,
        w,
        H,
        W,
        O,
        hid,
        BLOCK_Q=block_q,
        BLOCK_O=block_o,
        BLOCK_K=block_k,
        EVEN_K=hid % block_k == 0,
        num_warps=_NUM_WARPS,
    )
    return dz


def _launch_dpre(
    z: torch.Tensor,
    dy: torch.Tensor,
    ac: torch.Tensor,
    bc: torch.Tensor,
    maps: _IndexMaps,
    hid: int,
    O: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``ac (H, hid)`` and ``bc (Dc, hid)``, float32, deterministic."""
    N = z.shape[0]
    h, w, H, W = maps.h, maps.w, maps.H, maps.W
    block_j = _DPRE_BLOCK_J
    block_k = min(_pow2(hid), _DPRE_MAX_BLOCK_K)
    n_jb = triton.cdiv(W, block_j)
    n_kb = triton.cdiv(hid, block_k)
    # Split the LR rows into groups only as far as needed to fill the device: each group adds a
    # (W, hid) partial of the column sums.
    n_groups = max(1, min(h, triton.cdiv(_num_programs_target(z.device), n_jb * n_kb)))
    rows_per_group = triton.cdiv(h, n_groups)
    n_groups = triton.cdiv(h, rows_per_group)
    dac_part = memory.empty_output((n_jb, H, hid), ac)
    dbc_part = memory.empty_output((n_groups, W, hid), ac)
    _dpre_kernel[(n_jb, n_groups, n_kb)](
        z,
        dy,
        ac,
        bc,
        maps.row_idx,
        maps.row_ptr,
        maps.col_idx,
        maps.col_phase,
        dac_part,
        dbc_part,
        N,
        h,
        w,
        H,
        W,
        O,
        hid,
        rows_per_group,
        BLOCK_J=block_j,
        BLOCK_K=block_k,
        EVEN_K=hid % block_k == 0,
        num_warps=_NUM_WARPS,
    )
    dac = dac_part.sum(0)  # torch reductions are deterministic
    dbc = memory.empty_output((maps.num_phases, hid), ac)
    block_k2 = min(_pow2(hid), 128)
    _phase_sum_kernel[(maps.num_phases, triton.cdiv(hid, block_k2))](
        dbc_part,
        maps.phase_perm,
        maps.phase_seg,
        dbc,
        n_groups,
        W,
        hid,
        BLOCK_K=block_k2,
        num_warps=_NUM_WARPS,
    )
    return dac, dbc


# ------------------------------------------------------------------------------- autograd function


class _FusedContraction(torch.autograd.Function):
    """``y[n,o,i,j] = Σ_k ReLU(ac[i] + bc[phase(j)])[k]·Z[n,o,k,i',j'] + Z[n,o,hid,i',j']``.

    Inputs:
        z: ``(N, O·(hid+1), h, w)`` with channels-last strides (channel ``o·(hid+1) + k``).
        ac: ``(H, hid)`` float32, ``A + c``.  bc: ``(Dc, hid)`` float32.
        maps: :class:`_IndexMaps`.  hid, O: ints.

    Returns ``(N, O, H, W)`` in z's dtype. Backward recomputes ``hid`` (storing it would cost
    ``H·W·hid`` values) and returns ``dz`` (z's layout and dtype), ``dac``, ``dbc`` (float32).
    """

    @staticmethod
    def forward(ctx, z, ac, bc, maps, hid, O):
        y = _launch_fwd(z, ac, bc, maps, hid, O)
        ctx.save_for_backward(z, ac, bc)
        ctx.maps, ctx.hid, ctx.O = maps, hid, O
        return y

    @staticmethod
    def backward(ctx, dy):
        z, ac, bc = ctx.saved_tensors
        maps, hid, O = ctx.maps, ctx.hid, ctx.O
        dy = dy.contiguous()
        dz = dac = dbc = None
        if ctx.needs_input_grad[0]:
            dz = _launch_dz(dy, ac, bc, maps, z, hid, O)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dac, dbc = _launch_dpre(z, dy, ac, bc, maps, hid, O)
        return dz, dac, dbc, None, None, None


# ------------------------------------------------------------------------------- public function


#: CUDA's limit on the second and third grid dimensions.
_MAX_GRID_YZ = 65535


def grid_limit_reasons(x: torch.Tensor, params: MLPParams, geom: Geometry) -> list[str]:
    """Why the kernels' launch grids would exceed CUDA's limits for this call (usually none).

    The grids put LR rows on the second dimension and ``N × output-channel blocks`` (× hidden
    blocks, for ``dZ``) on the third; the largest of these products is checked.
    """
    N, O, hid = x.shape[0], params.out_channels, params.hidden
    block_o = min(_pow2(O), _MAX_BLOCK_O)
    block_k = min(_pow2(hid), _DZ_MAX_BLOCK_K)
    third = N * triton.cdiv(O, block_o) * triton.cdiv(hid, block_k)
    reasons = []
    if geom.h > _MAX_GRID_YZ:
        reasons.append(f"input height {geom.h} exceeds the launch grid limit {_MAX_GRID_YZ}")
    if third > _MAX_GRID_YZ:
        reasons.append(
            f"batch {N} x Cout {O} x hidden {hid} exceeds the launch grid limit; "
            "use a smaller batch or backend='torch'"
        )
    return reasons


def estimate_bytes(x: torch.Tensor, params: MLPParams, geom: Geometry) -> int:
    """Peak bytes of :func:`meta_upscale_triton`: the channels-last copy of ``x``, ``Z``
    ``N·h·w·Cout·(hid+1)``, the output, the float32 first-layer tables and index maps; under
    autograd also ``dy``, ``dZ`` and the float32 partial sums of ``dpre``.

    Args:
        x: ``(N, Cin, h, w)`` (only its shape, dtype, device and ``requires_grad`` are read).
    """
    N, C, h, w = x.shape
    O, hid = params.out_channels, params.hidden
    H, W = geom.H, geom.W
    item = x.element_size()
    z = N * h * w * O * (hid + 1) * item
    out = N * O * H * W * item
    tables = 4 * (H * (hid + geom.num_pos + 1) + W * (hid + 4) + 2 * (h + w))
    total = N * C * h * w * item + z + out + tables
    if needs_grad(x, params):
        n_jb = triton.cdiv(W, _DPRE_BLOCK_J)
        n_kb = triton.cdiv(hid, min(_pow2(hid), _DPRE_MAX_BLOCK_K))
        n_groups = max(1, min(h, triton.cdiv(_num_programs_target(x.device), n_jb * n_kb)))
        total += out + z + 4 * hid * (n_jb * H + n_groups * W + H)  # dy, dZ, dpre partials
    return total


def meta_upscale_triton(x: torch.Tensor, params: MLPParams, geom: Geometry) -> torch.Tensor:
    """Features-first Meta-Upscale with the contraction in fused Triton kernels.

    Args:
        x: ``(N, Cin, h, w)``, float32, float16 or bfloat16, on CUDA (or CPU under
            ``TRITON_INTERPRET=1``).
        params: MLP tensors in ``x``'s dtype.
        geom: output geometry.

    Returns:
        ``(N, Cout, H, W)`` in ``x``'s dtype.
    """
    z = features_first_z(x, params, geom.periodic_lon)
    ac, bc, maps = _first_layer(params, geom, x.device)
    return _FusedContraction.apply(z, ac, bc, maps, params.hidden, params.out_channels)


def _first_layer(
    params: MLPParams, geom: Geometry, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, _IndexMaps]:
    """The first MLP layer, separably and in float32, and the device tables of ``geom``.

    ``W1·pos(i, j) + b1 = ac[i] + bc[phase(j)]`` with ``ac = A + c`` ``(H, hid)`` and
    ``bc`` ``(Dc, hid)``, one row per distinct column offset. Autograd differentiates these
    small linear maps (``dc`` is the sum of ``dac``).
    """
    maps = _index_maps(geom, device)
    # float32 positions: the parameters are cast to float32 for these maps.
    a, bc, c = separable_first_layer(params, maps.row_pos, maps.col_pos, maps.const_pos)
    return (a + c).contiguous(), bc.contiguous(), maps
