"""netCDF in and out as ``xarray.DataArray`` (needs ``pip install metasr[climate]``).

- :func:`read_field`: one variable of a netCDF file with its 1-D latitude/longitude, moved to
  the last two dims and named ``lat``/``lon``; every leading dim (time, ensemble member, level…)
  is kept. Missing values (``_FillValue``/``missing_value``) come back as NaN.
- :func:`downscale`: a DataArray onto a target grid, by a baseline regridding method or by any
  callable (a network later), with fill-and-remask of missing values.
- :func:`write_field`: CF-style netCDF: ``lat``/``lon`` with ``standard_name``, ``units``,
  ``axis`` and cell bounds, the variable's attributes and units, a ``history`` line, and NaN
  stored as ``_FillValue`` (so it reads back as NaN).

Latitude/longitude are recognised by ``standard_name`` (``latitude``/``longitude``), by
``units`` (``degrees_north``/``degrees_east`` and variants), or by name (``lat``,
``latitude``, ``lon``, ``longitude``, ``nav_lat``…). xarray is imported inside the functions,
so ``import metasr.climate`` works without it and only these functions ask for the extra.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .grids import Grid, named_grid
from .regrid import METHODS, apply_downscaler, regrid

if TYPE_CHECKING:
    import xarray as xr

_LAT_UNITS = {"degrees_north", "degree_north", "degree_n", "degrees_n", "degreen", "degreesn"}
_LON_UNITS = {"degrees_east", "degree_east", "degree_e", "degrees_e", "degreee", "degreese"}
_LAT_NAMES = {"lat", "latitude", "nav_lat", "lats", "xlat", "rlat"}
_LON_NAMES = {"lon", "longitude", "nav_lon", "lons", "xlon", "long", "rlon"}
_FILL_VALUE = np.float32(1e20)

Downscaler = Callable[[np.ndarray, Grid, Grid], np.ndarray]
"""``fn(filled, src_grid, dst_grid)``: ``(N, h, w)`` finite float64 → ``(N, H, W)``."""


def _xarray() -> Any:
    try:
        import xarray
    except ImportError as exc:
        raise ImportError(
            "netCDF input/output needs xarray and netCDF4: pip install metasr[climate]"
        ) from exc
    return xarray


def _kind(name: str, var: Any) -> str | None:
    """'lat', 'lon' or None for a coordinate variable."""
    std = str(var.attrs.get("standard_name", "")).lower()
    units = str(var.attrs.get("units", "")).lower().replace(" ", "")
    low = name.lower()
    if std in ("latitude", "grid_latitude") or units in _LAT_UNITS or low in _LAT_NAMES:
        return "lat"
    if std in ("longitude", "grid_longitude") or units in _LON_UNITS or low in _LON_NAMES:
        return "lon"
    return None


def _find_coord(da: Any, kind: str) -> str:
    found = [str(n) for n, c in da.coords.items() if _kind(str(n), c) == kind]
    if not found:
        raise ValueError(
            f"variable {da.name!r} has no {'latitude' if kind == 'lat' else 'longitude'} "
            f"coordinate (coordinates: {sorted(map(str, da.coords))}; dims: {list(da.dims)})"
        )
    return found[0]


def as_field(da: xr.DataArray) -> xr.DataArray:
    """Normalise a DataArray: 1-D ``lat``/``lon`` as its last two dims, validated.

    Raises:
        ValueError: no lat/lon, 2-D (curvilinear) lat/lon ("not supported yet"), lat/lon not
            dimensions, non-monotonic coordinates, or an all-NaN field.
    """
    lat_name, lon_name = _find_coord(da, "lat"), _find_coord(da, "lon")
    for name in (lat_name, lon_name):
        if da[name].ndim != 1:
            raise ValueError(
                f"coordinate {name!r} is {da[name].ndim}-D {da[name].dims}: curvilinear "
                "lat/lon grids are not supported yet (only 1-D regular or Gaussian)"
            )
        if da[name].dims[0] not in da.dims:
            raise ValueError(f"coordinate {name!r} is not along a dimension of {da.name!r}")
    if da[lat_name].dims == da[lon_name].dims:
        raise ValueError(
            f"{lat_name!r} and {lon_name!r} share the dimension {da[lat_name].dims[0]!r}: "
            "unstructured/station data is not supported yet (only 1-D regular or Gaussian)"
        )
    # A 1-D lat/lon along another dimension (e.g. lat(y)) becomes that dimension's coordinate.
    swap = {da[n].dims[0]: n for n in (lat_name, lon_name) if da[n].dims[0] != n}
    if swap:
        da = da.swap_dims(swap)
    lead = [d for d in da.dims if d not in (lat_name, lon_name)]
    da = da.transpose(*lead, lat_name, lon_name)
    rename = {lat_name: "lat", lon_name: "lon"}
    da = da.rename({k: v for k, v in rename.items() if k != v})
    Grid.from_coords(da["lat"].values, da["lon"].values)  # validates monotonicity etc.
    if not np.any(np.isfinite(da.values)):
        raise ValueError(f"variable {da.name!r} is all NaN/missing")
    return da


def read_field(path: str | Path, var: str) -> xr.DataArray:
    """Read ``var`` from a netCDF file as a ``(..., lat, lon)`` DataArray (loaded into memory).

    Args:
        path: netCDF file.
        var: variable name.

    Returns:
        The DataArray with its attributes (``units`` …), leading dims and coordinates; dims
        ``lat``/``lon`` last; missing values as NaN.

    Raises:
        ValueError: see :func:`as_field`; a variable not in the file (listing those that are).
        ImportError: without xarray/netCDF4.
    """
    xr = _xarray()
    with xr.open_dataset(path) as ds:
        if var not in ds.data_vars:
            raise ValueError(
                f"{path}: no variable {var!r}; it has {sorted(map(str, ds.data_vars))}"
            )
        da = ds[var].load()
        # The file's provenance travels with the field (write_field puts it back globally).
        if "history" in ds.attrs and "history" not in da.attrs:
            da.attrs["history"] = str(ds.attrs["history"])
    return as_field(da)


def grid_of(da: xr.DataArray) -> Grid:
    """The :class:`Grid` of a field from :func:`read_field` / :func:`as_field`."""
    da = as_field(da) if "lat" not in da.dims or "lon" not in da.dims else da
    return Grid.from_coords(da["lat"].values, da["lon"].values)


def resolve_grid(spec: Grid | str | Path) -> Grid:
    """A target grid from a :class:`Grid`, a name (``"era5"``, ``"n96"``, ``"HxW"``) or a
    netCDF file whose 1-D lat/lon define it."""
    if isinstance(spec, Grid):
        return spec
    text = str(spec)
    if os.path.exists(text):
        xr = _xarray()
        with xr.open_dataset(text) as ds:
            coords = {str(n): c for n, c in ds.variables.items()}
            lat = [c for n, c in coords.items() if _kind(n, c) == "lat"]
            lon = [c for n, c in coords.items() if _kind(n, c) == "lon"]
            if not lat or not lon:
                raise ValueError(f"{text}: no latitude/longitude coordinates to take a grid from")
            return Grid.from_coords(lat[0].values, lon[0].values)
    return named_grid(text)


def _history(attrs: dict[str, Any], line: str) -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    old = str(attrs.get("history", "")).strip()
    # CF: history lists the newest operation first.
    return f"{stamp} {line}" + (f"\n{old}" if old else "")


def downscale(
    da: xr.DataArray,
    target: Grid | str | Path,
    method: str | Downscaler = "bicubic",
    *,
    mask_threshold: float = 0.5,
) -> xr.DataArray:
    """Put ``da`` on ``target``: a baseline regridding or any downscaling function.

    Args:
        da: a field with 1-D lat/lon (any leading dims: every time step, member… is done).
        target: :class:`Grid`, grid name or netCDF file (see :func:`resolve_grid`).
        method: a :data:`~metasr.climate.regrid.METHODS` name (NaN-aware by itself), or a
            :data:`Downscaler`; a function gets finite input (missing values filled by
            :func:`~metasr.climate.regrid.fill_missing`) and its output is re-masked where the
            target cell is less than ``mask_threshold`` valid.
        mask_threshold: see ``method``.

    Returns:
        ``(..., lat, lon)`` DataArray on the target grid with ``da``'s name, attributes
        (``units``…), leading coordinates and a new ``history`` line.
    """
    xr = _xarray()
    da = as_field(da)
    src, dst = grid_of(da), resolve_grid(target)
    values = da.values.astype(np.float64)
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {METHODS} or a function")
        out = regrid(values, src, dst, method)
        how = f"{method} regridding"
    else:
        out = apply_downscaler(method, values, src, dst, mask_threshold)
        how = getattr(method, "__name__", "a downscaling function")
    coords = {d: da.coords[d] for d in da.dims[:-2] if d in da.coords}
    coords.update({"lat": dst.lat, "lon": dst.lon})
    attrs = dict(da.attrs)
    attrs["history"] = _history(
        attrs, f"metasr: {how} from {src.shape[0]}x{src.shape[1]} to {dst.shape[0]}x{dst.shape[1]}"
    )
    result = xr.DataArray(
        out.astype(da.dtype if da.dtype.kind == "f" else np.float64),
        dims=da.dims,
        coords=coords,
        name=da.name,
        attrs=attrs,
    )
    return result


def _coord_attrs(kind: str) -> dict[str, str]:
    if kind == "lat":
        return {
            "standard_name": "latitude",
            "long_name": "latitude",
            "units": "degrees_north",
            "axis": "Y",
            "bounds": "lat_bnds",
        }
    return {
        "standard_name": "longitude",
        "long_name": "longitude",
        "units": "degrees_east",
        "axis": "X",
        "bounds": "lon_bnds",
    }


def write_field(da: xr.DataArray, path: str | Path, *, history: str | None = None) -> Path:
    """Write a field as CF-style netCDF (written to a temporary name, then renamed).

    Args:
        da: ``(..., lat, lon)`` DataArray (as from :func:`read_field` or :func:`downscale`).
        path: output ``.nc`` file.
        history: a line prepended to the ``history`` attribute (e.g. the command line).

    Returns:
        ``path``.
    """
    xr = _xarray()
    da = as_field(da)
    grid = grid_of(da)
    name = str(da.name) if da.name is not None else "field"
    ds = da.to_dataset(name=name)
    ds["lat"].attrs.update(_coord_attrs("lat"))
    ds["lon"].attrs.update(_coord_attrs("lon"))
    lat_b = np.stack([grid.lat_bounds[:-1], grid.lat_bounds[1:]], axis=-1)
    lon_b = np.stack([grid.lon_bounds[:-1], grid.lon_bounds[1:]], axis=-1)
    ds["lat_bnds"] = xr.DataArray(lat_b, dims=("lat", "nv"))
    ds["lon_bnds"] = xr.DataArray(lon_b, dims=("lon", "nv"))
    ds.attrs["Conventions"] = "CF-1.8"
    if history:
        ds[name].attrs["history"] = _history(ds[name].attrs, history)
    ds.attrs["history"] = ds[name].attrs.pop("history", _history({}, "metasr: written"))
    encoding = {
        name: {"_FillValue": _FILL_VALUE.astype(da.dtype) if da.dtype.kind == "f" else None},
        "lat": {"_FillValue": None},
        "lon": {"_FillValue": None},
        "lat_bnds": {"_FillValue": None},
        "lon_bnds": {"_FillValue": None},
    }
    # Fill-and-remask on disk: NaN is stored as _FillValue; drop the source file's own
    # fill/missing settings so they cannot contradict it.
    ds[name].encoding = {}
    ds[name].attrs.pop("_FillValue", None)
    ds[name].attrs.pop("missing_value", None)
    from ..io import atomic_write

    path = Path(path)
    # The one atomic writer (hidden random name, exclusive create, removed on any error or
    # signal): a planted or user's own NAME.nc.part is never followed, overwritten or deleted.
    atomic_write(path, lambda tmp: ds.to_netcdf(tmp, encoding=encoding))
    return path
