"""Host-side tables of an output grid: phases of the offsets, index maps, position tensors.

The geometry (:mod:`metasr.geometry`) is float64 NumPy on the host; these helpers turn it into
the small tables and device tensors that the backends read.
"""

from __future__ import annotations

import numpy as np
import torch

from ...geometry import Geometry

__all__ = [
    "PHASE_DECIMALS",
    "as_float",
    "as_index",
    "lr_linear_index",
    "phases",
    "positions_tensor",
    "restore_order",
]

#: Offsets closer than this are the same phase. Offsets of rational scales computed as
#: ``i/r - floor(i/r)`` differ by a few ulps between periods (0.4 vs 0.3999999999999999 at ×2.5).
PHASE_DECIMALS = 12


def phases(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct offsets of one axis.

    Args:
        offsets: ``(n,)`` float64 offsets of the output rows (or columns).

    Returns:
        ``(first, inverse)``: ``first`` (D,) holds the index of the first output row/column of
        each distinct offset (so its exact float64 offset is used), ``inverse`` (n,) maps every
        output row/column to its phase in ``[0, D)``.
    """
    keys = np.round(offsets, PHASE_DECIMALS)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


def as_index(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """Integer host array → int64 tensor on ``device`` (same shape)."""
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


def restore_order(y: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """The computed output ``(N, Cout, H, W)`` in the request's row and column order.

    Backends compute rows and columns sorted by LR index; a coordinate geometry whose target
    starts elsewhere on the circle, or runs the other way, carries the permutation back
    (:attr:`metasr.geometry.Geometry.row_order`/``col_order``). Without one, ``y`` is returned
    as is. Differentiable (a gather).
    """
    if geom.row_order is not None:
        y = y.index_select(2, as_index(geom.row_order, y.device))
    if geom.col_order is not None:
        y = y.index_select(3, as_index(geom.col_order, y.device))
    return y
