"""Baseline regridding between latitude/longitude grids: nearest, bilinear, bicubic, conservative.

Every method is separable on a rectilinear grid, so it is two 1-D weight matrices (see
:func:`axis_weights`) applied as ``out = A_lat @ field @ A_lonᵀ`` over any leading dims; numpy
only (torch tensors are accepted and returned). Grids are arbitrary regular or Gaussian
:class:`~metasr.climate.grids.Grid` s, so any non-integer or asymmetric ratio, up or down, works.

- ``"nearest"``, ``"bilinear"``, ``"bicubic"`` interpolate in *source index space*: each target
  coordinate's fractional source index comes from the source coordinates (exact for regular
  grids, piecewise-linear in between for Gaussian ones). Longitude wraps when the source grid is
  periodic, so the seam between the last and first columns is interpolated like any other gap;
  latitude (and longitude of a regional grid) clamps at the outermost centres, e.g. a pole row of
  a cell-centred source takes the outermost row's value. Bicubic is Keys' cubic convolution
  (a = −½, as MATLAB and PyTorch), with replicated edges. A target point outside the source's
  cells (beyond its outermost cell bounds: a regional source, see :func:`inside_source`) is NaN,
  for every method, as conservative remapping and CDO leave it.
- ``"conservative"``: first-order conservative remapping. A target cell's value is the
  overlap-area-weighted mean of the source cells it overlaps; cells are rectangles in
  (longitude, sin latitude), so the overlap is a product of 1-D overlaps (longitude overlaps are
  taken modulo 360°). On global grids the area-weighted global mean is preserved exactly (to
  rounding); a target cell outside the source domain is NaN.

Missing values (NaN) — land/sea masks: nearest keeps the nearest value, NaN or not; bilinear
and conservative average the valid neighbours only (weights renormalised) and give NaN only
where no neighbour is valid; bicubic uses its 16 neighbours where all are valid and falls back
to the renormalised bilinear value next to a NaN (cubic weights are partly negative, so
renormalising them is unstable). With NaNs, conservative remapping preserves the mean of the
*valid* area only where the valid fraction does not change.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from .._coordinates import fractional_index
from ..validation import ArgumentTypeError
from .grids import Grid

METHODS = ("nearest", "bilinear", "bicubic", "conservative")
"""Names accepted by :func:`regrid`."""

# A renormalisation weight below this is treated as "no valid neighbour".
_MIN_WEIGHT = 1e-12


def _keys_cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    t = np.abs(t)
    return np.where(
        t <= 1,
        (a + 2) * t**3 - (a + 3) * t**2 + 1,
        np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0),
    )


def _interp_matrix(
    src: np.ndarray, dst: np.ndarray, method: str, *, periodic: bool, wrap_targets: bool
) -> np.ndarray:
    """``(len(dst), len(src))`` interpolation weights along one axis."""
    n = src.size
    if periodic:
        # The op's coordinate geometry's formula (one function): targets brought into
        # [src[0], src[0] + 360), index n is column 0 again, so the seam is an ordinary gap.
        u = fractional_index(src, dst, 360.0)
    else:
        targets = dst
        if wrap_targets:
            # A regional longitude axis: −10° still finds 350°. Targets go into the 360° window
            # centred on the region, not the one starting at its first centre: a target just
            # west of that centre (inside the region's first cell) must stay at the west edge,
            # not become +360° and be clamped to the east edge's value.
            start = 0.5 * (src[0] + src[-1]) - 180.0
            targets = start + np.mod(dst - start, 360.0)
        u = fractional_index(src, targets, extrapolate=False)  # clamped at the ends
    rows = np.arange(dst.size)
    mat = np.zeros((dst.size, n))
    if method == "nearest":
        offsets, base, weights = [0], np.floor(u + 0.5), [np.ones_like(u)]
    elif method == "bilinear":
        base = np.floor(u)
        f = u - base
        offsets, weights = [0, 1], [1.0 - f, f]
    else:  # bicubic
        base = np.floor(u)
        f = u - base
        offsets = [-1, 0, 1, 2]
        weights = [_keys_cubic(f - o) for o in offsets]
    for off, wt in zip(offsets, weights, strict=True):
        idx = base.astype(np.int64) + off
        idx = np.mod(idx, n) if periodic else np.clip(idx, 0, n - 1)
        np.add.at(mat, (rows, idx), wt)
    return mat


def _overlap_matrix(src_b: np.ndarray, dst_b: np.ndarray, *, modulo: float | None) -> np.ndarray:
    """``(n_dst, n_src)`` lengths of the overlaps of 1-D cells given by their edges."""
    s_lo = np.minimum(src_b[:-1], src_b[1:])[None, :]
    s_hi = np.maximum(src_b[:-1], src_b[1:])[None, :]
    d_lo = np.minimum(dst_b[:-1], dst_b[1:])[:, None]
    d_hi = np.maximum(dst_b[:-1], dst_b[1:])[:, None]
    if modulo is None:
        return np.maximum(0.0, np.minimum(d_hi, s_hi) - np.maximum(d_lo, s_lo))
    # Put the source's first edge in [dst_lo0 − 360, dst_lo0): then shifts of −360, 0, +360
    # cover every way two cells can meet across the seam.
    shift = dst_b.min() - modulo - src_b.min()
    shift = modulo * np.ceil(shift / modulo)
    s_lo, s_hi = s_lo + shift, s_hi + shift
    out = np.zeros((d_lo.size, s_lo.size))
    for k in (-1.0, 0.0, 1.0, 2.0):
        out += np.maximum(
            0.0, np.minimum(d_hi, s_hi + k * modulo) - np.maximum(d_lo, s_lo + k * modulo)
        )
    return out


# Weights of recent regriddings, keyed by both grids' coordinates and bounds and the method:
# a file of thousands of time steps, streamed in chunks, builds them once. Bounded, since a
# long-lived process may see many grids (an ERA5 pair of matrices is about 3 MB).
_WEIGHTS: OrderedDict[tuple[bytes, bytes, str], tuple[np.ndarray, np.ndarray]] = OrderedDict()
_WEIGHTS_KEPT = 8


def grid_key(grid: Grid) -> bytes:
    return b"|".join(
        np.ascontiguousarray(a, dtype=np.float64).tobytes()
        for a in (grid.lat, grid.lon, grid.lat_bounds, grid.lon_bounds)
    )


def _check_method(method: object) -> None:
    """Refuse a ``method`` that is not a string (TypeError) or not one of :data:`METHODS`."""
    if not isinstance(method, str):
        raise ArgumentTypeError(f"regridding method must be a string, got {method!r}")
    if method not in METHODS:
        raise ValueError(f"unknown regridding method {method!r}; choose from {METHODS}")


def axis_weights(src: Grid, dst: Grid, method: str) -> tuple[np.ndarray, np.ndarray]:
    """The two 1-D weight matrices of a regridding (computed once per grids and method).

    Args:
        src: source grid, shape ``(h, w)``.
        dst: target grid, shape ``(H, W)``.
        method: one of :data:`METHODS`.

    Returns:
        ``(A_lat, A_lon)`` of shapes ``(H, h)`` and ``(W, w)``. For the interpolation methods
        rows sum to 1; for ``"conservative"`` they hold overlap lengths (in sin latitude and in
        degrees of longitude) and :func:`regrid` divides by the covered area.
    """
    _check_method(method)
    key = (grid_key(src), grid_key(dst), method)
    if key in _WEIGHTS:
        _WEIGHTS.move_to_end(key)
        return _WEIGHTS[key]
    weights = _axis_weights(src, dst, method)
    for w in weights:
        w.flags.writeable = False  # shared by every later call
    _WEIGHTS[key] = weights
    while len(_WEIGHTS) > _WEIGHTS_KEPT:
        _WEIGHTS.popitem(last=False)
    return weights


def _axis_weights(src: Grid, dst: Grid, method: str) -> tuple[np.ndarray, np.ndarray]:
    if method == "conservative":
        sin_src = np.sin(np.deg2rad(src.lat_bounds))
        sin_dst = np.sin(np.deg2rad(dst.lat_bounds))
        return (
            _overlap_matrix(sin_src, sin_dst, modulo=None),
            _overlap_matrix(src.lon_bounds, dst.lon_bounds, modulo=360.0),
        )
    a_lat = _interp_matrix(src.lat, dst.lat, method, periodic=False, wrap_targets=False)
    a_lon = _interp_matrix(src.lon, dst.lon, method, periodic=src.periodic_lon, wrap_targets=True)
    return a_lat, a_lon


def _apply(a_lat: np.ndarray, a_lon: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.matmul(np.matmul(a_lat, x), a_lon.T)


def _renormalised(a_lat: np.ndarray, a_lon: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``Σ w·x / Σ w`` over the valid (non-NaN) source cells; NaN where no weight is valid."""
    valid = np.isfinite(x)
    num = _apply(a_lat, a_lon, np.where(valid, x, 0.0))
    # The valid area is usually the same in every time step (none missing, or a fixed land
    # mask): then one 2-D denominator serves them all (half the work of conservative).
    flat = valid.reshape(-1, *x.shape[-2:])
    if flat.shape[0] > 1 and (flat.all() or (flat == flat[0]).all()):
        den = _apply(a_lat, a_lon, flat[0].astype(np.float64))
    else:
        den = _apply(a_lat, a_lon, valid.astype(np.float64))
    scale = np.max(a_lat.sum(axis=1)) * np.max(a_lon.sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > _MIN_WEIGHT * scale, num / den, np.nan)


def check_field(field: np.ndarray, grid: Grid, name: str = "field") -> None:
    """Raise ``ValueError`` unless ``field`` is ``(..., H, W)`` on ``grid`` with a finite value."""
    if field.ndim < 2 or tuple(field.shape[-2:]) != grid.shape:
        raise ValueError(
            f"{name} has shape {tuple(field.shape)}; expected (..., {grid.shape[0]}, "
            f"{grid.shape[1]}) for {grid!r}"
        )
    if not np.any(np.isfinite(field)):
        raise ValueError(f"{name} is all NaN/missing")


def regrid(field: Any, src: Grid, dst: Grid, method: str = "conservative") -> Any:
    """Regrid ``field`` from ``src`` to ``dst`` (see the module docstring for each method).

    Args:
        field: ``(..., h, w)`` numpy array or torch tensor on ``src``; NaN marks missing values.
        src: source grid.
        dst: target grid.
        method: one of :data:`METHODS`.

    Returns:
        ``(..., H, W)`` on ``dst``, float64 numpy for numpy input; a tensor of the input's dtype
        and device for a tensor.

    Raises:
        TypeError: ``method`` is not a string.
        ValueError: unknown method, shape not matching ``src``, or an all-NaN field.
    """
    _check_method(method)
    tensor = _tensor_info(field)
    x = np.asarray(field.detach().cpu().double().numpy() if tensor else field, dtype=np.float64)
    check_field(x, src)
    out = regrid_values(x, src, dst, method)
    if tensor:
        import torch

        return torch.from_numpy(np.ascontiguousarray(out)).to(
            dtype=field.dtype, device=field.device
        )
    return out


def inside_source(src: Grid, dst: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Which target rows and columns have their centres inside the source's cells.

    Latitude: within the source's outermost latitude bounds. Longitude: everywhere for a
    periodic (global) source; for a regional one, within its outermost longitude bounds taken
    modulo 360° (so a 350° target lies inside a −20…20° source).

    Returns:
        ``(rows, cols)``: boolean ``(H,)`` and ``(W,)``.
    """
    tol = 1e-9
    lo, hi = np.min(src.lat_bounds), np.max(src.lat_bounds)
    rows = (dst.lat >= lo - tol) & (dst.lat <= hi + tol)
    if src.periodic_lon:
        cols = np.ones(dst.lon.shape, dtype=bool)
    else:
        start = src.lon_bounds[0]
        cols = start + np.mod(dst.lon - start + tol, 360.0) - tol <= src.lon_bounds[-1] + tol
    return rows, cols


def _blank_outside(out: np.ndarray, src: Grid, dst: Grid) -> np.ndarray:
    """``out`` with NaN at target points outside the source's cells (in place)."""
    rows, cols = inside_source(src, dst)
    if not rows.all():
        out[..., ~rows, :] = np.nan
    if not cols.all():
        out[..., :, ~cols] = np.nan
    return out


def regrid_values(x: np.ndarray, src: Grid, dst: Grid, method: str) -> np.ndarray:
    """:func:`regrid` of a float64 ``(..., h, w)`` array, without the field checks.

    For a block of a larger field (a chunk of time steps), which may be all missing where the
    whole field is not: it gives NaN there.

    Returns:
        ``(..., H, W)`` float64.
    """
    if method == "nearest":
        # Index gather keeps NaN exactly where the nearest source value is NaN.
        a_lat, a_lon = axis_weights(src, dst, "nearest")
        out = x[..., np.argmax(a_lat, axis=1), :][..., np.argmax(a_lon, axis=1)]
    else:
        a_lat, a_lon = axis_weights(src, dst, method)
        has_nan = not np.all(np.isfinite(x))
        if method == "conservative" or (method == "bilinear" and has_nan):
            out = _renormalised(a_lat, a_lon, x)
        elif method == "bicubic" and has_nan:
            valid = np.isfinite(x)
            out = _apply(a_lat, a_lon, np.where(valid, x, 0.0))
            touched = _apply(np.abs(a_lat), np.abs(a_lon), (~valid).astype(np.float64)) > 0
            lin_lat, lin_lon = axis_weights(src, dst, "bilinear")
            out = np.where(touched, _renormalised(lin_lat, lin_lon, x), out)
        else:
            out = _apply(a_lat, a_lon, x)
    return _blank_outside(out, src, dst)


def _tensor_info(field: Any) -> bool:
    return type(field).__module__.split(".")[0] == "torch"


def fill_missing(field: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Fill NaNs for a network that needs finite input; keep the mask for re-masking.

    The missing values are the *harmonic* continuation of the valid ones: each missing cell
    equals the mean of its four grid neighbours (rows end at the first and last row;
    longitude wraps on a global grid and ends at a regional grid's edges), the valid cells
    held fixed — the discrete Laplace equation, solved directly (sparse LU, once per distinct
    mask of the leading fields). The fill joins the valid values without a step at the mask's
    edge (a coast, a sea-ice edge), stays within their range, and is the same for any storage
    order or longitude origin of the field. (A zonal-mean fill, used before, put the field's
    mean, 290 K, into COADS's missing Antarctic rows beside 271 K: an artificial front that a
    network and the conservation constraint spread into the valid cells; docs/climate.md.)

    Needs scipy (the ``climate`` extra) where a value is missing.

    Args:
        field: ``(..., H, W)`` on ``grid``.
        grid: the field's grid.

    Returns:
        ``(filled, valid)``: the filled ``(..., H, W)`` float64 array and the boolean mask of the
        originally valid values. A field with no valid value at all is filled with 0.
    """
    x = np.asarray(field, dtype=np.float64)
    check_field(x, grid)
    valid = np.isfinite(x)
    if valid.all():
        return x.copy(), valid
    xs = x.reshape(-1, *x.shape[-2:])
    vs = valid.reshape(xs.shape)
    out = np.where(vs, xs, 0.0)
    groups: dict[bytes, list[int]] = {}
    for k in range(xs.shape[0]):
        if vs[k].any() and not vs[k].all():
            groups.setdefault(np.packbits(vs[k]).tobytes(), []).append(k)
    for members in groups.values():
        out[members] = _harmonic_fill(out[members], vs[members[0]], bool(grid.periodic_lon))
    return out.reshape(x.shape), valid


def _harmonic_fill(xs: np.ndarray, valid: np.ndarray, periodic: bool) -> np.ndarray:
    """The missing cells of ``xs`` ``(N, H, W)`` (one mask ``valid`` ``(H, W)``, some valid)
    solved from ``A u = b``: ``A`` = (number of neighbours) − (missing neighbours), ``b`` = sum
    of the valid neighbours (symmetric positive definite: every missing cell reaches a valid
    one through its neighbours on a connected grid)."""
    from .._extras import require

    sp = require("scipy.sparse", "climate", "filling missing values")
    splu = require("scipy.sparse.linalg", "climate", "filling missing values").splu

    n, h, w = xs.shape
    missing = ~valid
    index = np.full((h, w), -1, dtype=np.int64)
    index[missing] = np.arange(int(missing.sum()))
    ii, jj = np.nonzero(missing)
    me = index[ii, jj]
    rows, cols, vals = [me], [me], [np.zeros(me.size)]
    b = np.zeros((me.size, n))
    for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        ni, nj = ii + di, jj + dj
        inside = (ni >= 0) & (ni < h)
        if periodic:
            nj = nj % w
        else:
            inside &= (nj >= 0) & (nj < w)
        src, ni, nj = me[inside], ni[inside], nj[inside]
        vals[0][src] += 1.0  # one more neighbour
        other = index[ni, nj]
        free = other >= 0
        rows.append(src[free])
        cols.append(other[free])
        vals.append(-np.ones(int(free.sum())))
        np.add.at(b, src[~free], xs[:, ni[~free], nj[~free]].T)
    a = sp.csc_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(me.size, me.size),
    )
    out = xs.copy()
    out[:, missing] = splu(a).solve(b).T
    return out


def regrid_mask(valid: np.ndarray, src: Grid, dst: Grid, threshold: float = 0.5) -> np.ndarray:
    """Where a target cell counts as valid: its conservatively remapped valid fraction ≥ threshold.

    Args:
        valid: ``(..., h, w)`` boolean mask on ``src``.
        src: source grid.
        dst: target grid.
        threshold: minimum covered valid fraction.

    Returns:
        ``(..., H, W)`` boolean mask on ``dst`` (cells outside the source domain are invalid).
    """
    frac = regrid(np.asarray(valid, dtype=np.float64), src, dst, "conservative")
    return np.nan_to_num(frac, nan=0.0) >= threshold


def _keywords(fn: Callable[..., Any]) -> set[str]:
    """Keyword parameters of ``fn`` (empty where it has no inspectable signature)."""
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def apply_downscaler(
    fn: Callable[[np.ndarray, Grid, Grid], np.ndarray],
    field: Any,
    src: Grid,
    dst: Grid,
    mask_threshold: float = 0.5,
    *,
    target_valid: np.ndarray | None = None,
) -> np.ndarray:
    """Run a downscaling function with fill-and-remask of missing values.

    Args:
        fn: ``fn(filled, src, dst)``: ``(N, h, w)`` finite float64 → ``(N, H, W)`` on ``dst``.
        field: ``(..., h, w)`` on ``src``; NaN marks missing values.
        src: source grid.
        dst: target grid.
        mask_threshold: a target cell is NaN where less than this fraction of its area is
            valid (:func:`regrid_mask`).
        target_valid: ``(H, W)`` or ``(..., H, W)`` (one per field) bool, the target's own
            mask (a finer land-sea mask): the output is NaN exactly where it is False, in place
            of ``mask_threshold``'s, and a function that takes ``dst_valid`` and ``src_valid``
            keywords (:class:`~metasr.climate.model.ModelDownscaler`,
            :func:`~metasr.climate.constraint.bicubic_conservative`) gets both masks, so its
            constraint conserves over the valid target cells.

    Returns:
        ``(..., H, W)`` float64; all NaN for an all-missing ``field`` (a chunk of time steps of
        a larger field may be), without calling ``fn``.

    Raises:
        ValueError: ``fn`` returned another shape.
    """
    values = np.asarray(field, dtype=np.float64)
    lead = values.shape[:-2]
    if not np.any(np.isfinite(values)):
        return np.full((*lead, *dst.shape), np.nan)
    filled, valid = fill_missing(values.reshape(-1, *src.shape), src)
    n = filled.shape[0]
    tv = None
    if target_valid is not None:
        tv = np.asarray(target_valid, dtype=bool)
        if tv.shape[-2:] != dst.shape or tv.ndim not in (2, len(lead) + 2):
            raise ValueError(f"target_valid has shape {tv.shape}, expected (..., {dst.shape})")
        tv = np.broadcast_to(tv.reshape(-1, *dst.shape), (n, *dst.shape))
    if tv is not None and "dst_valid" in _keywords(fn):
        out = np.asarray(fn(filled, src, dst, src_valid=valid, dst_valid=tv), dtype=np.float64)
    else:
        out = np.asarray(fn(filled, src, dst), dtype=np.float64)
    if out.shape != (n, *dst.shape):
        raise ValueError(f"downscaler returned {out.shape}, expected {(n, *dst.shape)}")
    if tv is not None:
        out = np.where(tv, out, np.nan)
    elif not valid.all():
        out = np.where(regrid_mask(valid, src, dst, mask_threshold), out, np.nan)
    return _blank_outside(out, src, dst).reshape(*lead, *dst.shape)
