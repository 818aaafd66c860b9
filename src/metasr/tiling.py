"""Tiled inference: upscale inputs too large for memory, tile by tile, with no visible seams.

A Meta-SR output row ``i`` belongs to LR row ``i' = floor(i / r_v)`` and its weights depend on
the offset ``Δv = i / r_v − i'`` (:func:`metasr.geometry.axis_map`). Running the model on a tile
*with the tile's own geometry* would restart that grid at the tile's corner and shift every
offset by ``frac(lo · r_v)``. So every tile is run with the **global** geometry instead:

* the LR input is split into cores of ``tile`` rows/columns; a tile's model input is its core
  plus ``overlap`` rows/columns on each side (clipped at the image border);
* the tile produces exactly the output rows/columns whose global ``i'``/``j'`` fall in its core,
  each with its global offset and scale, and its LR index moved into the tile's frame;
* the output of each tile is copied into its place; cores do not overlap, so no blending is
  needed and every output pixel comes from exactly one tile.

Tiled and whole-image results then differ only where the model's receptive field reaches past
the tile's input (its convolutions see zero padding instead of image content), which
``overlap`` pushes away from the core. ``docs/usage.md`` reports the measured difference.

Each tile is one call of the network's ordinary ``forward`` with the whole image's
:class:`metasr.geometry.UpscaleRequest` and a :class:`metasr.geometry.Region` naming the tile's
input window and outputs: ``model(x_tile, request=request.with_region(region))``. The network
passes the region down to :func:`metasr.meta_upscale`, which computes that part of the global
grid, and restricts its own bicubic residual to it. The network also says how tiles must be placed
(:attr:`metasr.archs.base.MetaSRNet.tile_alignment`: MetaSwinIR's tiles start at multiples of
its effective attention window) and how much context a region needs at least
(:attr:`~metasr.archs.base.MetaSRNet.min_tile_overlap`: the bicubic residual's taps).

A network periodic in longitude (``model.periodic_lon``) wraps its convolutions, windows and
residual around the width, so every column can depend on every other: its tiles are bands of
rows spanning the whole width, and ``tile`` bounds the rows only.

Coordinate-placed requests (``coords=``, a :class:`metasr.geometry.CoordinateGrid`) are tiled
the same way on the coordinate geometry (:meth:`metasr.geometry.UpscaleRequest.geometry`):
each output row goes to the tile whose core holds its LR row by latitude. Two things differ
from ``scale``/``size``:

* the bicubic residual of such a network is the index-ratio bicubic to the target's shape,
  whose taps can sit up to about one LR row away from the coordinate row (96 → 721 rows with
  pole rows), so a tile's window also covers the index-ratio rows of its outputs
  (:func:`plan_axis`'s ``also``);
* a target in another order than the source (latitudes running the other way, longitudes
  starting elsewhere on the circle) is tiled in the source's order and the assembled output
  put back in the target's order (a region cannot carry the permutation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .archs.base import MetaSRNet
from .geometry import Geometry, Region, UpscaleRequest
from .validation import ArgumentTypeError

__all__ = [
    "DEFAULT_OVERLAP",
    "AxisTile",
    "TilePlan",
    "default_overlap",
    "is_tiled",
    "receptive_radius",
    "plan_axis",
    "plan_tiles",
    "plan_tiling",
    "tile_region",
    "upscale",
]

#: Default overlap in LR pixels on each side of a tile's core.
DEFAULT_OVERLAP = 16


@dataclass(frozen=True)
class AxisTile:
    """One tile along one axis (rows or columns).

    Attributes:
        in_lo, in_hi: LR rows ``[in_lo, in_hi)`` fed to the model: the core plus the overlap.
        core_lo, core_hi: LR rows ``[core_lo, core_hi)`` this tile is responsible for.
        out_lo, out_hi: output rows ``[out_lo, out_hi)``: those whose LR row ``i'`` lies in the
            core (contiguous, because ``i'`` never decreases with ``i``).
    """

    in_lo: int
    in_hi: int
    core_lo: int
    core_hi: int
    out_lo: int
    out_hi: int


def plan_axis(
    lr_index: np.ndarray,
    n_in: int,
    tile: int,
    overlap: int,
    align: int = 1,
    also: np.ndarray | None = None,
) -> list[AxisTile]:
    """Split one axis into tiles.

    Args:
        lr_index: ``(n_out,)`` int64, the global LR index of every output row
            (``Geometry.row_idx`` or ``col_idx``).
        n_in: LR length of the axis.
        tile: core length in LR pixels (≥ 1).
        overlap: LR pixels added on each side of a core (≥ 0).
        align: the start of each tile's input is moved down to a multiple of ``align``, so that
            a model with window attention (its ``tile_alignment``) partitions a tile as it
            partitions the whole image.
        also: ``(n_out,)`` int64, another LR index each output reads around (the index-ratio
            row of a coordinate-placed network's bicubic residual); a tile's input then spans
            ``overlap`` rows beyond the core and beyond these indices of its outputs.

    Returns:
        Tiles in order; their cores partition the LR rows that own outputs and their outputs
        partition ``[0, n_out)``.
        A core that owns no output row is dropped: only the last LR rows can own none (e.g. 7
        rows at ×1.37 give 9 output rows, on LR rows 0…5).
    """
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    if overlap < 0:
        raise ValueError(f"tile overlap must be >= 0, got {overlap}")
    if align < 1:
        raise ValueError(f"align must be >= 1, got {align}")
    tiles = []
    for core_lo in range(0, n_in, tile):
        core_hi = min(core_lo + tile, n_in)
        out_lo, out_hi = np.searchsorted(lr_index, [core_lo, core_hi], side="left")
        if out_hi > out_lo:
            lo, hi = core_lo, core_hi
            if also is not None:
                lo = min(lo, int(also[out_lo:out_hi].min()))
                hi = max(hi, int(also[out_lo:out_hi].max()) + 1)
            tiles.append(
                AxisTile(
                    in_lo=max(lo - overlap, 0) // align * align,
                    in_hi=min(hi + overlap, n_in),
                    core_lo=core_lo,
                    core_hi=core_hi,
                    out_lo=int(out_lo),
                    out_hi=int(out_hi),
                )
            )
    return tiles


def plan_tiles(
    model: MetaSRNet, geom: Geometry, tile: int, overlap: int, residual: Geometry | None = None
) -> tuple[list[AxisTile], list[AxisTile]]:
    """Row and column tiles of ``geom`` for ``model``: :func:`plan_axis` on each axis with the
    model's :attr:`~metasr.archs.base.MetaSRNet.tile_alignment`, and ``overlap`` raised to its
    :attr:`~metasr.archs.base.MetaSRNet.min_tile_overlap`.

    A model with ``periodic_lon`` wraps around the width, so its columns are one full-width
    tile and only the rows are cut.

    Args:
        residual: the grid the model's bicubic residual reads, where it is not ``geom``'s (a
            coordinate geometry's residual is the index-ratio upsampling to the target's shape,
            :func:`plan_tiling`): the windows also hold its taps.

    Returns:
        ``(row_tiles, col_tiles)``; the tiles are their product.
    """
    overlap = overlap if overlap < 0 else max(overlap, model.min_tile_overlap)
    also_rows = also_cols = None
    if residual is not None:
        also_rows, also_cols = residual.row_idx, residual.col_idx
    rows = plan_axis(geom.row_idx, geom.h, tile, overlap, model.tile_alignment, also_rows)
    if model.periodic_lon:
        cols = [AxisTile(0, geom.w, 0, geom.w, 0, geom.W)]
    else:
        cols = plan_axis(geom.col_idx, geom.w, tile, overlap, model.tile_alignment, also_cols)
    return rows, cols


def tile_region(geom: Geometry, rows: AxisTile, cols: AxisTile) -> Region:
    """The :class:`~metasr.geometry.Region` of the tile ``rows × cols`` of the whole ``geom``."""
    return Region(
        image_size=(geom.h, geom.w),
        output_size=(geom.H, geom.W),
        in_rows=(rows.in_lo, rows.in_hi),
        in_cols=(cols.in_lo, cols.in_hi),
        out_rows=(rows.out_lo, rows.out_hi),
        out_cols=(cols.out_lo, cols.out_hi),
    )


def _whole(model: torch.nn.Module, x: torch.Tensor, request: UpscaleRequest) -> torch.Tensor:
    """One call of ``model`` on all of ``x``: the request handed over as it is to a metasr
    network, as its keywords to any other model (an exported one)."""
    if isinstance(model, MetaSRNet):
        return model(x, request=request)
    return model(x, **request.forward_kwargs())


@dataclass(frozen=True)
class TilePlan:
    """How one tiled call is cut: planned once (:func:`plan_tiling`), then each tile's forward
    is handed its request (:meth:`tile_request`).

    Attributes:
        request: the whole image's request as the network runs it (its ``arithmetic`` and
            ``periodic_lon``; a ``coords`` target in the source's order,
            :meth:`~metasr.geometry.UpscaleRequest.source_ordered`).
        geometry: the whole image's geometry of ``request`` (memoised: every tile cuts it).
        tiles: ``(rows, cols)`` of every tile, row-major; their outputs partition the output
            (empty for a call that runs whole).
        row_order, col_order: the way back to a reordered ``coords`` target (``None``: none).
    """

    request: UpscaleRequest
    geometry: Geometry
    tiles: list[tuple[AxisTile, AxisTile]]
    row_order: np.ndarray | None = None
    col_order: np.ndarray | None = None

    @property
    def tiled(self) -> bool:
        """Whether the call is cut into tiles (``False``: it runs whole, :attr:`tiles` empty)."""
        return bool(self.tiles)

    def tile_request(self, rows: AxisTile, cols: AxisTile) -> UpscaleRequest:
        """The request of the tile ``rows × cols``: the whole image's, with the tile's region."""
        return self.request.with_region(tile_region(self.geometry, rows, cols))

    def largest(self) -> tuple[AxisTile, AxisTile]:
        """The tile with the most output (then input) rows and the most columns: the one that
        needs the most memory."""
        rows = max(dict.fromkeys(r for r, _ in self.tiles), key=_extent)
        cols = max(dict.fromkeys(c for _, c in self.tiles), key=_extent)
        return rows, cols


def _extent(t: AxisTile) -> tuple[int, int]:
    return t.out_hi - t.out_lo, t.in_hi - t.in_lo


def plan_tiling(
    model: MetaSRNet,
    request: UpscaleRequest,
    h: int,
    w: int,
    tile: int,
    overlap: int | None = DEFAULT_OVERLAP,
) -> TilePlan:
    """Plan one call of ``model`` on an ``h × w`` input: the whole image's geometry of
    ``request`` (completed with the network's options) and, when ``tile`` cuts the input
    (:func:`is_tiled`), its tiles of ``tile`` LR pixels (:func:`plan_tiles`). A call that runs
    whole gets no tiles.

    Args:
        overlap: LR pixels of context around a tile's core; ``None``: :func:`default_overlap`.

    Raises:
        ValueError: a bad request, ``tile`` or ``overlap``, or ``coords`` for another source grid.
    """
    tiled = is_tiled(model, tile, h, w)
    if tiled and overlap is None:
        overlap = default_overlap(model)
    request = model.request(request=request)  # with the network's arithmetic and periodic_lon
    if not tiled:
        return TilePlan(request, request.geometry(h, w, model.pos_encoding), [])
    row_order = col_order = None
    if request.coords is not None:
        if (h, w) != request.coords.in_shape:
            raise ValueError(
                f"the input is {h}x{w} but the source grid of coords is "
                f"{request.coords.in_shape[0]}x{request.coords.in_shape[1]}"
            )
        request, row_order, col_order = request.source_ordered()
    # Only the index maps matter for planning; the encoding is irrelevant to them. Every tile's
    # forward cuts the same whole geometry (UpscaleRequest.geometry memoises it).
    geom = request.geometry(h, w, model.pos_encoding)
    residual = None
    if request.coords is not None and model.bicubic_residual:
        # The residual of a coordinate-placed call is the index-ratio bicubic to the target's
        # shape (MetaSRNet._add_bicubic): its grid, beside the head's, is what the tiles cut.
        residual = UpscaleRequest(size=(geom.H, geom.W)).geometry(h, w)
    row_tiles, col_tiles = plan_tiles(model, geom, tile, overlap, residual)
    tiles = [(rt, ct) for rt in row_tiles for ct in col_tiles]
    return TilePlan(request, geom, tiles, row_order, col_order)


def is_tiled(model: torch.nn.Module, tile: int, h: int, w: int) -> bool:
    """Whether ``tile`` cuts an ``h × w`` input of ``model``: not 0, and smaller than the input
    (a periodic model's tiles are full-width bands, so only its rows count)."""
    periodic = bool(getattr(model, "periodic_lon", False))
    return bool(tile) and (tile < h or (not periodic and tile < w))


def upscale(
    model: torch.nn.Module,
    x: torch.Tensor,
    request: UpscaleRequest,
    tile: int = 0,
    overlap: int | None = DEFAULT_OVERLAP,
    progress: bool = False,
) -> torch.Tensor:
    """Upscale ``x`` with ``model``, whole (``tile=0``) or in tiles of ``tile`` LR pixels.

    Args:
        model: a metasr network in eval mode; tiling needs a
            :class:`~metasr.archs.base.MetaSRNet` (``forward(x, request=...)``).
        x: ``(N, C, h, w)``, on the model's device and in its dtype.
        request: the whole image's :class:`~metasr.geometry.UpscaleRequest` (``scale``,
            ``size`` or ``coords``; the network adds its own ``arithmetic`` and
            ``periodic_lon``). Tiled, the call is planned once (:func:`plan_tiling`) and each
            tile's forward is handed the request with its region.
        tile: core size of a tile in LR pixels; 0 (or ≥ the input) runs the whole input at once.
            For a model with ``periodic_lon`` only the rows are cut (full-width bands).
        overlap: LR pixels of context on each side of a tile's core (raised to the model's
            ``min_tile_overlap`` when smaller); ``None``: :func:`default_overlap`.
        progress: show a tqdm bar over the tiles (when there are several).

    Returns:
        ``(N, Cout, H, W)``: the whole-image result on ``x``'s device; the tiled result as
        float32 on the CPU (it is assembled there so device memory holds one tile at a time).

    Raises:
        TypeError: ``request`` is not an :class:`~metasr.geometry.UpscaleRequest`.
        ValueError: for a bad ``tile`` or ``overlap``, or a model that cannot run on regions.
    """
    if not isinstance(request, UpscaleRequest):
        raise ArgumentTypeError(
            f"request must be a metasr.UpscaleRequest, got {type(request).__name__}"
        )
    if not is_tiled(model, tile, *x.shape[-2:]):
        return _whole(model, x, request)
    if not isinstance(model, MetaSRNet):
        raise ValueError(
            f"tiling needs a metasr network (a MetaSRNet, whose forward takes region=), got "
            f"{type(model).__name__}; run without tiles"
        )
    if request.region is not None:
        raise ValueError("a tiled call computes the whole output: give a request without region")
    cut = plan_tiling(model, request, *x.shape[-2:], tile, overlap)
    jobs = cut.tiles
    if progress and len(jobs) > 1:
        from tqdm.auto import tqdm

        # disable=None: silent when stderr is not a terminal; delay: only runs over ~2 s show
        jobs = tqdm(jobs, desc="tiles", unit="tile", leave=False, disable=None, delay=2.0)
    out: torch.Tensor | None = None
    for rt, ct in jobs:
        xt = x[..., rt.in_lo : rt.in_hi, ct.in_lo : ct.in_hi]
        tile_request = cut.tile_request(rt, ct)
        yt = model(xt, request=tile_request)
        if tuple(yt.shape[-2:]) != tile_request.region.out_shape:
            raise ValueError(
                f"tiling: {type(model).__name__} gave a {tuple(yt.shape[-2:])} tile instead of "
                f"{tile_request.region.out_shape}; it does not compute the region it is given"
            )
        if out is None:
            H, W = cut.geometry.H, cut.geometry.W
            out = torch.empty((x.shape[0], yt.shape[1], H, W), dtype=torch.float32)
        out[..., rt.out_lo : rt.out_hi, ct.out_lo : ct.out_hi] = yt.float().cpu()
    assert out is not None  # plan_axis covers every output row and column
    if cut.row_order is not None:
        out = out[..., torch.from_numpy(cut.row_order), :]
    if cut.col_order is not None:
        out = out[..., torch.from_numpy(cut.col_order)]
    return out


def receptive_radius(model: torch.nn.Module) -> int:
    """An upper bound, in LR pixels, of how far an output's value can depend on the input.

    Counted from the layers, as if they ran one after the other (parallel branches and
    residual skips only make the true reach shorter): ``dilation·(k−1)/2`` per convolution,
    ``window − 1`` per Swin attention block (a pixel sees its whole window; shifted windows
    reach on from there), one for the Meta-Upscale head's 3×3 feature neighbourhood, and the
    bicubic residual's taps. Convolutions of the weight predictor (none today) would count too:
    they see offsets, not pixels, and make the bound only safer.
    """
    from .archs.swin_blocks import SwinBlock

    reach = 1  # the head reads a 3x3 neighbourhood of LR features
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            kh, kw = m.kernel_size
            dh, dw = m.dilation
            reach += max(dh * (kh - 1), dw * (kw - 1)) // 2
        elif isinstance(m, SwinBlock):
            reach += m.window_size - 1
    return reach + int(getattr(model, "min_tile_overlap", 0))


def default_overlap(model: torch.nn.Module) -> int:
    """The tile overlap used when none is given: the network's :func:`receptive_radius`, so
    that a tile's core sees all it would see in the whole image (tiled and whole results then
    agree to float rounding: within one 8-bit code). :data:`DEFAULT_OVERLAP` for models that
    are not metasr networks (they are not tiled)."""
    if not isinstance(model, MetaSRNet):
        return DEFAULT_OVERLAP
    return receptive_radius(model)
