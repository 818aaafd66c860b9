"""The phase-grouped order of the ``torch`` backend: many-phase scales at per-phase cost.

The per-phase order predicts the weights of the ``Dv·Dh`` distinct ``(Δv, Δh)`` pairs once and
applies all of them at every LR pixel (one convolution with ``Dv·Dh·Cout`` channels): exact work
at ×2 or ×4, but ``Dv·Dh / (r_v·r_h)`` times too much at 3.7 (37 × 37 phases, 100×). This order
predicts the same pair weights and contracts each LR pixel only with the pairs its own output
pixels use.

**Classes.** Output rows read LR rows in non-decreasing order, so each LR row ``i'`` owns a run
of ``m`` consecutive output rows, whose row phases form a tuple ``P(i')``. LR rows with the same
tuple form a *row class* (at a scale ``a/b`` in lowest terms, ``i' mod b`` decides it: 10 classes
at 3.7 or 2.3, 1 at ×4); columns likewise. Every LR pixel of row class ``ρ`` and column class
``σ`` produces an ``m × n`` block of output pixels with the weights ``W[P_ρ × Q_σ]``.

**Contraction**, per row class (rows in chunks of bounded size): gather the ``k`` LR rows of each
of its LR rows, take the ``k×k`` windows at the LR columns of every column class (columns
padded to the largest class, ``cnt`` columns), and run one batched matmul over the column
classes, ``(σ, cnt·N·rows, k·k·Cin) × (σ, k·k·Cin, m·n·Cout)``; the results are put in
output-row order and their columns picked out of the padded slots (two small index vectors per
chunk; until 2026-12-07 one int64 index per output value, built with numpy at every call, which
took longer than the matmuls at 3.7 on a 200² image). The multiply count is the output's
``N·H·W·Cout·Cin·k²`` (times the padding), the same per output pixel as per-phase at ×4; the
windows gathered are ``Cin·k²`` per *LR* pixel.

**Backward** (:class:`_GroupedContraction`) recomputes the windows per chunk, forms the pair
weights' gradient with one batched matmul and the windows' gradient with another, and folds the
latter back onto the padded LR map; no output-resolution tensor of ``Cin·k²`` exists. Gradients
reach the predictor through the pair weights, whatever the predictor is.

The order suits any geometry (regions, coordinate grids, periodic longitude: the padding is
:mod:`.padding`'s), but its cost grows with the number of classes and pairs; the dispatch in
:mod:`.torch_chunked` counts it against the other orders (:func:`grouped_cost`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...geometry import Geometry
from .. import memory
from .padding import pad_window
from .params import PredictorParams
from .tables import as_float, as_index, phases

__all__ = [
    "AxisClasses",
    "axis_classes",
    "counted_cost",
    "estimate_grouped_bytes",
    "grouped_cost",
    "meta_upscale_grouped",
    "prefer_grouped",
]

#: Upper bound on the gathered windows of one chunk (forward, and each term of backward).
CHUNK_BYTES = 16 << 20

#: Upper bound on the pair weights ``Dv·Dh·k²·Cin·Cout`` the order holds at once; beyond it the
#: pairs are not amortised over the image anyway (they approach one per output pixel).
MAX_PAIR_BYTES = 256 << 20

# Counted cost, in units of one multiply-add of a convolution (CPU, 2 threads, measured on this
# project's machine 2026-12-06: a batched matmul runs about twice as many multiply-adds per
# second as the LR convolution; copying one gathered or scattered element costs about as much
# as 30 multiply-adds; one chunk's few calls about 5·10⁶).
_BMM_MAC = 0.5
_MOVE = 30.0
_CHUNK = 5e6


@dataclass(frozen=True)
class AxisClasses:
    """The LR rows (or columns) of one axis grouped by the phase tuple of their output run.

    Attributes:
        lr: per class, ``(cnt,)`` LR indices (ascending).
        start: per class, ``(cnt,)`` first output index of each LR index's run.
        phase: per class, ``(m,)`` phases of the run's output indices, in order.
    """

    lr: tuple[np.ndarray, ...]
    start: tuple[np.ndarray, ...]
    phase: tuple[np.ndarray, ...]

    @property
    def count(self) -> int:
        return len(self.lr)

    @property
    def widest(self) -> int:
        """The largest run length ``m``."""
        return max(len(p) for p in self.phase)

    @property
    def most(self) -> int:
        """The largest number of LR indices in one class."""
        return max(len(x) for x in self.lr)


def axis_classes(idx: np.ndarray, phase: np.ndarray) -> AxisClasses:
    """Group the LR indices of one axis by the phases of the output indices that read them.

    Args:
        idx: ``(n_out,)`` non-decreasing LR index of every output index.
        phase: ``(n_out,)`` phase of every output index.

    Returns:
        The classes, in order of first appearance.
    """
    starts = np.flatnonzero(np.r_[True, np.diff(idx) != 0])
    ends = np.r_[starts[1:], len(idx)]
    groups: dict[tuple[int, ...], list[int]] = {}
    for n, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        groups.setdefault(tuple(phase[s:e].tolist()), []).append(n)
    lr, start, ph = [], [], []
    for key, runs in groups.items():
        runs_a = np.asarray(runs)
        lr.append(idx[starts[runs_a]].astype(np.int64))
        start.append(starts[runs_a].astype(np.int64))
        ph.append(np.asarray(key, dtype=np.int64))
    return AxisClasses(tuple(lr), tuple(start), tuple(ph))


def grouped_cost(
    n: int, rows: AxisClasses, cols: AxisClasses, in_channels: int, k: int, out_channels: int
) -> tuple[int, int]:
    """Multiplies of the contraction (padding included) and window elements it gathers.

    Args:
        n: batch size.

    Returns:
        ``(macs, gathered)`` for one forward.
    """
    F_ = in_channels * k * k
    padded_cols = cols.count * cols.most  # window columns per LR row (padding included)
    macs = gathered = 0
    for lr, ph in zip(rows.lr, rows.phase, strict=True):
        macs += n * len(lr) * padded_cols * F_ * len(ph) * cols.widest * out_channels
        gathered += n * len(lr) * padded_cols * F_
    return macs, gathered


def _predict_cost(params: PredictorParams, pairs: int) -> float:
    """Multiply-adds of predicting ``pairs`` weight vectors (a GEMM; widest layer for others)."""
    width = params.kernel_size**2 * params.in_channels * params.out_channels
    return _BMM_MAC * pairs * params.hidden * width


def _per_phase_cost(params: PredictorParams, geom: Geometry, Dv: int, Dh: int, n: int) -> float:
    width = params.kernel_size**2 * params.in_channels * params.out_channels
    return n * geom.h * geom.w * Dv * Dh * width + _predict_cost(params, Dv * Dh)


def _features_first_cost(params: PredictorParams, geom: Geometry, n: int) -> float:
    width = params.kernel_size**2 * params.in_channels * params.out_channels
    K = params.hidden + 1
    # The LR convolution to Z, then the contraction (a few passes over hid per output pixel).
    return n * geom.h * geom.w * K * width + 8 * n * geom.H * geom.W * K * params.out_channels


def _grouped_cost(params: PredictorParams, geom: Geometry, Dv: int, Dh: int, n: int) -> float:
    """This order's counted cost: its padded batched matmuls, the windows it gathers and the
    output it scatters, the pairs' prediction and the chunks' fixed cost."""
    rows = axis_classes(geom.row_idx, phases(geom.row_off)[1])
    cols = axis_classes(geom.col_idx, phases(geom.col_off)[1])
    macs, gathered = grouped_cost(
        n, rows, cols, params.in_channels, params.kernel_size, params.out_channels
    )
    chunks = rows.count + gathered * 4 // CHUNK_BYTES
    return (
        _BMM_MAC * macs
        + _MOVE * (gathered + n * geom.H * geom.W * params.out_channels)
        + _predict_cost(params, Dv * Dh)
        + _CHUNK * chunks
    )


def counted_cost(
    order: str, params: PredictorParams, geom: Geometry, Dv: int, Dh: int, n: int
) -> float:
    """Counted cost of the torch backend's ``order`` (units: one LR-convolution multiply-add).

    Per-phase ``N·h·w·Dv·Dh·k²·Cin·Cout`` and the pairs' prediction; features-first its LR
    convolution and contraction; grouped as :func:`prefer_grouped` counts it; weights-first
    (predictors without a linear last layer) is not counted (infinite).
    """
    if order == "per_phase":
        return _per_phase_cost(params, geom, Dv, Dh, n)
    if order == "features_first":
        return _features_first_cost(params, geom, n)
    if order == "grouped":
        return _grouped_cost(params, geom, Dv, Dh, n)
    return float("inf")


def prefer_grouped(
    params: PredictorParams, geom: Geometry, Dv: int, Dh: int, n: int, base: str
) -> bool:
    """Whether the phase-grouped order costs less than ``base``, the order chosen without it.

    Costs are counted (module constants, :func:`counted_cost`): per-phase
    ``N·h·w·Dv·Dh·k²·Cin·Cout``; features-first its LR convolution and contraction;
    weights-first (predictors without a linear last layer) more than this order whenever the
    pair weights fit :data:`MAX_PAIR_BYTES`, since it predicts a weight per output pixel and
    this order one per pair. This order: its padded batched matmuls, the windows it gathers and
    the output it scatters, and the pairs' prediction.
    """
    width = params.kernel_size**2 * params.in_channels * params.out_channels
    if Dv * Dh * width * 4 > MAX_PAIR_BYTES:
        return False
    if base == "per_phase" and Dv * Dh <= 1:
        return False
    return _grouped_cost(params, geom, Dv, Dh, n) < counted_cost(base, params, geom, Dv, Dh, n)


def estimate_grouped_bytes(
    x: torch.Tensor, params: PredictorParams, geom: Geometry, item: int, grad: bool
) -> int:
    """Peak bytes of :func:`meta_upscale_grouped` (output included), ``item`` bytes per value.

    Counts the output, the padded channels-last copy of ``x``, the pair weights (predicted,
    then permuted) with the predictor's activations, one chunk's windows and result with the
    result's two reorderings on its way to the output (each smaller than the windows), and
    under autograd the input's and weights' gradients, one chunk's output gradient in the
    result's layout (two copies) and one chunk's window gradient.
    """
    N, C, h, w = x.shape
    k, O = params.kernel_size, params.out_channels
    Dv = len(phases(geom.row_off)[0])
    Dh = len(phases(geom.col_off)[0])
    pairs = Dv * Dh
    out = N * O * geom.H * geom.W
    xf = N * C * (h + k - 1) * (w + k - 1)
    wts = pairs * (2 * k * k * C * O + params.hidden)
    chunk = CHUNK_BYTES // item
    total = (out + xf + wts + 4 * chunk) * item
    if grad:
        total += (out + xf + wts + 3 * chunk) * item
    return total


@dataclass(frozen=True)
class _Chunk:
    """One piece of work: some LR rows of one row class against every column class.

    Attributes:
        win_index: ``(σ·cnt·N·rows·k,)`` start of every window row (one per LR pixel and tap row
            ``ky``) in the flat padded map, in units of ``Cin`` (padding columns read pixel 0).
        rows: LR rows in the chunk.
        run: ``m``, the output rows each of them produces.
        out_rows: ``(rows·m,)`` output row of every ``(LR row, run row)``, in that order.
        weight_index: ``(σ·m·n_max·Cout,)`` row of the pair weights ``(Dv·Dh·Cout, k²·Cin)``
            for each result column (padding reads pair ``(p, 0)``; its results are dropped).
    """

    win_index: torch.Tensor
    rows: int
    run: int
    out_rows: torch.Tensor
    weight_index: torch.Tensor


@dataclass(frozen=True)
class _Plan:
    """Everything the contraction needs besides the tensors (built once per call).

    ``col_source`` ``(W,)`` is where each output column sits among a result's ``(σ, cnt, n_max)``
    column slots (flat): every output column is exactly one slot, the other slots are padding.
    With it and a chunk's ``out_rows``, results reach the output through two small index
    vectors instead of one index entry per output value.
    """

    chunks: tuple[_Chunk, ...]
    classes: int  # σ
    most: int  # cnt
    widest: int  # n_max
    shape: tuple[int, int, int, int]  # (N, Cout, H, W)
    k: int
    col_source: torch.Tensor


def _plan(
    geom: Geometry, rows: AxisClasses, cols: AxisClasses, x: torch.Tensor, O: int, k: int
) -> _Plan:
    N, C = x.shape[0], x.shape[1]
    H, W = geom.H, geom.W
    hp, wp = geom.h + k - 1, geom.w + k - 1  # the padded map
    S, cnt, nmax = cols.count, cols.most, cols.widest
    col_index = np.zeros((S, cnt), dtype=np.int64)
    col_phase = np.zeros((S, nmax), dtype=np.int64)
    col_source = np.full(W, -1, dtype=np.int64)
    for s_, (lr, st, ph) in enumerate(zip(cols.lr, cols.start, cols.phase, strict=True)):
        col_index[s_, : len(lr)] = lr
        col_phase[s_, : len(ph)] = ph
        # Output column st[u] + b is slot (s_, u, b).
        out_col = st[:, None] + np.arange(len(ph))[None, :]  # (len(lr), n)
        slot = (s_ * cnt + np.arange(len(lr)))[:, None] * nmax + np.arange(len(ph))[None, :]
        col_source[out_col.reshape(-1)] = slot.reshape(-1)
    assert (col_source >= 0).all(), "every output column is read by one LR column's run"
    Dh = int(max(ph.max() for ph in cols.phase)) + 1
    per_row = S * cnt * N * C * k * k * x.element_size()  # gathered windows of one LR row
    step = max(1, CHUNK_BYTES // max(per_row, 1))
    chunks = []
    dev = x.device
    for lr, st, ph in zip(rows.lr, rows.start, rows.phase, strict=True):
        m = len(ph)
        for a0 in range(0, len(lr), step):
            lr_c, st_c = lr[a0 : a0 + step], st[a0 : a0 + step]
            t = len(lr_c)
            # Window rows in the layout (σ, cnt, N, t, ky): pixel (n, i', j') of the padded
            # map starts at (n·hp + i' + ky)·wp + j'.
            win = (
                np.arange(N)[:, None, None] * hp + lr_c[:, None] + np.arange(k)
            ) * wp  # (N, t, k)
            win = col_index[:, :, None, None, None] + win[None, None]
            out_rows = st_c[:, None] + np.arange(m)[None, :]  # (t, m)
            # Weight rows in the layout (σ, m, n_max, O).
            pair = ph[None, :, None] * Dh + col_phase[:, None, :]  # (σ, m, n_max)
            wrow = pair[..., None] * O + np.arange(O)
            chunks.append(
                _Chunk(
                    as_index(win.reshape(-1), dev),
                    t,
                    m,
                    as_index(out_rows.reshape(-1), dev),
                    as_index(wrow.reshape(-1), dev),
                )
            )
    return _Plan(tuple(chunks), S, cnt, nmax, (N, O, H, W), k, as_index(col_source, dev))


def _window_rows(xf: torch.Tensor, k: int) -> torch.Tensor:
    """Every ``k·Cin`` run of the flat padded map ``xf (N·hp·wp, Cin)``, as an overlapping view
    ``(N·hp·wp - k + 1, k·Cin)``: row ``p`` holds pixels ``p..p+k-1``, one tap row of a window."""
    P, C = xf.shape
    return xf.as_strided((P - k + 1, k * C), (C, 1))


def _windows(xf: torch.Tensor, chunk: _Chunk, plan: _Plan) -> torch.Tensor:
    """The chunk's windows: ``(σ, cnt·N·rows, k·k·Cin)``, features ordered ``(ky, kx, c)``.

    The gather copies contiguous runs of ``k·Cin`` values (one tap row each).
    """
    a = _window_rows(xf, plan.k).index_select(0, chunk.win_index)
    return a.view(plan.classes, -1, plan.k * a.shape[1])


def _chunk_weights(wp: torch.Tensor, chunk: _Chunk, plan: _Plan) -> torch.Tensor:
    """``(σ, m·n_max·O, F)`` weights of the chunk's row class against every column class (a
    gather of whole rows of ``wp (Dv·Dh·O, F)``; the matmuls take it transposed)."""
    return wp.index_select(0, chunk.weight_index).view(plan.classes, -1, wp.shape[1])


def _to_output(y: torch.Tensor, r: torch.Tensor, chunk: _Chunk, plan: _Plan) -> None:
    """Write a chunk's result ``r (σ, cnt·N·rows, m·n_max·Cout)`` into ``y (N, Cout, H, W)``:
    to output-row order, then the columns picked out of their slots (padding slots dropped)."""
    N, O = plan.shape[:2]
    S, cnt, nmax = plan.classes, plan.most, plan.widest
    t, m = chunk.rows, chunk.run
    r = r.view(S, cnt, N, t, m, nmax, O).permute(2, 6, 3, 4, 0, 1, 5)  # (N, O, t, m, σ, cnt, n)
    r = r.reshape(N * O * t * m, S * cnt * nmax).index_select(1, plan.col_source)
    y.index_copy_(2, chunk.out_rows, r.view(N, O, t * m, -1))


def _from_output(dy: torch.Tensor, chunk: _Chunk, plan: _Plan) -> torch.Tensor:
    """The transpose of :func:`_to_output`: the chunk's part of ``dy (N, Cout, H, W)`` in the
    result's layout ``(σ, cnt·N·rows, m·n_max·Cout)``, zeros in the padding slots."""
    N, O = plan.shape[:2]
    S, cnt, nmax = plan.classes, plan.most, plan.widest
    t, m = chunk.rows, chunk.run
    g = dy.index_select(2, chunk.out_rows).reshape(N * O * t * m, -1)  # (N·O·t·m, W)
    slots = g.new_zeros(N * O * t * m, S * cnt * nmax).index_copy_(1, plan.col_source, g)
    slots = slots.view(N, O, t, m, S, cnt, nmax).permute(4, 5, 0, 2, 3, 6, 1)
    return slots.reshape(S, cnt * N * t, m * nmax * O)


class _GroupedContraction(torch.autograd.Function):
    """``y = contraction(xf, wp)``: ``xf (N·hp·wp, Cin)`` the padded LR map channels-last and
    flat, ``wp (Dv·Dh·Cout, k·k·Cin)`` pair weights (row ``(pair, o)``, features
    ``(ky, kx, c)``) → ``(N, Cout, H, W)``."""

    @staticmethod
    def forward(ctx, xf, wp, plan):
        y = memory.empty_output(plan.shape, xf)
        for chunk in plan.chunks:
            wg = _chunk_weights(wp, chunk, plan)  # (σ, M, F)
            _to_output(y, torch.bmm(_windows(xf, chunk, plan), wg.transpose(1, 2)), chunk, plan)
        ctx.save_for_backward(xf, wp)
        ctx.plan = plan
        return y

    @staticmethod
    def backward(ctx, dy):
        xf, wp = ctx.saved_tensors
        plan = ctx.plan
        C, k = xf.shape[1], plan.k
        F_ = wp.shape[1]
        need_x, need_w = ctx.needs_input_grad[:2]
        dxf = torch.zeros_like(xf) if need_x else None
        dwp = torch.zeros_like(wp) if need_w else None
        for chunk in plan.chunks:
            dr = _from_output(dy, chunk, plan)  # (σ, rows, M)
            if need_w:
                a = _windows(xf, chunk, plan)
                dwg = torch.bmm(dr.transpose(1, 2), a)  # (σ, M, F)
                # Padding slots carry a zero gradient.
                dwp.index_add_(0, chunk.weight_index, dwg.view(-1, F_))
            if need_x:
                da = torch.bmm(dr, _chunk_weights(wp, chunk, plan))  # (σ, rows, F)
                da = da.view(-1, k, C)  # (window rows, kx, C)
                for dx in range(k):  # tap kx = dx of a window row starting at p reads p + dx
                    dxf.index_add_(0, chunk.win_index + dx, da[:, dx])
        return dxf, dwp, None


def pair_weights(
    params: PredictorParams,
    geom: Geometry,
    row_first: np.ndarray,
    col_first: np.ndarray,
    like: torch.Tensor,
) -> torch.Tensor:
    """The predicted weights of every distinct ``(Δv, Δh)`` pair: ``(Dv·Dh, Cin·k·k·Cout)``.

    Positions are summed in float64 and cast, as the spec does (differentiable in ``params``).
    """
    Dv, Dh = len(row_first), len(col_first)
    pos = (
        geom.row_pos[row_first][:, None, :] + geom.col_pos[col_first][None, :, :] + geom.const_pos
    )  # (Dv, Dh, P), float64
    return params.predict(as_float(pos.reshape(Dv * Dh, -1), like))


def meta_upscale_grouped(
    x: torch.Tensor,
    params: PredictorParams,
    geom: Geometry,
    rows: AxisClasses | None = None,
    cols: AxisClasses | None = None,
) -> torch.Tensor:
    """Meta-Upscale by the phase-grouped order (module docstring).

    Args:
        x: ``(N, Cin, h, w)``.
        params: the predictor, in ``x``'s dtype (any kind: only ``predict`` is used).
        geom: output geometry (rows and columns sorted by LR index).
        rows, cols: the axes' classes, when the caller already built them.

    Returns:
        ``(N, Cout, H, W)`` in ``x``'s dtype, in the geometry's computed order.
    """
    C, k, O = params.in_channels, params.kernel_size, params.out_channels
    row_first, row_phase = phases(geom.row_off)
    col_first, col_phase = phases(geom.col_off)
    if rows is None:
        rows = axis_classes(geom.row_idx, row_phase)
    if cols is None:
        cols = axis_classes(geom.col_idx, col_phase)
    Dv, Dh = len(row_first), len(col_first)
    weights = pair_weights(params, geom, row_first, col_first, x)
    # (Dv, Dh, C, ky, kx, O) → rows (pair, o), features (ky, kx, c) as the windows are gathered.
    wp = weights.view(Dv, Dh, C, k, k, O).permute(0, 1, 5, 3, 4, 2).reshape(Dv * Dh * O, k * k * C)
    # The padded map channels-last, flat: one tap row of a window is k·C contiguous values.
    # (contiguous first: a reshape alone may return a view with other strides when N = 1)
    xf = pad_window(x, k, geom.periodic_lon).permute(0, 2, 3, 1).contiguous().view(-1, C)
    plan = _plan(geom, rows, cols, x, O, k)
    return _GroupedContraction.apply(xf, wp.contiguous(), plan)
