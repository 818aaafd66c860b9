"""Output geometry of Meta-Upscale: sizes, LR index maps, offsets and position encodings.

Everything here is host-side float64 arithmetic (see ``docs/design.md`` §1). The per-row and
per-column quantities are computed separately because the position encoding is separable:
``pos(i, j) = row_pos[i] + col_pos[j] + const_pos``. Backends rely on that to evaluate the
first MLP layer as ``A[i] + Bc[j] + c`` instead of on ``H·W`` positions.

An :class:`UpscaleRequest` is one call's request as a value: exactly one of ``scale``,
``size`` or ``coords``, with the ``region``, ``arithmetic`` and ``periodic_lon`` that go with
it. It is checked once when made, hashable, and gives everything derived from it: the output
size (:meth:`UpscaleRequest.out_shape`), the geometry (:meth:`UpscaleRequest.geometry`), a flat
form for the custom op (:meth:`UpscaleRequest.to_flat`), the transposed request of a
test-time transform (:meth:`UpscaleRequest.transposed`) and a tile's request
(:meth:`UpscaleRequest.with_region`).

A :class:`Region` asks for one part of a whole image's grid (tiled inference): the geometry is
the whole image's, cut to the region's outputs, with LR indices in the frame of the LR window
the call receives (:meth:`Geometry.cut`).

A :class:`CoordinateGrid` places the output by coordinates instead (global latitude/longitude
grids, :func:`coordinate_axis_map`): each target row and column gets its source index and
offset from where its latitude/longitude lies among the source's. The index-ratio geometry
(``scale``/``size``) stays the default; the two agree when the grids are index-ratio compatible
(same first coordinate, target spacing = source spacing · n_in / n_out) and differ otherwise,
e.g. 96 → 721 latitude rows that both include the poles.

Limits: an output may have at most :data:`MAX_OUTPUT_PIXELS` pixels (``H·W``; the environment
variable ``METASR_MAX_OUTPUT_PIXELS`` overrides it) and at most :data:`MAX_OUTPUT_SIDE` rows or
columns. :func:`resolve_output_size` refuses larger requests before any per-row or per-column
array is built; whether an allowed output fits in memory is the dispatcher's estimate
(:mod:`metasr.ops.meta_upscale.dispatch`).
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from . import _limits
from ._coordinates import fractional_index
from .validation import ArgumentTypeError, check_bool, check_choice, check_ratio

__all__ = [
    "CoordinateGrid",
    "MAX_OUTPUT_PIXELS",
    "MAX_OUTPUT_SIDE",
    "POS_ENCODINGS",
    "Geometry",
    "Region",
    "ScaleLike",
    "UpscaleRequest",
    "axis_map",
    "build_geometry",
    "build_geometry_from_coords",
    "check_arithmetic",
    "check_periodic_lon",
    "check_pos_encoding",
    "coordinate_axis_map",
    "fractional_index",
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
MAX_OUTPUT_SIDE = _limits.MAX_OUTPUT_SIDE

Arithmetic = Literal["exact", "official"]
ScaleLike = float | int | tuple[float, float] | list[float]

#: The grid arithmetics (:func:`axis_map`).
ARITHMETICS: tuple[str, ...] = ("exact", "official")


def check_arithmetic(arithmetic: object) -> str:
    """``arithmetic`` if it is ``"exact"`` or ``"official"``.

    Raises:
        TypeError: not a string. ValueError: another string.
    """
    return check_choice("arithmetic", arithmetic, ARITHMETICS)


def check_periodic_lon(periodic_lon: object) -> bool:
    """``periodic_lon`` (a Python or NumPy bool) as a ``bool``.

    Raises:
        TypeError: anything else (``1``, ``"yes"``).
    """
    return check_bool("periodic_lon", periodic_lon)


def check_pos_encoding(pos_encoding: object) -> str:
    """``pos_encoding`` if it is one of :data:`POS_ENCODINGS`.

    Raises:
        TypeError: not a string. ValueError: another string.
    """
    return check_choice("pos_encoding", pos_encoding, tuple(POS_ENCODINGS))


def _check_ratio(value: object, what: str) -> float:
    """``value`` as a finite float ≥ 1 (:func:`metasr.validation.check_ratio`): a
    ``TypeError`` for a non-number, a ``ValueError`` naming ``what`` otherwise."""
    return check_ratio(what, value)


def max_output_pixels() -> int:
    """The cap on ``H·W``: ``METASR_MAX_OUTPUT_PIXELS`` if set, else :data:`MAX_OUTPUT_PIXELS`.

    Raises:
        ValueError: if the environment variable is not a positive integer.
    """
    from ._limits import pixel_cap

    return pixel_cap(MAX_OUTPUT_PIXELS)


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
                raise ArgumentTypeError(f"size must hold integers, got {size!r}")
            return int(size[0]), int(size[1])
        return size[0], size[1]
    if not isinstance(size, (tuple, list, torch.Size, np.ndarray, torch.Tensor)):
        raise ArgumentTypeError(f"size must be a pair (H, W), got {type(size).__name__} {size!r}")
    if len(size) != 2:
        raise ValueError(f"size must be a pair (H, W), got {size!r}")
    return size[0], size[1]


def parse_scale(scale: object) -> tuple[float, float]:
    """Normalise ``scale`` (a number or a ``(r_v, r_h)`` pair) to two validated floats.

    Raises:
        TypeError: a factor is not a real number (or ``scale`` neither a number nor a pair).
        ValueError: a factor not finite, or below 1; a sequence of another length than 2.
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
        TypeError: a factor or size of the wrong type.
        ValueError: for a bad request, or an output beyond :data:`MAX_OUTPUT_SIDE` or
            :func:`max_output_pixels` (checked before anything of the output's size exists).
    """
    return _output_size(UpscaleRequest(scale=scale, size=size), h, w)


def _output_size(request: UpscaleRequest, h: int, w: int) -> tuple[int, int, float, float]:
    """``(H, W, r_v, r_h)`` of a ``scale`` or ``size`` request for an ``h×w`` input: the checks
    that need the input's size (a size not smaller than it, the output caps), on the request's
    already checked values."""
    if h < 1 or w < 1:
        raise ValueError(f"input must have positive height and width, got {h}x{w}")
    if request.scale is not None:
        r_v, r_h = request.scale
        # Judged as floats first: h·r can be inf for a finite r (1e308), which floor rejects.
        _check_output_size(h, w, h * r_v + EPS, w * r_h + EPS)
        H = math.floor(h * r_v + EPS)
        W = math.floor(w * r_h + EPS)
        _check_output_size(h, w, H, W)
        return H, W, r_v, r_h
    H, W = request.size
    if H < h or W < w:
        raise ValueError(
            f"size ({H}, {W}) is smaller than the input ({h}, {w}); Meta-Upscale only magnifies"
        )
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

    Raises:
        TypeError, ValueError: ``arithmetic`` is not ``"exact"`` or ``"official"``.
    """
    return _axis_map(n_out, n_in, r, check_arithmetic(arithmetic) == "official")


def _axis_map(n_out: int, n_in: int, r: float, official: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`axis_map` on an arithmetic already checked (a request's: ``official`` or exact)."""
    i = np.arange(n_out, dtype=np.float64)
    if official:
        t = (i.astype(np.float32) * np.float32(1.0 / r)).astype(np.float64)
        idx = np.minimum(np.floor(t), n_in - 1)
    else:
        t = i / r
        idx = np.minimum(np.floor(t + EPS), n_in - 1)
    off = np.clip(t - idx, 0.0, 1.0)
    return idx.astype(np.int64), off


def _check_range(name: str, value: object, n: int) -> tuple[int, int]:
    """``value`` as a pair ``(lo, hi)`` of ints with ``0 <= lo < hi <= n``, or a ``ValueError``."""
    if not isinstance(value, (tuple, list)):
        raise ArgumentTypeError(f"region {name} must be a pair (lo, hi), got {value!r}")
    if len(value) != 2:
        raise ValueError(f"region {name} must be a pair (lo, hi), got {value!r}")
    lo, hi = value
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ArgumentTypeError(f"region {name} must hold integers, got {value!r}")
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
            if not isinstance(v, (tuple, list)):
                raise ArgumentTypeError(f"region {name} must be a pair, got {v!r}")
            if len(v) != 2:
                raise ValueError(f"region {name} must be a pair, got {v!r}")
            for n in v:
                if isinstance(n, bool) or not isinstance(n, numbers.Integral):
                    raise ArgumentTypeError(f"region {name} must hold integers, got {v!r}")
                if n < 1:
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
        row_order, col_order: ``None`` (the usual case), or ``(H,)``/``(W,)`` int64
            permutations: the maps above are sorted so that ``row_idx``/``col_idx`` are
            non-decreasing (every backend relies on that), and row ``i`` of the requested output
            is row ``row_order[i]`` of the computed one (a coordinate grid whose target starts
            elsewhere on the circle than the source, or runs the other way;
            :func:`metasr.ops.meta_upscale.tables.restore_order` applies it).
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
    row_order: np.ndarray | None = None
    col_order: np.ndarray | None = None

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
        if self.row_order is not None or self.col_order is not None:
            raise ValueError(
                "a region cannot cut a coordinate geometry whose target rows or columns are "
                "reordered (target longitudes starting elsewhere than the source's first, or "
                "coordinates running the other way); give the target in the source's order"
            )
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


def _coordinate_array(
    name: str, values: object, min_len: int, period: float | None = None
) -> np.ndarray:
    """``values`` as a finite, strictly monotonic 1-D float64 array, or a ``ValueError``.

    With a ``period``, monotonic means: going once round the circle from ``values[0]`` in one
    direction, less than a full turn in all (``[180, 270, 0, 90]`` is fine).
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ArgumentTypeError(f"{name} must be a 1-D array of numbers, got {values!r}") from None
    if a.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D, got shape {a.shape} (2-D, curvilinear grids are not supported "
            "yet)"
        )
    if len(a) < min_len:
        raise ValueError(f"{name} must have at least {min_len} values, got {len(a)}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite")
    if period is not None:
        ups, downs = np.mod(a - a[0], period), np.mod(a[0] - a, period)
        if not (np.all(np.diff(ups) > 0) or np.all(np.diff(downs) > 0)):
            raise ValueError(
                f"{name} must go round the circle once in one direction, less than {period:g} "
                "degrees in all (no repeated column); pass periodic_lon=False for a regional grid"
            )
        return a
    d = np.diff(a)
    if len(a) > 1 and not (np.all(d > 0) or np.all(d < 0)):
        raise ValueError(f"{name} must be strictly increasing or strictly decreasing")
    return a


@dataclass(frozen=True)
class CoordinateGrid:
    """Source and target latitude/longitude of a coordinate-placed upscaling (1-D, degrees).

    The source is the grid of the input ``x`` (``h = len(src_lat)`` rows, ``w = len(src_lon)``
    columns); the target is the output's (``H = len(dst_lat)``, ``W = len(dst_lon)``). Each axis
    may ascend or descend; regular grids with or without pole rows, cell-centred and Gaussian
    latitudes all work, since only the coordinates' positions matter
    (:func:`coordinate_axis_map`). Stored as tuples, so a grid is hashable (the compiled op
    caches its geometry).

    Attributes:
        src_lat, src_lon, dst_lat, dst_lon: the coordinates.
        periodic_lon: longitudes are periodic (a global grid; default): a target longitude is
            placed modulo 360 and one past the last source column lies between it and the
            first. ``False`` treats longitude like latitude (a regional grid). A request whose
            LR window wraps (``UpscaleRequest.periodic_lon``) needs a periodic grid; a network
            that does not wrap may still place its output on one.
    """

    src_lat: tuple[float, ...]
    src_lon: tuple[float, ...]
    dst_lat: tuple[float, ...]
    dst_lon: tuple[float, ...]
    periodic_lon: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "periodic_lon", check_periodic_lon(self.periodic_lon))
        for name in ("src_lat", "src_lon", "dst_lat", "dst_lon"):
            period = 360.0 if self.periodic_lon and name.endswith("lon") else None
            min_len = 2 if name.startswith("src") else 1
            a = _coordinate_array(name, getattr(self, name), min_len, period)
            object.__setattr__(self, name, tuple(a.tolist()))
        for src, dst, what in (("src_lat", "dst_lat", "rows"), ("src_lon", "dst_lon", "columns")):
            n_in, n_out = len(getattr(self, src)), len(getattr(self, dst))
            if n_out < n_in:
                raise ValueError(
                    f"the target grid has {n_out} {what} but the source {n_in}; Meta-Upscale "
                    "only magnifies (the target grid must not be coarser than the source)"
                )

    @property
    def in_shape(self) -> tuple[int, int]:
        """``(h, w)`` of the source grid."""
        return len(self.src_lat), len(self.src_lon)

    @property
    def out_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the target grid."""
        return len(self.dst_lat), len(self.dst_lon)


def coordinate_axis_map(
    src: np.ndarray, dst: np.ndarray, period: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """LR index and offset of every target row (or column) from coordinates.

    Definition: ``t`` is the fractional source index of the target coordinate
    (:func:`fractional_index`); then, as :func:`axis_map`, ``i' = clamp(floor(t + 1e-6), 0,
    n_in - 1)`` and ``Δ = clamp(t - i', 0, 1)``. So ``i' + Δ`` mapped back through the source
    coordinates is the target coordinate (inside the source's range). When the target is the
    source's first coordinate plus multiples of ``spacing · n_in / n_out`` (index-ratio
    compatible grids), ``t = i · n_in / n_out`` and the result is :func:`axis_map`'s.

    With a ``period`` a target past the last source column gets ``i' = n_in - 1`` and
    ``Δ ∈ [0, 1]`` towards the wrapped first column (the window wraps the same way with
    ``periodic_lon``).

    Args:
        src: ``(n_in,)`` strictly monotonic source coordinates (``n_in ≥ 2``).
        dst: ``(n_out,)`` target coordinates.
        period: ``None`` or the period of the axis.

    Returns:
        ``(idx, off)``: int64 ``(n_out,)`` and float64 ``(n_out,)``, in the target's order (not
        necessarily non-decreasing: see :func:`build_geometry_from_coords`).
    """
    t = fractional_index(src, dst, period)
    idx = np.clip(np.floor(t + EPS), 0, len(src) - 1)
    off = np.clip(t - idx, 0.0, 1.0)
    return idx.astype(np.int64), off


def _sorted_axis(idx: np.ndarray, off: np.ndarray) -> tuple[np.ndarray, np.ndarray, object]:
    """``(idx, off)`` sorted by ``idx + off`` and the permutation back to the target's order.

    Returns:
        ``(idx, off, order)``; ``order`` is ``None`` when already sorted, else ``(n,)`` int64
        with ``target[i] = sorted[order[i]]``.
    """
    t = idx + off
    if np.all(np.diff(idx) >= 0):
        return idx, off, None
    perm = np.lexsort((t, idx))  # stable: by idx, then by position inside the cell
    order = np.empty_like(perm)
    order[perm] = np.arange(len(perm))
    return idx[perm], off[perm], order.astype(np.int64)


def _cut_checked(whole: Geometry, region: Region, h: int, w: int, periodic_lon: bool) -> Geometry:
    """``whole.cut(region)`` for a call that receives an ``h×w`` feature map, with the checks
    every request shares (the region's window is the feature map; a periodic wrap needs the
    whole width)."""
    if (h, w) != region.in_shape:
        raise ValueError(
            f"the feature map is {h}x{w} but the region's input window is "
            f"{region.in_shape[0]}x{region.in_shape[1]} (LR rows [{region.in_rows[0]}, "
            f"{region.in_rows[1]}), columns [{region.in_cols[0]}, {region.in_cols[1]}))"
        )
    if periodic_lon and region.in_cols != (0, region.image_size[1]):
        raise ValueError(
            f"periodic_lon needs the whole width in every tile, but the region's LR columns "
            f"are [{region.in_cols[0]}, {region.in_cols[1]}) of {region.image_size[1]}; "
            "tile along rows only"
        )
    return whole.cut(region)


def _transposed_region(region: Region) -> Region:
    """``region`` of the transposed image: rows and columns swapped."""
    return Region(
        image_size=region.image_size[::-1],
        output_size=region.output_size[::-1],
        in_rows=region.in_cols,
        in_cols=region.in_rows,
        out_rows=region.out_cols,
        out_cols=region.out_rows,
    )


#: Codes of the flat form (:meth:`UpscaleRequest.to_flat`).
_KINDS = ("scale", "size", "coords")
_REGION_FIELDS = 12


@dataclass(frozen=True)
class UpscaleRequest:
    """What one Meta-Upscale call is asked for, as a checked, frozen, hashable value.

    Exactly one of ``scale``, ``size`` or ``coords`` says where the output rows and columns
    lie; ``region`` asks for one part of that output (tiled inference), ``arithmetic`` for the
    official code's float32 grid, ``periodic_lon`` for an LR window that wraps along the width
    (global longitude grids). Every check of a request lives here and runs when it is made; the
    checks that need the input size (``size ≥ input``, the pixel cap, a region fitting the
    feature map) run in :meth:`geometry`.

    Attributes:
        scale: ``(r_v, r_h)``, each finite and ≥ 1 (a number is taken for both axes).
        size: ``(H, W)`` of the output.
        coords: place the output by latitude/longitude (:class:`CoordinateGrid`).
        region: compute only this part of the whole output; the request is the whole image's.
        arithmetic: ``"exact"`` (default) or ``"official"`` (:func:`axis_map`; not with
            ``coords``).
        periodic_lon: the LR window wraps along the width; with ``coords``, their longitudes
            must be periodic too; with ``region``, the region must span the whole width.

    Raises:
        TypeError: a value of the wrong type (a float size, a region that is not a
            :class:`Region`, a non-bool ``periodic_lon``, ...).
        ValueError: for a request that is not exactly one of scale/size/coords, or a bad value.

    Example:
        >>> UpscaleRequest(scale=2.5).out_shape(10, 10)
        (25, 25)
    """

    scale: tuple[float, float] | None = None
    size: tuple[int, int] | None = None
    coords: CoordinateGrid | None = None
    region: Region | None = None
    arithmetic: Arithmetic = "exact"
    periodic_lon: bool = False

    def __post_init__(self) -> None:
        if self.coords is not None:
            if self.scale is not None or self.size is not None:
                raise ValueError("give either coords=... or scale=/size=, not both")
            if not isinstance(self.coords, CoordinateGrid):
                raise ArgumentTypeError(
                    f"coords must be a metasr.geometry.CoordinateGrid, got {self.coords!r}"
                )
        elif (self.scale is None) == (self.size is None):
            raise ValueError("give exactly one of scale=... or size=(H, W)")
        if self.scale is not None:
            object.__setattr__(self, "scale", parse_scale(self.scale))
        if self.size is not None:
            H, W = _as_size_pair(self.size)
            for name, v in (("H", H), ("W", W)):
                # A torch.SymInt is a size torch.compile keeps symbolic: left as it is.
                if isinstance(v, bool) or not isinstance(v, (numbers.Integral, torch.SymInt)):
                    raise ArgumentTypeError(f"size {name} must be an integer, got {v!r}")
            size = tuple(v if isinstance(v, torch.SymInt) else int(v) for v in (H, W))
            object.__setattr__(self, "size", size)
        if self.region is not None and not isinstance(self.region, Region):
            raise ArgumentTypeError(f"region must be a metasr.geometry.Region, got {self.region!r}")
        check_arithmetic(self.arithmetic)
        if self.coords is not None and self.arithmetic != "exact":
            raise ValueError("arithmetic='official' applies to scale=/size= requests, not coords")
        object.__setattr__(self, "periodic_lon", check_periodic_lon(self.periodic_lon))
        if self.periodic_lon and self.coords is not None and not self.coords.periodic_lon:
            raise ValueError(
                "periodic_lon=True wraps the LR window around the longitude circle, but coords "
                "has periodic_lon=False (a regional grid): make both periodic or neither"
            )

    @property
    def kind(self) -> str:
        """``"scale"``, ``"size"`` or ``"coords"``: how the output is placed."""
        return "coords" if self.coords is not None else "size" if self.size else "scale"

    def whole(self) -> UpscaleRequest:
        """The whole image's request (this one without its region)."""
        return self if self.region is None else replace(self, region=None)

    def with_region(self, region: Region | None) -> UpscaleRequest:
        """This request for one part of the output (``None``: the whole output)."""
        return replace(self, region=region)

    def for_head(self, arithmetic: str, periodic_lon: bool) -> UpscaleRequest:
        """This request as a head with these options runs it: the head's grid ``arithmetic``
        and ``periodic_lon`` replace the request's (a network, not its caller, knows how its
        grid is computed and whether its window wraps). The same request when they agree."""
        if (self.arithmetic, self.periodic_lon) == (arithmetic, periodic_lon):
            return self
        return replace(self, arithmetic=arithmetic, periodic_lon=periodic_lon)

    def forward_kwargs(self) -> dict[str, object]:
        """The request as the keywords of a network's ``forward`` (``scale``/``size``/
        ``coords`` and ``region``), for a model that takes no ``request=`` (an exported one)."""
        kwargs = {"scale": self.scale, "size": self.size, "coords": self.coords}
        kwargs["region"] = self.region
        return {k: v for k, v in kwargs.items() if v is not None}

    def transposed(self) -> UpscaleRequest:
        """The request for the transposed input (a test-time dihedral transform): scales
        ``(r_v, r_h)`` → ``(r_h, r_v)``, size ``(H, W)`` → ``(W, H)``, region rows ↔ columns.

        Raises:
            ValueError: for ``coords`` or ``periodic_lon`` (latitude and longitude cannot swap).
        """
        if self.coords is not None or self.periodic_lon:
            raise ValueError(
                "a request by coordinates or periodic in longitude cannot be transposed "
                "(latitude and longitude do not swap)"
            )
        return replace(
            self,
            scale=None if self.scale is None else self.scale[::-1],
            size=None if self.size is None else self.size[::-1],
            region=None if self.region is None else _transposed_region(self.region),
        )

    def source_ordered(self) -> tuple[UpscaleRequest, np.ndarray | None, np.ndarray | None]:
        """A ``coords`` request with the target rows and columns in the source's order, and the
        way back (any other request is its own, with no way back).

        A region cannot cut a geometry whose target is reordered (:meth:`Geometry.cut`), so
        tiles are run on this request, whose geometry has the same rows and columns sorted by
        LR index.

        Returns:
            ``(sorted_request, row_order, col_order)``: row ``i`` of the requested output is
            row ``row_order[i]`` of the output of ``sorted_request`` (``None``: already in
            order; the columns likewise).
        """
        coords = self.coords
        if coords is None:
            return self, None, None
        geom = self.whole().geometry(*coords.in_shape)
        if geom.row_order is None and geom.col_order is None:
            return self, None, None
        lat, lon = np.asarray(coords.dst_lat), np.asarray(coords.dst_lon)
        if geom.row_order is not None:
            lat = lat[np.argsort(geom.row_order)]  # the inverse permutation
        if geom.col_order is not None:
            lon = lon[np.argsort(geom.col_order)]
        ordered = CoordinateGrid(
            coords.src_lat, coords.src_lon, lat, lon, periodic_lon=coords.periodic_lon
        )
        return replace(self, coords=ordered), geom.row_order, geom.col_order

    def out_shape(self, h: int, w: int) -> tuple[int, int]:
        """``(H, W)`` of the call's output for an ``h×w`` input (``region.out_shape`` with a
        region), in plain Python arithmetic: traceable, symbolic sizes allowed.

        The checks that need the index maps run in :meth:`geometry`.
        """
        if self.region is not None:
            return self.region.out_shape
        if self.coords is not None:
            return self.coords.out_shape
        if self.size is not None:
            return self.size
        r_v, r_h = self.scale
        if self.arithmetic == "official":
            # The published code sizes the output as int(h * r) with no guard.
            return int(h * r_v), int(w * r_h)
        # resolve_output_size's formula, floor(h·r + 1e-6), for h, w ≥ 1.
        return int(h * r_v + EPS), int(w * r_h + EPS)

    def geometry(self, h: int, w: int, pos_encoding: str = "asymmetric") -> Geometry:
        """The :class:`Geometry` of a call that receives an ``h×w`` feature map.

        The whole image's geometry is memoised (:data:`GEOMETRY_CACHE_SIZE` of them, keyed by
        the request without its region, the image size and the encoding), so the tiles of one
        request cut one geometry; its arrays are shared and only read.

        Args:
            h, w: the feature map's size (``region.in_shape`` with a region).
            pos_encoding: ``"asymmetric"`` or ``"official"`` (``phi.pos_encoding``).

        Raises:
            ValueError: for a size smaller than the input, an output over the pixel cap, an
                asymmetric request with ``"official"``, or an input or region that does not
                fit the request.
        """
        check_pos_encoding(pos_encoding)
        if self.region is None:
            if self.coords is not None and (h, w) != self.coords.in_shape:
                raise ValueError(
                    f"the feature map is {h}x{w} but the source grid of coords is "
                    f"{self.coords.in_shape[0]}x{self.coords.in_shape[1]} "
                    "(len(src_lat) x len(src_lon))"
                )
            return _whole_geometry(self, int(h), int(w), pos_encoding)
        ih, iw = self.coords.in_shape if self.coords is not None else self.region.image_size
        whole = _whole_geometry(self.whole(), ih, iw, pos_encoding)
        return _cut_checked(whole, self.region, h, w, self.periodic_lon)

    def to_flat(self) -> tuple[list[int], list[float]]:
        """The request as a list of integers and a list of floats (a custom op's arguments are
        tensors and scalars); :meth:`from_flat` reads it back exactly.

        Integers stay integers, so a ``size`` that ``torch.compile`` made symbolic stays so (one
        graph for many sizes). Layout: ints ``[kind, arithmetic, periodic_lon, has_region,
        *region (12 if present), *size or (h, w, H, W, coords.periodic_lon)]``; floats
        ``[r_v, r_h]`` or ``[*src_lat, *src_lon, *dst_lat, *dst_lon]``.
        """
        ints = [
            _KINDS.index(self.kind),
            ARITHMETICS.index(self.arithmetic),
            int(self.periodic_lon),
            int(self.region is not None),
        ]
        floats: list[float] = []
        if self.region is not None:
            r = self.region
            ints += [
                *r.image_size, *r.output_size, *r.in_rows, *r.in_cols, *r.out_rows, *r.out_cols
            ]  # fmt: skip
        if self.coords is not None:
            c = self.coords
            ints += [*c.in_shape, *c.out_shape, int(c.periodic_lon)]
            floats += [*c.src_lat, *c.src_lon, *c.dst_lat, *c.dst_lon]
        elif self.size is not None:
            ints += list(self.size)
        else:
            floats += list(self.scale)
        return ints, floats

    @classmethod
    def from_flat(cls, ints: list[int], floats: list[float]) -> UpscaleRequest:
        """The request :meth:`to_flat` wrote."""
        kind, arithmetic = _KINDS[int(ints[0])], ARITHMETICS[int(ints[1])]
        periodic_lon, has_region = bool(ints[2]), bool(ints[3])
        rest = [int(v) for v in ints[4:]]
        region = None
        if has_region:
            v = rest[:_REGION_FIELDS]
            region = Region(*(tuple(v[i : i + 2]) for i in range(0, _REGION_FIELDS, 2)))
            rest = rest[_REGION_FIELDS:]
        args: dict[str, object] = {}
        if kind == "coords":
            h, w, H, W, periodic = rest[:5]
            cuts = list(itertools.accumulate([0, h, w, H, W]))
            parts = [tuple(floats[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
            args["coords"] = CoordinateGrid(*parts, periodic_lon=bool(periodic))
        elif kind == "size":
            args["size"] = (rest[0], rest[1])
        else:
            args["scale"] = (float(floats[0]), float(floats[1]))
        return cls(**args, region=region, arithmetic=arithmetic, periodic_lon=periodic_lon)


#: Whole-image geometries kept by :meth:`UpscaleRequest.geometry`.
GEOMETRY_CACHE_SIZE = 64


@functools.lru_cache(maxsize=GEOMETRY_CACHE_SIZE)
def _whole_geometry(request: UpscaleRequest, h: int, w: int, pos_encoding: str) -> Geometry:
    """The whole image's :class:`Geometry` of ``request`` (without a region) for ``h×w``."""
    if request.coords is not None:
        return _coords_geometry(request.coords, pos_encoding, request.periodic_lon)
    H, W, r_v, r_h = _output_size(request, h, w)
    if request.arithmetic == "official" and request.size is None:
        H, W = request.out_shape(h, w)
        if H < h or W < w:
            raise ValueError("official arithmetic produced an output smaller than the input")
    official = request.arithmetic == "official"  # checked when the request was made
    row_idx, row_off = _axis_map(H, h, r_v, official)
    col_idx, col_off = _axis_map(W, w, r_h, official)
    return _assemble(
        h, w, H, W, r_v, r_h, row_idx, row_off, col_idx, col_off, pos_encoding,
        request.periodic_lon,
    )  # fmt: skip


def _coords_geometry(coords: CoordinateGrid, pos_encoding: str, periodic_lon: bool) -> Geometry:
    """The whole :class:`Geometry` of a coordinate-placed upscaling (see
    :func:`build_geometry_from_coords`)."""
    h, w = coords.in_shape
    H, W = coords.out_shape
    _check_output_size(h, w, H, W)
    row_idx, row_off = coordinate_axis_map(np.asarray(coords.src_lat), np.asarray(coords.dst_lat))
    col_idx, col_off = coordinate_axis_map(
        np.asarray(coords.src_lon),
        np.asarray(coords.dst_lon),
        period=360.0 if coords.periodic_lon else None,
    )
    row_idx, row_off, row_order = _sorted_axis(row_idx, row_off)
    col_idx, col_off, col_order = _sorted_axis(col_idx, col_off)
    geom = _assemble(
        h, w, H, W, H / h, W / w, row_idx, row_off, col_idx, col_off, pos_encoding, periodic_lon
    )
    return replace(geom, row_order=row_order, col_order=col_order)


def build_geometry_from_coords(
    coords: CoordinateGrid,
    pos_encoding: str = "asymmetric",
    periodic_lon: bool = False,
) -> Geometry:
    """The :class:`Geometry` of a coordinate-placed upscaling:
    ``UpscaleRequest(coords=coords, periodic_lon=periodic_lon).geometry(h, w, pos_encoding)``.

    Rows: :func:`coordinate_axis_map` of the latitudes; columns: of the longitudes, periodic
    (360°) when ``coords.periodic_lon``. The scale factors of the position encoding are
    ``r_v = H / h`` and ``r_h = W / w`` (the mean magnification per axis, as a ``size=`` request
    gives). Rows and columns are sorted so the LR maps are non-decreasing; when the target's
    order differs (it starts elsewhere on the circle, or runs the other way) the geometry
    carries ``row_order``/``col_order`` and the op returns the output in the target's order.

    Args:
        coords: the source and target coordinates.
        pos_encoding: ``"asymmetric"`` or ``"official"``.
        periodic_lon: wrap the LR window along width (see :func:`build_geometry`).

    Raises:
        ValueError: for bad coordinates or encodings.
    """
    request = UpscaleRequest(coords=coords, periodic_lon=periodic_lon)
    return request.geometry(*coords.in_shape, pos_encoding)


def build_geometry(
    h: int,
    w: int,
    scale: object = None,
    size: object = None,
    pos_encoding: str = "asymmetric",
    arithmetic: Arithmetic = "exact",
    region: Region | None = None,
    periodic_lon: bool = False,
    coords: CoordinateGrid | None = None,
) -> Geometry:
    """Validate the request and compute the :class:`Geometry` of one call: the functional
    form of ``UpscaleRequest(scale, size, coords, region, arithmetic,
    periodic_lon).geometry(h, w, pos_encoding)``.

    Position encodings (``docs/design.md`` §1):

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
        coords: place the output by coordinates instead of ``scale``/``size``
            (:func:`build_geometry_from_coords`); ``(h, w)`` must be the source grid's.

    Raises:
        ValueError: for a bad request, or a region that does not fit it or the feature map.
    """
    request = UpscaleRequest(scale, size, coords, region, arithmetic, periodic_lon)
    return request.geometry(h, w, pos_encoding)


def _assemble(
    h: int,
    w: int,
    H: int,
    W: int,
    r_v: float,
    r_h: float,
    row_idx: np.ndarray,
    row_off: np.ndarray,
    col_idx: np.ndarray,
    col_off: np.ndarray,
    pos_encoding: str,
    periodic_lon: bool,
) -> Geometry:
    """A :class:`Geometry` from the axis maps: the position encoding's parts added."""
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
