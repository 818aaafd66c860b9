"""Readers of the real climate data sets that ``make climate-data`` fetches.

``tools/climate_data.py`` (``make climate-data``) writes ``etopo5.cdf`` and ``glosea4/*.pp``
into a folder (``datasets/climate``); these readers turn them into fields with exact grids.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .grids import Grid
from .pp import read_pp

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["ETOPO5_SHAPE", "GloSea4", "read_etopo5", "read_glosea4"]

ETOPO5_SHAPE = (2161, 4320)
# ETOPO5's longitudes are stored as linspace(0, 359.92, 4320) — 359.92 is 359 + 11/12 rounded —
# so column j sits 0.0033°·j/4319 east of the true 5' grid line j/12°. Latitudes are exact.
_ETOPO5_LON_TOLERANCE = 0.005


def read_etopo5(path: str | Path) -> xr.DataArray:
    """ETOPO5 relief (m) as a ``(lat, lon)`` DataArray on its exact 1/12° grid (needs xarray).

    The file's longitudes are snapped to ``j/12`` degrees (they deviate by at most 0.0033°, a
    rounding of the last value; see the module notes in ``docs/climate.md``), which makes the
    grid periodic and every 3rd row/column exactly ERA5's 0.25° grid.

    Raises:
        ValueError: not the expected 2161×4320 grid, or longitudes further than 0.005° off.
    """
    from .io import read_field

    da = read_field(path, "ROSE")
    if da.shape != ETOPO5_SHAPE:
        raise ValueError(f"{path}: ROSE has shape {da.shape}, expected {ETOPO5_SHAPE}")
    exact = np.arange(ETOPO5_SHAPE[1]) / 12.0
    off = float(np.abs(da["lon"].values - exact).max())
    if off > _ETOPO5_LON_TOLERANCE:
        raise ValueError(f"{path}: longitudes are {off}° off the 1/12° grid; not ETOPO5?")
    return da.assign_coords(lon=exact)


class GloSea4(NamedTuple):
    """The GloSea4 sample ensemble: ``data`` is ``(member, month, 145, 192)`` kelvin."""

    data: np.ndarray
    grid: Grid
    members: list[str]
    months: list[tuple[int, int]]


def read_glosea4(folder: str | Path) -> GloSea4:
    """Read every ``ensemble_*.pp`` of ``folder`` (numpy only; see :mod:`metasr.climate.pp`).

    Raises:
        ValueError: no files, or members with different grids or months.
    """
    files = sorted(Path(folder).glob("ensemble_*.pp"))
    if not files:
        raise ValueError(f"no ensemble_*.pp files in {folder}")
    stacks, months, grid = [], None, None
    for f in files:
        fields = read_pp(f)
        these = [p.t1[:2] for p in fields]
        if months is None:
            months, grid = these, fields[0].grid
        if these != months or any(not p.grid.same_as(grid) for p in fields):
            raise ValueError(f"{f}: months or grid differ from {files[0].name}")
        stacks.append(np.stack([p.data for p in fields]))
    return GloSea4(np.stack(stacks), grid, [f.stem for f in files], list(months))  # type: ignore[arg-type]
