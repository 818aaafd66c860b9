"""Latitude/longitude grid descriptions: 1-D centres, cell bounds, areas, named grids.

A :class:`Grid` is what the regridders, metrics and netCDF writer share: 1-D latitude and
longitude cell centres (degrees; latitude ascending or descending, longitude ascending) and the
cell bounds that first-order conservative regridding and cell-area weights need. Only regular
and Gaussian (rectilinear) grids are described; curvilinear 2-D lat/lon is not supported yet.

Bounds, unless given: midpoints between neighbouring centres; the outermost latitude bound is
half a spacing beyond the outer centre, clipped to ±90°, and snapped to the pole when the outer
centre is within one spacing of it (so cell-centred, pole-row and Gaussian global grids all
cover the sphere). Longitude bounds are midpoints too, the outer ones half a spacing out; a grid
whose cells span 360° is *periodic* (its first and last columns are neighbours).

Named grids (:func:`named_grid`):

- ``"era5"``: ERA5's 0.25° grid, 721×1440, latitude 90 … −90 (pole rows), longitude 0 … 359.75.
- ``"n96"``: the UM N96 grid of the GloSea4 sample files, 145×192, latitude −90 … 90 every
  1.25° (pole rows), longitude 0 … 358.125 every 1.875° (read from the files' PP headers:
  BZY=−91.25, BDY=1.25, BZX=−1.875, BDX=1.875).
- ``"HxW"`` (e.g. ``"96x144"``): a regular global grid with pole rows laid out as ERA5
  (latitude 90 … −90 in ``H`` rows, longitude 0 … 360−360/W), so ``"721x1440"`` is ERA5's grid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

EARTH_RADIUS_M = 6_371_000.0
"""Mean Earth radius used for cell areas (m)."""

# Coordinates equal within this many degrees are treated as equal (float32 files, 1/12° steps).
_DEG_TOL = 1e-6

#: A row centred within this many degrees of a pole is a pole row. Wider than ``_DEG_TOL``: a
#: PP file's float32 BZY/BDY put air_temp.pp's pole rows at 89.99998569° and −89.99994564°
#: (BZY + i·BDY accumulates the rounding of BDY); no real grid has another row within 11 m
#: of a pole.
POLE_TOL = 1e-4


def _as_1d(values: object, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 2:
        raise ValueError(
            f"{name} is 2-D {arr.shape}: curvilinear lat/lon grids are not supported yet "
            "(only 1-D regular or Gaussian latitude/longitude)"
        )
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(f"{name} must be a 1-D array of at least 2 values, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite values")
    return arr


def _check_monotonic(values: np.ndarray, name: str, *, allow_descending: bool) -> None:
    d = np.diff(values)
    if np.all(d > 0) or (allow_descending and np.all(d < 0)):
        return
    # Report the first step against the direction of the first step (or any non-step).
    ascending = d[0] > 0 or not allow_descending
    bad = int(np.argmax(d <= 0 if ascending else d >= 0))
    raise ValueError(
        f"{name} is not strictly monotonic"
        + ("" if allow_descending else " increasing")
        + f" (first problem near index {bad}: {values[bad]} then {values[bad + 1]})"
    )


def _midpoint_bounds(centres: np.ndarray) -> np.ndarray:
    """``n + 1`` bounds: midpoints inside, half a spacing beyond each end."""
    mid = 0.5 * (centres[1:] + centres[:-1])
    first = centres[0] - 0.5 * (centres[1] - centres[0])
    last = centres[-1] + 0.5 * (centres[-1] - centres[-2])
    return np.concatenate([[first], mid, [last]])


def _latitude_bounds(lat: np.ndarray) -> np.ndarray:
    bounds = _midpoint_bounds(lat)
    step0 = abs(lat[1] - lat[0])
    step1 = abs(lat[-1] - lat[-2])
    # Snap the outer bounds to the pole when the outer centre is within one spacing of it:
    # cell-centred, pole-row and Gaussian global grids then all tile the whole sphere.
    if 90.0 - abs(lat[0]) <= step0 + _DEG_TOL:
        bounds[0] = np.copysign(90.0, lat[0])
    if 90.0 - abs(lat[-1]) <= step1 + _DEG_TOL:
        bounds[-1] = np.copysign(90.0, lat[-1])
    return np.clip(bounds, -90.0, 90.0)


@dataclass(frozen=True, eq=False)
class Grid:
    """A rectilinear latitude/longitude grid.

    Attributes:
        lat: ``(H,)`` cell-centre latitudes in degrees, strictly ascending or descending,
            within [−90, 90].
        lon: ``(W,)`` cell-centre longitudes in degrees, strictly ascending, spanning < 360°.
        lat_bounds: ``(H + 1,)`` latitude cell edges in the order of ``lat``.
        lon_bounds: ``(W + 1,)`` longitude cell edges, ascending.
    """

    lat: np.ndarray
    lon: np.ndarray
    lat_bounds: np.ndarray
    lon_bounds: np.ndarray

    @classmethod
    def from_coords(
        cls,
        lat: object,
        lon: object,
        *,
        lat_bounds: object | None = None,
        lon_bounds: object | None = None,
    ) -> Grid:
        """Validate 1-D coordinates and derive the cell bounds (see the module docstring).

        Args:
            lat: ``(H,)`` latitudes (degrees), ascending or descending.
            lon: ``(W,)`` longitudes (degrees), ascending.
            lat_bounds: optional ``(H + 1,)`` edges (e.g. exact Gaussian bounds).
            lon_bounds: optional ``(W + 1,)`` edges.

        Raises:
            ValueError: 2-D (curvilinear) coordinates, non-finite or non-monotonic values,
                latitudes beyond ±90°, longitudes spanning 360° or more, bad bounds.
        """
        lat_a = _as_1d(lat, "latitude")
        lon_a = _as_1d(lon, "longitude")
        _check_monotonic(lat_a, "latitude", allow_descending=True)
        _check_monotonic(lon_a, "longitude", allow_descending=False)
        if np.any(np.abs(lat_a) > 90.0 + _DEG_TOL):
            raise ValueError(f"latitudes must lie in [-90, 90], got {lat_a.min()} … {lat_a.max()}")
        if lon_a[-1] - lon_a[0] >= 360.0 - _DEG_TOL:
            raise ValueError(
                f"longitudes span {lon_a[-1] - lon_a[0]}° (≥ 360): a column is repeated"
            )
        lat_b = _latitude_bounds(lat_a) if lat_bounds is None else np.asarray(lat_bounds, float)
        lon_b = _midpoint_bounds(lon_a) if lon_bounds is None else np.asarray(lon_bounds, float)
        if lat_b.shape != (lat_a.size + 1,) or lon_b.shape != (lon_a.size + 1,):
            raise ValueError(
                f"bounds need H+1={lat_a.size + 1} and W+1={lon_a.size + 1} values, "
                f"got {lat_b.shape} and {lon_b.shape}"
            )
        # A grid whose cells cover 360° (to float tolerance) is periodic: snap its outer
        # longitude bounds so that the first and last cells meet exactly at the seam.
        span = lon_b[-1] - lon_b[0]
        if abs(span - 360.0) < 1e-3 * np.median(np.diff(lon_a)):
            lon_b = lon_b.copy()
            centre = 0.5 * (lon_b[0] + lon_b[-1] - 360.0)
            lon_b[0], lon_b[-1] = centre, centre + 360.0
        return cls(lat_a, lon_a, lat_b, lon_b)

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return (self.lat.size, self.lon.size)

    @property
    def periodic_lon(self) -> bool:
        """Whether the longitude cells cover the whole circle (first and last columns touch)."""
        return bool(abs(self.lon_bounds[-1] - self.lon_bounds[0] - 360.0) < 1e-9)

    @property
    def has_pole_rows(self) -> bool:
        """Whether the outermost latitude centres sit on the poles (ERA5, UM N96 layouts)."""
        return bool(
            abs(abs(self.lat[0]) - 90.0) < POLE_TOL and abs(abs(self.lat[-1]) - 90.0) < POLE_TOL
        )

    def cell_areas(self, radius: float = EARTH_RADIUS_M) -> np.ndarray:
        """``(H, W)`` spherical cell areas ``R²·Δλ·|sin φ₂ − sin φ₁|`` (m² by default)."""
        dsin = np.abs(np.diff(np.sin(np.deg2rad(self.lat_bounds))))
        dlon = np.deg2rad(np.diff(self.lon_bounds))
        return radius**2 * np.outer(dsin, dlon)

    def __repr__(self) -> str:
        h, w = self.shape
        return (
            f"Grid({h}x{w}, lat {self.lat[0]:g}…{self.lat[-1]:g}, "
            f"lon {self.lon[0]:g}…{self.lon[-1]:g}, periodic_lon={self.periodic_lon})"
        )

    def same_as(self, other: Grid, atol: float = _DEG_TOL) -> bool:
        """Whether both grids have the same centres (to ``atol`` degrees)."""
        return (
            self.shape == other.shape
            and bool(np.allclose(self.lat, other.lat, rtol=0, atol=atol))
            and bool(np.allclose(self.lon, other.lon, rtol=0, atol=atol))
        )


def spacing(grid: Grid) -> tuple[float, float]:
    """``(Δlat, Δlon)``: the grid's median cell sizes in degrees (from its cell bounds)."""
    return (
        float(np.median(np.abs(np.diff(grid.lat_bounds)))),
        float(np.median(np.abs(np.diff(grid.lon_bounds)))),
    )


def check_finer(src: Grid, dst: Grid) -> None:
    """Refuse a target grid coarser than the source on either axis (this is downscaling).

    Cell sizes are compared, not point counts: a small regional target (the UK at 0.25°) is
    finer than a global source with more points (N96).
    """
    (s_lat, s_lon), (d_lat, d_lon) = spacing(src), spacing(dst)
    if d_lat > s_lat * (1 + 1e-6) or d_lon > s_lon * (1 + 1e-6):
        raise ValueError(
            f"target grid {dst.shape[0]}x{dst.shape[1]} ({d_lat:.4g}° x {d_lon:.4g}° cells) is "
            f"coarser than the source {src.shape[0]}x{src.shape[1]} ({s_lat:.4g}° x "
            f"{s_lon:.4g}°) on some axis; metasr upscale only refines (coarsen with "
            "metasr.climate.coarsen)"
        )


def regular_grid(h: int, w: int, *, pole_rows: bool = True, north_first: bool = True) -> Grid:
    """A regular global grid of ``h × w`` cells.

    Args:
        h: rows. With ``pole_rows`` the centres run from pole to pole in ``h`` points (spacing
            ``180/(h−1)``); otherwise they are cell centres ``−90 + (i + ½)·180/h``.
        w: columns, centres ``j·360/w`` (first column on the Greenwich meridian).
        pole_rows: see ``h``.
        north_first: latitude from north to south (as ERA5), else south to north.
    """
    if h < 2 or w < 2:
        raise ValueError(f"a grid needs at least 2×2 cells, got {h}x{w}")
    if pole_rows:
        lat = np.linspace(-90.0, 90.0, h)
    else:
        lat = -90.0 + (np.arange(h) + 0.5) * (180.0 / h)
    if north_first:
        lat = lat[::-1].copy()
    lon = np.arange(w) * (360.0 / w)
    return Grid.from_coords(lat, lon)


def gaussian_grid(nlat: int, nlon: int | None = None) -> Grid:
    """A global Gaussian grid: ``nlat`` Gauss–Legendre latitudes (north first), ``nlon`` columns.

    The latitude bounds are exact: ``sin`` of the bounds is the running sum of the Gaussian
    weights, so each cell's area is proportional to its quadrature weight.

    Args:
        nlat: number of latitudes (even, e.g. 96 for T62/N48, 320 for N160).
        nlon: number of longitudes (default ``2·nlat``).
    """
    if nlat < 2:
        raise ValueError(f"a Gaussian grid needs at least 2 latitudes, got {nlat}")
    nlon = 2 * nlat if nlon is None else nlon
    x, wts = np.polynomial.legendre.leggauss(nlat)  # ascending sin(lat) nodes
    sin_bounds = np.concatenate([[-1.0], -1.0 + np.cumsum(wts)])
    sin_bounds[-1] = 1.0
    lat = np.rad2deg(np.arcsin(x))[::-1].copy()
    lat_b = np.rad2deg(np.arcsin(np.clip(sin_bounds, -1, 1)))[::-1].copy()
    lon = np.arange(nlon) * (360.0 / nlon)
    return Grid.from_coords(lat, lon, lat_bounds=lat_b)


_HXW = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def check_grid_size(h: int, w: int) -> None:
    """Refuse a grid beyond the output caps of :mod:`metasr.geometry` (``H·W`` and each side),
    before any array of its size exists.

    Raises:
        ValueError: the size and the caps.
    """
    from .._limits import MAX_OUTPUT_SIDE, pixel_cap

    cap = pixel_cap()
    if h > MAX_OUTPUT_SIDE or w > MAX_OUTPUT_SIDE or h * w > cap:
        raise ValueError(
            f"grid {h}x{w} exceeds the limit of {cap} cells and {MAX_OUTPUT_SIDE} per side "
            "(metasr.geometry.MAX_OUTPUT_PIXELS, env METASR_MAX_OUTPUT_PIXELS)"
        )


def named_grid(name: str) -> Grid:
    """``"era5"``, ``"n96"`` or ``"HxW"`` (see the module docstring)."""
    key = name.strip().lower()
    if key in ("era5", "era5-0.25", "0.25"):
        return regular_grid(721, 1440, pole_rows=True, north_first=True)
    if key == "n96":
        return regular_grid(145, 192, pole_rows=True, north_first=False)
    match = _HXW.match(key)
    if match:
        h, w = int(match.group(1)), int(match.group(2))
        check_grid_size(h, w)  # before the coordinate arrays of that size are made
        return regular_grid(h, w)
    raise ValueError(f"unknown grid {name!r}: use 'era5', 'n96' or 'HxW' (e.g. '96x144')")


def coarse_grid(grid: Grid, size: tuple[int, int]) -> Grid:
    """A coarser grid over the same area as ``grid``, ``size = (h, w)`` cells.

    It keeps ``grid``'s layout: a grid with pole rows gives one with pole rows (same end
    latitudes, ``h`` points), otherwise ``h`` cells evenly dividing the latitude bounds; a
    periodic grid gets ``w`` columns over 360° starting at ``lon[0]``, a regional one ``w``
    cells evenly dividing its longitude bounds.

    Raises:
        ValueError: ``size`` not smaller than or equal to ``grid.shape`` or below 2.
    """
    h, w = size
    if not (2 <= h <= grid.shape[0] and 2 <= w <= grid.shape[1]):
        raise ValueError(f"coarse size {size} must be between 2x2 and the grid's {grid.shape}")
    if grid.has_pole_rows:
        lat = np.linspace(grid.lat[0], grid.lat[-1], h)
    else:
        edges = np.linspace(grid.lat_bounds[0], grid.lat_bounds[-1], h + 1)
        lat = 0.5 * (edges[1:] + edges[:-1])
    if grid.periodic_lon:
        lon = grid.lon[0] + np.arange(w) * (360.0 / w)
    else:
        edges = np.linspace(grid.lon_bounds[0], grid.lon_bounds[-1], w + 1)
        lon = 0.5 * (edges[1:] + edges[:-1])
    return Grid.from_coords(lat, lon)
