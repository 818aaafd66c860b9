"""Training pairs for gridded fields: coarsening at any ratio, static predictor channels.

- :func:`coarsen`: a high-resolution field and its grid → the low-resolution input on a coarser
  grid of the same layout (:func:`~metasr.climate.grids.coarse_grid`), at non-integer and
  asymmetric ratios. ``"conservative"`` (default) is the area average of first-order
  conservative remapping, which is what a coarse climate model's grid-box value means;
  ``"bicubic"`` is the image protocol (MATLAB's antialiased bicubic per axis, in index space, as
  :func:`metasr.data.resize.imresize`), for comparison with photo-trained models.
- :func:`static_predictors`: orography, land-sea mask and latitude as extra ``(S, H, W)``
  channels on a grid, and :func:`with_static_channels` to append them to a batch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..validation import ArgumentTypeError, is_real
from .grids import Grid, coarse_grid
from .regrid import check_field, fill_missing, regrid, regrid_mask

COARSEN_METHODS = ("conservative", "bicubic")
"""Names accepted by :func:`coarsen`."""


def coarse_size(shape: tuple[int, int], scale: float | tuple[float, float]) -> tuple[int, int]:
    """``(floor(H/r_v), floor(W/r_h))`` (with a 1e-6 guard, as :mod:`metasr.geometry`).

    Raises:
        TypeError: ``scale`` is not a number or a pair of numbers.
        ValueError: a ratio below 1 or not finite, or a result below 2 cells.
    """
    if is_real(scale):
        r_v = r_h = scale
    elif isinstance(scale, (tuple, list)) and len(scale) == 2:
        r_v, r_h = scale
    else:
        raise ArgumentTypeError(f"coarsening ratio must be a number or a pair, got {scale!r}")
    for r in (r_v, r_h):
        if not is_real(r):
            raise ArgumentTypeError(f"coarsening ratios must be numbers, got {scale!r}")
        if not (math.isfinite(r) and r >= 1.0):
            raise ValueError(f"coarsening ratios must be finite and >= 1, got {scale!r}")
    size = (math.floor(shape[0] / r_v + 1e-6), math.floor(shape[1] / r_h + 1e-6))
    if min(size) < 2:
        raise ValueError(f"ratio {scale!r} leaves {size} cells from {shape}; need at least 2x2")
    return size


def coarsen(
    field: Any,
    grid: Grid,
    scale: float | tuple[float, float] | None = None,
    *,
    size: tuple[int, int] | None = None,
    target: Grid | None = None,
    method: str = "conservative",
) -> tuple[np.ndarray, Grid]:
    """Make the low-resolution input of a training pair.

    Give exactly one of ``scale`` (``r`` or ``(r_v, r_h)``, ≥ 1, any real), ``size`` (``(h, w)``)
    or ``target`` (a coarser grid of your own).

    Args:
        field: ``(..., H, W)`` on ``grid``; NaN marks missing values (kept where a coarse cell
            is less than half valid, see :func:`~metasr.climate.regrid.regrid_mask`).
        grid: the high-resolution grid.
        scale: ratio per axis.
        size: coarse ``(h, w)``.
        target: coarse grid (with ``method="conservative"`` only).
        method: one of :data:`COARSEN_METHODS`.

    Returns:
        ``(lr, lr_grid)``: ``(..., h, w)`` float64 and its grid.
    """
    if sum(v is not None for v in (scale, size, target)) != 1:
        raise ValueError("give exactly one of scale=, size= or target=")
    if method not in COARSEN_METHODS:
        raise ValueError(f"unknown coarsening method {method!r}; choose from {COARSEN_METHODS}")
    x = np.asarray(field, dtype=np.float64)
    check_field(x, grid)
    if target is None:
        h_w = coarse_size(grid.shape, scale) if size is None else tuple(size)  # type: ignore[arg-type]
        target = coarse_grid(grid, h_w)  # type: ignore[arg-type]
    elif method != "conservative":
        raise ValueError("target= is only for method='conservative' (bicubic works in index space)")
    if target.shape[0] > grid.shape[0] or target.shape[1] > grid.shape[1]:
        raise ValueError(f"target grid {target.shape} is finer than the field's {grid.shape}")
    if method == "conservative":
        return regrid(x, grid, target, "conservative"), target
    from ..data.resize import imresize

    filled, valid = fill_missing(x, grid)
    lr = np.asarray(imresize(filled, size=target.shape))
    if not valid.all():
        lr = np.where(regrid_mask(valid, grid, target), lr, np.nan)
    return lr, target


def latitude_channel(grid: Grid) -> np.ndarray:
    """``(H, W)`` sine of latitude: in [−1, 1], smooth across the poles, equal-area spaced."""
    return np.broadcast_to(np.sin(np.deg2rad(grid.lat))[:, None], grid.shape).copy()


def static_predictors(
    grid: Grid,
    *,
    orography: tuple[np.ndarray, Grid] | None = None,
    land_sea_mask: tuple[np.ndarray, Grid] | None = None,
    latitude: bool = True,
    orography_scale: float = 1e-3,
) -> np.ndarray:
    """Static input channels on ``grid``, in the order orography, land-sea mask, latitude.

    Each given field is conservatively remapped from its own grid to ``grid`` (so one relief
    file serves every resolution).

    Args:
        grid: the grid the channels are for (the network's input grid).
        orography: ``(elevation, its_grid)``; elevation in metres, sea floor allowed: it is
            clipped at 0 (sea level) and multiplied by ``orography_scale`` (default: km).
        land_sea_mask: ``(mask, its_grid)`` with 1 on land, 0 on sea (a fraction after
            remapping); e.g. ``relief > 0`` of a relief file.
        latitude: add :func:`latitude_channel`.
        orography_scale: factor applied to the clipped elevation.

    Returns:
        ``(S, H, W)`` float64 channels (``S`` = number of requested predictors).

    Raises:
        ValueError: no predictor requested, or a field not matching its grid.
    """
    channels: list[np.ndarray] = []
    if orography is not None:
        elev, elev_grid = orography
        height = np.clip(np.asarray(elev, dtype=np.float64), 0.0, None)
        channels.append(regrid(height, elev_grid, grid, "conservative") * orography_scale)
    if land_sea_mask is not None:
        mask, mask_grid = land_sea_mask
        channels.append(regrid(np.asarray(mask, dtype=np.float64), mask_grid, grid, "conservative"))
    if latitude:
        channels.append(latitude_channel(grid))
    if not channels:
        raise ValueError("no static predictor requested")
    return np.stack(channels)


def with_static_channels(batch: Any, static: Any) -> Any:
    """Append ``(S, H, W)`` static channels to a ``(N, C, H, W)`` batch → ``(N, C+S, H, W)``.

    Works on numpy arrays and torch tensors (the result has the batch's type, dtype and device).
    """
    if batch.ndim != 4 or static.ndim != 3 or tuple(batch.shape[-2:]) != tuple(static.shape[-2:]):
        raise ValueError(
            f"need a (N, C, H, W) batch and (S, H, W) statics of the same H, W; got "
            f"{tuple(batch.shape)} and {tuple(static.shape)}"
        )
    n = batch.shape[0]
    if isinstance(batch, np.ndarray):
        s = np.broadcast_to(np.asarray(static, dtype=batch.dtype), (n, *static.shape))
        return np.concatenate([batch, s], axis=1)
    import torch

    s = torch.as_tensor(np.asarray(static), dtype=batch.dtype, device=batch.device)
    return torch.cat([batch, s.unsqueeze(0).expand(n, -1, -1, -1)], dim=1)
