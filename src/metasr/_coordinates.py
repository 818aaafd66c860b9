"""Fractional source indices of coordinates along one axis (NumPy only: the climate regridding
imports it without torch).

:func:`fractional_index` is the one formula behind both the op's coordinate-placed geometry
(:func:`metasr.geometry.coordinate_axis_map`) and the climate regridding's interpolation
(:func:`metasr.climate.regrid.regrid`), so the two place a target coordinate alike.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fractional_index"]


def fractional_index(
    src: np.ndarray, dst: np.ndarray, period: float | None = None, *, extrapolate: bool = True
) -> np.ndarray:
    """Fractional source index ``t`` of every target coordinate along one axis: the one formula
    of both the op's coordinate geometry (:func:`coordinate_axis_map`) and the climate
    regridding's interpolation (:func:`metasr.climate.regrid.regrid`).

    ``t`` interpolates the index ``0..n_in-1`` linearly against the source coordinates
    (``np.interp``; a descending source is interpolated reversed and its index mirrored, so the
    knots are the source's own values). Beyond the first or last source coordinate it is
    extrapolated with the end interval, or clamped to ``0``/``n_in − 1`` with
    ``extrapolate=False``. With a ``period`` (longitude, 360), a target is first brought into
    ``[src[0], src[0] + period)`` (in the source's direction) and the source is extended by its
    first coordinate one period on, so ``t ∈ [0, n_in)`` (``n_in`` is column 0 again).

    Args:
        src: ``(n_in,)`` strictly monotonic source coordinates (``n_in ≥ 2``; with a period,
            once round the circle).
        dst: ``(n_out,)`` target coordinates.
        period: ``None`` or the period of the axis.
        extrapolate: extrapolate beyond the source's ends (else clamp); a periodic axis has no
            ends.

    Returns:
        ``(n_out,)`` float64.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n_in = len(src)
    if period is not None:
        # Going round the circle the other way: the same formula on the negated coordinates.
        if not np.all(np.diff(np.mod(src - src[0], period)) > 0):
            src, dst = -src, -dst
        if not np.all(np.diff(src) > 0):  # crosses the seam ([180, 270, 0, 90]): unwrap it
            src = src[0] + np.mod(src - src[0], period)
        x = src[0] + np.mod(dst - src[0], period)
        ext = np.concatenate([src, [src[0] + period]])
        return np.interp(x, ext, np.arange(n_in + 1, dtype=np.float64))
    index = np.arange(n_in, dtype=np.float64)
    if src[0] > src[-1]:
        t = (n_in - 1) - np.interp(dst, src[::-1], index)
    else:
        t = np.interp(dst, src, index)
    if extrapolate:
        sign = 1.0 if src[-1] > src[0] else -1.0
        xs, x = sign * src, sign * dst  # ascending in xs
        lo, hi = x < xs[0], x > xs[-1]
        t[lo] = (x[lo] - xs[0]) / (xs[1] - xs[0])
        t[hi] = n_in - 1 + (x[hi] - xs[-1]) / (xs[-1] - xs[-2])
    return t
