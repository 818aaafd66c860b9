"""One canonical layout for every grid, so a field model cannot depend on how a file is stored.

The same field may be stored north→south (ERA5) or south→north (UM), with longitudes in
0..360 or −180..180, starting anywhere on the circle. :func:`canonical_layout` brings a grid
to one layout: latitude ascending, longitude ascending, a global grid's longitudes in
[0, 360) and a regional grid's western edge in [0, 360). Two storages of the same field give
the same canonical grid and the same canonical values, so the network sees identical input;
the output is computed on the target's canonical grid and put back into the target's own
order by :meth:`Layout.restore`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .grids import Grid

__all__ = ["Layout", "canonical_layout", "target_layout"]


class Layout(NamedTuple):
    """A grid in canonical order: ``grid``, and which original row/column each canonical one is.

    Attributes:
        grid: the canonical grid (latitude and longitude ascending, exact cell bounds kept).
        lat_index: ``(H,)`` canonical row ``i`` is original row ``lat_index[i]``.
        lon_index: ``(W,)`` canonical column ``j`` is original column ``lon_index[j]``.
    """

    grid: Grid
    lat_index: np.ndarray
    lon_index: np.ndarray

    def apply(self, x: Any) -> Any:
        """Values ``(..., H, W)`` in the original order → canonical order (numpy or torch)."""
        return _take(_take(x, self.lat_index, -2), self.lon_index, -1)

    def restore(self, y: Any) -> Any:
        """Values ``(..., H, W)`` in canonical order → the original order (numpy or torch)."""
        return _take(_take(y, np.argsort(self.lat_index), -2), np.argsort(self.lon_index), -1)


def _take(x: Any, index: np.ndarray, axis: int) -> Any:
    if np.array_equal(index, np.arange(index.size)):
        return x
    if isinstance(x, np.ndarray):
        return np.take(x, index, axis=axis)
    import torch

    return x.index_select(axis, torch.as_tensor(index, device=x.device))


def _layout(grid: Grid, lon_start: float) -> Layout:
    """``grid`` with longitudes mapped into ``[lon_start, lon_start + 360)`` and sorted."""
    lat_index = np.arange(grid.shape[0])
    lat, lat_b = grid.lat, grid.lat_bounds
    if lat.size > 1 and lat[0] > lat[-1]:
        lat_index = lat_index[::-1].copy()
        lat, lat_b = lat[::-1].copy(), lat_b[::-1].copy()
    shift = 360.0 * np.floor((grid.lon - lon_start) / 360.0)
    lon = grid.lon - shift
    lon_index = np.argsort(lon, kind="stable")
    lo = (grid.lon_bounds[:-1] - shift)[lon_index]
    hi = (grid.lon_bounds[1:] - shift)[lon_index]
    # Adjacent cells share an edge; after a roll the seam's two edges differ by 360 only.
    bounds = np.concatenate([lo, hi[-1:]])
    canon = Grid.from_coords(lat, lon[lon_index], lat_bounds=lat_b, lon_bounds=bounds)
    return Layout(canon, lat_index, lon_index)


def canonical_layout(grid: Grid) -> Layout:
    """The canonical layout of a source grid (see the module docstring).

    A global grid's longitudes go to [0, 360); a regional grid keeps its cells contiguous,
    shifted by a multiple of 360° so its western edge lies in [0, 360).
    """
    if grid.periodic_lon:
        return _layout(grid, 0.0)
    west = float(grid.lon_bounds[0])
    return _layout(grid, west - 360.0 * np.floor(west / 360.0) - 1e-9)


def target_layout(grid: Grid, source: Layout) -> Layout:
    """The canonical layout of a target grid, with longitudes placed next to ``source``'s.

    For a global source, longitudes go to [0, 360) as the source's; for a regional source, to
    the 360° window centred on the source's middle, so target cells over the region are
    contiguous with it whatever convention the target uses.
    """
    src = source.grid
    if src.periodic_lon:
        return _layout(grid, 0.0)
    middle = 0.5 * (src.lon_bounds[0] + src.lon_bounds[-1])
    return _layout(grid, middle - 180.0)
