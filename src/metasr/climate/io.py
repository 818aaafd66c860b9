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
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .grids import Grid, check_grid_size, named_grid
from .regrid import METHODS, apply_downscaler, grid_key, regrid_values

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
    from .._extras import require

    require("netCDF4", "climate", "netCDF input/output")  # xarray's engine for .nc files
    return require("xarray", "climate", "netCDF input/output")


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


def check_coord_units(name: str, var: Any, kind: str) -> None:
    """Refuse a latitude/longitude in other units than degrees (radians would be read as
    degrees: a ±1.57° band stretched over the globe). No ``units`` attribute means degrees.

    Raises:
        ValueError: the coordinate, its units and what is supported.
    """
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
    check_coord_units(found[0], da[found[0]], kind)
    return found[0]


def as_field(da: xr.DataArray) -> xr.DataArray:
    """Normalise a DataArray: 1-D ``lat``/``lon`` as its last two dims, validated.

    A lazy (dask-backed) field stays lazy: its values are not read here, so its "all missing"
    check is left to :func:`check_some_valid`.

    Raises:
        ValueError: no lat/lon, 2-D (curvilinear) lat/lon ("not supported yet"), lat/lon not
            dimensions, non-monotonic coordinates, or an all-NaN (in-memory) field.
    """
    lat_name, lon_name = as_field_meta(da)
    # A 1-D lat/lon along another dimension (e.g. lat(y)) becomes that dimension's coordinate.
    swap = {da[n].dims[0]: n for n in (lat_name, lon_name) if da[n].dims[0] != n}
    if swap:
        da = da.swap_dims(swap)
    lead = [d for d in da.dims if d not in (lat_name, lon_name)]
    da = da.transpose(*lead, lat_name, lon_name)
    rename = {lat_name: "lat", lon_name: "lon"}
    da = da.rename({k: v for k, v in rename.items() if k != v})
    if da.chunks is None:
        check_some_valid(da)
    return da


def as_field_meta(da: xr.DataArray) -> tuple[str, str]:
    """Check a field's coordinates (no values read); its latitude and longitude names.

    Raises:
        ValueError: see :func:`as_field`.
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
    Grid.from_coords(da[lat_name].values, da[lon_name].values)  # validates monotonicity etc.
    return lat_name, lon_name


def check_some_valid(da: xr.DataArray) -> None:
    """Raise ``ValueError`` if a field has no finite value (reads a lazy field once, chunk by
    chunk)."""
    if not bool(np.isfinite(da).any()):
        raise ValueError(f"variable {da.name!r} is all NaN/missing")


def _open_dataset(path: str | Path, *, decode_times: bool = True, chunks: Any = None) -> Any:
    """``xr.open_dataset`` with the time fallback: a time axis that cannot be decoded (COADS's
    ``hour since 0000-01-01``, an unknown calendar) is kept as raw numbers with its attributes,
    with a warning, rather than failing the whole file.

    Raises:
        ValueError: ``"not a readable netCDF file: PATH"`` for a truncated or corrupt file,
            text, an image..., instead of the HDF traceback or xarray's backend advice; a
            folder.
        FileNotFoundError: no such file.
    """
    _xarray()  # the missing extra first: its message says what to install
    p = Path(path)
    if p.is_dir() and p.suffix.lower() != ".zarr":
        raise ValueError(f"{p}: is a folder, not a netCDF file")
    if not p.exists():
        from ..io import missing_reason

        raise FileNotFoundError(f"{p}: {missing_reason(p)}")
    try:
        return _open_decoding(path, decode_times, chunks)
    except ImportError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError, RuntimeError):
        raise ValueError(f"not a readable netCDF file: {p}") from None


def _open_decoding(path: str | Path, decode_times: bool, chunks: Any) -> Any:
    """:func:`_open_dataset`'s opening, with the time fallback."""
    xr = _xarray()
    if decode_times:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds = xr.open_dataset(path, chunks=chunks)
            undecoded = [
                w for w in caught if "decode" in str(w.message) and "time" in str(w.message)
            ]
            for w in caught:
                if w not in undecoded:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            if not undecoded:
                return ds
            ds.close()
            reason = one_line_text(undecoded[0].message)
        except ValueError as exc:  # xarray's "unable to decode time units ..." and relatives
            if "time" not in str(exc) and "calendar" not in str(exc):
                raise
            reason = one_line_text(exc)
        # xarray's advice ("Try opening your dataset with decode_times=False or installing
        # cftime") is not for metasr's users: the raw times are kept already.
        reason = reason.split(" Try opening")[0].rstrip(". ")
        warnings.warn(
            f"{path}: time axis kept as raw numbers (it cannot be decoded: {reason})",
            stacklevel=4,
        )
    return xr.open_dataset(path, chunks=chunks, decode_times=False)


def one_line_text(message: object) -> str:
    """A message as one line (the first line of a library's multi-line explanation)."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return lines[0] if lines else type(message).__name__


def _check_read_size(path: Path, da: Any, max_pixels: int | None) -> None:
    """Refuse, from the header, a variable whose grid is over ``max_pixels`` or whose values
    (as the float64 the pipeline computes in, beside the file's own) exceed free memory."""
    import torch

    from ..io import MAX_PIXELS
    from ..ops.memory import available_memory_bytes, gib

    cap = MAX_PIXELS if max_pixels is None else max_pixels
    lat, lon = _find_coord(da, "lat"), _find_coord(da, "lon")
    h, w = int(da[lat].size), int(da[lon].size)
    if h * w > cap:
        raise ValueError(f"{path}: {h}x{w} grid is over the limit of {cap} pixels (--max-pixels)")
    need = int(da.size) * (da.dtype.itemsize + 8)
    free = available_memory_bytes(torch.device("cpu"))
    if free is not None and need > free:
        shape = "x".join(str(n) for n in da.shape)
        raise ValueError(
            f"{path}: variable {da.name!r} is {shape} values, about {gib(need)} to read, more "
            f"than the {gib(free)} of free memory"
        )


def read_field(
    path: str | Path, var: str, *, decode_times: bool = True, max_pixels: int | None = None
) -> xr.DataArray:
    """Read ``var`` from a netCDF file as a ``(..., lat, lon)`` DataArray (loaded into memory).

    Args:
        path: netCDF file.
        var: variable name.
        decode_times: decode the time axis (an axis that cannot be decoded is kept as raw
            numbers with a warning either way).
        max_pixels: refuse a grid of more than this many cells (default
            :data:`metasr.io.MAX_PIXELS`); checked, with the free memory, from the header
            before any value is read.

    Returns:
        The DataArray with its attributes (``units`` …), leading dims and coordinates; dims
        ``lat``/``lon`` last; missing values as NaN.

    Raises:
        ValueError: see :func:`as_field`; a variable not in the file (listing those that are);
            not a netCDF file (:func:`_open_dataset`); a grid or size over the limits.
        ImportError: without xarray/netCDF4.
    """
    with _open_dataset(path, decode_times=decode_times) as ds:
        if var not in ds.data_vars:
            raise ValueError(
                f"{path}: no variable {var!r}; it has {sorted(map(str, ds.data_vars))}"
            )
        _check_read_size(Path(path), ds[var], max_pixels)
        try:
            da = ds[var].load()
        except (OSError, RuntimeError):  # the header reads, the data does not (HDF error)
            raise ValueError(f"not a readable netCDF file: {path}") from None
        # The file's provenance travels with the field (write_field puts it back globally).
        if "history" in ds.attrs and "history" not in da.attrs:
            da.attrs["history"] = str(ds.attrs["history"])
    return as_field(da)


def open_fields(
    path: str | Path,
    variables: Sequence[str],
    *,
    decode_times: bool = True,
    chunk: int | None = None,
) -> xr.Dataset:
    """Open a netCDF file for :func:`downscale_dataset`, lazily: in dask chunks of ``chunk``
    steps of the variables' first leading dimension (:func:`chunk_fields`), or, when ``chunk``
    is None, read on first access. Close it when done (or use it in a ``with``).

    Every variable is checked (present, 1-D lat/lon, all on one grid) from the metadata only;
    no field value is read.

    Raises:
        ValueError: a variable not in the file, a bad grid (see :func:`as_field`), variables
            on different grids.
    """
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    ds = _open_dataset(path, decode_times=decode_times, chunks=None if chunk is None else {})
    try:
        missing = [v for v in variables if v not in ds.data_vars]
        if missing or not variables:
            raise ValueError(
                f"{path}: no variable {', '.join(map(repr, missing)) or '(none given)'}; it has "
                f"{sorted(map(str, ds.data_vars))}"
            )
        grid_names(ds, variables)  # one grid for all
        grid_of(ds, variables[0])  # validates coordinates and bounds
        if chunk is not None:
            ds = chunk_fields(ds, variables, chunk)
    except BaseException:
        ds.close()
        raise
    return ds


def chunk_fields(ds: xr.Dataset, variables: Sequence[str], chunk: int) -> xr.Dataset:
    """``ds`` as dask arrays: ``chunk`` steps of the variables' first leading dimension, the
    other leading dimensions and latitude/longitude whole."""
    names = grid_names(ds, variables)
    lead = [d for d in ds[variables[0]].dims if d not in names.dims]
    chunks: dict[str, int] = {d: (chunk if i == 0 else -1) for i, d in enumerate(lead)}
    chunks.update({d: -1 for d in names.dims})
    return ds.chunk(chunks)


class GridNames(NamedTuple):
    """Names of a field's latitude and longitude coordinates and of their dimensions."""

    lat: str
    lon: str
    dims: tuple[str, str]


def grid_names(ds: xr.Dataset, variables: Sequence[str]) -> GridNames:
    """The latitude/longitude coordinate and dimension names shared by ``variables``.

    Raises:
        ValueError: a variable without 1-D lat/lon (see :func:`as_field`), or variables on
            different grids.
    """
    found = set()
    for v in variables:
        da = ds[v]
        lat, lon = _find_coord(da, "lat"), _find_coord(da, "lon")
        as_field_meta(da)
        found.add((lat, lon, da[lat].dims[0], da[lon].dims[0]))
    if len(found) != 1:
        raise ValueError(
            f"variables {', '.join(variables)} lie on different grids; downscale them in "
            "separate calls"
        )
    lat, lon, ydim, xdim = found.pop()
    return GridNames(lat, lon, (ydim, xdim))


def _edges(bounds: np.ndarray, centres: np.ndarray, name: str, *, lon: bool) -> np.ndarray:
    """``(n, 2)`` CF cell bounds as the ``n + 1`` edges of :class:`Grid` (in the order of the
    centres).

    Raises:
        ValueError: not ``(n, 2)``, or cells that do not touch (gaps or overlaps).
    """
    b = np.asarray(bounds, dtype=np.float64)
    if b.shape != (centres.size, 2) or not np.all(np.isfinite(b)):
        raise ValueError(
            f"bounds variable {name!r} has shape {b.shape}; expected ({centres.size}, 2) finite"
        )
    lo, hi = b.min(axis=1), b.max(axis=1)
    if lon:
        seam = hi - lo > 180.0  # a cell written as (359, 1): it crosses the seam
        lo, hi = np.where(seam, hi, lo), np.where(seam, lo + 360.0, hi)
    elif centres.size > 1 and centres[1] < centres[0]:
        lo, hi = hi, lo  # descending latitude: each cell runs from its upper edge down
    step = np.abs(np.diff(centres)).min() if centres.size > 1 else 1.0
    if not np.allclose(lo[1:], hi[:-1], rtol=0, atol=1e-4 * step):
        raise ValueError(
            f"bounds variable {name!r}: cells are not contiguous (the edges between "
            "neighbouring cells differ); only contiguous rectilinear cells are supported"
        )
    return np.concatenate([lo, hi[-1:]])


def grid_of(da: xr.DataArray | xr.Dataset, var: str | None = None) -> Grid:
    """The :class:`Grid` of a field.

    Args:
        da: a field from :func:`read_field` / :func:`as_field`, or a Dataset (with ``var``).
        var: for a Dataset: the variable whose grid it is. The cell bounds named by the CF
            ``bounds`` attribute of its latitude/longitude are used (a DataArray does not carry
            them: its bounds are midpoints between centres, see :mod:`~metasr.climate.grids`).

    Raises:
        ValueError: see :func:`as_field`; bounds that are not contiguous ``(n, 2)`` cells.
    """
    xr = _xarray()
    if isinstance(da, xr.Dataset):
        if var is None:
            raise ValueError("grid_of(Dataset) needs the variable name")
        ds = da
        names = grid_names(ds, [var])
        lat, lon = ds[names.lat].values, ds[names.lon].values
        edges = {}
        for key, name in (("lat_bounds", names.lat), ("lon_bounds", names.lon)):
            bname = ds[name].attrs.get("bounds")
            if bname is not None and bname in ds.variables:
                centres = lat if key == "lat_bounds" else lon
                edges[key] = _edges(ds[bname].values, centres, bname, lon=key == "lon_bounds")
        return Grid.from_coords(lat, lon, **edges)
    da = as_field(da) if "lat" not in da.dims or "lon" not in da.dims else da
    return Grid.from_coords(da["lat"].values, da["lon"].values)


def resolve_grid(spec: Grid | str | Path) -> Grid:
    """A target grid from a :class:`Grid`, a name (``"era5"``, ``"n96"``, ``"HxW"``) or a
    netCDF file whose 1-D lat/lon define it (with its cell bounds when the file has them)."""
    if isinstance(spec, Grid):
        return spec
    text = str(spec)
    if os.path.exists(text) or Path(text).suffix.lower() in (".nc", ".nc4", ".cdf", ".netcdf"):
        with _open_dataset(text, decode_times=False) as ds:
            lat, lon = _grid_coord(ds, text, "lat"), _grid_coord(ds, text, "lon")
            check_grid_size(ds[lat].size, ds[lon].size)  # before any array of the grid's size
            edges = {}
            for key, name in (("lat_bounds", lat), ("lon_bounds", lon)):
                bname = ds[name].attrs.get("bounds")
                if bname is not None and bname in ds.variables and ds[name].ndim == 1:
                    edges[key] = _edges(
                        ds[bname].values, ds[name].values, bname, lon=key == "lon_bounds"
                    )
            return Grid.from_coords(ds[lat].values, ds[lon].values, **edges)
    return named_grid(text)


def read_target_mask(spec: str | Path, dst: Grid) -> np.ndarray:
    """The target's own valid cells from ``FILE[:VAR]``: ``(H, W)`` bool, False where the
    first field of ``VAR`` (default: the file's only variable on its lat/lon grid) is missing
    (NaN or its ``_FillValue``) — a high-resolution field of the same kind (an SST analysis on
    the target grid: land missing), or a mask made missing outside the domain.

    Raises:
        ValueError: the file's grid is not ``dst`` (same cells, same order), no or several
            candidate variables, or no valid cell.
    """
    text = str(spec)
    path, var = text, ""
    if not os.path.exists(text) and ":" in text:
        path, _, var = text.rpartition(":")
    grid = resolve_grid(path)
    if not grid.same_as(dst):
        raise ValueError(
            f"{path}: its grid {grid.shape[0]}x{grid.shape[1]} is not the target grid "
            f"{dst.shape[0]}x{dst.shape[1]} (same cells in the same order)"
        )
    with _open_dataset(path, decode_times=False) as ds:
        dims = (ds[_grid_coord(ds, path, "lat")].dims[0], ds[_grid_coord(ds, path, "lon")].dims[0])
        names = [str(n) for n, v in ds.data_vars.items() if tuple(v.dims[-2:]) == dims]
        if var and var not in names:
            raise ValueError(f"{path}: no variable {var!r} on its lat/lon grid (has {names})")
        if not var and len(names) != 1:
            raise ValueError(
                f"{path}: {len(names)} variables on its lat/lon grid {names}; name one: {path}:VAR"
            )
        da = ds[var or names[0]]
        first = da.isel({d: 0 for d in da.dims[:-2]})
        valid = np.isfinite(np.asarray(first.values, dtype=np.float64))
    if not valid.any():
        raise ValueError(f"{path}: {var or names[0]} has no valid cell")
    return valid


def _grid_coord(ds: Any, path: str, kind: str) -> str:
    """The name of the 1-D latitude (or longitude) of a grid file: a dimension coordinate
    first, never a bounds variable (a ``lat_bnds`` or a scalar latitude listed before ``lat``
    does not make a valid file "curvilinear")."""
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
    check_coord_units(name, var, kind)
    return name


def _history(attrs: dict[str, Any], line: str) -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    old = str(attrs.get("history", "")).strip()
    # CF: history lists the newest operation first.
    return f"{stamp} {line}" + (f"\n{old}" if old else "")


def output_dtype(da: xr.DataArray) -> np.dtype:
    """The dtype a downscaled field is written in: float64 only for float64 data (as stored in
    the file when it was read from one); float32 for float32, float16 and packed integers."""
    stored = da.encoding.get("dtype", da.dtype)
    return np.dtype(np.float64 if np.dtype(stored) == np.float64 else np.float32)


# Larger chunks run no faster (the work per step is two matrix products) but hold more:
# N96 -> ERA5 bilinear, 24 fields, one core: chunk 1/4/16 took 11.0/8.5/8.4 s at 168/211/376 MB
# peak RSS (docs/climate.md).
_MAX_DEFAULT_CHUNK = 4


def default_chunk(src: Grid, dst: Grid, fields_per_step: int = 1, *, share: float = 0.25) -> int:
    """How many leading steps to process at once: at most 4, fewer when ``share`` of the
    memory this process may still use (available memory, or the ``RLIMIT_DATA``/``RLIMIT_AS``
    limit if lower) would not hold them.

    A step of a regridding holds about five float64 copies of a target field (the one-axis
    product, numerator, denominator, result, float32 copy) and a few of the source field.
    """
    (h, w), (big_h, big_w) = src.shape, dst.shape
    per_step = fields_per_step * (big_h * big_w * 8 * 5 + h * w * 8 * 4)
    budget = _memory_available()
    return max(1, min(_MAX_DEFAULT_CHUNK, int(share * budget // per_step)))


def _memory_available() -> int:
    avail = 4 << 30
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    try:
        import resource

        for which in ("RLIMIT_DATA", "RLIMIT_AS"):
            soft, _ = resource.getrlimit(getattr(resource, which))
            if soft != resource.RLIM_INFINITY:
                avail = min(avail, soft - _rss())
    except (ImportError, AttributeError, ValueError):
        pass
    return max(avail, 64 << 20)


def _rss() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _block(
    x: np.ndarray,
    src: Grid,
    dst: Grid,
    method: str | Downscaler,
    mask_threshold: float,
    dtype: np.dtype,
    target_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Downscale one block ``(..., h, w)`` → ``(..., H, W)`` in ``dtype`` (a dask task, so a
    module-level function: it is pickled to the workers of a distributed cluster)."""
    values = np.asarray(x, dtype=np.float64)
    if isinstance(method, str):
        out = regrid_values(values, src, dst, method)
        if target_mask is not None:
            out = np.where(target_mask, out, np.nan)
    else:
        out = apply_downscaler(method, values, src, dst, mask_threshold, target_valid=target_mask)
    from ..io import check_fits_dtype

    check_fits_dtype(out, dtype)  # a float64 result beyond float32 must not become +inf
    return out.astype(dtype, copy=False)


def downscale(
    da: xr.DataArray,
    target: Grid | str | Path,
    method: str | Downscaler = "bicubic",
    *,
    mask_threshold: float = 0.5,
    source_grid: Grid | None = None,
    target_mask: np.ndarray | None = None,
) -> xr.DataArray:
    """Put ``da`` on ``target``: a baseline regridding or any downscaling function.

    A dask-backed ``da`` gives a lazy result, chunked as ``da`` over its leading dims (each
    chunk whole in lat/lon), so ``.to_netcdf()``/``.to_zarr()`` run in bounded memory, on the
    local scheduler or a ``dask.distributed`` cluster. An in-memory ``da`` is done in batches
    of :func:`default_chunk` leading steps, so only one batch is ever in float64.

    Args:
        da: a field with 1-D lat/lon (any leading dims: every time step, member… is done).
        target: :class:`Grid`, grid name or netCDF file (see :func:`resolve_grid`).
        method: a :data:`~metasr.climate.regrid.METHODS` name (NaN-aware by itself), or a
            :data:`Downscaler`; a function gets finite input (missing values filled by
            :func:`~metasr.climate.regrid.fill_missing`) and its output is re-masked where the
            target cell is less than ``mask_threshold`` valid.
        mask_threshold: see ``method``.
        source_grid: ``da``'s grid with the file's cell bounds (:func:`grid_of` of the
            Dataset); default: from ``da``'s coordinates, bounds at midpoints.
        target_mask: ``(H, W)`` bool, the target's own valid cells (:func:`read_target_mask`):
            the output is missing exactly where it is False (in place of ``mask_threshold``),
            and a model's or the back-projected bicubic's constraint conserves over the valid
            cells (:func:`~metasr.climate.regrid.apply_downscaler`).

    Returns:
        ``(..., lat, lon)`` DataArray on the target grid with ``da``'s name, attributes
        (``units``…), leading coordinates and a new ``history`` line; float64 for float64
        data, float32 otherwise (:func:`output_dtype`).
    """
    xr = _xarray()
    dtype = output_dtype(da)
    da = as_field(da)
    src, dst = grid_of(da), resolve_grid(target)
    if source_grid is not None:
        if not source_grid.same_as(src):
            raise ValueError(f"source_grid {source_grid!r} is not the field's grid {src!r}")
        src = source_grid
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {METHODS} or a function")
        how = f"{method} regridding"
    else:
        how = getattr(method, "__name__", "a downscaling function")
    if target_mask is not None:
        target_mask = np.asarray(target_mask, dtype=bool)
        if target_mask.shape != dst.shape:
            raise ValueError(f"target_mask has shape {target_mask.shape}, the target {dst.shape}")
    args = (src, dst, method, mask_threshold, dtype, target_mask)
    if da.chunks is not None:
        import dask.array as dsa
        from dask.base import tokenize

        data = da.data.rechunk({da.ndim - 2: -1, da.ndim - 1: -1})
        # An explicit name: dask would otherwise hash the method, which may hold a network.
        tag = method if isinstance(method, str) else uuid.uuid4().hex
        name = "metasr-downscale-" + tokenize(
            data.name, grid_key(src), grid_key(dst), tag, mask_threshold, str(dtype),
            None if target_mask is None else np.packbits(target_mask).tobytes(),
        )  # fmt: skip
        out = dsa.map_blocks(
            _block,
            data,
            *args,
            dtype=dtype,
            chunks=(*data.chunks[:-2], (dst.shape[0],), (dst.shape[1],)),
            name=name,
        )
    else:
        values = da.values
        lead = values.shape[:-2]
        flat = values.reshape(-1, *src.shape)
        out = np.empty((flat.shape[0], *dst.shape), dtype=dtype)
        step = default_chunk(src, dst)
        for i in range(0, max(flat.shape[0], 1), step):
            out[i : i + step] = _block(flat[i : i + step], *args)
        out = out.reshape(*lead, *dst.shape)
    coords = {d: da.coords[d] for d in da.dims[:-2] if d in da.coords}
    coords.update({"lat": dst.lat, "lon": dst.lon})
    attrs = dict(da.attrs)
    attrs["history"] = _history(
        attrs, f"metasr: {how} from {src.shape[0]}x{src.shape[1]} to {dst.shape[0]}x{dst.shape[1]}"
    )
    return xr.DataArray(out, dims=da.dims, coords=coords, name=da.name, attrs=attrs)


def _coord_attrs(kind: str) -> dict[str, str]:
    if kind == "lat":
        return {
            "standard_name": "latitude",
            "long_name": "latitude",
            "units": "degrees_north",
            "axis": "Y",
        }
    return {
        "standard_name": "longitude",
        "long_name": "longitude",
        "units": "degrees_east",
        "axis": "X",
    }


# Attributes of a field that describe its stored (packed) values or its old grid.
_STALE_ATTRS = ("valid_range", "valid_min", "valid_max", "actual_range", "scale_factor",
                "add_offset", "_FillValue", "missing_value", "history")  # fmt: skip
# Encoding keys that say what a kept variable is, in any output format (not how the input
# file stored it: chunk sizes, compression and the like belong to the input's format).
_KEPT_ENCODING = ("units", "calendar", "dtype", "_FillValue", "scale_factor", "add_offset",
                  "missing_value")  # fmt: skip


def downscale_dataset(
    ds: xr.Dataset,
    variables: Sequence[str],
    target: Grid | str | Path,
    method: str | Downscaler = "bicubic",
    *,
    mask_threshold: float = 0.5,
    history: str | None = None,
    target_mask: np.ndarray | None = None,
) -> xr.Dataset:
    """Downscale ``variables`` of a Dataset, keeping the rest of the file that still applies.

    The result keeps every coordinate, auxiliary and scalar coordinate, bounds variable (such
    as ``time_bnds``), grid-mapping variable, other variable and global attribute of ``ds``
    that does not lie on the latitude/longitude grid; it replaces latitude and longitude
    (same names) and their bounds with the target's, drops the other variables on the old
    grid (and references to them in ``cell_measures``/``ancillary_variables``), adds a
    ``history`` line and keeps the time encoding (units, calendar). Downscaled fields are
    float32 (float64 only from float64 data); packed integers come out unpacked.

    Args:
        ds: from :func:`open_fields` (lazy or loaded) or any Dataset.
        variables: the fields to downscale, all on one grid.
        target, method, mask_threshold, target_mask: see :func:`downscale` (one method for
            every variable).
        history: a further ``history`` line (e.g. the command line) above the one that says
            what was done.

    Returns:
        The Dataset on the target grid (lazy when ``ds`` is).
    """
    xr = _xarray()
    names = grid_names(ds, variables)
    src, dst = grid_of(ds, variables[0]), resolve_grid(target)
    # New bounds names never take a downscaled variable's name (a field called lat_bnds) nor
    # an existing dimension's (a leading dimension called bnds).
    taken = set(map(str, variables)) | set(map(str, ds.dims))
    lat_bname = str(ds[names.lat].attrs.get("bounds") or _free_name(f"{names.lat}_bnds", taken))
    lon_bname = str(ds[names.lon].attrs.get("bounds") or _free_name(f"{names.lon}_bnds", taken))
    if lat_bname in variables or lon_bname in variables:
        lat_bname = _free_name(f"{names.lat}_bnds", taken | {lon_bname})
        lon_bname = _free_name(f"{names.lon}_bnds", taken | {lat_bname})
    bdim = next(
        (ds[b].dims[-1] for b in (lat_bname, lon_bname) if b in ds.variables),
        _free_name("bnds", taken),
    )
    on_grid = [n for n, v in ds.variables.items() if set(v.dims) & set(names.dims)]
    out = ds.drop_vars(on_grid)
    dropped = set(map(str, on_grid)) - set(variables)
    lat_attrs = {k: v for k, v in ds[names.lat].attrs.items() if k not in _STALE_ATTRS}
    lon_attrs = {k: v for k, v in ds[names.lon].attrs.items() if k not in _STALE_ATTRS}
    lat_attrs.update({**_coord_attrs("lat"), "bounds": lat_bname})
    lon_attrs.update({**_coord_attrs("lon"), "bounds": lon_bname})
    out = out.assign_coords(
        {
            names.lat: xr.Variable((names.lat,), dst.lat, lat_attrs),
            names.lon: xr.Variable((names.lon,), dst.lon, lon_attrs),
        }
    )
    out[lat_bname] = xr.Variable(
        (names.lat, bdim), np.stack([dst.lat_bounds[:-1], dst.lat_bounds[1:]], axis=-1)
    )
    out[lon_bname] = xr.Variable(
        (names.lon, bdim), np.stack([dst.lon_bounds[:-1], dst.lon_bounds[1:]], axis=-1)
    )
    how = ""
    for v in variables:
        field = downscale(
            ds[v], dst, method, mask_threshold=mask_threshold, source_grid=src,
            target_mask=target_mask,
        )  # fmt: skip
        how = field.attrs["history"].splitlines()[0].split(" ", 1)[1]  # after the time stamp
        field = field.rename({"lat": names.lat, "lon": names.lon})
        attrs = {k: a for k, a in ds[v].attrs.items() if k not in _STALE_ATTRS}
        for key in ("cell_measures", "ancillary_variables"):
            if key in attrs:
                kept = _without_references(str(attrs[key]), dropped)
                if kept:
                    attrs[key] = kept
                else:
                    del attrs[key]
        field.attrs = attrs
        # The Dataset's own coordinates (with their attributes and encoding) are kept.
        out[v] = field.drop_vars(list(field.coords))
        out[v].encoding = {
            "dtype": field.dtype,
            "_FillValue": np.asarray(_FILL_VALUE, dtype=field.dtype)[()],
        }
    out = out[[*(n for n in ds.data_vars if n in out), *(n for n in out.data_vars if n not in ds)]]
    for name, var in out.variables.items():
        if name in variables:
            continue
        enc = {k: var.encoding[k] for k in _KEPT_ENCODING if k in var.encoding}
        if name in out.coords or _is_bounds(out, str(name)):
            enc["_FillValue"] = None  # CF: no missing values in coordinates and bounds
            enc.pop("missing_value", None)
        var.encoding = enc
    out = _encode_times(out)
    out.attrs = dict(ds.attrs)
    out.attrs.setdefault("Conventions", "CF-1.8")
    done = _history(ds.attrs, how)
    out.attrs["history"] = _history({"history": done}, history) if history else done
    return out


def _encode_times(ds: xr.Dataset) -> xr.Dataset:
    """Decoded times back to numbers in their file's units and calendar, written as given.

    xarray would rewrite the units text (``hours since 2000-01-01 00:00:00`` becomes ``hours
    since 2000-01-01``) and give a time bounds variable its own ``units``, which CF checkers
    then compare as text with the coordinate's. Bounds take their coordinate's units (CF 7.1),
    so they carry none here.
    """
    from xarray.coding.times import CFDatetimeCoder

    bounds = {str(v.attrs["bounds"]) for v in ds.variables.values() if "bounds" in v.attrs}
    for name, var in list(ds.variables.items()):
        if not (var.dtype.kind == "M" or (var.dtype == object and _is_cftime(var))):
            continue
        given = {k: var.encoding[k] for k in ("units", "calendar") if k in var.encoding}
        encoded = CFDatetimeCoder().encode(var, name=name)
        encoded.attrs.update(given)
        if name in bounds:
            encoded.attrs.pop("units", None)
            encoded.attrs.pop("calendar", None)
        encoded.encoding = {k: v for k, v in var.encoding.items() if k in ("dtype", "_FillValue")}
        if name in ds.coords:
            ds = ds.assign_coords({name: encoded})
        else:
            ds[name] = encoded
    return ds


def _is_cftime(var: Any) -> bool:
    first = var.values.flat[0] if var.size else None
    return type(first).__module__.split(".")[0] == "cftime"


def _without_references(text: str, dropped: set[str]) -> str:
    """``cell_measures``/``ancillary_variables`` text without the dropped variables."""
    if ":" in text:  # cell_measures: "area: areacella volume: volcello"
        words = text.split()
        pairs = [(words[i], words[i + 1]) for i in range(0, len(words) - 1, 2)]
        return " ".join(f"{k} {v}" for k, v in pairs if v not in dropped)
    return " ".join(w for w in text.split() if w not in dropped)


def _is_bounds(ds: xr.Dataset, name: str) -> bool:
    return any(v.attrs.get("bounds") == name for v in ds.variables.values())


def grid_dataset(grid: Grid) -> xr.Dataset:
    """A grid as a CF Dataset: ``lat``/``lon`` with their bounds and the cell areas (m²).

    Written to netCDF it is a target grid file for ``--target-grid FILE`` and for CDO's
    ``remapbil,FILE``/``remapcon,FILE`` (the same cells for both).
    """
    xr = _xarray()
    return xr.Dataset(
        {
            "lat_bnds": (
                ("lat", "bnds"),
                np.stack([grid.lat_bounds[:-1], grid.lat_bounds[1:]], -1),
            ),
            "lon_bnds": (
                ("lon", "bnds"),
                np.stack([grid.lon_bounds[:-1], grid.lon_bounds[1:]], -1),
            ),
            "cell_area": (
                ("lat", "lon"),
                grid.cell_areas(),
                {"standard_name": "cell_area", "units": "m2"},
            ),
        },
        coords={
            "lat": ("lat", grid.lat, {**_coord_attrs("lat"), "bounds": "lat_bnds"}),
            "lon": ("lon", grid.lon, {**_coord_attrs("lon"), "bounds": "lon_bnds"}),
        },
    )


def write_dataset(
    ds: xr.Dataset, path: str | Path, *, overwrite: bool = False, sources: Sequence[Path] = ()
) -> Path:
    """Write a Dataset as netCDF (``.nc``…) or Zarr (``.zarr``), atomically.

    A lazy Dataset is computed and written chunk by chunk (peak memory: the chunks the dask
    scheduler runs at once). The data go to a temporary name beside ``path`` that replaces it
    only when complete (:func:`metasr.io.atomic_write`): an error leaves no partial output.

    Args:
        ds: e.g. from :func:`downscale_dataset`.
        path: output file (``.zarr``: a Zarr store, a folder).
        overwrite: replace an existing ``path`` (otherwise refused).
        sources: the input files: ``path`` may not be one of them.

    Raises:
        ValueError: ``path`` exists and ``overwrite`` is False, or it is one of ``sources``.
    """
    from ..io import atomic_write

    path = Path(path)
    if any(path.exists() and path.resolve() == Path(s).resolve() for s in sources):
        raise ValueError(f"{path}: output would overwrite its input; choose another output")
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")

    def write(tmp: Path) -> None:
        # Each variable's own .encoding says how it is stored (see downscale_dataset).
        if path.suffix.lower() == ".zarr":
            tmp.unlink()  # a Zarr store is a folder
            # Zarr format 2 with consolidated metadata: what most readers open today.
            ds.to_zarr(tmp, mode="w-", consolidated=True, zarr_format=2)
        else:
            ds.to_netcdf(tmp)

    atomic_write(path, write)
    return path


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
        path: output ``.nc`` file (replaced if it exists).
        history: a line prepended to the ``history`` attribute (e.g. the command line).

    Returns:
        ``path``.
    """
    from ..io import atomic_write

    xr = _xarray()
    da = as_field(da)
    grid = grid_of(da)
    name = str(da.name) if da.name is not None else "field"
    ds = da.to_dataset(name=name)
    # A variable may itself be called lat_bnds (or have a dimension nv): the bounds then take
    # other names rather than replacing it.
    taken = {name, *map(str, ds.dims), *map(str, ds.coords)}
    nv = _free_name("nv", taken)
    bounds = {}
    for kind in ("lat", "lon"):
        bounds[kind] = _free_name(f"{kind}_bnds", taken | {nv})
        taken.add(bounds[kind])
        ds[kind].attrs.update({**_coord_attrs(kind), "bounds": bounds[kind]})
    lat_b = np.stack([grid.lat_bounds[:-1], grid.lat_bounds[1:]], axis=-1)
    lon_b = np.stack([grid.lon_bounds[:-1], grid.lon_bounds[1:]], axis=-1)
    ds[bounds["lat"]] = xr.DataArray(lat_b, dims=("lat", nv))
    ds[bounds["lon"]] = xr.DataArray(lon_b, dims=("lon", nv))
    ds.attrs["Conventions"] = "CF-1.8"
    if history:
        ds[name].attrs["history"] = _history(ds[name].attrs, history)
    ds.attrs["history"] = ds[name].attrs.pop("history", _history({}, "metasr: written"))
    encoding: dict[str, dict[str, Any]] = {
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
    atomic_write(Path(path), lambda tmp: ds.to_netcdf(tmp, encoding=encoding))
    return Path(path)
