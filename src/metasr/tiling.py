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

A model is used as it is, through its ordinary ``forward``: while a tile runs,
:func:`metasr.geometry.geometry_override` tells :func:`metasr.meta_upscale` which part of the
global grid to compute. A model that adds a bicubic upsampling of its input
(``bicubic_residual``) has that term moved onto the global grid as well
(:func:`_bicubic_residual_correction`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .geometry import Geometry, build_geometry, geometry_override

__all__ = ["DEFAULT_OVERLAP", "AxisTile", "plan_axis", "tile_geometry", "upscale"]

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
    lr_index: np.ndarray, n_in: int, tile: int, overlap: int, align: int = 1
) -> list[AxisTile]:
    """Split one axis into tiles.

    Args:
        lr_index: ``(n_out,)`` int64, the global LR index of every output row
            (``Geometry.row_idx`` or ``col_idx``).
        n_in: LR length of the axis.
        tile: core length in LR pixels (≥ 1).
        overlap: LR pixels added on each side of a core (≥ 0).
        align: the start of each tile's input is moved down to a multiple of ``align``, so that
            a model with window attention (``window_size``) partitions a tile as it partitions
            the whole image.

    Returns:
        Tiles in order; their cores partition ``[0, n_in)`` and their outputs ``[0, n_out)``.
        A core that owns no output row is dropped (possible only when ``n_out < n_in``).
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
            tiles.append(
                AxisTile(
                    in_lo=max(core_lo - overlap, 0) // align * align,
                    in_hi=min(core_hi + overlap, n_in),
                    core_lo=core_lo,
                    core_hi=core_hi,
                    out_lo=int(out_lo),
                    out_hi=int(out_hi),
                )
            )
    return tiles


def tile_geometry(geom: Geometry, rows: AxisTile, cols: AxisTile) -> Geometry:
    """The part of the global ``geom`` that one tile computes, in the tile's frame.

    Offsets, scales and position encodings are the global ones; LR indices are moved by the
    tile's input origin ``(rows.in_lo, cols.in_lo)``.

    Returns:
        A :class:`Geometry` for an input of ``(rows.in_hi − rows.in_lo, cols.in_hi − cols.in_lo)``
        and an output of ``(rows.out_hi − rows.out_lo, cols.out_hi − cols.out_lo)``.
    """
    r, c = slice(rows.out_lo, rows.out_hi), slice(cols.out_lo, cols.out_hi)
    return replace(
        geom,
        h=rows.in_hi - rows.in_lo,
        w=cols.in_hi - cols.in_lo,
        H=rows.out_hi - rows.out_lo,
        W=cols.out_hi - cols.out_lo,
        row_idx=geom.row_idx[r] - rows.in_lo,
        col_idx=geom.col_idx[c] - cols.in_lo,
        row_off=geom.row_off[r],
        col_off=geom.col_off[c],
        row_pos=geom.row_pos[r],
        col_pos=geom.col_pos[c],
    )


@dataclass(frozen=True)
class _Window:
    """The tile being computed: the whole input's size and request, and the tile's ranges."""

    shape: tuple[int, int]
    scale: object
    size: object
    arithmetic: str
    rows: AxisTile
    cols: AxisTile


def _tile_geometry_builder(
    win: _Window,
    h: int,
    w: int,
    scale: object = None,
    size: object = None,
    pos_encoding: str = "asymmetric",
    arithmetic: str = "exact",
) -> Geometry:
    """The geometry override while tile ``win`` runs: the whole image's grid, cut to the tile.

    Same signature as :func:`metasr.geometry.build_geometry` after ``win``; the request the
    model passes (the tile's ratios) is ignored in favour of the whole image's request.
    """
    tile_in = (win.rows.in_hi - win.rows.in_lo, win.cols.in_hi - win.cols.in_lo)
    if (h, w) != tile_in:
        raise ValueError(
            f"tiling: Meta-Upscale got a {h}x{w} feature map for a {tile_in[0]}x{tile_in[1]} "
            "input tile; tiling needs the head to run at input resolution"
        )
    if arithmetic != win.arithmetic:
        raise ValueError(f"tiling: head arithmetic {arithmetic!r} differs from the model's")
    # The whole image's geometry (what the model was asked for), cut to the tile.
    geom = build_geometry(
        *win.shape,
        scale=win.scale,
        size=win.size,
        pos_encoding=pos_encoding,
        arithmetic=arithmetic,
    )
    return tile_geometry(geom, win.rows, win.cols)


def _model_arithmetic(model: nn.Module) -> str:
    """The grid arithmetic of ``model``'s heads (``"exact"`` unless they say otherwise)."""
    found = {m.arithmetic for m in model.modules() if hasattr(m, "arithmetic")}
    if len(found) > 1:
        raise ValueError("tiling needs all Meta-Upscale heads of a model to use one arithmetic")
    return found.pop() if found else "exact"


def _bicubic_rows(src: np.ndarray, n_in: int) -> tuple[np.ndarray, int]:
    """Rows of PyTorch's bicubic interpolation matrix (A = −0.75, align_corners=False).

    Args:
        src: ``(n,)`` source coordinates in the global LR frame.
        n_in: global LR length (taps are clamped to ``[0, n_in)``, as ATen does).

    Returns:
        ``(m, lo)``: ``m`` ``(n, hi − lo)`` float64 over the LR rows ``[lo, hi)`` the taps use.
    """
    a = -0.75
    base = np.floor(src)
    t = src - base
    # Keys cubic-convolution weights of the taps base−1 … base+2, written as ATen writes them.
    x1, x2, x3 = t + 1.0, 1.0 - t, 2.0 - t
    weights = np.stack(
        [
            ((a * x1 - 5 * a) * x1 + 8 * a) * x1 - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * x2 - (a + 3)) * x2 * x2 + 1,
            ((a * x3 - 5 * a) * x3 + 8 * a) * x3 - 4 * a,
        ],
        axis=1,
    )
    taps = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3), 0, n_in - 1)
    lo, hi = int(taps.min()), int(taps.max()) + 1
    m = np.zeros((len(src), hi - lo))
    np.add.at(m, (np.repeat(np.arange(len(src))[:, None], 4, axis=1), taps - lo), weights)
    return m, lo


def _bicubic_residual_correction(
    x: torch.Tensor,
    out_shape: tuple[int, int],
    rows: AxisTile,
    cols: AxisTile,
) -> torch.Tensor:
    """Whole-image minus tile-local bicubic upsampling, for models with ``bicubic_residual``.

    Such a model adds ``F.interpolate(x, size=(H, W), mode="bicubic", align_corners=False)``
    to its output. On a tile that term is computed from the tile alone, on the tile's own grid
    (``F.interpolate`` spaces its samples by ``h_t / H_t``, not ``h / H``); adding this
    correction replaces it by the tile's rows and columns of the whole-image term, whose taps
    are read from the whole input ``x`` (so it needs no overlap).

    Shape:
        ``x (N, C, h, w)`` → ``(N, C, H_t, W_t)`` for the tile ``rows × cols``.
    """
    (h, w), (H, W) = x.shape[-2:], out_shape
    H_t, W_t = rows.out_hi - rows.out_lo, cols.out_hi - cols.out_lo
    # F.interpolate(size=...) samples output row i at (i + 0.5)·(h / H) − 0.5.
    src_v = (np.arange(rows.out_lo, rows.out_hi) + 0.5) * (h / H) - 0.5
    src_h = (np.arange(cols.out_lo, cols.out_hi) + 0.5) * (w / W) - 0.5
    mv, v_lo = _bicubic_rows(src_v, h)
    mh, h_lo = _bicubic_rows(src_h, w)
    xf = x.float()
    window = xf[..., v_lo : v_lo + mv.shape[1], h_lo : h_lo + mh.shape[1]]
    mv_t = torch.as_tensor(mv, dtype=torch.float32, device=x.device)
    mh_t = torch.as_tensor(mh, dtype=torch.float32, device=x.device)
    global_term = torch.einsum("ih,nchw,jw->ncij", mv_t, window, mh_t)
    x_tile = xf[..., rows.in_lo : rows.in_hi, cols.in_lo : cols.in_hi]
    local_term = F.interpolate(x_tile, size=(H_t, W_t), mode="bicubic", align_corners=False)
    return (global_term - local_term).to(x.dtype)


def upscale(
    model: nn.Module,
    x: torch.Tensor,
    scale: object = None,
    size: object = None,
    tile: int = 0,
    overlap: int = DEFAULT_OVERLAP,
    progress: bool = False,
) -> torch.Tensor:
    """Upscale ``x`` with ``model``, whole (``tile=0``) or in tiles of ``tile`` LR pixels.

    Args:
        model: a metasr model, ``forward(x, scale=None, size=None)``, in eval mode.
        x: ``(N, C, h, w)``, on the model's device and in its dtype.
        scale: a number or ``(r_v, r_h)``; or ``size=(H, W)``.
        tile: core size of a tile in LR pixels; 0 (or ≥ the input) runs the whole input at once.
        overlap: LR pixels of context on each side of a tile's core.
        progress: show a tqdm bar over the tiles (when there are several).

    Returns:
        ``(N, Cout, H, W)``: the whole-image result on ``x``'s device; the tiled result as
        float32 on the CPU (it is assembled there so device memory holds one tile at a time).
    """
    h, w = x.shape[-2:]
    if not tile or (tile >= h and tile >= w):
        return model(x, scale=scale, size=size)
    arithmetic = _model_arithmetic(model)
    # Only the index maps matter for planning; the encoding is irrelevant to them.
    geom = build_geometry(h, w, scale=scale, size=size, arithmetic=arithmetic)
    H, W = geom.H, geom.W
    # Each tile is called with the global ratios; its heads take the global grid from the
    # geometry override.
    ratios = (geom.r_v, geom.r_h)
    residual = bool(getattr(model, "bicubic_residual", False))
    align = int(getattr(model, "window_size", 1))  # Swin windows start at multiples of it
    row_tiles = plan_axis(geom.row_idx, h, tile, overlap, align)
    col_tiles = plan_axis(geom.col_idx, w, tile, overlap, align)
    jobs = [(rt, ct) for rt in row_tiles for ct in col_tiles]
    if progress and len(jobs) > 1:
        from tqdm.auto import tqdm

        jobs = tqdm(jobs, desc="tiles", unit="tile", leave=False, disable=None)
    out: torch.Tensor | None = None
    for rt, ct in jobs:
        xt = x[..., rt.in_lo : rt.in_hi, ct.in_lo : ct.in_hi]
        win = _Window((h, w), scale, size, arithmetic, rt, ct)
        with geometry_override(partial(_tile_geometry_builder, win)):
            yt = model(xt, scale=ratios)
        expected = (rt.out_hi - rt.out_lo, ct.out_hi - ct.out_lo)
        if tuple(yt.shape[-2:]) != expected:
            raise ValueError(
                f"tiling: {type(model).__name__} gave a {tuple(yt.shape[-2:])} tile instead of "
                f"{expected}; it does not upscale through metasr.meta_upscale (run without --tile)"
            )
        if residual:
            yt = yt + _bicubic_residual_correction(x, (H, W), rt, ct)
        if out is None:
            out = torch.empty((x.shape[0], yt.shape[1], H, W), dtype=torch.float32)
        out[..., rt.out_lo : rt.out_hi, ct.out_lo : ct.out_hi] = yt.float().cpu()
    assert out is not None  # plan_axis covers every output row and column
    return out
