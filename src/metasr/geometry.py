"""Output geometry of Meta-Upscale: sizes, LR index maps, offsets and position encodings.

Everything here is host-side float64 arithmetic (see ``DESIGN.md`` §1). The per-row and
per-column quantities are computed separately because the position encoding is separable:
``pos(i, j) = row_pos[i] + col_pos[j] + const_pos``. Backends rely on that to evaluate the
first MLP layer as ``A[i] + Bc[j] + c`` instead of on ``H·W`` positions.

A :class:`Region` asks for one part of a whole image's grid (tiled inference): the geometry is
the whole image's, cut to the region's outputs, with LR indices in the frame of the LR window
the call receives (:meth:`Geometry.cut`).

Limits: an output may have at most :data:`MAX_OUTPUT_PIXELS` pixels (``H·W``; the environment
variable ``METASR_MAX_OUTPUT_PIXELS`` overrides it) and at most :data:`MAX_OUTPUT_SIDE` rows or
columns. :func:`resolve_output_size` refuses larger requests before any per-row or per-column
array is built; whether an allowed output fits in memory is the dispatcher's estimate
(:mod:`metasr.ops.meta_upscale._dispatch`).
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

__all__ = [
    "MAX_OUTPUT_PIXELS",
    "MAX_OUTPUT_SIDE",
    "POS_ENCODINGS",
    "Geometry",
    "Region",
    "ScaleLike",
    "axis_map",
    "build_geometry",
    "max_output_pixels",
    "parse_scale",
    "resolve_output_size",
]

#: Tolerance that guards ``floor`` against products such as ``2.3 * 50 = 114.99999999999999``.
EPS = 1e-6

#: Number of MLP inputs of each position encoding.
POS_ENCODINGS: dict[str, int] = {"asymmetric": 4, "official": 3}

#: Default cap on ``H·W`` of one output (2**30, e.g. 32768×32768): far beyond any image, and a
#: request above it is a mistake (``scale=1e9``), not an image. Set the module attribute or
#: ``METASR_MAX_OUTPUT_PIXELS`` to change it.
MAX_OUTPUT_PIXELS = 1 << 30

#: Cap on ``H`` and on ``W`` (2**22): the geometry keeps about 80 bytes per output row and column.
MAX_OUTPUT_SIDE = 1 << 22

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


def max_output_pixels() -> int:
    """The cap on ``H·W``: ``METASR_MAX_OUTPUT_PIXELS`` if set, else :data:`MAX_OUTPUT_PIXELS`.

    Raises:
        ValueError: if the environment variable is not a positive integer.
    """
    text = os.environ.get("METASR_MAX_OUTPUT_PIXELS", "").strip()
    if not text:
        return MAX_OUTPUT_PIXELS
    try:
        value = int(float(text)) if "e" in text.lower() else int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"METASR_MAX_OUTPUT_PIXELS must be a positive integer, got {text!r}")
    return value


def _check_output_size(h: int, w: int, H: float, W: float) -> None:
    """Refuse an output beyond :data:`MAX_OUTPUT_SIDE` or :func:`max_output_pixels`.

    ``H`` and ``W`` may be floats (``h·r`` before flooring, possibly inf), so that a request is
    judged before any integer of its size is formed.
    """
    cap = max_output_pixels()
    if H > MAX_OUTPUT_SIDE or W > MAX_OUTPUT_SIDE or H * W > cap:
        shown = f"{H}x{W}" if isinstance(H, int) and isinstance(W, int) else f"{H:.4g}x{W:.4g}"
        raise ValueError(
            f"output {shown} ({H * W:.3g} pixels) from a {h}x{w} input exceeds the limit of "
            f"{cap} pixels and {MAX_OUTPUT_SIDE} per side (metasr.geometry.MAX_OUTPUT_PIXELS, "
            "env METASR_MAX_OUTPUT_PIXELS)"
        )


def _as_size_pair(size: object) -> tuple[object, object]:
    """``size`` as two items: a tuple, list, ``torch.Size`` or 1-D NumPy/torch array of 2."""
    if isinstance(size, (np.ndarray, torch.Tensor)) and size.ndim == 1 and len(size) == 2:
        if isinstance(size, torch.Tensor):
            if size.is_floating_point() or size.is_complex() or size.dtype == torch.bool:
                raise ValueError(f"size must hold integers, got {size!r}")
            return int(size[0]), int(size[1])
        return size[0], size[1]
    if not isinstance(size, (tuple, list, torch.Size)) or len(size) != 2:
        raise ValueError(f"size must be a pair (H, W), got {size!r}")
    return size[0], size[1]


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
        size: ``(H, W)`` with ``H ≥ h`` and ``W ≥ w``: a tuple, list, ``torch.Size`` or
            length-2 integer array.

    Returns:
        ``(H, W, r_v, r_h)``. From a scale, ``H = floor(h·r_v + 1e-6)``; from a size,
        ``r_v = H / h`` (likewise for columns).

    Raises:
        ValueError: for a bad request, or an output beyond :data:`MAX_OUTPUT_SIDE` or
            :func:`max_output_pixels` (checked before anything of the output's size exists).
    """
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale=... or size=(H, W)")
    if h < 1 or w < 1:
        raise ValueError(f"input must have positive height and width, got {h}x{w}")
    if scale is not None:
        r_v, r_h = parse_scale(scale)
        # Judged as floats first: h·r can be inf for a finite r (1e308), which floor rejects.
        _check_output_size(h, w, h * r_v + EPS, w * r_h + EPS)
        H = math.floor(h * r_v + EPS)
        W = math.floor(w * r_h + EPS)
        _check_output_size(h, w, H, W)
        return H, W, r_v, r_h
    H, W = _as_size_pair(size)
    for name, v, lo in (("H", H, h), ("W", W, w)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"size {name} must be an integer, got {v!r}")
        if v < lo:
            raise ValueError(
                f"size ({H}, {W}) is smaller than the input ({h}, {w}); Meta-Upscale only magnifies"
            )
    H, W = int(H), int(W)
    _check_output_size(h, w, H, W)
    return H, W, H / h, W / w


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


def _check_range(name: str, value: object, n: int) -> tuple[int, int]:
    """``value`` as a pair ``(lo, hi)`` of ints with ``0 <= lo < hi <= n``, or a ``ValueError``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"region {name} must be a pair (lo, hi), got {value!r}")
    lo, hi = value
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"region {name} must hold integers, got {value!r}")
    if not 0 <= lo < hi <= n:
        raise ValueError(f"region {name} [{lo}, {hi}) is not a non-empty part of [0, {n})")
    return int(lo), int(hi)


@dataclass(frozen=True)
class Region:
    """A part of a whole image's upscaling that one call computes (tiled inference).

    The call receives the LR window ``in_rows × in_cols`` of an ``image_size`` input and
    computes the output rows ``out_rows`` and columns ``out_cols`` of the whole image's
    ``output_size`` grid, each with its whole-image LR index, offset and scale. Ranges are
    half-open ``(lo, hi)`` in the whole image's coordinates.

    Attributes:
        image_size: ``(h, w)`` of the whole LR input.
        output_size: ``(H, W)`` of the whole output (what the request gives for ``image_size``).
        in_rows, in_cols: the LR window the call receives; its origin is ``(in_rows[0],
            in_cols[0])``.
        out_rows, out_cols: the output rows and columns the call computes.
    """

    image_size: tuple[int, int]
    output_size: tuple[int, int]
    in_rows: tuple[int, int]
    in_cols: tuple[int, int]
    out_rows: tuple[int, int]
    out_cols: tuple[int, int]

    def __post_init__(self) -> None:
        for name in ("image_size", "output_size"):
            v = getattr(self, name)
            if not isinstance(v, (tuple, list)) or len(v) != 2:
                raise ValueError(f"region {name} must be a pair, got {v!r}")
            for n in v:
                if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
                    raise ValueError(f"region {name} must hold positive integers, got {v!r}")
            object.__setattr__(self, name, (int(v[0]), int(v[1])))
        (h, w), (H, W) = self.image_size, self.output_size
        for name, n in (("in_rows", h), ("in_cols", w), ("out_rows", H), ("out_cols", W)):
            object.__setattr__(self, name, _check_range(name, getattr(self, name), n))

    @property
    def in_shape(self) -> tuple[int, int]:
        """``(h_t, w_t)``: the size of the LR window the call receives."""
        return self.in_rows[1] - self.in_rows[0], self.in_cols[1] - self.in_cols[0]

    @property
    def out_shape(self) -> tuple[int, int]:
        """``(H_t, W_t)``: the size of the output the call computes."""
        return self.out_rows[1] - self.out_rows[0], self.out_cols[1] - self.out_cols[0]


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
        periodic_lon: the LR window wraps along width (column ``(j' + dx) mod w``) instead of
            reading zero padding; rows are zero-padded either way.
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
    periodic_lon: bool = False

    @property
    def num_pos(self) -> int:
        return self.row_pos.shape[1]

    def positions(self) -> np.ndarray:
        """Full ``(H·W, P)`` float64 position matrix, row-major over pixels (small sizes only)."""
        pos = self.row_pos[:, None, :] + self.col_pos[None, :, :] + self.const_pos
        return pos.reshape(self.H * self.W, self.num_pos)

    def cut(self, region: Region) -> Geometry:
        """The part of this whole-image geometry that ``region`` computes, in its frame.

        Offsets, scales and position encodings stay the whole image's; LR indices are moved by
        the region's input origin, so they index the window the call receives.

        Returns:
            A :class:`Geometry` for an input of ``region.in_shape`` and an output of
            ``region.out_shape``.

        Raises:
            ValueError: if ``region`` was planned for another input or output size, or if an
                output it computes belongs to an LR pixel outside its input window.
        """
        if region.image_size != (self.h, self.w) or region.output_size != (self.H, self.W):
            raise ValueError(
                f"the region is part of a {region.image_size} -> {region.output_size} upscaling "
                f"but the request gives {(self.h, self.w)} -> {(self.H, self.W)}"
            )
        r, c = slice(*region.out_rows), slice(*region.out_cols)
        for axis, idx, (lo, hi) in (
            ("rows", self.row_idx[r], region.in_rows),
            ("columns", self.col_idx[c], region.in_cols),
        ):
            # idx is non-decreasing, so its ends bound it.
            if idx[0] < lo or idx[-1] >= hi:
                raise ValueError(
                    f"the region's output {axis} use LR {axis} {idx[0]}..{idx[-1]}, outside its "
                    f"input window [{lo}, {hi})"
                )
        return replace(
            self,
            h=region.in_shape[0],
            w=region.in_shape[1],
            H=region.out_shape[0],
            W=region.out_shape[1],
            row_idx=self.row_idx[r] - region.in_rows[0],
            col_idx=self.col_idx[c] - region.in_cols[0],
            row_off=self.row_off[r],
            col_off=self.col_off[c],
            row_pos=self.row_pos[r],
            col_pos=self.col_pos[c],
        )


def build_geometry(
    h: int,
    w: int,
    scale: object = None,
    size: object = None,
    pos_encoding: str = "asymmetric",
    arithmetic: Arithmetic = "exact",
    region: Region | None = None,
    periodic_lon: bool = False,
) -> Geometry:
    """Validate the request and compute the :class:`Geometry` of one call.

    Position encodings (``DESIGN.md`` §1):

    * ``"asymmetric"``: ``(Δv, Δh, 1/r_v, 1/r_h)``.
    * ``"official"``: ``(1/r, Δv, Δh)``, only for ``r_v == r_h``.

    Args:
        h, w: size of the feature map the call receives.
        scale, size: the request (exactly one); with a ``region``, the whole image's request.
        pos_encoding: ``"asymmetric"`` or ``"official"``.
        arithmetic: ``"exact"`` or the official code's float32 grid (:func:`axis_map`).
        region: compute only this part of the whole image's grid (:meth:`Geometry.cut`);
            ``(h, w)`` must then be ``region.in_shape``.
        periodic_lon: wrap the LR window along width (global longitude grids). With a
            ``region``, its LR window must span the whole width (tiles along rows only): the
            wrap needs the columns on the other side of the seam.

    Raises:
        ValueError: for a bad request, or a region that does not fit it or the feature map.
    """
    if not isinstance(periodic_lon, (bool, np.bool_)):
        raise ValueError(f"periodic_lon must be a bool, got {periodic_lon!r}")
    periodic_lon = bool(periodic_lon)
    if region is not None:
        if not isinstance(region, Region):
            raise ValueError(f"region must be a metasr.geometry.Region, got {region!r}")
        if (h, w) != region.in_shape:
            raise ValueError(
                f"the feature map is {h}x{w} but the region's input window is "
                f"{region.in_shape[0]}x{region.in_shape[1]} (LR rows [{region.in_rows[0]}, "
                f"{region.in_rows[1]}), columns [{region.in_cols[0]}, {region.in_cols[1]}))"
            )
        whole = build_geometry(
            *region.image_size,
            scale=scale,
            size=size,
            pos_encoding=pos_encoding,
            arithmetic=arithmetic,
            periodic_lon=periodic_lon,
        )
        if periodic_lon and region.in_cols != (0, region.image_size[1]):
            raise ValueError(
                f"periodic_lon needs the whole width in every tile, but the region's LR columns "
                f"are [{region.in_cols[0]}, {region.in_cols[1]}) of {region.image_size[1]}; "
                "tile along rows only"
            )
        return whole.cut(region)
    if not isinstance(pos_encoding, str) or pos_encoding not in POS_ENCODINGS:
        raise ValueError(
            f"pos_encoding must be one of {sorted(POS_ENCODINGS)}, got {pos_encoding!r}"
        )
    if not isinstance(arithmetic, str) or arithmetic not in ("exact", "official"):
        raise ValueError(f"arithmetic must be 'exact' or 'official', got {arithmetic!r}")
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
        periodic_lon=periodic_lon,
    )
