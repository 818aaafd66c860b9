"""Output geometry of Meta-Upscale: sizes, LR index maps, offsets and position encodings.

Everything here is host-side float64 arithmetic (see ``DESIGN.md`` §1). The per-row and
per-column quantities are computed separately because the position encoding is separable:
``pos(i, j) = row_pos[i] + col_pos[j] + const_pos``. Backends rely on that to evaluate the
first MLP layer as ``A[i] + Bc[j] + c`` instead of on ``H·W`` positions.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

__all__ = [
    "POS_ENCODINGS",
    "Geometry",
    "ScaleLike",
    "axis_map",
    "build_geometry",
    "call_geometry",
    "geometry_override",
    "parse_scale",
    "resolve_output_size",
]

#: Tolerance that guards ``floor`` against products such as ``2.3 * 50 = 114.99999999999999``.
EPS = 1e-6

#: Number of MLP inputs of each position encoding.
POS_ENCODINGS: dict[str, int] = {"asymmetric": 4, "official": 3}

Arithmetic = Literal["exact", "official"]
ScaleLike = float | int | tuple[float, float] | list[float]


def _check_ratio(value: object, what: str) -> float:
    """Return ``value`` as a finite float ≥ 1 or raise ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = float(value.item())
        else:
            raise ValueError(f"{what} must be a real number, got {value!r}")
    r = float(value)
    if not math.isfinite(r):
        raise ValueError(f"{what} must be finite, got {r}")
    if r < 1.0:
        raise ValueError(f"{what} must be >= 1 (Meta-Upscale only magnifies), got {r}")
    return r


def parse_scale(scale: object) -> tuple[float, float]:
    """Normalise ``scale`` (a number or a ``(r_v, r_h)`` pair) to two validated floats.

    Raises:
        ValueError: if a factor is not a real number, not finite, or below 1.
    """
    if isinstance(scale, (tuple, list)):
        if len(scale) != 2:
            raise ValueError(f"scale must be a number or a pair (r_v, r_h), got {scale!r}")
        return _check_ratio(scale[0], "vertical scale r_v"), _check_ratio(
            scale[1], "horizontal scale r_h"
        )
    r = _check_ratio(scale, "scale")
    return r, r


def resolve_output_size(
    h: int,
    w: int,
    scale: object = None,
    size: object = None,
) -> tuple[int, int, float, float]:
    """Output size and scale factors from exactly one of ``scale`` or ``size``.

    Args:
        h, w: input (LR) height and width, both ≥ 1.
        scale: a number or ``(r_v, r_h)``; each factor finite and ≥ 1.
        size: ``(H, W)`` with ``H ≥ h`` and ``W ≥ w``.

    Returns:
        ``(H, W, r_v, r_h)``. From a scale, ``H = floor(h·r_v + 1e-6)``; from a size,
        ``r_v = H / h`` (likewise for columns).
    """
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale=... or size=(H, W)")
    if h < 1 or w < 1:
        raise ValueError(f"input must have positive height and width, got {h}x{w}")
    if scale is not None:
        r_v, r_h = parse_scale(scale)
        H = math.floor(h * r_v + EPS)
        W = math.floor(w * r_h + EPS)
        return H, W, r_v, r_h
    if not isinstance(size, (tuple, list, torch.Size)) or len(size) != 2:
        raise ValueError(f"size must be a pair (H, W), got {size!r}")
    H, W = size
    for name, v, lo in (("H", H, h), ("W", W, w)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"size {name} must be an integer, got {v!r}")
        if v < lo:
            raise ValueError(
                f"size ({H}, {W}) is smaller than the input ({h}, {w}); Meta-Upscale only magnifies"
            )
    return int(H), int(W), int(H) / h, int(W) / w


def axis_map(n_out: int, n_in: int, r: float, arithmetic: Arithmetic = "exact"):
    """LR index and offset of every output row (or column) along one axis.

    ``t = i / r``; ``i' = min(floor(t + 1e-6), n_in - 1)``; ``Δ = clamp(t - i', 0, 1)``.

    ``arithmetic="official"`` reproduces the published Meta-SR code instead: ``t`` is computed
    in float32 as ``float32(i) * float32(1 / r)`` and floored without the guard, which moves a
    few rows at scales such as 2.3 or 3.7. It exists only to match the official model exactly.

    Returns:
        ``(idx, off)``: int64 array ``(n_out,)`` and float64 array ``(n_out,)``.
    """
    i = np.arange(n_out, dtype=np.float64)
    if arithmetic == "exact":
        t = i / r
        idx = np.minimum(np.floor(t + EPS), n_in - 1)
    elif arithmetic == "official":
        t = (i.astype(np.float32) * np.float32(1.0 / r)).astype(np.float64)
        idx = np.minimum(np.floor(t), n_in - 1)
    else:
        raise ValueError(f"arithmetic must be 'exact' or 'official', got {arithmetic!r}")
    off = np.clip(t - idx, 0.0, 1.0)
    return idx.astype(np.int64), off


@dataclass(frozen=True)
class Geometry:
    """Everything a backend needs to know about the output grid of one call.

    Attributes:
        h, w: input size.  H, W: output size.  r_v, r_h: scale factors.
        row_idx: ``(H,)`` int64, LR row of each output row.
        col_idx: ``(W,)`` int64, LR column of each output column.
        row_off, col_off: ``(H,)`` / ``(W,)`` float64 offsets ``Δv``, ``Δh`` in [0, 1].
        row_pos: ``(H, P)`` float64, row part of the position encoding.
        col_pos: ``(W, P)`` float64, column part.
        const_pos: ``(P,)`` float64, the part shared by all pixels (``1/r`` terms).
        pos_encoding: ``"asymmetric"`` or ``"official"``.
    """

    h: int
    w: int
    H: int
    W: int
    r_v: float
    r_h: float
    row_idx: np.ndarray
    col_idx: np.ndarray
    row_off: np.ndarray
    col_off: np.ndarray
    row_pos: np.ndarray
    col_pos: np.ndarray
    const_pos: np.ndarray
    pos_encoding: str

    @property
    def num_pos(self) -> int:
        return self.row_pos.shape[1]

    def positions(self) -> np.ndarray:
        """Full ``(H·W, P)`` float64 position matrix, row-major over pixels (small sizes only)."""
        pos = self.row_pos[:, None, :] + self.col_pos[None, :, :] + self.const_pos
        return pos.reshape(self.H * self.W, self.num_pos)


def build_geometry(
    h: int,
    w: int,
    scale: object = None,
    size: object = None,
    pos_encoding: str = "asymmetric",
    arithmetic: Arithmetic = "exact",
) -> Geometry:
    """Validate the request and compute the full :class:`Geometry` of one call.

    Position encodings (``DESIGN.md`` §1):

    * ``"asymmetric"``: ``(Δv, Δh, 1/r_v, 1/r_h)``.
    * ``"official"``: ``(1/r, Δv, Δh)``, only for ``r_v == r_h``.
    """
    if pos_encoding not in POS_ENCODINGS:
        raise ValueError(
            f"pos_encoding must be one of {sorted(POS_ENCODINGS)}, got {pos_encoding!r}"
        )
    H, W, r_v, r_h = resolve_output_size(h, w, scale=scale, size=size)
    if arithmetic == "official" and size is None:
        # The published code sizes the output as int(h * r) with no guard.
        H, W = int(h * r_v), int(w * r_h)
        if H < h or W < w:
            raise ValueError("official arithmetic produced an output smaller than the input")
    row_idx, row_off = axis_map(H, h, r_v, arithmetic)
    col_idx, col_off = axis_map(W, w, r_h, arithmetic)
    P = POS_ENCODINGS[pos_encoding]
    row_pos = np.zeros((H, P))
    col_pos = np.zeros((W, P))
    const_pos = np.zeros(P)
    if pos_encoding == "asymmetric":
        row_pos[:, 0] = row_off
        col_pos[:, 1] = col_off
        const_pos[2] = 1.0 / r_v
        const_pos[3] = 1.0 / r_h
    else:
        if abs(r_v - r_h) > 1e-9 * max(r_v, r_h):
            raise ValueError(
                "pos_encoding='official' encodes a single scale 1/r and needs r_v == r_h, "
                f"got r_v={r_v:g}, r_h={r_h:g}; use pos_encoding='asymmetric'"
            )
        const_pos[0] = 1.0 / r_v
        row_pos[:, 1] = row_off
        col_pos[:, 2] = col_off
    return Geometry(
        h=h,
        w=w,
        H=H,
        W=W,
        r_v=r_v,
        r_h=r_h,
        row_idx=row_idx,
        col_idx=col_idx,
        row_off=row_off,
        col_off=col_off,
        row_pos=row_pos,
        col_pos=col_pos,
        const_pos=const_pos,
        pos_encoding=pos_encoding,
    )


GeometryBuilder = Callable[..., Geometry]

#: A replacement for :func:`build_geometry` active in the current thread/task (see
#: :func:`geometry_override`); ``None`` almost always.
_OVERRIDE: ContextVar[GeometryBuilder | None] = ContextVar("metasr_geometry_override", default=None)


@contextmanager
def geometry_override(builder: GeometryBuilder) -> Iterator[None]:
    """Make every Meta-Upscale call in this context take its geometry from ``builder``.

    ``builder`` has :func:`build_geometry`'s signature. Tiled inference uses this to run an
    unmodified model on a tile while its Meta-Upscale heads compute the tile's slice of the
    whole image's output grid. The override is a context variable: other threads and tasks
    are unaffected, and it ends with the ``with`` block.
    """
    token = _OVERRIDE.set(builder)
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


def call_geometry(
    h: int,
    w: int,
    scale: object = None,
    size: object = None,
    pos_encoding: str = "asymmetric",
    arithmetic: Arithmetic = "exact",
) -> Geometry:
    """The geometry of one Meta-Upscale call: :func:`build_geometry` unless overridden."""
    builder = _OVERRIDE.get() or build_geometry
    return builder(h, w, scale=scale, size=size, pos_encoding=pos_encoding, arithmetic=arithmetic)
