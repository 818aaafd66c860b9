"""The weight predictor's parameters and the features-first layout built from them.

Three kinds of predictor ``phi`` (classified in :mod:`.predictor`), one parameter object each,
all in the compute dtype and all with ``predict(pos)`` (positions ``(M, P)`` → weights
``(M, k·k·Cin·Cout)``), which is all the spec, im2col and the per-phase order need:

* :class:`MLPParams`: ``Pos2Weight``'s default ``Linear(P, hid) → ReLU → Linear(hid, k²·Cin·Cout)``;
* :class:`LinearHeadParams`: any body ``g`` then a linear head, ``W(p) = A·g(p) + b``;
* :class:`ModuleParams`: anything else, run as a whole.

The features-first backends (``torch_chunked``, ``triton_fused``; ``docs/design.md`` §3) never run a
linear-headed predictor per output pixel; they use two rearrangements of it, defined once here:

* the second layer as one LR convolution (:func:`features_first_weight`, :func:`features_first_z`):
  ``Z = conv(x, [W2|b2])`` has ``Cout·(hid+1)`` channels, so
  ``y = Σ_k ReLU(pre)[k]·Z[..., k] + Z[..., hid]``;
* the first layer separably (:func:`separable_first_layer`, ``MLPParams`` only): positions are
  ``row_pos[i] + col_pos[j] + const_pos``, so ``pre(i, j) = A[i] + Bc[phase(j)] + c``.

``features_first_weight``/``features_first_z`` read only ``w2``, ``b2`` and the sizes, which
:class:`MLPParams` and :class:`LinearHeadParams` both have, so one ``Z`` serves both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .padding import lr_conv2d

__all__ = [
    "FunctionalModule",
    "LinearHeadParams",
    "MLPParams",
    "ModuleParams",
    "PredictorParams",
    "features_first_weight",
    "features_first_z",
    "needs_grad",
    "separable_first_layer",
]


@dataclass(frozen=True)
class MLPParams:
    """The four tensors of ``Pos2Weight.meta_block``, already in the compute dtype.

    Shapes: ``w1 (hid, P)``, ``b1 (hid,)``, ``w2 (k·k·Cin·Cout, hid)``, ``b2 (k·k·Cin·Cout,)``.
    The rows of ``w2`` are ordered ``(Cin, k, k, Cout)``, as ``Pos2Weight`` lays its output out.
    """

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    kernel_size: int
    in_channels: int
    out_channels: int

    @property
    def hidden(self) -> int:
        return self.w1.shape[0]

    @classmethod
    def from_module(cls, phi: torch.nn.Module, dtype: torch.dtype) -> MLPParams:
        """Take ``phi.meta_block``'s parameters, cast (differentiably) to ``dtype``."""
        lin1, lin2 = phi.meta_block[0], phi.meta_block[2]
        return cls(
            lin1.weight.to(dtype),
            lin1.bias.to(dtype),
            lin2.weight.to(dtype),
            lin2.bias.to(dtype),
            kernel_size=phi.kernel_size,
            in_channels=phi.in_channels,
            out_channels=phi.out_channels,
        )

    def to(self, dtype: torch.dtype) -> MLPParams:
        """The same parameters cast (differentiably) to ``dtype``."""
        return MLPParams(
            self.w1.to(dtype),
            self.b1.to(dtype),
            self.w2.to(dtype),
            self.b2.to(dtype),
            self.kernel_size,
            self.in_channels,
            self.out_channels,
        )

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Every tensor the weights depend on (what gradients flow to)."""
        return (self.w1, self.b1, self.w2, self.b2)

    def features(self, pos: torch.Tensor) -> torch.Tensor:
        """The hidden layer ``ReLU(W1·pos + b1)``: positions ``(M, P)`` → ``(M, hid)``."""
        return F.relu(F.linear(pos, self.w1, self.b1))

    def predict(self, pos: torch.Tensor) -> torch.Tensor:
        """Run the MLP on positions ``(M, P)`` → weights ``(M, k·k·Cin·Cout)``."""
        return F.linear(F.relu(F.linear(pos, self.w1, self.b1)), self.w2, self.b2)


class _Bound(nn.Module):
    """``fn`` (a module, or a method of ``owner``) as the forward of a module that holds
    ``owner``, so that :func:`torch.func.functional_call` can swap ``owner``'s tensors."""

    def __init__(self, owner: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.owner = owner
        # Not registered as a submodule (it may be `owner` itself or one of its submodules,
        # whose tensors are swapped through `owner`).
        object.__setattr__(self, "fn", fn)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return self.fn(pos)


@dataclass(frozen=True)
class FunctionalModule:
    """A callable of ``owner`` (``owner`` itself, a submodule or a method) run with given tensors.

    ``names`` are ``owner``'s parameter and buffer names (``owner.named_parameters()`` style);
    ``tensors`` hold their values in the compute dtype (differentiable casts of the
    parameters), and :meth:`__call__` runs ``fn`` with them in place of ``owner``'s own (through
    :func:`torch.func.functional_call`), so gradients reach the originals and a strip-wise
    backward can pass its own leaves (:meth:`with_tensors`).
    """

    owner: nn.Module
    fn: Callable[[torch.Tensor], torch.Tensor]
    names: tuple[str, ...]
    tensors: tuple[torch.Tensor, ...]

    @classmethod
    def of(
        cls,
        owner: nn.Module,
        fn: Callable[[torch.Tensor], torch.Tensor],
        dtype: torch.dtype,
        skip: tuple[torch.Tensor, ...] = (),
    ) -> FunctionalModule:
        """``fn`` with ``owner``'s floating tensors cast (differentiably) to ``dtype``.

        Args:
            skip: parameters ``fn`` does not read (a linear head's), left out so they get no
                (zero) gradient from this call.
        """
        skip_ids = {id(t) for t in skip}
        names, tensors = [], []
        for name, t in (*owner.named_parameters(), *owner.named_buffers()):
            if id(t) in skip_ids:
                continue
            names.append(name)
            tensors.append(t.to(dtype) if t.is_floating_point() else t)
        return cls(owner, fn, tuple(names), tuple(tensors))

    def with_tensors(self, tensors: tuple[torch.Tensor, ...]) -> FunctionalModule:
        """The same callable reading ``tensors`` (same order as :attr:`tensors`)."""
        return FunctionalModule(self.owner, self.fn, self.names, tuple(tensors))

    def to(self, dtype: torch.dtype) -> FunctionalModule:
        """Floating tensors cast (differentiably) to ``dtype``."""
        return self.with_tensors(
            tuple(t.to(dtype) if t.is_floating_point() else t for t in self.tensors)
        )

    def __call__(self, pos: torch.Tensor) -> torch.Tensor:
        """``fn(pos)`` with :attr:`tensors` in place of ``owner``'s."""
        mapping = {f"owner.{n}": t for n, t in zip(self.names, self.tensors, strict=True)}
        return torch.func.functional_call(_Bound(self.owner, self.fn), mapping, (pos,))


@dataclass(frozen=True)
class LinearHeadParams:
    """A predictor whose last layer is linear: ``W(p) = w2·g(p) + b2``, any body ``g``.

    Shapes: ``body: (M, P) → (M, hid)``, ``w2 (k·k·Cin·Cout, hid)``, ``b2 (k·k·Cin·Cout,)``, rows
    ordered ``(Cin, k, k, Cout)`` as :class:`MLPParams`'s. ``body_width`` is the sum of the
    widths of the body's layers per position (its activation memory, for the estimates).
    """

    body: FunctionalModule
    w2: torch.Tensor
    b2: torch.Tensor
    kernel_size: int
    in_channels: int
    out_channels: int
    body_width: int

    @property
    def hidden(self) -> int:
        return self.w2.shape[1]

    def to(self, dtype: torch.dtype) -> LinearHeadParams:
        """The same parameters cast (differentiably) to ``dtype``."""
        return LinearHeadParams(
            self.body.to(dtype),
            self.w2.to(dtype),
            self.b2.to(dtype),
            self.kernel_size,
            self.in_channels,
            self.out_channels,
            self.body_width,
        )

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Every tensor the weights depend on (what gradients flow to)."""
        return (*self.body.tensors, self.w2, self.b2)

    def features(self, pos: torch.Tensor) -> torch.Tensor:
        """The body's features ``g(pos)``: positions ``(M, P)`` → ``(M, hid)``."""
        return self.body(pos)

    def predict(self, pos: torch.Tensor) -> torch.Tensor:
        """Positions ``(M, P)`` → weights ``(M, k·k·Cin·Cout)``."""
        return F.linear(self.body(pos), self.w2, self.b2)


@dataclass(frozen=True)
class ModuleParams:
    """Any other predictor, run as a whole: ``predict(pos) = phi(pos)``.

    ``hidden`` is the widest layer's width per position (for the estimates only).
    """

    phi: FunctionalModule
    kernel_size: int
    in_channels: int
    out_channels: int
    hidden: int

    def to(self, dtype: torch.dtype) -> ModuleParams:
        """The same parameters cast (differentiably) to ``dtype``."""
        return ModuleParams(
            self.phi.to(dtype), self.kernel_size, self.in_channels, self.out_channels, self.hidden
        )

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Every tensor the weights depend on (what gradients flow to)."""
        return self.phi.tensors

    def predict(self, pos: torch.Tensor) -> torch.Tensor:
        """Positions ``(M, P)`` → weights ``(M, k·k·Cin·Cout)``."""
        return self.phi(pos)


#: What a backend receives as ``params``.
PredictorParams = MLPParams | LinearHeadParams | ModuleParams


def needs_grad(x: torch.Tensor, params: PredictorParams) -> bool:
    """Whether autograd will record this call (the backends' memory estimates depend on it)."""
    return torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for p in params.tensors())
    )


def features_first_weight(params: MLPParams | LinearHeadParams) -> torch.Tensor:
    """The last (linear) layer as the weight of one LR convolution producing ``Z``.

    Output channel ``o·(hid+1) + kk`` holds the ``W2`` rows of hidden unit ``kk < hid`` for
    output channel ``o``; channel ``o·(hid+1) + hid`` holds ``b2`` (the "bias map", contracted
    with a constant 1). Grouping by ``o`` first makes the ``hid+1`` values that one output pixel
    contracts contiguous in a channels-last ``Z``.

    Args:
        params: the MLP, in the compute dtype.

    Returns:
        ``(Cout·(hid+1), Cin, k, k)``, differentiable with respect to ``w2`` and ``b2``.
    """
    C, k, O, hid = params.in_channels, params.kernel_size, params.out_channels, params.hidden
    wz = params.w2.view(C, k, k, O, hid).permute(3, 4, 0, 1, 2)  # (O, hid, C, k, k)
    wb = params.b2.view(C, k, k, O).permute(3, 0, 1, 2).unsqueeze(1)  # (O, 1, C, k, k)
    return torch.cat([wz, wb], dim=1).reshape(O * (hid + 1), C, k, k)


def features_first_z(
    x: torch.Tensor, params: MLPParams | LinearHeadParams, periodic_lon: bool = False
) -> torch.Tensor:
    """``Z = conv2d(x, features_first_weight(params))`` with channels-last strides.

    With ``periodic_lon`` the convolution wraps along width (:func:`.padding.lr_conv2d`); the
    contractions read ``Z`` only at LR pixels ``(i', j')`` inside the image, so this is the only
    place where the features-first backends see the padding.

    Channels-last operands make the convolution write ``Z`` as ``(N, h, w, Cout·(hid+1))`` in
    memory directly, the layout both contractions read (one LR pixel's ``Cout·(hid+1)`` values
    contiguous); the final call is then a no-op and copies only in ambiguous cases (``Cin = 1``).

    Args:
        x: ``(N, Cin, h, w)``.
        params: the MLP, in ``x``'s dtype.
        periodic_lon: wrap the window along width instead of zero padding.

    Returns:
        ``(N, Cout·(hid+1), h, w)``, channels-last strides.
    """
    z = lr_conv2d(
        x.contiguous(memory_format=torch.channels_last),
        features_first_weight(params).contiguous(memory_format=torch.channels_last),
        periodic_lon,
    )
    return z.contiguous(memory_format=torch.channels_last)


def separable_first_layer(
    params: MLPParams, row_pos: torch.Tensor, col_pos: torch.Tensor, const_pos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first MLP layer, split by axis: ``W1·pos(i, j) + b1 = A[i] + Bc[j] + c``.

    Computed in the positions' dtype (``w1``/``b1`` are cast, differentiably, when it differs).

    Args:
        params: the MLP.
        row_pos: ``(H, P)`` row part of the positions.
        col_pos: ``(D, P)`` column part (all output columns, or one row per column phase).
        const_pos: ``(P,)`` part shared by every pixel.

    Returns:
        ``(A, Bc, c)``: ``(H, hid)``, ``(D, hid)``, ``(hid,)``.
    """
    w1 = params.w1.to(row_pos.dtype)
    b1 = params.b1.to(row_pos.dtype)
    a = F.linear(row_pos, w1)
    bc = F.linear(col_pos, w1)
    c = F.linear(const_pos[None], w1, b1)[0]
    return a, bc, c
