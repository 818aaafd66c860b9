"""Memory-bounded Meta-Upscale in plain PyTorch (the ``torch`` backend).

Two evaluation orders of the same function, chosen per call by counted cost:

* **per-phase** (few distinct offsets, e.g. integer and simple rational scales): predict the
  weights of the ``Dv·Dh`` distinct ``(Δv, Δh)`` pairs only, apply them all with one LR
  convolution with ``Dv·Dh·Cout`` output channels, and gather each output pixel from its phase.
  Plain autograd; its largest tensor is ``N·Cout·Dv·Dh·h·w``.
* **features-first** (``docs/design.md`` §3, any scale): with
  ``hid(p) = ReLU(A[i] + Bc[j] + c)`` and ``Z = conv(x, W2)``, ``B = conv(x, b2)`` at LR resolution,
  ``y[n,o,p] = Σ_h hid(p)[h]·Z[n,h,o,q] + B[n,o,q]``. A custom ``autograd.Function`` does the
  contraction a chunk of LR rows (and their output rows) at a time, as one batched matmul of
  each LR pixel's ``Z`` with its output pixels' ``hid`` (:class:`_Columns`), and recomputes
  ``hid`` in backward, so neither the per-pixel weights, nor ``hid`` or the gathered ``Z`` of
  the whole output, ever exist.

Per-phase costs ``Dv·Dh·Cout`` conv channels; features-first costs ``(hidden+1)·Cout`` conv
channels plus the contraction, so per-phase is used when ``Dv·Dh ≤ hidden + 1``.

A third order, **phase-grouped** (:mod:`.phase_grouped`, many-phase scales such as 2.3 or 3.7),
predicts the pair weights as per-phase does but contracts each LR pixel only with the pairs its
own output pixels use; it replaces whichever order the rule above (or the one below) picks when
its counted cost is lower (:func:`.phase_grouped.prefer_grouped`).

A fourth, **intervals** (:mod:`.fused_cpu`, opt-in with ``METASR_CPU_KERNELS=1``), is a compiled
C++ kernel for Linear-ReLU-Linear on CPU with a C++ backward (gradients to the input and every
predictor parameter): it replaces the order chosen above when its counted cost (about
``2·k²·Cin·Cout`` multiply-adds per output pixel plus its tables; under autograd three times
that, against three times the other order's) is lower (:func:`evaluation_order` says which
order a call takes and why the intervals order was not).

Linear-ReLU-Linear is first restricted to the hidden units that switch within the call's
positions (:mod:`.relu_domain`, exact), so every order and the cost counts see ``hid'`` units.

The predictor decides what ``hid`` is (:mod:`.predictor`): ``ReLU(A[i] + Bc[j] + c)`` for
Linear-ReLU-Linear (:class:`.params.MLPParams`, the first layer split by axis), or the body's
features ``g(pos(i, j))`` for any predictor with a linear last layer
(:class:`.params.LinearHeadParams`, ``g`` run per chunk for its distinct positions and again in
backward). A predictor without a linear last layer (:class:`.params.ModuleParams`) has no
features-first order: it runs per phase while that costs at most 8 times the output, else
**weights-first** (:func:`_weights_first`).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
import torch

from ...geometry import Geometry
from .. import memory
from .fused_cpu import (
    call_reasons,
    estimate_intervals_bytes,
    intervals_cost,
    meta_upscale_intervals,
    unavailable_reason,
)
from .padding import lr_conv2d
from .params import (
    FunctionalModule,
    LinearHeadParams,
    MLPParams,
    ModuleParams,
    PredictorParams,
    features_first_z,
    needs_grad,
    separable_first_layer,
)
from .phase_grouped import (
    counted_cost,
    estimate_grouped_bytes,
    meta_upscale_grouped,
    pair_weights,
    prefer_grouped,
)
from .relu_domain import restrict_to_domain
from .tables import as_float, as_index, phases
from .weights import MAX_BLOCK_BYTES, weights_first

#: (rtol, atol) against the float64 spec, as :data:`.naive.TOLERANCES` (float32 on CUDA: with
#: cuDNN's TF32 off). On CPU, float16/bfloat16 compute in float32 and only round the inputs and
#: the output, well inside these bounds.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (5e-2, 5e-2),
}

Order = Literal["auto", "per_phase", "features_first", "weights_first", "grouped", "intervals"]


class OrderChoice(NamedTuple):
    """The evaluation order the torch backend takes for a call (:func:`evaluation_order`).

    Attributes:
        order: ``"per_phase"``, ``"features_first"``, ``"weights_first"``, ``"grouped"`` or
            ``"intervals"`` (the fused CPU kernel, :mod:`.fused_cpu`).
        intervals_reasons: why the intervals order was not taken (empty when it was): the
            opt-in unset, device, dtype, gradients, predictor, geometry, the build, or its
            counted cost.
    """

    order: str
    intervals_reasons: tuple[str, ...]


def _auto_order(
    params: PredictorParams,
    geom: Geometry,
    Dv: int,
    Dh: int,
    n: int = 1,
    x: torch.Tensor | None = None,
    grad: bool = False,
) -> str:
    """The evaluation order ``"auto"`` picks for ``Dv × Dh`` distinct offsets (batch ``n``)
    (:func:`_choose`)."""
    return _choose(params, geom, Dv, Dh, n, x, grad).order


def _choose(
    params: PredictorParams,
    geom: Geometry,
    Dv: int,
    Dh: int,
    n: int,
    x: torch.Tensor | None,
    grad: bool,
) -> OrderChoice:
    """The order ``"auto"`` takes, and why the intervals order was not taken.

    The phase-grouped order (:mod:`.phase_grouped`) is taken where its counted cost is below
    that of the order chosen otherwise (:func:`.phase_grouped.prefer_grouped`); then, given the
    call's ``x`` (compute dtype) and whether it needs gradients, the intervals order
    (:mod:`.fused_cpu`) where it can run and costs less still (:func:`_intervals_reasons`).
    Without ``x`` the intervals order is not considered (no reasons are given).
    """
    base = _base_order(params, geom, Dv, Dh)
    order = "grouped" if prefer_grouped(params, geom, Dv, Dh, n, base) else base
    if x is None:
        return OrderChoice(order, ())
    reasons = tuple(_intervals_reasons(x, params, geom, grad, order, Dv, Dh))
    return OrderChoice(order if reasons else "intervals", reasons)


def _compute_probe(x: torch.Tensor) -> torch.Tensor:
    """``x``, or a float32 stand-in of its shape where the backend computes half precision on
    CPU in float32 (:func:`meta_upscale_torch`): what the order choice must see."""
    if x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16):
        return x.new_empty(1, dtype=torch.float32).expand(x.shape)
    return x


def _intervals_reasons(
    x: torch.Tensor,
    params: PredictorParams,
    geom: Geometry,
    grad: bool,
    other: str,
    Dv: int,
    Dh: int,
) -> list[str]:
    """Why the intervals order does not replace ``other`` for this call (empty: it does)."""
    reasons = call_reasons(x, params, geom, build=False)
    if reasons:
        return reasons
    n = x.shape[0]
    mine = intervals_cost(params, geom, n, grad)  # type: ignore[arg-type]  # MLPParams: checked
    # Under autograd the other orders' products (convolutions, batched matmuls) each add a
    # backward of two more products their size: three times the forward's count.
    theirs = counted_cost(other, params, geom, Dv, Dh, n) * (3 if grad else 1)
    if mine >= theirs:
        return [f"its counted cost {mine:.3g} is not below {other}'s {theirs:.3g}"]
    why = unavailable_reason()  # the build, only for a call it would take
    return [why] if why is not None else []


def evaluation_order(x: torch.Tensor, params: PredictorParams, geom: Geometry) -> OrderChoice:
    """The order :func:`meta_upscale_torch` (``order="auto"``) takes for this call, and why the
    fused CPU intervals order was not taken.

    With ``METASR_CPU_KERNELS=1`` set and an otherwise eligible call this may build the CPU
    kernel (:func:`.fused_cpu.unavailable_reason`).

    Args:
        x: ``(N, Cin, h, w)`` or a stand-in of its shape, dtype, device and ``requires_grad``.
        params: the predictor's tensors in the compute dtype (unrestricted, as planned).
        geom: output geometry.
    """
    grad = needs_grad(x, params)
    probe = _compute_probe(x)
    if probe.dtype != x.dtype:
        params = params.to(probe.dtype)
    with torch.no_grad():
        params = _restricted(params, geom)
    Dv, Dh = len(phases(geom.row_off)[0]), len(phases(geom.col_off)[0])
    return _choose(params, geom, Dv, Dh, x.shape[0], probe, grad)


def _restricted(params: PredictorParams, geom: Geometry) -> PredictorParams:
    """Linear-ReLU-Linear with only the hidden units that switch within the call's positions
    (:mod:`.relu_domain`; the same function there, exactly); other predictors as they are.

    Every order and the cost counts then see the smaller hidden layer: features-first's LR
    convolution has ``(hid' + 1)·Cout`` channels, the pair weights cost ``hid'`` per value.
    """
    return restrict_to_domain(params, geom) if isinstance(params, MLPParams) else params


def _base_order(params: PredictorParams, geom: Geometry, Dv: int, Dh: int) -> str:
    """Per-phase, features-first or weights-first, as chosen before the phase-grouped order."""
    if isinstance(params, ModuleParams):
        # Per phase suits any predictor (one LR convolution, the predictor on Dv·Dh positions),
        # but its LR result grows with the distinct offsets: weights-first past 8× the output.
        # At 2.5×3.5 (35 phases, 4× the output, metasr bench deep-phi, 1 CPU thread, ad9d483)
        # per phase ran 13-14× (forward) and 20-25× (training step) faster than weights-first, in
        # less memory; at 2.3 (529 phases, 100×) it is the LR result that is out of bounds.
        return "per_phase" if Dv * Dh * geom.h * geom.w <= 8 * geom.H * geom.W else "weights_first"
    return "per_phase" if Dv * Dh <= params.hidden + 1 else "features_first"


def _weights_first(x: torch.Tensor, params: PredictorParams, geom: Geometry) -> torch.Tensor:
    """The weights-first order: :func:`.weights.weights_first` with this predictor.

    The per-pixel weights of a block of output rows are predicted, contracted and freed, and
    predicted again in backward (any predictor; bounded memory, see :mod:`.weights`).

    Returns:
        ``(N, Cout, H, W)`` in the geometry's computed order, as the other orders.
    """
    return weights_first(
        x,
        params.predict,
        geom,
        params.kernel_size,
        params.in_channels,
        params.out_channels,
        params=params.tensors(),
    )


def meta_upscale_torch(
    x: torch.Tensor,
    params: PredictorParams,
    geom: Geometry,
    order: Order = "auto",
) -> torch.Tensor:
    """Meta-Upscale without the output-resolution tensors.

    Args:
        x: ``(N, Cin, h, w)``.
        params: the predictor's tensors in ``x``'s dtype (any kind, :mod:`.params`).
        geom: output geometry.
        order: ``"auto"`` picks by cost (:func:`evaluation_order`); the others force one
            evaluation order (tests, benchmarks); ``"features_first"`` needs a linear last
            layer, ``"intervals"`` the fused CPU kernel's conditions (:mod:`.fused_cpu`).

    Returns:
        ``(N, Cout, H, W)`` in ``x``'s dtype.

    Raises:
        ValueError: an unknown ``order``, ``"features_first"`` for a :class:`ModuleParams`, or
            ``"intervals"`` for a call the fused CPU kernel cannot run (with the reasons).
    """
    in_dtype = x.dtype
    grad = needs_grad(x, params)
    if x.device.type == "cpu" and in_dtype in (torch.float16, torch.bfloat16):
        # CPU half-precision GEMMs are slow and accumulate poorly; compute in float32.
        x = x.float()
        params = params.to(torch.float32)
    params = _restricted(params, geom)
    row_first, row_phase = phases(geom.row_off)
    col_first, col_phase = phases(geom.col_off)
    if order == "auto":
        order = _auto_order(params, geom, len(row_first), len(col_first), x.shape[0], x, grad)
    elif order == "intervals":
        reasons = call_reasons(x, params, geom)
        if reasons:
            raise ValueError("order='intervals' cannot run this call: " + "; ".join(reasons))
    if order == "intervals":
        y = meta_upscale_intervals(x, params, geom)  # type: ignore[arg-type]  # checked
    elif order == "grouped":
        y = meta_upscale_grouped(x, params, geom)
    elif order == "per_phase":
        y = _per_phase(x, params, geom, row_first, row_phase, col_first, col_phase)
    elif order == "features_first":
        if isinstance(params, ModuleParams):
            raise ValueError("order='features_first' needs a predictor whose last layer is linear")
        y = _features_first(x, params, geom, col_first, col_phase)
    elif order == "weights_first":
        y = _weights_first(x, params, geom)
    else:
        raise ValueError(
            "order must be 'auto', 'per_phase', 'features_first', 'weights_first', 'grouped' or "
            f"'intervals', got {order!r}"
        )
    return y.to(in_dtype)


def estimate_bytes(x: torch.Tensor, params: PredictorParams, geom: Geometry) -> int:
    """Peak bytes of :func:`meta_upscale_torch` (order ``"auto"``), host and device together.

    Counts the output, the LR-resolution tensor of the chosen order (the per-phase convolution
    ``N·Dv·Dh·Cout·h·w`` with the int64 gather index ``Cout·H·W`` and its broadcast temporaries;
    or ``Z`` ``N·h·w·Cout·(hid+1)`` with the largest chunk temporaries, a predictor body's
    activations included), and under autograd the gradients of both. For the weights-first
    order it counts ``x``, the output and their gradients plus one block of predicted weights at
    its cap (:data:`.weights.MAX_BLOCK_BYTES`); for the intervals order
    :func:`.fused_cpu.estimate_intervals_bytes`.

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
    with torch.no_grad():
        params = _restricted(params, geom)  # what meta_upscale_torch runs
    O, hid = params.out_channels, params.hidden
    Dv, Dh = len(phases(geom.row_off)[0]), len(phases(geom.col_off)[0])
    total = N * C * h * w * cs if half_on_cpu else 0  # float32 copy of x
    total += out * (item if half_on_cpu else 0)  # the final cast back
    order = _auto_order(params, geom, Dv, Dh, N, _compute_probe(x), grad)
    if order == "intervals":
        return total + estimate_intervals_bytes(x, params, geom, cs, grad)  # type: ignore[arg-type]
    if order == "grouped":
        return total + estimate_grouped_bytes(x, params, geom, cs, grad)
    if order == "weights_first":
        return total + (N * C * h * w + out) * cs * (2 if grad else 1) + MAX_BLOCK_BYTES
    if order == "per_phase":
        lr = N * Dv * Dh * O * h * w * cs
        index = 8 * (2 * O * H * W + 2 * H * W)  # int64 flat index, broadcast temporaries
        total += lr + index + out * cs
        if grad:
            total += 2 * lr + out * cs  # index_select's zero-filled gradient, then conv's
    else:  # features-first
        K = hid + 1
        z = N * h * w * O * K * cs
        m = int(np.max(np.diff(np.flatnonzero(np.r_[True, np.diff(geom.row_idx) != 0, True]))))
        # hid of a chunk exists up to three times over at the peak (in backward: itself, its
        # gradient and ReLU's); a body's activations (every layer's, kept for its backward)
        # come on top of its features.
        per_pos = 3 * K if isinstance(params, MLPParams) else params.body_width + 2 * K
        NO = N * O
        # A chunk (_row_chunks): at most _CHUNK_BYTES of hidden features and products, or one
        # LR row's m output rows; G·L slots per output row, the product's b·N·O per slot.
        G, L, b = _column_layout(geom.col_idx, Dh, w)
        rows = max(m, _CHUNK_BYTES // (G * L * (hid + b * NO) * cs))
        strip = rows * (per_pos * G * L + b * NO * G * L + 2 * W * NO + G * b * NO * K)
        total += 6 * 8 * rows * W * NO  # cached int64 indices, two chunk sizes per m (<= 3)
        # Z as the contraction reads it ((h, w, N·O, K); a copy when N > 1), the bias map at
        # the output columns (h·W·N·O).
        zt = z if N > 1 else 0
        total += z + zt + N * C * h * w * cs + (H + Dh) * hid * cs + strip * cs + out * cs
        total += h * W * NO * cs
        if grad:
            # dZ and its copies back to the convolution's layout, dy, chunk, dA, the bias map's
            # gradient at the output columns
            total += 2 * z + zt + out * cs + strip * cs + H * hid * cs + h * W * NO * cs
    return total


def _per_phase(
    x: torch.Tensor,
    params: PredictorParams,
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
    weights = pair_weights(params, geom, row_first, col_first, x)  # (Dv·Dh, C·k·k·O)
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
    params: MLPParams | LinearHeadParams,
    geom: Geometry,
    col_first: np.ndarray,
    col_phase: np.ndarray,
) -> torch.Tensor:
    """LR convolution to ``Z`` then the row-by-row contraction. Shapes as the public function."""
    N, _, h, w = x.shape
    O, hid = params.out_channels, params.hidden
    K = hid + 1  # hid channels of Z plus the bias map B
    # One LR pixel's (n, o, k) values contiguous: the contraction reads Z[r] as (w, N·O, K). The
    # convolution writes channels-last, so for N = 1 this is a view.
    z = features_first_z(x, params, geom.periodic_lon).permute(2, 3, 0, 1).reshape(h, w, N * O, K)
    if isinstance(params, MLPParams):
        # First MLP layer, separably: W1·(row_pos[i] + col_pos[j] + const) + b1 = A[i] + Bc[j] + c.
        tensors = separable_first_layer(  # (H, hid), (Dc, hid), (hid,)
            params,
            as_float(geom.row_pos, x),
            as_float(geom.col_pos[col_first], x),
            as_float(geom.const_pos, x),
        )
        hidden: _StripHidden = _SeparableHidden(geom.H, len(col_first), hid)
    else:
        hidden = _BodyHidden(params.body, geom, col_first, hid, x)
        tensors = params.body.tensors
    columns = _columns(geom.col_idx, col_phase, len(col_first), w, N, O, x.device)
    chunks = _row_chunks(geom.row_idx, columns.slot_bytes(hid, x.element_size()), x.device)
    return _FeaturesFirstContraction.apply(z, columns, chunks, hidden, *tensors)


#: Bytes of one chunk's hidden features and products (:func:`_row_chunks`): several LR rows per
#: batched matmul, so that the per-operation overhead of eager PyTorch is paid per chunk.
_CHUNK_BYTES = 2 << 20


def _row_chunks(
    row_idx: np.ndarray, row_bytes: int, dev: torch.device
) -> tuple[tuple[torch.Tensor, torch.Tensor, int, int], ...]:
    """The contraction's chunks: LR rows with the same number ``m`` of output rows, ``R`` at a
    time (at most :data:`_CHUNK_BYTES` of temporaries, ``row_bytes`` per output row).

    Output rows of one LR row form a contiguous run (the row map is non-decreasing).

    Returns:
        ``(lr_rows (R,), out_rows (R·m,), R, m)`` per chunk, ``out_rows`` row-major by LR row.
    """
    starts = np.flatnonzero(np.r_[True, np.diff(row_idx) != 0])
    runs = np.diff(np.r_[starts, len(row_idx)])
    chunks = []
    for m in np.unique(runs).tolist():
        sel = np.flatnonzero(runs == m)
        R = max(1, _CHUNK_BYTES // (m * row_bytes))
        for a in range(0, len(sel), R):
            part = sel[a : a + R]
            rows = starts[part][:, None] + np.arange(m)[None, :]
            lr = as_index(row_idx[starts[part]], dev)
            chunks.append((lr, as_index(rows.reshape(-1), dev), len(part), m))
    return tuple(chunks)


class _StripHidden:
    """The hidden features ``hid(i, j)`` of a chunk of output rows, for the contraction.

    The contraction passes the tensors they depend on to :meth:`bind` (its saved inputs) with
    the column layout of its products: ``G`` groups of ``L`` *slots*, each slot standing for
    one column phase (``slot_phase``, ``(G·L,)``). Per chunk of ``R`` LR rows with ``m`` output
    rows each (``rows``, ``(R·m,)``) it asks for ``hid`` of shape ``(R, G, m, L, hid)``. Backward
    asks again (:meth:`recompute`; nothing of output size is stored) and hands back ``d hid``
    of the same shape (:meth:`accumulate`); :meth:`gradients` returns the bound tensors'
    gradients.

    Attributes:
        rows: ``H``, output rows.
        col_phases: ``Dc``, distinct column offsets.
        hidden: ``hid``.
    """

    rows: int
    col_phases: int
    hidden: int

    def bind(
        self,
        tensors: tuple[torch.Tensor, ...],
        slot_phase: torch.Tensor,
        groups: int,
        needs: tuple[bool, ...] | None = None,
    ) -> None:
        """Read ``tensors`` from now on; ``needs`` (backward only): which need a gradient."""
        raise NotImplementedError

    def unbind(self) -> None:
        """Drop the references taken by :meth:`bind`."""
        self.__dict__.update(dict.fromkeys(("_t", "_cols", "_acc", "_fn"), None))

    def strip(self, rows: torch.Tensor, R: int, m: int) -> torch.Tensor:
        """``hid`` of output rows ``rows`` at every slot: ``(R, G, m, L, hid)``."""
        raise NotImplementedError

    def recompute(self, rows: torch.Tensor, R: int, m: int) -> tuple[torch.Tensor, object]:
        """:meth:`strip` again in backward, with what :meth:`accumulate` needs."""
        raise NotImplementedError

    def accumulate(self, rows: torch.Tensor, saved: object, dhx: torch.Tensor) -> None:
        """Add the gradient ``dhx (R, G, m, L, hid)`` of the chunk to the bound tensors'."""
        raise NotImplementedError

    def gradients(self) -> tuple[torch.Tensor | None, ...]:
        """Gradients of the bound tensors (None where not needed)."""
        raise NotImplementedError


class _SeparableHidden(_StripHidden):
    """``hid(i, j) = ReLU(A[i] + Bc[phase(j)] + c)``: Linear-ReLU-Linear's first layer split by
    axis. Bound tensors: ``a (H, hid)``, ``bc (Dc, hid)``, ``c (hid,)``."""

    def __init__(self, rows: int, col_phases: int, hidden: int) -> None:
        self.rows, self.col_phases, self.hidden = rows, col_phases, hidden

    def bind(self, tensors, slot_phase, groups, needs=None) -> None:
        self._t = tensors
        self._slot_phase = slot_phase
        a, bc, c = tensors
        # The constant added once, not per chunk; (1, G, 1, L, hid) broadcasts over the rows.
        self._cols = (bc + c).index_select(0, slot_phase).view(1, groups, 1, -1, self.hidden)
        self._need = needs is not None and any(needs)
        if self._need:
            self._acc = (torch.zeros_like(a), torch.zeros_like(self._cols[0, :, 0]))

    def strip(self, rows, R, m):
        # ReLU(A[i] + Bc[j] + c) with one broadcast add and an in-place clamp (contiguous).
        a = self._t[0].index_select(0, rows).view(R, 1, m, 1, self.hidden)
        cols = self._cols
        out = a.new_empty((R, cols.shape[1], m, cols.shape[3], self.hidden))
        return torch.add(cols, a, out=out).clamp_min_(0)

    def recompute(self, rows, R, m):
        hx = self.strip(rows, R, m)
        return hx, hx  # ReLU(pre) > 0 exactly where pre > 0

    def accumulate(self, rows, saved, dhx) -> None:
        da, dcols = self._acc
        # ReLU's own backward in one pass (the gradient where ReLU(pre) > 0, else 0).
        dpre = torch.ops.aten.threshold_backward(dhx, saved, 0)  # (R, G, m, L, hid)
        # Outer axes first: on 1 CPU thread these orders of the sums ran 1.5-2× faster than
        # the others, and 10-20× faster than one call over two axes (measured).
        da.index_copy_(0, rows, dpre.sum(1).sum(2).view(-1, self.hidden))  # over (G, L)
        dcols += dpre.sum(0).sum(1)  # over (R, m)

    def gradients(self):
        if not self._need:
            return None, None, None
        da, dcols = self._acc
        dbc = torch.zeros_like(self._t[1]).index_add_(
            0, self._slot_phase, dcols.view(-1, self.hidden)
        )
        return da, dbc, da.sum(0)


class _BodyHidden(_StripHidden):
    """``hid(i, j) = g(pos(i, j))`` for a linear-headed predictor's body ``g``.

    ``g`` runs once per distinct position of the chunk, its output rows × ``Dc`` column phases,
    on positions summed in float64 and then cast (as the spec does); each slot then picks its
    phase. Backward reruns ``g`` per chunk with autograd on and passes ``d hid`` to the body's
    tensors (storing ``g``'s activations would cost ``H·W·width``).
    Bound tensors: the body's (:attr:`.params.FunctionalModule.tensors`).
    """

    def __init__(
        self,
        body: FunctionalModule,
        geom: Geometry,
        col_first: np.ndarray,
        hidden: int,
        like: torch.Tensor,
    ) -> None:
        self.rows, self.col_phases, self.hidden = geom.H, len(col_first), hidden
        self._body, self._dtype = body, like.dtype
        f64 = {"dtype": torch.float64, "device": like.device}
        self._row = torch.as_tensor(geom.row_pos, **f64)  # (H, P)
        self._col = torch.as_tensor(np.ascontiguousarray(geom.col_pos[col_first]), **f64)
        self._const = torch.as_tensor(geom.const_pos, **f64)  # (P,)

    def bind(self, tensors, slot_phase, groups, needs=None) -> None:
        self._slot_phase, self._groups = slot_phase, groups
        self._need = needs is not None and any(needs)
        if self._need:
            # Leaves of this backward; the chunks' gradients are summed into _acc.
            tensors = tuple(
                t.detach().requires_grad_(n) for t, n in zip(tensors, needs, strict=True)
            )
            self._acc = [None] * len(tensors)
        self._t = tensors
        self._fn = self._body.with_tensors(tensors)

    def _features(self, rows: torch.Tensor, R: int, m: int) -> torch.Tensor:
        """``g`` of the chunk's distinct positions, laid out by slot: ``(R, G, m, L, hid)``."""
        D = self.col_phases
        pos = self._row.index_select(0, rows)[:, None, :] + self._col[None] + self._const
        g = self._fn(pos.to(self._dtype).reshape(R * m * D, -1)).view(R * m, D, self.hidden)
        g = g.index_select(1, self._slot_phase).view(R, m, self._groups, -1, self.hidden)
        return g.transpose(1, 2).contiguous()

    def strip(self, rows, R, m):
        return self._features(rows, R, m)

    def recompute(self, rows, R, m):
        if not self._need:
            return self.strip(rows, R, m), None
        # Backward may run inside the caller's autocast (CPU runs it on the calling thread);
        # the recomputation must see the forward's dtype, as the forward did.
        with torch.enable_grad(), torch.autocast(self._row.device.type, enabled=False):
            g = self._features(rows, R, m)
        return g.detach(), g

    def accumulate(self, rows, saved, dhx) -> None:
        wanted = [i for i, t in enumerate(self._t) if t.requires_grad]
        got = torch.autograd.grad(saved, [self._t[i] for i in wanted], dhx, allow_unused=True)
        for i, g in zip(wanted, got, strict=True):
            if g is not None:
                self._acc[i] = g if self._acc[i] is None else self._acc[i].add_(g)

    def gradients(self):
        return tuple(self._acc) if self._need else (None,) * len(self._t)


class _Columns:
    """How the contraction treats the output columns: blocks of LR columns against slots.

    The LR columns are cut into ``G`` blocks of ``b``; each block has ``L`` *slots*, each slot
    a column phase (:attr:`slot_phase`) whose hidden features the chunk forms
    (:class:`_StripHidden`). For each LR row ``r`` of a chunk the product is one batched matmul
    ``Z[r] by block (G, b·N·O, hid) × hidᵀ (G, hid, m·L)``; output pixel ``(i, j)`` then picks
    the entry of its block ``t(j)``, its LR column ``l(j)`` within the block and its slot
    ``s(j)`` through one flat index (:meth:`index`), already in the output's order. Two
    layouts (:func:`_columns`):

    * *phase mode* (``Dc·w ≤ 2·W``, e.g. scales whose columns have few distinct offsets): one
      block of all ``w`` LR columns, one slot per column phase: ``(w·N·O, hid) × (hid, m·Dc)``,
      no column gather, exact work for integer scales;
    * *gather mode* (many column phases): block ``t`` holds LR columns ``t·b … t·b + b - 1`` and
      its slots are the output columns that read them (a contiguous run, the column map being
      non-decreasing), padded to ``L`` (the longest run; a padding slot repeats a column nearby
      and is never read back). ``b > 1`` spends ``b`` times the multiply-adds to make the
      matrices larger and the padding relatively smaller (:func:`_gather_blocks`).

    Backward is the same product transposed, with the output gradient scattered to its entries
    (zero elsewhere, so padding contributes nothing). ``Z`` is read as ``(h, w, N·O, K)``
    (``K = hid + 1``; the last channel, the bias map ``B``, is left to the contraction).
    Per-column products as broadcast products summed over the hidden units (before issue 27's
    third round) streamed ``m·W·N·O·(hid + 1)`` products through memory; a ``bmm`` per output
    column ran one ``addmm`` per column on CPU.
    """

    def __init__(
        self,
        col_idx: np.ndarray,
        slots: tuple[np.ndarray, int, int, int],
        place: tuple[np.ndarray, np.ndarray, np.ndarray],
        w: int,
        batch: int,
        channels: int,
        dev: torch.device,
    ) -> None:
        """``slots``: ``(slot_phase (G·L,), G, L, b)``; ``place``: ``(t, l, s)`` per output
        column (``(W,)`` each)."""
        slot_phase, self.groups, self.width, self.b = slots
        self._t, self._l, self._s = place
        self.col_idx = as_index(col_idx, dev)  # (W,) LR column of each output column
        self.slot_phase = as_index(slot_phase, dev)
        self.batch, self.channels = batch, channels  # N, O
        self.lr_width = w
        blk = np.minimum(np.arange(self.groups * self.b), w - 1)  # the last block clamped
        self.blk_cols = None if self.groups * self.b == w else as_index(blk, dev)
        # Phase mode: two output columns may share an entry (repeated target coordinates).
        self.unique = len(np.unique((self._t * self.b + self._l) * self.width + self._s)) == len(
            col_idx
        )
        self._index: dict[tuple[int, int], torch.Tensor] = {}
        self._dev = dev

    def slot_bytes(self, hid: int, item: int) -> int:
        """Bytes per output row of a chunk: its hidden features and its products."""
        return self.groups * self.width * (hid + self.b * self.batch * self.channels) * item

    def index(self, R: int, m: int) -> torch.Tensor:
        """Where output ``(n·O + o, ρ, i, j)`` of a chunk of ``R`` LR rows with ``m`` output
        rows each lies in the chunk's product ``(R, G, b, N·O, m, L)`` flattened:
        ``(N·O·R·m·W,)``, cached per ``(R, m)``."""
        if (R, m) not in self._index:
            NO = self.batch * self.channels
            G, b, L = self.groups, self.b, self.width
            no = np.arange(NO)[:, None, None, None]
            rho = np.arange(R)[None, :, None, None]
            i = np.arange(m)[None, None, :, None]
            t, l, s = (v[None, None, None] for v in (self._t, self._l, self._s))
            flat = ((((rho * G + t) * b + l) * NO + no) * m + i) * L + s
            self._index[(R, m)] = as_index(flat.reshape(-1), self._dev)
        return self._index[(R, m)]

    def _blocks(self, z: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """``Z``'s first ``hid`` channels at LR rows ``lr`` by block: ``(R·G, b·N·O, hid)``."""
        zb = z.index_select(0, lr)  # (R, w, N·O, K)
        if self.blk_cols is not None:
            zb = zb.index_select(1, self.blk_cols)
        return zb.view(-1, self.b * zb.shape[2], zb.shape[3])[..., :-1]

    def products(self, z: torch.Tensor, lr: torch.Tensor, hx: torch.Tensor) -> torch.Tensor:
        """``Σ_k hid[i, j, k]·Z[r, j'(j), :, k]`` of a chunk, no bias: ``(N·O, R, m, W)``."""
        R, G, m, L, hid = hx.shape
        # Z × hidᵀ rather than hid × Zᵀ: with these skinny shapes (m·L ≈ 12 rows, b·N·O = 3
        # columns) CPU bmm took up to 8 times longer for the latter (1 thread, measured).
        res = torch.bmm(self._blocks(z, lr), hx.view(R * G, m * L, hid).transpose(1, 2))
        out = res.view(-1).index_select(0, self.index(R, m))
        return out.view(self.batch * self.channels, R, m, -1)

    def product_grads(
        self,
        z: torch.Tensor,
        lr: torch.Tensor,
        hx: torch.Tensor,
        dyr: torch.Tensor,
        need_h: bool,
        need_z: bool,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Backward of :meth:`products` for ``dyr (N·O, R, m, W)``.

        Returns:
            ``d hid`` (if ``need_h``, shaped as ``hx``) and the gradient of ``Z``'s first
            ``hid`` channels at rows ``lr`` (if ``need_z``, ``(R, w, N·O, hid)``).
        """
        R, G, m, L, hid = hx.shape
        NO = self.batch * self.channels
        dres = dyr.new_zeros(R * G * self.b * NO * m * L)
        if self.unique:
            dres.index_copy_(0, self.index(R, m), dyr.reshape(-1))
        else:
            dres.index_add_(0, self.index(R, m), dyr.reshape(-1))
        dres = dres.view(R * G, self.b * NO, m * L)
        dzr = dhx = None
        if need_z:
            dzr = torch.bmm(dres, hx.view(R * G, m * L, hid)).view(R, G * self.b, NO, hid)
            if self.blk_cols is not None:  # the clamped last block repeats LR column w - 1
                dzr = dzr.new_zeros((R, self.lr_width, NO, hid)).index_add_(1, self.blk_cols, dzr)
        if need_h:
            dhx = torch.bmm(dres.transpose(1, 2), self._blocks(z, lr)).view(hx.shape)
        return dhx, dzr


def _block_runs(col_idx: np.ndarray, w: int, b: int) -> tuple[np.ndarray, int]:
    """First output column of each block of ``b`` LR columns (and ``W`` at the end), and the
    longest block's number of output columns ``L`` (the column map is non-decreasing)."""
    first = np.searchsorted(col_idx, np.arange(-(-w // b) + 1) * b)
    first[-1] = len(col_idx)
    return first, max(1, int(np.diff(first).max()))


#: Cost of forming one padding slot's hidden features, in units of contracting it with one LR
#: column's ``N·O`` values (:func:`_gather_blocks`).
_SLOT_COST = 4.0


def _gather_blocks(col_idx: np.ndarray, w: int) -> tuple[int, int, int]:
    """Gather mode's block size ``b``, number of blocks ``G`` and slots per block ``L``.

    ``b`` is the one of least counted cost per output row: ``G·L`` slots, each formed once
    (:data:`_SLOT_COST`) and contracted with ``b`` LR columns. ``b = 1`` wastes the most slots
    where LR columns have uneven numbers of output columns (``L`` = the largest).
    """
    best = None
    for b in (1, 2, 4, 8):
        first, L = _block_runs(col_idx, w, b)
        G = len(first) - 1
        cost = G * L * (_SLOT_COST + b)
        if best is None or cost < best[0]:
            best = (cost, b, G, L)
    return best[1:]


def _column_layout(col_idx: np.ndarray, Dc: int, w: int) -> tuple[int, int, int]:
    """``(G, L, b)`` of :class:`_Columns`: phase mode (``Dc·w ≤ 2·W``) is one block of all
    ``w`` LR columns with one slot per column phase; else :func:`_gather_blocks`."""
    if Dc * w <= 2 * len(col_idx):
        return 1, Dc, w
    b, G, L = _gather_blocks(col_idx, w)
    return G, L, b


def _columns(
    col_idx: np.ndarray, col_phase: np.ndarray, Dc: int, w: int, N: int, O: int, dev: torch.device
) -> _Columns:
    """The column treatment of the features-first contraction (:class:`_Columns`): phase mode
    where ``Dc·w ≤ 2·W``, else gather mode with blocks of :func:`_gather_blocks`."""
    W = len(col_idx)
    G, L, b = _column_layout(col_idx, Dc, w)
    if Dc * w <= 2 * W:  # phase mode
        place = (np.zeros(W, dtype=np.int64), col_idx, col_phase)
        return _Columns(col_idx, (np.arange(Dc), G, L, b), place, w, N, O, dev)
    first, _ = _block_runs(col_idx, w, b)
    slot = first[:-1, None] + np.arange(L)[None, :]  # (G, L) output column of each slot
    last = np.maximum(first[1:] - 1, first[:-1])
    slot = np.minimum(np.minimum(slot, last[:, None]), W - 1)  # padding: a column nearby
    t = col_idx // b
    place = (t, col_idx - t * b, np.arange(W) - first[t])
    return _Columns(col_idx, (col_phase[slot.reshape(-1)], G, L, b), place, w, N, O, dev)


class _FeaturesFirstContraction(torch.autograd.Function):
    """``y[n,o,i,j] = Σ_k hid(i,j)[k]·Z[i', j', n·O + o, k] + B[i', j', n·O + o]``, by LR row.

    Inputs:
        z: ``(h, w, N·O, K)``, ``K = hid + 1`` (last channel: the bias map ``B``); the last two
            dimensions contiguous.
        columns: the column treatment (:class:`_Columns`).
        chunks: ``(lr_rows, out_rows, R, m)`` (:func:`_row_chunks`): ``R`` LR rows whose ``m``
            output rows each are contracted together.
        hidden: a :class:`_StripHidden` that computes ``hid`` per chunk from ``*tensors``
            (``a (H, hid)``, ``bc (Dc, hid)``, ``c (hid,)`` for Linear-ReLU-Linear, or a
            predictor body's tensors).

    ``Z`` is never gathered along output rows, and each row of ``dZ`` is written once, without
    atomics. Temporary storage is one chunk (:data:`_CHUNK_BYTES`) times a small factor.
    Backward recomputes ``hid`` (storing it would cost ``H·W·hid`` values).

    Returns:
        ``(N, O, H, W)``.
    """

    @staticmethod
    def forward(ctx, z, columns, chunks, hidden, *tensors):
        # In the inputs' dtype: a caller's autocast would run the batched matmuls in its dtype.
        with torch.autocast(z.device.type, enabled=False):
            y = _FeaturesFirstContraction._forward(z, columns, chunks, hidden, tensors)
        ctx.save_for_backward(z, *tensors)
        ctx.columns, ctx.chunks, ctx.hidden = columns, chunks, hidden
        return y

    @staticmethod
    def _forward(z, columns, chunks, hidden, tensors):
        N, O = columns.batch, columns.channels
        H, W = hidden.rows, columns.col_idx.shape[0]
        hidden.bind(tensors, columns.slot_phase, columns.groups)
        y = memory.empty_output((N, O, H, W), z)
        # The bias map at every output column of every LR row, once: (h, N·O, W).
        bias = z[..., -1].index_select(1, columns.col_idx).transpose(1, 2).contiguous()
        for lr, rows, R, m in chunks:
            yr = columns.products(z, lr, hidden.strip(rows, R, m))  # (N·O, R, m, W)
            yr.add_(bias.index_select(0, lr).transpose(0, 1)[:, :, None])
            y.index_copy_(2, rows, yr.view(N, O, R * m, W))
        hidden.unbind()
        return y

    @staticmethod
    def backward(ctx, dy):
        z, *tensors = ctx.saved_tensors
        # Backward may run inside the caller's autocast (CPU runs it on the calling thread).
        with torch.autocast(z.device.type, enabled=False):
            return _FeaturesFirstContraction._backward(ctx, z, tensors, dy)

    @staticmethod
    def _backward(ctx, z, tensors, dy):
        columns, hidden = ctx.columns, ctx.hidden
        N, O, H, W = dy.shape
        need_z = ctx.needs_input_grad[0]
        needs = tuple(ctx.needs_input_grad[4:])
        need_mlp = any(needs)
        # LR rows that no output row reads (none for scales >= 1) keep a zero gradient.
        dz = z.new_zeros(z.shape) if need_z else None
        dbias = z.new_zeros((z.shape[0], W, N * O)) if need_z else None
        hidden.bind(tuple(tensors), columns.slot_phase, columns.groups, needs)
        for lr, rows, R, m in ctx.chunks:
            hx, saved = hidden.recompute(rows, R, m)
            dyr = dy.index_select(2, rows).view(N * O, R, m, W)
            dhx, dzr = columns.product_grads(z, lr, hx, dyr, need_mlp, need_z)
            if need_z:
                dz[..., :-1].index_copy_(0, lr, dzr)
                dbias.index_copy_(0, lr, dyr.sum(2).permute(1, 2, 0))
            if need_mlp:
                hidden.accumulate(rows, saved, dhx)
        if need_z:
            dz[..., -1].index_add_(1, columns.col_idx, dbias)
        grads = hidden.gradients()
        hidden.unbind()
        return (dz, None, None, None, *grads)
