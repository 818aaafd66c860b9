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

from .grids import Grid, check_grid_size, named_grid
from .regrid import METHODS, apply_downscaler, regrid

if TYPE_CHECKING:
    import xarray as xr

_LAT_UNITS = {"degrees_north", "degree_north", "degree_n", "degrees_n", "degreen", "degreesn"}
_LON_UNITS = {"degrees_east", "degree_east", "degree_e", "degrees_e", "degreee", "degreese"}
_LAT_NAMES = {"lat", "latitude", "nav_lat", "lats", "xlat", "rlat"}
_LON_NAMES = {"lon", "longitude", "nav_lon", "lons", "xlon", "long", "rlon"}
_DEGREES = {"degrees", "degree", "deg", "degs", ""}  # CF also allows plain degrees (rotated grids)
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


def _check_coord_units(name: str, var: Any, kind: str) -> None:
    """Refuse a latitude/longitude in other units than degrees (radians would be read as
    degrees: a ±1.57° band stretched over the globe). No ``units`` attribute means degrees."""
    if "units" not in var.attrs:
        return
    units = str(var.attrs["units"]).lower().replace(" ", "")
    if units in (_LAT_UNITS if kind == "lat" else _LON_UNITS) or units in _DEGREES:
        return
    expected = "degrees_north" if kind == "lat" else "degrees_east"
    raise ValueError(
        f"coordinate {name!r} is in {var.attrs['units']!r}; only degrees ({expected}) are "
        "supported: convert it first"
    )


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
    for name, kind in ((lat_name, "lat"), (lon_name, "lon")):
        _check_coord_units(name, da[name], kind)
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


def open_netcdf(path: str | Path) -> xr.Dataset:
    """``xarray.open_dataset`` (lazy) with one-line errors for files that are not netCDF.

    Time units that cannot be decoded (COADS's ``hour since 0000-01-01``) keep the raw numbers,
    with a warning, instead of xarray's advice text.

    Raises:
        ValueError: ``"not a readable netCDF file: PATH"`` (truncated, corrupt, text, PNG…),
            or a folder.
        FileNotFoundError: no such file.
    """
    import warnings

    xr = _xarray()
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{p}: is a folder, not a netCDF file")
    if not p.exists():
        from ..io import missing_reason

        raise FileNotFoundError(f"{p}: {missing_reason(p)}")
    try:
        return xr.open_dataset(p)
    except (OSError, ValueError, TypeError, KeyError, IndexError, RuntimeError) as exc:
        text = str(exc)
        if not ("decode" in text and "time" in text):
            raise ValueError(f"not a readable netCDF file: {p}") from None
        first = text.splitlines()[0].split(". ")[0] if text else "undecodable time"
    warnings.warn(f"{p}: {first}; times kept as raw numbers", stacklevel=2)
    try:
        return xr.open_dataset(p, decode_times=False)
    except (OSError, ValueError, TypeError, KeyError, IndexError, RuntimeError):
        raise ValueError(f"not a readable netCDF file: {p}") from None


def _check_read_size(path: Path, da: Any, max_pixels: int | None) -> None:
    """Refuse, from the header, a variable whose grid is over ``max_pixels`` or whose values
    (as the float64 the pipeline computes in, beside the file's own) exceed free memory."""
    import torch

    from ..io import MAX_PIXELS
    from ..ops.memory import available_memory_bytes, gib

    cap = MAX_PIXELS if max_pixels is None else max_pixels
    sizes = dict(da.sizes)
    lat, lon = (
        [sizes[da[n].dims[0]] for n in da.coords if da[n].ndim == 1 and _kind(str(n), da[n]) == k]
        for k in ("lat", "lon")
    )
    if lat and lon and lat[0] * lon[0] > cap:
        raise ValueError(
            f"{path}: {lat[0]}x{lon[0]} grid is over the limit of {cap} pixels (--max-pixels)"
        )
    need = int(da.size) * (da.dtype.itemsize + 8)
    free = available_memory_bytes(torch.device("cpu"))
    if free is not None and need > free:
        shape = "x".join(str(n) for n in da.shape)
        raise ValueError(
            f"{path}: variable {da.name!r} is {shape} values, about {gib(need)} to read, more "
            f"than the {gib(free)} of free memory"
        )


def read_field(path: str | Path, var: str, *, max_pixels: int | None = None) -> xr.DataArray:
    """Read ``var`` from a netCDF file as a ``(..., lat, lon)`` DataArray (loaded into memory).

    Args:
        path: netCDF file.
        var: variable name.
        max_pixels: refuse a grid of more than this many cells (default
            :data:`metasr.io.MAX_PIXELS`); checked, with the free memory, from the header
            before any value is read.

    Returns:
        The DataArray with its attributes (``units`` …), leading dims and coordinates; dims
        ``lat``/``lon`` last; missing values as NaN.

    Raises:
        ValueError: see :func:`as_field`; a variable not in the file (listing those that are);
            a file that is not netCDF (:func:`open_netcdf`); a grid or size over the limits.
        ImportError: without xarray/netCDF4.
    """
    with open_netcdf(path) as ds:
        if var not in ds.data_vars:
            raise ValueError(
                f"{path}: no variable {var!r}; it has {sorted(map(str, ds.data_vars))}"
            )
        _check_read_size(Path(path), ds[var], max_pixels)
        try:
            da = ds[var].load()
        except (OSError, RuntimeError) as exc:  # the header read, the data does not (HDF error)
            raise ValueError(f"not a readable netCDF file: {path} ({exc})") from None
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
    if os.path.exists(text) or Path(text).suffix.lower() in (".nc", ".nc4", ".cdf", ".netcdf"):
        with open_netcdf(text) as ds:
            lat, lon = _grid_coord(ds, text, "lat"), _grid_coord(ds, text, "lon")
            check_grid_size(len(lat), len(lon))
            return Grid.from_coords(lat.values, lon.values)
    return named_grid(text)


def _grid_coord(ds: Any, path: str, kind: str) -> Any:
    """The 1-D latitude (or longitude) coordinate of a grid file: a dimension coordinate
    first (not ``lat_bnds``, a scalar latitude or a 2-D one listed before it)."""
    found = [
        (str(n), v)
        for n, v in ds.variables.items()
        if v.ndim == 1
        and _kind(str(n), v) == kind
        and not str(n).lower().endswith(("bnds", "bounds"))
    ]
    found.sort(key=lambda item: item[1].dims[0] != item[0])  # dimension coordinates first
    if not found:
        what = "latitude" if kind == "lat" else "longitude"
        raise ValueError(f"{path}: no 1-D {what} coordinate to take a grid from")
    name, var = found[0]
    _check_coord_units(name, var, kind)
    return var


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
    from ..io import check_fits_dtype

    dtype = da.dtype if da.dtype.kind == "f" else np.dtype(np.float64)
    check_fits_dtype(out, dtype)  # float64 results beyond float32 must not become +inf
    result = xr.DataArray(
        out.astype(dtype),
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


def _free_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``… whichever is not in ``taken``."""
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


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
    # A variable may itself be called lat_bnds (or nv): the bounds then take other names
    # rather than replacing it.
    taken = {name, *map(str, ds.dims), *map(str, ds.coords)}
    nv = _free_name("nv", taken)
    bounds = {}
    for kind in ("lat", "lon"):
        bounds[kind] = _free_name(f"{kind}_bnds", taken | {nv})
        taken.add(bounds[kind])
        ds[kind].attrs.update(_coord_attrs(kind) | {"bounds": bounds[kind]})
    lat_b = np.stack([grid.lat_bounds[:-1], grid.lat_bounds[1:]], axis=-1)
    lon_b = np.stack([grid.lon_bounds[:-1], grid.lon_bounds[1:]], axis=-1)
    ds[bounds["lat"]] = xr.DataArray(lat_b, dims=("lat", nv))
    ds[bounds["lon"]] = xr.DataArray(lon_b, dims=("lon", nv))
    ds.attrs["Conventions"] = "CF-1.8"
    if history:
        ds[name].attrs["history"] = _history(ds[name].attrs, history)
    ds.attrs["history"] = ds[name].attrs.pop("history", _history({}, "metasr: written"))
    encoding = {
        name: {"_FillValue": _FILL_VALUE.astype(da.dtype) if da.dtype.kind == "f" else None},
        "lat": {"_FillValue": None},
        "lon": {"_FillValue": None},
        bounds["lat"]: {"_FillValue": None},
        bounds["lon"]: {"_FillValue": None},
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
