"""Memory-bounded Meta-Upscale in plain PyTorch (the ``torch`` backend).

Two evaluation orders of the same function, chosen per call by counted cost:

* **per-phase** (few distinct offsets, e.g. integer and simple rational scales): predict the
  weights of the ``Dv·Dh`` distinct ``(Δv, Δh)`` pairs only, apply them all with one LR
  convolution with ``Dv·Dh·Cout`` output channels, and gather each output pixel from its phase.
  Plain autograd; its largest tensor is ``N·Cout·Dv·Dh·h·w``.
* **features-first** (``docs/design.md`` §3, any scale): with
  ``hid(p) = ReLU(A[i] + Bc[j] + c)`` and ``Z = conv(x, W2)``, ``B = conv(x, b2)`` at LR resolution,
  ``y[n,o,p] = Σ_h hid(p)[h]·Z[n,h,o,q] + B[n,o,q]``. A custom ``autograd.Function`` does the
  contraction one LR row (and its strip of output rows) at a time and recomputes ``hid`` in
  backward, so neither the
  per-pixel weights, nor ``hid`` or the gathered ``Z`` of the whole output, ever exist.

Per-phase costs ``Dv·Dh·Cout`` conv channels; features-first costs ``(hidden+1)·Cout`` conv
channels plus the contraction, so per-phase is used when ``Dv·Dh ≤ hidden + 1``.

A third order, **phase-grouped** (:mod:`.phase_grouped`, many-phase scales such as 2.3 or 3.7),
predicts the pair weights as per-phase does but contracts each LR pixel only with the pairs its
own output pixels use; it replaces whichever order the rule above (or the one below) picks when
its counted cost is lower (:func:`.phase_grouped.prefer_grouped`).

Linear-ReLU-Linear is first restricted to the hidden units that switch within the call's
positions (:mod:`.relu_domain`, exact), so every order and the cost counts see ``hid'`` units.

The predictor decides what ``hid`` is (:mod:`.predictor`): ``ReLU(A[i] + Bc[j] + c)`` for
Linear-ReLU-Linear (:class:`.params.MLPParams`, the first layer split by axis), or the body's
features ``g(pos(i, j))`` for any predictor with a linear last layer
(:class:`.params.LinearHeadParams`, ``g`` run per strip for its distinct positions and again in
backward). A predictor without a linear last layer (:class:`.params.ModuleParams`) has no
features-first order: it runs per phase while that costs at most 8 times the output, else
**weights-first** (:func:`_weights_first`).
"""

from __future__ import annotations

import itertools
from typing import Literal

import numpy as np
import torch

from ...geometry import Geometry
from .. import memory
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

Order = Literal["auto", "per_phase", "features_first", "weights_first", "grouped"]


def _auto_order(params: PredictorParams, geom: Geometry, Dv: int, Dh: int, n: int = 1) -> str:
    """The evaluation order ``"auto"`` picks for ``Dv × Dh`` distinct offsets (batch ``n``).

    The phase-grouped order (:mod:`.phase_grouped`) is taken where its counted cost is below
    that of the order chosen otherwise (:func:`.phase_grouped.prefer_grouped`).
    """
    base = _base_order(params, geom, Dv, Dh)
    return "grouped" if prefer_grouped(params, geom, Dv, Dh, n, base) else base


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
        order: ``"auto"`` picks by cost; the others force one evaluation order (tests,
            benchmarks); ``"features_first"`` needs a linear last layer.

    Returns:
        ``(N, Cout, H, W)`` in ``x``'s dtype.

    Raises:
        ValueError: an unknown ``order``, or ``"features_first"`` for a :class:`ModuleParams`.
    """
    in_dtype = x.dtype
    if x.device.type == "cpu" and in_dtype in (torch.float16, torch.bfloat16):
        # CPU half-precision GEMMs are slow and accumulate poorly; compute in float32.
        x = x.float()
        params = params.to(torch.float32)
    params = _restricted(params, geom)
    row_first, row_phase = phases(geom.row_off)
    col_first, col_phase = phases(geom.col_off)
    if order == "auto":
        order = _auto_order(params, geom, len(row_first), len(col_first), x.shape[0])
    if order == "grouped":
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
            "order must be 'auto', 'per_phase', 'features_first', 'weights_first' or 'grouped', "
            f"got {order!r}"
        )
    return y.to(in_dtype)


def estimate_bytes(x: torch.Tensor, params: PredictorParams, geom: Geometry) -> int:
    """Peak bytes of :func:`meta_upscale_torch` (order ``"auto"``), host and device together.

    Counts the output, the LR-resolution tensor of the chosen order (the per-phase convolution
    ``N·Dv·Dh·Cout·h·w`` with the int64 gather index ``Cout·H·W`` and its broadcast temporaries;
    or ``Z`` ``N·h·w·Cout·(hid+1)`` with the largest strip temporaries, a predictor body's
    activations included), and under autograd the gradients of both. For the weights-first
    order it counts ``x``, the output and their gradients plus one block of predicted weights at
    its cap (:data:`.weights.MAX_BLOCK_BYTES`).

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
    order = _auto_order(params, geom, Dv, Dh, N)
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
        # hid of a strip exists three times over at the peak (its pre-activation, ReLU, concat);
        # a body's activations (every layer's, kept for its backward) come on top of [g, 1].
        per_pos = 3 * K if isinstance(params, MLPParams) else params.body_width + 2 * K
        if Dh * w <= 2 * W:  # phase mode
            strip = per_pos * m * Dh + N * m * Dh * w * O + N * m * W * O
        else:
            strip = per_pos * m * W + N * W * O * K + N * W * O * m
        total += z + N * C * h * w * cs + (H + Dh) * hid * cs + strip * cs + out * cs
        if grad:
            # dZ and its contiguous copy for the convolution's backward, dy, strip, dA
            total += 2 * z + out * cs + strip * cs + H * hid * cs
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
    K = hid + 1  # hid channels of Z plus the bias map B, contracted with a constant 1
    # Channels-last Z: one LR row of it is a contiguous (w·O, K) matrix per sample.
    z = features_first_z(x, params, geom.periodic_lon).permute(0, 2, 3, 1).reshape(N, h, w, O, K)
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
    # Output rows of one LR row form a contiguous run (the row map is non-decreasing).
    starts = np.flatnonzero(np.r_[True, np.diff(geom.row_idx) != 0])
    ends = np.r_[starts[1:], geom.H]
    cells = tuple(zip(geom.row_idx[starts].tolist(), starts.tolist(), ends.tolist(), strict=True))
    dev = x.device
    return _FeaturesFirstContraction.apply(
        z, as_index(geom.col_idx, dev), as_index(col_phase, dev), cells, hidden, *tensors
    )


def _with_one(g: torch.Tensor) -> torch.Tensor:
    """``[g, 1]`` along the last axis: ``(..., hid)`` → ``(..., hid + 1)``."""
    return torch.cat([g, g.new_ones(g.shape[:-1] + (1,))], dim=-1)


class _StripHidden:
    """The hidden features ``hid(i, j)`` of a strip of output rows, for the contraction.

    The contraction passes the tensors they depend on to :meth:`bind` (its saved inputs) and
    asks, per strip ``s..e`` of output rows, for ``[hid, 1]`` of shape ``(m, D, hid + 1)``, with
    ``D`` the column phases (phase mode) or every output column (gather mode). Backward asks
    again (:meth:`recompute`; nothing of output size is stored) and hands back ``d[hid, 1]``
    (:meth:`accumulate`); :meth:`gradients` returns the bound tensors' gradients.

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
        phase_mode: bool,
        col_phase: torch.Tensor,
        needs: tuple[bool, ...] | None = None,
    ) -> None:
        """Read ``tensors`` from now on; ``needs`` (backward only): which need a gradient."""
        raise NotImplementedError

    def unbind(self) -> None:
        """Drop the references taken by :meth:`bind`."""
        self.__dict__.update(dict.fromkeys(("_t", "_cols", "_acc", "_fn"), None))

    def strip(self, s: int, e: int) -> torch.Tensor:
        """``[hid, 1]`` of output rows ``s..e-1``: ``(m, D, hid + 1)``."""
        raise NotImplementedError

    def recompute(self, s: int, e: int) -> tuple[torch.Tensor, object]:
        """:meth:`strip` again in backward, with what :meth:`accumulate` needs."""
        raise NotImplementedError

    def accumulate(self, s: int, e: int, saved: object, dhx: torch.Tensor) -> None:
        """Add the gradient ``dhx (m, D, hid + 1)`` of the strip to the bound tensors'."""
        raise NotImplementedError

    def gradients(self) -> tuple[torch.Tensor | None, ...]:
        """Gradients of the bound tensors (None where not needed)."""
        raise NotImplementedError


class _SeparableHidden(_StripHidden):
    """``hid(i, j) = ReLU(A[i] + Bc[phase(j)] + c)``: Linear-ReLU-Linear's first layer split by
    axis. Bound tensors: ``a (H, hid)``, ``bc (Dc, hid)``, ``c (hid,)``."""

    def __init__(self, rows: int, col_phases: int, hidden: int) -> None:
        self.rows, self.col_phases, self.hidden = rows, col_phases, hidden

    def bind(self, tensors, phase_mode, col_phase, needs=None) -> None:
        self._t = tensors
        self._phase_mode, self._col_phase = phase_mode, col_phase
        a, bc, c = tensors
        cols = bc if phase_mode else bc.index_select(0, col_phase)  # (Dc or W, hid)
        self._cols = cols + c  # the constant added once, not per strip
        self._need = needs is not None and any(needs)
        if self._need:
            self._acc = (torch.zeros_like(a), torch.zeros_like(cols))

    def strip(self, s, e):
        # [ReLU(A[i] + Bc[j] + c), 1] written in place into one buffer (m, D, hid + 1).
        a = self._t[0][s:e]
        hid = self.hidden
        out = a.new_empty((e - s, self._cols.shape[0], hid + 1))
        torch.add(a[:, None, :], self._cols[None], out=out[..., :hid]).clamp_min_(0)
        out[..., hid] = 1
        return out

    def recompute(self, s, e):
        hx = self.strip(s, e)
        return hx, hx[..., : self.hidden]  # ReLU(pre) > 0 exactly where pre > 0

    def accumulate(self, s, e, saved, dhx) -> None:
        da, dbc_cols = self._acc
        # ReLU's own backward in one pass (the gradient where ReLU(pre) > 0, else 0).
        dpre = torch.ops.aten.threshold_backward(dhx[..., : self.hidden], saved, 0)
        da[s:e] = dpre.sum(1)
        dbc_cols += dpre.sum(0)

    def gradients(self):
        if not self._need:
            return None, None, None
        da, dbc_cols = self._acc
        if self._phase_mode:
            dbc = dbc_cols
        else:
            dbc = torch.zeros_like(self._t[1]).index_add_(0, self._col_phase, dbc_cols)
        return da, dbc, da.sum(0)


class _BodyHidden(_StripHidden):
    """``hid(i, j) = g(pos(i, j))`` for a linear-headed predictor's body ``g``.

    ``g`` runs once per distinct position of the strip, ``m`` rows × ``Dc`` column phases, on
    positions summed in float64 and then cast (as the spec does); gather mode then picks each
    output column's phase. Backward reruns ``g`` per strip with autograd on and passes
    ``d hid`` to the body's tensors (storing ``g``'s activations would cost ``H·W·width``).
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

    def bind(self, tensors, phase_mode, col_phase, needs=None) -> None:
        self._phase_mode, self._col_phase = phase_mode, col_phase
        self._need = needs is not None and any(needs)
        if self._need:
            # Leaves of this backward; the strips' gradients are summed into _acc.
            tensors = tuple(
                t.detach().requires_grad_(n) for t, n in zip(tensors, needs, strict=True)
            )
            self._acc = [None] * len(tensors)
        self._t = tensors
        self._fn = self._body.with_tensors(tensors)

    def _features(self, s: int, e: int) -> torch.Tensor:
        """``g`` of the strip's distinct positions, per output column in gather mode."""
        m, D = e - s, self.col_phases
        pos = self._row[s:e, None, :] + self._col[None] + self._const  # (m, Dc, P), float64
        g = self._fn(pos.to(self._dtype).reshape(m * D, -1)).view(m, D, self.hidden)
        return g if self._phase_mode else g.index_select(1, self._col_phase)

    def strip(self, s, e):
        return _with_one(self._features(s, e))

    def recompute(self, s, e):
        if not self._need:
            return self.strip(s, e), None
        # Backward may run inside the caller's autocast (CPU runs it on the calling thread);
        # the recomputation must see the forward's dtype, as the forward did.
        with torch.enable_grad(), torch.autocast(self._row.device.type, enabled=False):
            g = self._features(s, e)
        return _with_one(g.detach()), g

    def accumulate(self, s, e, saved, dhx) -> None:
        wanted = [i for i, t in enumerate(self._t) if t.requires_grad]
        got = torch.autograd.grad(
            saved, [self._t[i] for i in wanted], dhx[..., : self.hidden], allow_unused=True
        )
        for i, g in zip(wanted, got, strict=True):
            if g is not None:
                self._acc[i] = g if self._acc[i] is None else self._acc[i].add_(g)

    def gradients(self):
        return tuple(self._acc) if self._need else (None,) * len(self._t)


#: Elements of one broadcast product of :func:`_column_dots` (columns are taken in chunks).
_DOT_ELEMENTS = 1 << 22
#: Up to this many terms a sum in :func:`_column_dots` runs as multiply-add passes.
_FEW = 8


def _column_dots(
    zc: torch.Tensor,
    hx: torch.Tensor,
    dyc: torch.Tensor | None = None,
    need_h: bool = False,
    need_z: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gather mode's per-column contraction, forward or backward, in column chunks.

    Forward (``dyc`` None): ``y[n, j, o, i] = Σ_k zc[n, j, o, k]·hx[i, j, k]``. Backward:
    ``dhx[i, j, k] = Σ_{n,o} dyc[n, i, j, o]·zc[n, j, o, k]`` (if ``need_h``) and
    ``dzc[n, j, o, k] = Σ_i dyc[n, i, j, o]·hx[i, j, k]`` (if ``need_z``). Each as a broadcast
    product and a sum, at most :data:`_DOT_ELEMENTS` elements at a time.

    Args:
        zc: ``(N, W, O, K)``, ``Z`` gathered to the output columns.
        hx: ``(m, W, K)``, ``[hid, 1]`` of the strip.
        dyc: ``(N, m, W, O)``, the strip's output gradient (backward only).

    Returns:
        ``(y (N, W, O, m), dhx (m, W, K), dzc (N, W, O, K))``, None where not computed.
    """
    N, W, O, K = zc.shape
    m = hx.shape[0]
    step = max(1, _DOT_ELEMENTS // max(1, N * O * m * K))
    y = dhx = dzc = None
    if dyc is None:
        y = zc.new_empty((N, W, O, m))
    if need_h:
        dhx = hx.new_empty(hx.shape)
    if need_z:
        dzc = zc.new_empty(zc.shape)
    for a in range(0, W, step):
        b = min(W, a + step)
        if dyc is None:
            if m <= _FEW:  # per row: (N, w, O, K) * (1, w, 1, K), contiguous operands
                for i in range(m):
                    torch.sum(zc[:, a:b] * hx[i, a:b, None, :], -1, out=y[:, a:b, :, i])
            else:  # (N, w, O, 1, K) * (1, w, 1, m, K)
                y[:, a:b] = (
                    zc[:, a:b, :, None, :] * hx[:, a:b].transpose(0, 1)[None, :, None]
                ).sum(-1)
            continue
        d = dyc[:, :, a:b, :, None]  # (N, m, w, O, 1)
        if need_h:
            if N * O <= _FEW:  # one multiply-add pass per (n, o) beats a strided reduction
                acc = dhx[:, a:b]
                for t, (n, o) in enumerate(itertools.product(range(N), range(O))):
                    if t == 0:
                        torch.mul(d[n, :, :, o], zc[n, None, a:b, o], out=acc)
                    else:
                        acc.addcmul_(d[n, :, :, o], zc[n, None, a:b, o])
            else:  # (N, m, w, O, 1) * (N, 1, w, O, K), summed over n and o
                dhx[:, a:b] = (d * zc[:, None, a:b]).sum((0, 3))
        if need_z:
            if m <= _FEW:
                acc = dzc[:, a:b]
                torch.mul(d[:, 0], hx[None, 0, a:b, None, :], out=acc)
                for i in range(1, m):  # (N, w, O, 1) * (1, w, 1, K)
                    acc.addcmul_(d[:, i], hx[None, i, a:b, None, :])
            else:  # (N, m, w, O, 1) * (1, m, w, 1, K), summed over i
                dzc[:, a:b] = (d * hx[None, :, a:b, None, :]).sum(1)
    return y, dhx, dzc


class _FeaturesFirstContraction(torch.autograd.Function):
    """``y[n,o,i,j] = Σ_k hidext(i,j)[k] · Z[n, i'(i), j'(j), o, k]``, one LR row at a time.

    Inputs:
        z: ``(N, h, w, O, K)`` contiguous, ``K = hid + 1`` (last channel: the bias map).
        col_idx ``(W,)``, col_phase ``(W,)``: int64 column maps.
        cells: ``(r, s, e)`` per LR row ``r``: output rows ``s..e-1`` read it.
        hidden: a :class:`_StripHidden` that computes ``hidext = [hid, 1]`` per strip from
            ``*tensors`` (``a (H, hid)``, ``bc (Dc, hid)``, ``c (hid,)`` for Linear-ReLU-Linear,
            or a predictor body's tensors).

    Work is done per LR row ``r`` and all of its ``m = e - s`` output rows together, so ``Z``
    is never gathered along rows and ``dZ[:, r]`` is written once, without any scatter. Temporary
    storage is one strip of the output (``m`` rows) times a small factor. Columns are treated in
    one of two ways, chosen by cost:

    * *phase mode* (``Dc·w ≤ 2·W``, e.g. any scale whose columns have few distinct offsets):
      one GEMM ``(m·Dc, K) × (K, w·O)`` of the ``Dc`` distinct ``hid`` vectors of each output row
      with the LR row of ``Z``, then each output column picks its ``(phase, j')`` entry. No
      column gather; exact work for integer scales.
    * *gather mode*: gather the LR row's columns ``(W, O, K)`` once, then contract each output
      column with its ``m`` rows' ``hid`` as a broadcast product summed over ``K``
      (:func:`_column_dots`). (Batched matmuls of these tiny ``(O, K) × (K, m)`` matrices ran one
      ``addmm`` per column on CPU: at 2.37×3.13 the contraction and its backward were 68% of a
      training step's time, profiled 2026-12-07.)

    Backward recomputes ``hid`` (storing it would cost ``H·W·hid`` values).
    """

    @staticmethod
    def forward(ctx, z, col_idx, col_phase, cells, hidden, *tensors):
        N, h, w, O, K = z.shape
        H, W, Dc = hidden.rows, col_idx.shape[0], hidden.col_phases
        phase_mode = Dc * w <= 2 * W
        flat_idx = col_phase * w + col_idx  # (W,) index into the (Dc·w) axis
        hidden.bind(tensors, phase_mode, col_phase)
        y = memory.empty_output((N, O, H, W), z)
        for r, s, e in cells:
            m = e - s
            hx = hidden.strip(s, e)  # (m, Dc or W, K)
            if phase_mode:
                zr = z[:, r].view(N, w * O, K)
                t = torch.matmul(hx.view(m * Dc, K), zr.transpose(1, 2))  # (N, m·Dc, w·O)
                yc = t.view(N, m, Dc * w, O).index_select(2, flat_idx)  # (N, m, W, O)
                y[:, :, s:e, :] = yc.permute(0, 3, 1, 2)
            else:
                zc = z[:, r].index_select(1, col_idx)  # (N, W, O, K)
                yc = _column_dots(zc, hx)[0]  # (N, W, O, m)
                y[:, :, s:e, :] = yc.permute(0, 2, 3, 1)
        hidden.unbind()
        ctx.save_for_backward(z, col_idx, col_phase, *tensors)
        ctx.phase_mode = phase_mode
        ctx.cells = cells
        ctx.hidden = hidden
        return y

    @staticmethod
    def backward(ctx, dy):
        z, col_idx, col_phase, *tensors = ctx.saved_tensors
        hidden = ctx.hidden
        N, h, w, O, K = z.shape
        Dc = hidden.col_phases
        need_z = ctx.needs_input_grad[0]
        needs = tuple(ctx.needs_input_grad[5:])
        need_mlp = any(needs)
        # LR rows that no output row reads (none for scales >= 1) keep a zero gradient.
        dz = z.new_zeros(z.shape) if need_z else None
        hidden.bind(tuple(tensors), ctx.phase_mode, col_phase, needs)
        flat_idx = col_phase * w + col_idx
        for r, s, e in ctx.cells:
            m = e - s
            hx, saved = hidden.recompute(s, e)
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
                _, dhx, dzc = _column_dots(zc, hx, dyc, need_mlp, need_z)
                if need_z:  # dz[:, r] is still zero: add in place
                    dz[:, r].index_add_(1, col_idx, dzc)
            if need_mlp:
                hidden.accumulate(s, e, saved, dhx)
        grads = hidden.gradients()
        hidden.unbind()
        return (dz, None, None, None, None, *grads)
