"""Pieces shared by the Meta-Upscale backends: parameter layout, phase tables, output buffers."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...geometry import Geometry

#: Offsets closer than this are the same phase. Offsets of rational scales computed as
#: ``i/r - floor(i/r)`` differ by a few ulps between periods (0.4 vs 0.3999999999999999 at ×2.5).
PHASE_DECIMALS = 12


@dataclass(frozen=True)
class MLPParams:
    """The four tensors of ``Pos2Weight.meta_block``, already in the compute dtype.

    Shapes: ``w1 (hid, P)``, ``b1 (hid,)``, ``w2 (k·k·Cin·Cout, hid)``, ``b2 (k·k·Cin·Cout,)``.
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


def phases(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct offsets of one axis.

    Returns:
        ``(first, inverse)``: ``first`` (D,) holds the index of the first output row/column of
        each distinct offset (so its exact float64 offset is used), ``inverse`` (n,) maps every
        output row/column to its phase in ``[0, D)``.
    """
    keys = np.round(offsets, PHASE_DECIMALS)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


def as_index(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.long, device=device)


def as_float(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """float64 host array → tensor in ``like``'s dtype/device (the cast the spec prescribes)."""
    return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64, device=like.device).to(
        like.dtype
    )


def positions_tensor(geom: Geometry, like: torch.Tensor) -> torch.Tensor:
    """All ``(H·W, P)`` positions, row-major, in ``like``'s dtype. Only for small outputs."""
    return as_float(geom.positions(), like)


def lr_linear_index(geom: Geometry, device: torch.device) -> torch.Tensor:
    """``(H·W,)`` flat LR index ``i'·w + j'`` of every output pixel, row-major."""
    lin = geom.row_idx[:, None] * geom.w + geom.col_idx[None, :]
    return as_index(lin.reshape(-1), device)


def new_output(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Output buffer; NaN-filled when ``METASR_POISON_OUTPUTS=1`` so a skipped pixel fails tests."""
    if os.environ.get("METASR_POISON_OUTPUTS") == "1":
        return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (CUDA: ``mem_get_info``; CPU: ``MemAvailable``), or None."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None
