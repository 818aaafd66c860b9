"""Meta-Upscale with per-pixel weights that are given, or predicted by any predictor.

Two entry points share one contraction (:func:`_contract_forward`, :func:`_contract_backward`)::

    y[n, o, i, j] = Σ_{c,ky,kx} xpad[n, c, i'+ky, j'+kx] · W[i, j, c, ky, kx, o]

* :func:`meta_upscale_weights` (public): ``W`` is a tensor the caller already holds, e.g. from
  code ported from another Meta-Upscale implementation.
* :func:`weights_first`: ``W`` comes from any predictor ``(M, P) → (M, k·k·Cin·Cout)`` (one whose
  last layer is not linear, so the features-first identity does not apply). Weights exist for
  one block of output rows at a time and are recomputed in backward.

Neither unfolds ``x`` at output resolution: for a block of output rows, the ``k×k`` windows of
the LR cells that the block reads are copied out of a strided view of the padded LR map (one per
LR cell), gathered for the block's pixels, and contracted with the block's weights by one
batched matmul; backward sums each cell's pixels before folding them back onto the LR map. The
block size comes from the free memory (:func:`_rows_per_block`), at least one output row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ...geometry import Arithmetic, CoordinateGrid, Geometry, Region, build_geometry
from ...validation import ArgumentTypeError, check_choice, check_positive_int
from .. import memory
from .padding import pad_window
from .tables import as_index

__all__ = ["LAYOUTS", "MAX_BLOCK_BYTES", "TOLERANCES", "meta_upscale_weights", "weights_first"]

#: Weight layouts :func:`meta_upscale_weights` accepts (both hold the same numbers):
#:
#: * ``"flat"``: ``(H·W, k·k·Cin·Cout)``, pixel ``i·W + j``, entry ``((c·k + ky)·k + kx)·Cout + o``:
#:   what ``Pos2Weight`` and the official Meta-SR code produce.
#: * ``"hwkkco"``: ``(H, W, k, k, Cin, Cout)``, entry ``[i, j, ky, kx, c, o]``, i.e.
#:   ``flat.view(H, W, Cin, k, k, Cout).permute(0, 1, 3, 4, 2, 5)``.
Layout = Literal["flat", "hwkkco"]
LAYOUTS: tuple[str, ...] = ("flat", "hwkkco")

#: (rtol, atol) against a float64 reference on the same (rounded) inputs, as
#: :data:`.naive.TOLERANCES` (atol relative to the reference's largest magnitude). On CPU,
#: float16/bfloat16 compute in float32 and round only the result.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (5e-2, 5e-2),
}

#: Upper bound on the temporaries of one block. A block this size already keeps the batched
#: matmul busy; larger ones only take memory from the rest of the step (the output, the weight
#: gradient, the caller's next layers). On CPU (1 thread, the ``deep-phi`` bench config,
#: forward + backward of :func:`weights_first`) 64 MiB blocks ran 0.68 s, 16 MiB 0.80 s,
#: 256 MiB 0.99 s (one loaded run, 2026-11-29).
MAX_BLOCK_BYTES = 64 << 20


# --------------------------------------------------------------------------- block planning


def _rows_per_block(bytes_per_row: int, rows: int, device: torch.device) -> int:
    """Output rows per block: a quarter of the free memory (so the output, the gradients and the
    caller keep room), at most :data:`MAX_BLOCK_BYTES`, at least one row.

    Args:
        bytes_per_row: temporaries of one output row of a block.
        rows: output rows to cover.
        device: where the temporaries live.
    """
    free = memory.available_memory_bytes(device)
    budget = MAX_BLOCK_BYTES if free is None else min(MAX_BLOCK_BYTES, free // 4)
    return max(1, min(rows, budget // max(bytes_per_row, 1)))


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for CPU float16/bfloat16 (slow, poorly accumulated GEMMs there), else ``t``'s."""
    if t.device.type == "cpu" and t.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return t.dtype


def _contraction_bytes_per_row(
    W: int, N: int, kkc: int, O: int, item: int, *, cast_weights: bool
) -> int:
    """Temporaries of one output row of the contraction (the larger of forward and backward):
    the LR cells' windows and their gradient (at most one per output pixel), the gathered
    windows and their gradient, ``dy`` and the output block, the weight-gradient block (and a
    copy of the weights where they are cast), the folded gradient, the int64 index."""
    per_pixel = 5 * N * kkc + 2 * N * O + (2 if cast_weights else 1) * kkc * O
    return W * (per_pixel * item + 16)


def _windows(xpad: torch.Tensor, k: int, layout: Layout) -> torch.Tensor:
    """Every LR cell's ``k×k`` window as a strided view of ``xpad`` (nothing copied).

    Args:
        xpad: ``(N, C, h + k - 1, w + k - 1)``.

    Returns:
        ``(h, w, N, C, k, k)`` (``"flat"``: the window in the flat layout's ``(c, ky, kx)``
        order) or ``(h, w, N, k, k, C)`` (``"hwkkco"``), so the windows of a block gather into
        the order the weights contract with.
    """
    win = xpad.unfold(2, k, 1).unfold(3, k, 1)  # (N, C, h, w, ky, kx)
    if layout == "flat":
        return win.permute(2, 3, 0, 1, 4, 5)
    return win.permute(2, 3, 0, 4, 5, 1)


# --------------------------------------------------------------------------- the contraction


def _flat_block(
    weight: torch.Tensor, s: int, e: int, W: int, kkc: int, cout: int, layout: Layout
) -> torch.Tensor:
    """Output rows ``s..e-1`` of ``weight`` as ``(m·W, k·k·Cin, Cout)`` in the window order of
    ``layout`` (a view when ``weight`` is contiguous, else a copy of the block only)."""
    block = weight[s * W : e * W] if layout == "flat" else weight[s:e]
    return block.reshape((e - s) * W, kkc, cout)


def _block_windows(
    win: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, r0: int, r1: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows of one block's pixels, gathered through the block's LR rows.

    Args:
        win: :func:`_windows`, ``(h, w, N, ...)``.
        rows: ``(m,)`` LR rows of the block's output rows, all in ``[r0, r1)``.
        cols: ``(W,)`` LR columns of the output columns.
        r0, r1: the LR rows the block reads.

    Returns:
        ``(cells, idx)``: the ``(r1-r0)·w`` LR cells' windows as a contiguous ``(cells, N,
        k·k·Cin)`` (one copy per LR cell, about ``1/(r_v·r_h)`` of the block's gathered size),
        and the ``(m·W,)`` index of each output pixel's cell in it: ``cells.index_select(0,
        idx)`` is the block's ``(m·W, N, k·k·Cin)`` windows, gathered as contiguous rows (three
        times faster on CPU than indexing the strided view per pixel).
    """
    w, N = win.shape[1], win.shape[2]
    cells = win[r0:r1].reshape((r1 - r0) * w, N, -1)
    idx = ((rows - r0)[:, None] * w + cols[None, :]).reshape(-1)
    return cells, idx


def _row_ranges(rows: np.ndarray, step: int) -> list[tuple[int, int, int, int]]:
    """Blocks of ``step`` output rows: ``(s, e, r0, r1)``, output rows ``s..e-1`` reading LR rows
    ``r0..r1-1``."""
    out = []
    for s in range(0, len(rows), step):
        e = min(s + step, len(rows))
        out.append((s, e, int(rows[s:e].min()), int(rows[s:e].max()) + 1))
    return out


def _contract_forward(
    win: torch.Tensor,
    weight: torch.Tensor,
    rows: np.ndarray,
    cols: torch.Tensor,
    cout: int,
    layout: Layout,
    y: torch.Tensor,
) -> None:
    """``y[n,o,i,j] = Σ_q win[rows[i], cols[j]][n, q] · weight[i, j, q, o]``, block by block.

    Args:
        win: :func:`_windows` of the padded LR map, in the compute dtype.
        weight: ``R×W`` pixels' weights in ``layout`` (any dtype; cast per block).
        rows: ``(R,)`` int64 (host) LR row of each output row; cols: ``(W,)`` int64 (on the
            device) LR column of each output column. Any order: the output follows the maps.
        cout: ``Cout``.
        layout: ``"flat"`` or ``"hwkkco"``.
        y: ``(N, Cout, R, W)``, written completely.
    """
    R, W, N = len(rows), cols.shape[0], win.shape[2]
    kkc = win[0, 0, 0].numel()
    per_row = _contraction_bytes_per_row(
        W, N, kkc, cout, win.element_size(), cast_weights=weight.dtype != win.dtype
    )
    rows_t = as_index(rows, win.device)
    for s, e, r0, r1 in _row_ranges(rows, _rows_per_block(per_row, R, win.device)):
        cells, idx = _block_windows(win, rows_t[s:e], cols, r0, r1)
        cols_b = cells.index_select(0, idx)  # (m·W, N, k·k·C)
        del cells
        wb = _flat_block(weight, s, e, W, kkc, cout, layout).to(win.dtype)
        yb = torch.bmm(cols_b, wb)  # (m·W, N, O)
        y[:, :, s:e, :] = yb.view(e - s, W, N, cout).permute(2, 3, 0, 1)


def _contract_backward(
    win: torch.Tensor,
    weight: torch.Tensor,
    rows: np.ndarray,
    cols: torch.Tensor,
    dy: torch.Tensor,
    cin: int,
    layout: Layout,
    dxpad: torch.Tensor | None,
    dweight: torch.Tensor | None,
) -> None:
    """Gradients of :func:`_contract_forward`, block by block (windows gathered again).

    Args:
        win, weight, rows, cols, layout: as :func:`_contract_forward`.
        dy: ``(N, Cout, R, W)``.
        cin: ``Cin``.
        dxpad: ``(N, Cin, Hp, Wp)`` in the compute dtype, the padded map's gradient; added to.
            None: not needed.
        dweight: ``weight``'s shape, contiguous (written through views of its row blocks),
            written completely. None: not needed.
    """
    R, W, N, cout = len(rows), cols.shape[0], win.shape[2], dy.shape[1]
    w = win.shape[1]
    k = win.shape[-2] if layout == "hwkkco" else win.shape[-1]
    kkc = k * k * cin
    cdt = win.dtype
    per_row = _contraction_bytes_per_row(
        W, N, kkc, cout, win.element_size(), cast_weights=weight.dtype != cdt
    )
    rows_t = as_index(rows, win.device)
    for s, e, r0, r1 in _row_ranges(rows, _rows_per_block(per_row, R, win.device)):
        m = e - s
        dyb = dy[:, :, s:e, :].permute(2, 3, 0, 1).reshape(m * W, N, cout).to(cdt)
        cells, idx = _block_windows(win, rows_t[s:e], cols, r0, r1)
        if dweight is not None:
            cols_b = cells.index_select(0, idx)
            dwb = torch.bmm(cols_b.transpose(1, 2), dyb)  # (m·W, k·k·C, O)
            _flat_block(dweight, s, e, W, kkc, cout, layout).copy_(dwb)
            del cols_b, dwb
        if dxpad is not None:
            wb = _flat_block(weight, s, e, W, kkc, cout, layout).to(cdt)
            dcols = torch.bmm(dyb, wb.transpose(1, 2))  # (m·W, N, k·k·C)
            # Sum the pixels of each LR cell first (rows of N·k·k·C values: a fast scatter),
            # then fold the cells' windows onto the padded map (the adjoint of unfold).
            dcells = torch.zeros_like(cells).index_add_(0, idx, dcols)
            del dcols
            nr = r1 - r0
            if layout == "flat":  # (nr, w, N, C·k·k) → (N, C·k·k, nr·w)
                dcells = dcells.view(nr, w, N, kkc).permute(2, 3, 0, 1)
            else:  # (nr, w, N, ky, kx, C) → (N, C, ky, kx, nr, w), fold's channel order
                dcells = dcells.view(nr, w, N, k, k, cin).permute(2, 5, 3, 4, 0, 1)
            dcells = dcells.reshape(N, kkc, nr * w)
            dxpad[:, :, r0 : r1 + k - 1] += F.fold(dcells, (nr + k - 1, w + k - 1), k)
            del dcells
        del cells


class _WeightsContraction(torch.autograd.Function):
    """The contraction with given weights (:func:`_contract_forward`) as one autograd node.

    Inputs: ``xpad (N, Cin, h + k - 1, w + k - 1)`` (:func:`.pad_window`), ``weight`` (``R×W``
    pixels in ``layout``), ``rows (R,)`` int64 NumPy, ``cols (W,)`` int64 tensor, then ``k, cin,
    cout, layout``. Returns ``(N, Cout, R, W)``. Saves only ``xpad`` and ``weight`` (and the
    index maps).
    """

    @staticmethod
    def forward(ctx, xpad, weight, rows, cols, k, cin, cout, layout):
        win = _windows(xpad.to(_compute_dtype(xpad)), k, layout)
        y = memory.empty_output((xpad.shape[0], cout, len(rows), cols.shape[0]), xpad)
        _contract_forward(win, weight, rows, cols, cout, layout, y)
        ctx.save_for_backward(xpad, weight, cols)
        ctx.shape = (rows, k, cin, layout)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        xpad, weight, cols = ctx.saved_tensors
        rows, k, cin, layout = ctx.shape
        cdt = _compute_dtype(xpad)
        win = _windows(xpad.to(cdt), k, layout)
        dxpad = torch.zeros(xpad.shape, dtype=cdt, device=xpad.device)
        dxpad = dxpad if ctx.needs_input_grad[0] else None
        dweight = memory.empty_output(weight.shape, weight) if ctx.needs_input_grad[1] else None
        _contract_backward(win, weight, rows, cols, dy, cin, layout, dxpad, dweight)
        dxpad = None if dxpad is None else dxpad.to(xpad.dtype)
        return dxpad, dweight, None, None, None, None, None, None


# --------------------------------------------------------------------------- weights-first


def _activation_width(predict: Callable[[torch.Tensor], torch.Tensor], out_width: int) -> int:
    """Values per position that ``predict`` holds while it runs (an estimate): twice the widths
    of its ``nn.Linear`` layers (pre-activation and activation of each) plus its output, or
    three times its output for a predictor without ``nn.Linear`` layers."""
    if isinstance(predict, nn.Module):
        widths = [m.out_features for m in predict.modules() if isinstance(m, nn.Linear)]
        if widths:
            return 2 * sum(widths) + out_width
    return 3 * out_width


def _predictor_dtype(predict: Callable[[torch.Tensor], torch.Tensor], default: torch.dtype):
    """The dtype of ``predict``'s first floating-point parameter, else ``default``."""
    if isinstance(predict, nn.Module):
        for p in predict.parameters():
            if p.is_floating_point():
                return p.dtype
    return default


@dataclass(frozen=True)
class _Plan:
    """What :class:`_WeightsFirst` needs besides its tensor inputs."""

    predict: Callable[[torch.Tensor], torch.Tensor]
    geom: Geometry
    k: int
    cin: int
    cout: int
    rows: np.ndarray  # (H,) int64, host
    cols: torch.Tensor  # (W,) int64
    step: int  # output rows per block
    pos_dtype: torch.dtype  # what predict takes

    def weights(self, s: int, e: int, like: torch.Tensor) -> torch.Tensor:
        """``predict`` on the positions of output rows ``s..e-1``: ``(m·W, k·k·Cin·Cout)`` in
        ``like``'s dtype (cast differentiably)."""
        g = self.geom
        pos = g.row_pos[s:e, None, :] + (g.col_pos + g.const_pos)[None]  # (m, W, P), float64
        pos = torch.as_tensor(pos.reshape(-1, g.num_pos), device=like.device).to(self.pos_dtype)
        wb = _predict_checked(self.predict, pos, self.k * self.k * self.cin * self.cout)
        return wb.to(like.dtype)


def _predict_checked(
    predict: Callable[[torch.Tensor], torch.Tensor], pos: torch.Tensor, width: int
) -> torch.Tensor:
    """``predict(pos)``, refused with a ValueError unless it is ``(M, width)``."""
    wb = predict(pos)
    if not isinstance(wb, torch.Tensor) or wb.shape != (pos.shape[0], width):
        got = tuple(wb.shape) if isinstance(wb, torch.Tensor) else type(wb).__name__
        raise ValueError(
            f"the predictor returned {got} for {pos.shape[0]} positions, expected "
            f"({pos.shape[0]}, {width}) = (M, k*k*Cin*Cout)"
        )
    return wb


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """``a + b`` where None is zero (a parameter a block does not use)."""
    return b if a is None else (a if b is None else a + b)


class _WeightsFirst(torch.autograd.Function):
    """Predict, contract and free the weights block by block; recompute them in backward.

    Inputs: ``xpad`` (:func:`.pad_window` of ``x``), the :class:`_Plan`, then the tensors
    ``predict`` differentiates through (its parameters). Forward runs without a graph, so
    nothing of a block outlives it; backward predicts each block again with autograd on,
    contracts ``dy`` into the block's weight gradient and ``xpad``'s, and pulls the weight
    gradient back into the parameters (:func:`torch.autograd.grad`). Saves only ``xpad`` and
    the parameters.
    """

    @staticmethod
    def forward(ctx, xpad, plan, *params):
        cdt = _compute_dtype(xpad)
        win = _windows(xpad.to(cdt), plan.k, "flat")
        H, W = len(plan.rows), plan.cols.shape[0]
        y = memory.empty_output((xpad.shape[0], plan.cout, H, W), xpad)
        for s in range(0, H, plan.step):
            e = min(s + plan.step, H)
            wb = plan.weights(s, e, xpad)
            _contract_forward(win, wb, plan.rows[s:e], plan.cols, plan.cout, "flat", y[:, :, s:e])
            del wb
        ctx.save_for_backward(xpad, *params)
        ctx.plan = plan
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        xpad, *all_params = ctx.saved_tensors
        plan = ctx.plan
        needs = ctx.needs_input_grad[2:]
        params = [p for p, need in zip(all_params, needs, strict=True) if need]
        cdt = _compute_dtype(xpad)
        win = _windows(xpad.to(cdt), plan.k, "flat")
        dxpad = torch.zeros(xpad.shape, dtype=cdt, device=xpad.device)
        dxpad = dxpad if ctx.needs_input_grad[0] else None
        grads = [None] * len(params)
        H = len(plan.rows)
        for s in range(0, H, plan.step):
            e = min(s + plan.step, H)
            with torch.enable_grad():
                wb = plan.weights(s, e, xpad)
            # Contiguous, as _contract_backward writes it through views of its row blocks.
            dwb = torch.empty(wb.shape, dtype=wb.dtype, device=wb.device) if params else None
            rows = plan.rows[s:e]
            _contract_backward(
                win, wb.detach(), rows, plan.cols, dy[:, :, s:e], plan.cin, "flat", dxpad, dwb
            )
            if params:
                got = torch.autograd.grad(wb, params, dwb, allow_unused=True)
                grads = [_add(a, g) for a, g in zip(grads, got, strict=True)]
            del wb, dwb
        it = iter(grads)
        param_grads = [next(it) if need else None for need in needs]
        dxpad = None if dxpad is None else dxpad.to(xpad.dtype)
        return (dxpad, None, *param_grads)


def weights_first(
    x: torch.Tensor,
    predict: Callable[[torch.Tensor], torch.Tensor],
    geom: Geometry,
    kernel_size: int,
    in_channels: int,
    out_channels: int,
    params: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Meta-Upscale with any weight predictor, one block of output rows at a time.

    For each block: positions ``(m·W, P)`` from ``geom`` (``row_pos[i] + col_pos[j] +
    const_pos``, float64 cast to the predictor's dtype), ``W = predict(pos)``, the contraction
    (:func:`_contract_forward`, shared with :func:`meta_upscale_weights`), then ``W`` is freed.
    One autograd node (:class:`_WeightsFirst`) covers the call: forward keeps no block, backward
    predicts each block's weights again (with autograd on), so the gradients reach ``x`` and
    ``params``. Peak memory is about one block's weights and ``predict``'s activations; the
    block size comes from the free memory (at least one output row).

    Equivalent plain PyTorch (the spec, :mod:`.naive`, with ``phi = predict``)::

        W = predict(torch.as_tensor(geom.positions()).to(x.dtype))      # (H·W, k·k·Cin·Cout)
        y = <the contraction of metasr.ops.meta_upscale.weights.meta_upscale_weights>(x, W)

    ``predict`` must treat positions independently (no batch statistics, e.g. no BatchNorm in
    training mode: it sees one block of positions per call) and be deterministic (no dropout in
    training mode: backward calls it again). Double backward is not supported.

    Args:
        x: ``(N, Cin, h, w)`` features in the compute dtype.
        predict: ``(M, P)`` positions → ``(M, k·k·Cin·Cout)`` weights in the official layout
            (``((c·k + ky)·k + kx)·Cout + o``), ``P = geom.num_pos``. Positions come in the
            dtype of its first floating-point parameter (an ``nn.Module``; else ``x``'s), so a
            float32 predictor runs in float32 beside bfloat16 features; its output is cast to
            ``x``'s dtype (differentiably) when it differs.
        geom: the output geometry (:func:`metasr.geometry.build_geometry`); its
            ``periodic_lon`` chooses the padding.
        kernel_size, in_channels, out_channels: ``k`` (odd), ``Cin`` (= ``x.shape[1]``),
            ``Cout``.
        params: the tensors ``predict`` computes with that should get gradients; default
            ``predict.parameters()`` for an ``nn.Module``, none for another callable (a tensor
            it uses but that is not listed gets no gradient). Those without ``requires_grad``
            are skipped.

    Returns:
        ``(N, Cout, H, W)`` in the geometry's computed row and column order, as every backend
        returns it (:func:`.tables.restore_order` gives the request's order).

    Raises:
        ValueError: if ``predict`` returns another shape than ``(M, k·k·Cin·Cout)``.
    """
    N, k, C, O = x.shape[0], kernel_size, in_channels, out_channels
    if params is None:
        params = tuple(predict.parameters()) if isinstance(predict, nn.Module) else ()
    params = tuple(p for p in params if p.requires_grad)
    # Temporaries of one output row: predict's activations (and their gradients when
    # backward will run) plus the contraction's.
    item = x.element_size()
    act = _activation_width(predict, k * k * C * O)
    if torch.is_grad_enabled() and (x.requires_grad or params):
        act *= 2
    per_row = geom.W * act * item + _contraction_bytes_per_row(
        geom.W, N, k * k * C, O, item, cast_weights=False
    )
    plan = _Plan(
        predict,
        geom,
        k,
        C,
        O,
        np.asarray(geom.row_idx, dtype=np.int64),
        as_index(geom.col_idx, x.device),
        _rows_per_block(per_row, geom.H, x.device),
        _predictor_dtype(predict, x.dtype),
    )
    return _WeightsFirst.apply(pad_window(x, k, geom.periodic_lon), plan, *params)


# --------------------------------------------------------------------------- public function


def _optional_positive_int(name: str, value: object) -> int | None:
    if value is None:
        return None
    return check_positive_int(name, value)


def _flat_kernel_and_cout(
    width: int, cin: int, kernel_size: int | None, out_channels: int | None
) -> tuple[int, int]:
    """``(k, Cout)`` of a flat weight of ``width = k·k·Cin·Cout`` values per pixel."""
    if kernel_size is None and out_channels is None:
        raise ValueError(
            f"layout='flat': a width of {width} = k*k*Cin*Cout (Cin={cin}) does not tell k from "
            "Cout (k=1 always fits); give out_channels= or kernel_size="
        )
    if width % cin:
        raise ValueError(
            f"layout='flat': weight width {width} is not a multiple of Cin={cin} "
            "(expected k*k*Cin*Cout)"
        )
    if out_channels is not None:
        kk, rem = divmod(width, cin * out_channels)
        k = math.isqrt(kk)
        if rem or k * k != kk:
            raise ValueError(
                f"layout='flat': weight width {width} is not k*k*Cin*Cout for any integer k with "
                f"Cin={cin}, Cout={out_channels} ({width}/{cin * out_channels} = "
                f"{width / (cin * out_channels):g})"
            )
        if kernel_size is not None and kernel_size != k:
            raise ValueError(
                f"layout='flat': weight width {width} = {k}*{k}*{cin}*{out_channels} means "
                f"kernel_size={k}, but kernel_size={kernel_size} was given"
            )
        return k, out_channels
    cout, rem = divmod(width, cin * kernel_size * kernel_size)
    if rem or cout < 1:
        raise ValueError(
            f"layout='flat': weight width {width} is not k*k*Cin*Cout for k={kernel_size}, "
            f"Cin={cin} and any integer Cout"
        )
    return kernel_size, cout


def meta_upscale_weights(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: float | tuple[float, float] | None = None,
    size: tuple[int, int] | None = None,
    *,
    layout: Layout = "flat",
    out_channels: int | None = None,
    kernel_size: int | None = None,
    periodic_lon: bool = False,
    coords: CoordinateGrid | None = None,
    region: Region | None = None,
    arithmetic: Arithmetic = "exact",
) -> torch.Tensor:
    """Meta-Upscale ``x`` with a given weight for every output pixel.

    The contraction of Meta-SR's Meta-Upscale, for weights predicted elsewhere; the geometry
    (``i'``, ``j'`` of each output pixel) is :func:`metasr.meta_upscale`'s, built by the same
    :func:`metasr.geometry.build_geometry` call. Equivalent plain PyTorch::

        Wt = weight.view(H, W, Cin, k, k, Cout)                   # layout="flat"
        Wt = weight.permute(0, 1, 4, 2, 3, 5)                     # layout="hwkkco"
        xpad = F.pad(x, [k // 2] * 4)   # periodic_lon: columns wrapped, rows zero-padded
        y[:, :, i, j] = einsum("ncyx,cyxo->no", xpad[:, :, i':i'+k, j':j'+k], Wt[i, j])

    With ``weight = phi(positions)`` of a :class:`metasr.Pos2Weight` ``phi`` (positions of the
    request's pixels, row-major) the result is ``metasr.meta_upscale(x, phi, ...)``.

    Memory: the output, and in backward the weight's gradient (as large as ``weight``), plus one
    block of output rows at a time: its pixels' ``k×k·Cin`` windows (gathered through its LR
    cells; ``x`` is never unfolded at output resolution) and the block's products. Autograd
    keeps only ``x`` (padded) and ``weight``. The block size comes from the free memory (a
    quarter of it, at most :data:`MAX_BLOCK_BYTES`, at least one row).

    Args:
        x: ``(N, Cin, h, w)`` floating-point features.
        weight: the per-pixel weights, same dtype and device as ``x``, in ``layout``:

            * ``"flat"`` (default): ``(H·W, k·k·Cin·Cout)``, pixel ``i·W + j``, entry
              ``((c·k + ky)·k + kx)·Cout + o``, the layout of ``Pos2Weight`` and of the official
              Meta-SR code. ``k`` and ``Cout`` cannot both be read off the width (``k = 1``
              always fits): give ``out_channels=`` (``k`` is then inferred) or ``kernel_size=``.
            * ``"hwkkco"``: ``(H, W, k, k, Cin, Cout)``, entry ``[i, j, ky, kx, c, o]``, the
              same numbers as ``flat.view(H, W, Cin, k, k, Cout).permute(0, 1, 3, 4, 2, 5)``;
              ``k`` and ``Cout`` are read off the shape.

            ``(H, W)`` is the output size (``region.out_shape`` with a region), in the
            request's row and column order. NaN is not looked for (a full pass over ``weight``);
            it propagates to the pixels it belongs to.
        scale: a number or ``(r_v, r_h)``, each finite and ≥ 1.
        size: ``(H, W)`` instead of ``scale``.
        layout: ``"flat"`` or ``"hwkkco"`` (:data:`LAYOUTS`).
        out_channels: ``Cout``; checked against the weight's shape when given.
        kernel_size: ``k`` (odd); checked against the weight's shape when given.
        periodic_lon: wrap the LR window along width (global longitude grids); rows keep zero
            padding.
        coords: place the output by latitude/longitude instead of ``scale``/``size``
            (:class:`metasr.geometry.CoordinateGrid`).
        region: compute only this part of the whole image's output (tiled inference), as
            :func:`metasr.meta_upscale`; ``weight`` then covers ``region.out_shape``.
        arithmetic: ``"exact"`` geometry (default) or the official code's float32 grid.

    Returns:
        ``(N, Cout, H, W)`` in ``x``'s dtype. Under ``torch.autocast`` nothing is cast: pass
        ``x`` and ``weight`` in the dtype to compute in.

    Raises:
        ValueError: for any invalid input (shapes, dtypes, devices, a width that is not
            ``k·k·Cin·Cout`` for an odd integer ``k``, the request).
    """
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.numel() == 0:
        raise ValueError(f"x must be a non-empty 4-D (N, C, h, w) tensor, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    if not isinstance(weight, torch.Tensor):
        raise ArgumentTypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dtype != x.dtype:
        raise ValueError(f"weight is {weight.dtype} but x is {x.dtype}; give both in one dtype")
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device} but x is on {x.device}")
    check_choice("layout", layout, LAYOUTS)
    out_channels = _optional_positive_int("out_channels", out_channels)
    kernel_size = _optional_positive_int("kernel_size", kernel_size)
    if kernel_size is not None and kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    # The position encoding is not used (the weights are given); "asymmetric" accepts every
    # request, where "official" would refuse r_v != r_h.
    geom = build_geometry(
        x.shape[2],
        x.shape[3],
        scale=scale,
        size=size,
        pos_encoding="asymmetric",
        arithmetic=arithmetic,
        region=region,
        periodic_lon=periodic_lon,
        coords=coords,
    )
    H, W, C = geom.H, geom.W, x.shape[1]
    if layout == "flat":
        if weight.dim() != 2 or weight.shape[0] != H * W:
            raise ValueError(
                f"layout='flat': weight must be (H*W, k*k*Cin*Cout) = ({H * W}, ...) for the "
                f"{H}x{W} output, got shape {tuple(weight.shape)}"
            )
        k, O = _flat_kernel_and_cout(weight.shape[1], C, kernel_size, out_channels)
    else:
        if weight.dim() != 6 or tuple(weight.shape[:2]) != (H, W) or weight.shape[4] != C:
            raise ValueError(
                f"layout='hwkkco': weight must be (H, W, k, k, Cin, Cout) = ({H}, {W}, k, k, "
                f"{C}, Cout) for the {H}x{W} output of a {C}-channel x, got shape "
                f"{tuple(weight.shape)}"
            )
        k, O = weight.shape[2], weight.shape[5]
        if weight.shape[3] != k:
            raise ValueError(
                f"layout='hwkkco': the window must be square, got {k}x{weight.shape[3]}"
            )
        for name, given, actual in (
            ("kernel_size", kernel_size, k),
            ("out_channels", out_channels, O),
        ):
            if given is not None and given != actual:
                raise ValueError(f"{name}={given} was given but weight's shape has {actual}")
    if k % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got k={k} from weight's shape")
    if weight.numel() == 0:
        raise ValueError(f"weight must not be empty, got shape {tuple(weight.shape)}")
    # Output pixels in the request's order: a coordinate geometry computes sorted rows/columns
    # and carries the permutation back (row i of the request is computed row row_order[i]).
    row_idx = geom.row_idx if geom.row_order is None else geom.row_idx[geom.row_order]
    col_idx = geom.col_idx if geom.col_order is None else geom.col_idx[geom.col_order]
    with torch.autocast(device_type=x.device.type, enabled=False):
        xpad = pad_window(x, k, geom.periodic_lon)
        return _WeightsContraction.apply(
            xpad,
            weight,
            np.asarray(row_idx, dtype=np.int64),
            as_index(np.asarray(col_idx), x.device),
            k,
            C,
            O,
            layout,
        )
