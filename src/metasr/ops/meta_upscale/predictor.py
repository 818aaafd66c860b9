"""Which weight predictor ``phi`` this is, the checks it must pass, and its parameter object.

:func:`meta_upscale` accepts any ``nn.Module`` ``phi`` with ``in_channels``, ``out_channels``,
``kernel_size``, ``num_pos`` and ``pos_encoding`` that maps positions ``(M, num_pos)`` to
weights ``(M, k·k·Cin·Cout)`` in the official layout (``((c·k + ky)·k + kx)·Cout + o``). It is
classified once per call (:func:`classify_predictor`):

========================  ==============================================  =====================
kind                      recognised by                                   torch backend runs
========================  ==============================================  =====================
``SEPARABLE``             ``meta_block`` is exactly Linear, ReLU, Linear  per-phase, or
                          and no ``encoding`` (``Pos2Weight``'s default)  features-first with
                                                                          the first layer split
                                                                          by axis (fast path)
``LINEAR_HEAD``           ``head`` is an ``nn.Linear`` and ``body`` a     per-phase, or
                          callable (``phi(p) = head(body(p))``), or       features-first with
                          ``meta_block[-1]`` is an ``nn.Linear``          ``body`` per strip
                          (``phi(p) = meta_block(p)``)
``GENERAL``               anything else                                   per-phase, or
                                                                          weights-first
========================  ==============================================  =====================

The naive spec and im2col run every kind (they call the predictor on every position); Triton
runs ``SEPARABLE`` only.
"""

from __future__ import annotations

import enum

import torch
from torch import nn

from ...geometry import POS_ENCODINGS
from ...validation import ArgumentTypeError
from .params import (
    FunctionalModule,
    LinearHeadParams,
    MLPParams,
    ModuleParams,
    PredictorParams,
)

__all__ = [
    "PREDICTOR_ATTRIBUTES",
    "PredictorKind",
    "check_predictor",
    "classify_predictor",
    "predictor_params",
]

#: Attributes every ``phi`` must have.
PREDICTOR_ATTRIBUTES = ("in_channels", "out_channels", "kernel_size", "num_pos", "pos_encoding")


class PredictorKind(enum.Enum):
    """How the weights of a predictor can be computed (see the module docstring's table)."""

    SEPARABLE = "separable"
    LINEAR_HEAD = "linear_head"
    GENERAL = "general"


def _is_linear_relu_linear(block: object) -> bool:
    return (
        isinstance(block, nn.Sequential)
        and len(block) == 3
        and isinstance(block[0], nn.Linear)
        and isinstance(block[1], nn.ReLU)
        and isinstance(block[2], nn.Linear)
    )


def _head_and_body(phi: nn.Module) -> tuple[nn.Linear, object] | None:
    """``(head, body)`` with ``phi(p) = head(body(p))``, or None when the last layer is not
    an ``nn.Linear`` that the conventions name."""
    head = getattr(phi, "head", None)
    body = getattr(phi, "body", None)
    if isinstance(head, nn.Linear) and callable(body):
        return head, body
    block = getattr(phi, "meta_block", None)
    if isinstance(block, nn.Sequential) and len(block) >= 1 and isinstance(block[-1], nn.Linear):
        return block[-1], block[:-1]  # an empty Sequential is the identity
    return None


def classify_predictor(phi: nn.Module) -> PredictorKind:
    """The kind of ``phi``: which evaluation orders can compute its weights.

    ``SEPARABLE`` when ``phi.meta_block`` is exactly ``Linear, ReLU, Linear`` and ``phi`` has no
    ``encoding`` in front (the default :class:`metasr.Pos2Weight`); ``LINEAR_HEAD`` when ``phi``
    has an ``nn.Linear`` ``head`` and a callable ``body`` (``phi(p) = head(body(p))``) or its
    ``meta_block`` ends in an ``nn.Linear`` (``phi(p) = meta_block(p)``); ``GENERAL`` otherwise.
    Only the structure is read; :func:`check_predictor` validates.
    """
    if _is_linear_relu_linear(getattr(phi, "meta_block", None)) and (
        getattr(phi, "encoding", None) is None
    ):
        return PredictorKind.SEPARABLE
    if _head_and_body(phi) is not None:
        return PredictorKind.LINEAR_HEAD
    return PredictorKind.GENERAL


def _batch_dependent_modules(phi: nn.Module) -> list[str]:
    """Modules whose output for one position depends on the other rows of the batch, or on
    the call (the fast paths evaluate a position once for many pixels and recompute in
    backward, so both would change the result)."""
    bad = []
    for name, m in phi.named_modules():
        label = f"{name or 'phi'} ({type(m).__name__})"
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (
            m.training or not m.track_running_stats
        ):
            bad.append(f"{label} normalises with batch statistics")
        elif isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
            bad.append(f"{label} is random in training mode")
    return bad


def _probe_positions(phi: nn.Module, device: torch.device) -> torch.Tensor:
    """Two positions ``(2, num_pos)`` inside the encodings' range, in ``phi``'s dtype."""
    floats = [t for t in phi.parameters() if t.is_floating_point()]
    dtype = floats[0].dtype if floats else torch.get_default_dtype()
    row = torch.linspace(0.2, 0.8, phi.num_pos, dtype=torch.float64)
    return torch.stack([row, row.flip(0)]).to(device=device, dtype=dtype)


def check_predictor(phi: object, x: torch.Tensor, probe: bool = True) -> PredictorKind:
    """Validate ``phi`` for features ``x`` and return its kind.

    Args:
        phi: the weight predictor.
        x: ``(N, Cin, h, w)`` (its channels and device are read).
        probe: run a non-``SEPARABLE`` ``phi`` on two positions to check its output width and,
            for ``LINEAR_HEAD``, that ``phi(p) == head(body(p))`` (off while tracing for export).

    Raises:
        ValueError: ``phi`` lacks an attribute, its sizes do not match ``x`` or its own output,
            its body depends on batch statistics or dropout, or it lives on another device.
    """
    if not isinstance(phi, nn.Module):
        raise ArgumentTypeError(
            f"phi must be an nn.Module (e.g. metasr.Pos2Weight), got {type(phi).__name__}"
        )
    missing = [a for a in PREDICTOR_ATTRIBUTES if not hasattr(phi, a)]
    if missing:
        raise ValueError(
            f"phi ({type(phi).__name__}) lacks the attribute(s) {', '.join(missing)}; a weight "
            f"predictor needs {', '.join(PREDICTOR_ATTRIBUTES)} (as metasr.Pos2Weight has)"
        )
    kind = classify_predictor(phi)
    C, k, O = phi.in_channels, phi.kernel_size, phi.out_channels
    if x.shape[1] != C:
        raise ValueError(f"x has {x.shape[1]} channels but phi expects in_channels={C}")
    if k % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {k}")
    if kind is PredictorKind.SEPARABLE:
        lin1, lin2 = phi.meta_block[0], phi.meta_block[2]
        if lin2.out_features != k * k * C * O or lin1.in_features != phi.num_pos:
            raise ValueError(
                f"phi.meta_block maps {lin1.in_features} -> {lin2.out_features} values, "
                f"expected {phi.num_pos} -> {k * k * C * O} (k*k*Cin*Cout)"
            )
        if lin1.weight.device != x.device:
            raise ValueError(f"x is on {x.device} but phi's parameters are on {lin1.weight.device}")
        return kind
    want = POS_ENCODINGS.get(phi.pos_encoding)
    if want is not None and phi.num_pos != want:
        raise ValueError(
            f"phi.num_pos is {phi.num_pos} but pos_encoding={phi.pos_encoding!r} gives "
            f"{want} values per position"
        )
    for t in (*phi.parameters(), *phi.buffers()):
        if t.device != x.device:
            raise ValueError(f"x is on {x.device} but phi's parameters are on {t.device}")
        break
    bad = _batch_dependent_modules(phi)
    if bad:
        raise ValueError(
            "phi's output for one position must not depend on the rest of the batch or on the "
            f"call (Meta-Upscale evaluates a position once for many pixels): {'; '.join(bad)}; "
            "call phi.eval() (BatchNorm with track_running_stats=True, Dropout) or remove them"
        )
    width = k * k * C * O
    split = _head_and_body(phi)
    if split is not None and split[0].out_features != width:
        raise ValueError(
            f"phi's last layer ({type(phi).__name__}.head or meta_block[-1]) has "
            f"{split[0].out_features} outputs, expected k*k*Cin*Cout = {width}"
        )
    if probe:
        _probe(phi, kind, width, x.device)
    return kind


def _probe(phi: nn.Module, kind: PredictorKind, width: int, device: torch.device) -> None:
    """Run ``phi`` (and ``head(body(·))``) on two positions and check what comes back."""
    pos = _probe_positions(phi, device)
    with torch.no_grad():
        try:
            w = phi(pos)
        except Exception as exc:  # a user module: report what it raised, in one line
            raise ValueError(
                f"phi failed on positions of shape {tuple(pos.shape)} "
                f"(num_pos={phi.num_pos}): {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != (2, width):
            got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise ValueError(
                f"phi must map positions (M, {phi.num_pos}) to (M, k*k*Cin*Cout) = (M, {width}), "
                f"got {got} for M = 2"
            )
        wider = w.is_floating_point() and w.itemsize > pos.element_size()
        if not w.is_floating_point() or wider:
            # Checked here: conv2d would otherwise fail later with a raw dtype mismatch. A
            # narrower float (bfloat16 under autocast) is what autocast gives: allowed.
            raise TypeError(
                f"phi must return floating weights no wider than its positions ({pos.dtype}), "
                f"got {w.dtype}"
            )
        if kind is not PredictorKind.LINEAR_HEAD:
            return
        head, body = _head_and_body(phi)
        g = body(pos)
        if not isinstance(g, torch.Tensor) or tuple(g.shape) != (2, head.in_features):
            got = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            raise ValueError(
                f"phi's body must map (M, {phi.num_pos}) to (M, {head.in_features}) (the head's "
                f"in_features), got {got} for M = 2"
            )
        tol = 1e-3 * (1.0 + w.abs().max().item())
        if (head(g) - w).abs().max().item() > tol:
            raise ValueError(
                "phi(p) differs from head(body(p)) (or meta_block(p)): a predictor with a "
                "linear last layer must compute exactly that in forward (put any encoding in "
                "body)"
            )


def _linear_widths(phi: nn.Module, skip: nn.Module | None) -> list[int]:
    return [m.out_features for m in phi.modules() if isinstance(m, nn.Linear) and m is not skip]


def predictor_params(
    phi: nn.Module, dtype: torch.dtype, kind: PredictorKind | None = None
) -> PredictorParams:
    """The parameter object the backends receive, with ``phi``'s tensors cast to ``dtype``.

    Args:
        phi: a predictor that passed :func:`check_predictor`.
        dtype: the compute dtype (casts are differentiable, so gradients reach ``phi``).
        kind: its kind, when already known.

    Returns:
        :class:`MLPParams` (``SEPARABLE``), :class:`LinearHeadParams` (``LINEAR_HEAD``) or
        :class:`ModuleParams` (``GENERAL``).
    """
    kind = classify_predictor(phi) if kind is None else kind
    C, k, O = phi.in_channels, phi.kernel_size, phi.out_channels
    if kind is PredictorKind.SEPARABLE:
        return MLPParams.from_module(phi, dtype)
    if kind is PredictorKind.LINEAR_HEAD:
        head, body = _head_and_body(phi)
        skip = (head.weight,) if head.bias is None else (head.weight, head.bias)
        b2 = head.bias if head.bias is not None else head.weight.new_zeros(head.out_features)
        widths = _linear_widths(phi, head)
        return LinearHeadParams(
            FunctionalModule.of(phi, body, dtype, skip),
            head.weight.to(dtype),
            b2.to(dtype),
            k,
            C,
            O,
            # pre-activation and activation of every hidden layer, at least the features
            body_width=max(2 * sum(widths), head.in_features),
        )
    widths = _linear_widths(phi, None)
    return ModuleParams(
        FunctionalModule.of(phi, phi, dtype), k, C, O, hidden=max(widths, default=k * k * C * O)
    )
