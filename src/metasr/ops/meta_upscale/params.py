"""The weight-prediction MLP's parameters and the features-first layout built from them.

``Pos2Weight.meta_block`` is ``Linear(P, hid) → ReLU → Linear(hid, k·k·Cin·Cout)``. The
features-first backends (``torch_chunked``, ``triton_fused``; ``DESIGN.md`` §3) never run it per
output pixel; they use two rearrangements of it, defined once here:

* the second layer as one LR convolution (:func:`features_first_weight`, :func:`features_first_z`):
  ``Z = conv(x, [W2|b2])`` has ``Cout·(hid+1)`` channels, so
  ``y = Σ_k ReLU(pre)[k]·Z[..., k] + Z[..., hid]``;
* the first layer separably (:func:`separable_first_layer`): positions are
  ``row_pos[i] + col_pos[j] + const_pos``, so ``pre(i, j) = A[i] + Bc[phase(j)] + c``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .padding import lr_conv2d

__all__ = [
    "MLPParams",
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

    def predict(self, pos: torch.Tensor) -> torch.Tensor:
        """Run the MLP on positions ``(M, P)`` → weights ``(M, k·k·Cin·Cout)``."""
        return F.linear(F.relu(F.linear(pos, self.w1, self.b1)), self.w2, self.b2)


def needs_grad(x: torch.Tensor, params: MLPParams) -> bool:
    """Whether autograd will record this call (the backends' memory estimates depend on it)."""
    return torch.is_grad_enabled() and (
        x.requires_grad
        or any(p.requires_grad for p in (params.w1, params.b1, params.w2, params.b2))
    )


def features_first_weight(params: MLPParams) -> torch.Tensor:
    """The second MLP layer as the weight of one LR convolution producing ``Z``.

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
    x: torch.Tensor, params: MLPParams, periodic_lon: bool = False
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
