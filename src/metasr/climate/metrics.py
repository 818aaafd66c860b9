"""Climate scores on latitude/longitude grids (numpy only).

Every score reduces the last two dims ``(H, W)`` of ``(..., H, W)`` arrays and returns one value
per leading index (a float for 2-D input). Points where the prediction, the target (or the
climatology) is NaN are left out, weights included. Weights ``w`` (:func:`spatial_weights`):

- ``"coslat"``: ``cos φ`` of the cell centre (WeatherBench's choice; zero on pole rows);
- ``"area"``: the cell's spherical area from its bounds (:meth:`Grid.cell_areas`; non-zero on
  pole rows, whose cells are half-height caps).

Definitions (``e = pred − target``, ``Σ`` over valid points, ``w̄ = Σ w``):

- RMSE ``= sqrt(Σ w e² / w̄)``; MAE ``= Σ w |e| / w̄``; bias ``= Σ w e / w̄``;
- Pearson correlation: the weighted correlation of ``pred`` and ``target`` about their weighted
  means;
- ACC (anomaly correlation against a climatology ``c``, WeatherBench 2's uncentred form):
  ``Σ w a b / sqrt(Σ w a² · Σ w b²)`` with ``a = pred − c``, ``b = target − c``;
- zonal power spectrum (:func:`zonal_power_spectrum`): per row, the one-sided power
  ``|F_k|²/W²`` of the real FFT along longitude (doubled for ``0 < k < W/2``, so the powers sum
  to the row's mean square), averaged over rows with the weights;
- conservation error (:func:`conservation_error`): the output conservatively remapped back to
  the input grid minus the input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .grids import Grid
from .regrid import check_field, regrid

WEIGHTS = ("coslat", "area")
"""Names accepted by ``weights=``."""


def spatial_weights(grid: Grid, weights: str = "coslat") -> np.ndarray:
    """``(H, W)`` non-negative weights of ``grid``'s cells (see the module docstring)."""
    if weights == "coslat":
        w = np.clip(np.cos(np.deg2rad(grid.lat)), 0.0, None)
        return np.broadcast_to(w[:, None], grid.shape).copy()
    if weights == "area":
        return grid.cell_areas()
    raise ValueError(f"unknown weights {weights!r}; choose from {WEIGHTS}")


def _prepare(
    grid: Grid, weights: str, *fields: Any
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Float64 fields, the weights zeroed where any field is NaN, and their sums."""
    arrays = [np.asarray(f, dtype=np.float64) for f in fields]
    for i, a in enumerate(arrays):
        check_field(a, grid, name=("pred", "target", "climatology")[i])
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    valid = np.ones(shape, dtype=bool)
    for a in arrays:
        valid &= np.isfinite(a)
    w = np.where(valid, spatial_weights(grid, weights), 0.0)
    total = w.sum(axis=(-2, -1))
    if np.any(total <= 0):
        raise ValueError("no valid (non-NaN, non-zero-weight) point to score in some field")
    arrays = [np.where(valid, np.broadcast_to(a, shape), 0.0) for a in arrays]
    return arrays, w, total


def _out(value: np.ndarray) -> float | np.ndarray:
    return float(value) if np.ndim(value) == 0 else value


def weighted_rmse(
    pred: Any, target: Any, grid: Grid, weights: str = "coslat"
) -> float | np.ndarray:
    """Latitude-weighted RMSE over ``(H, W)``; ``pred``/``target`` are ``(..., H, W)``."""
    (p, t), w, total = _prepare(grid, weights, pred, target)
    return _out(np.sqrt((w * (p - t) ** 2).sum(axis=(-2, -1)) / total))


def weighted_mae(pred: Any, target: Any, grid: Grid, weights: str = "coslat") -> float | np.ndarray:
    """Latitude-weighted mean absolute error over ``(H, W)``."""
    (p, t), w, total = _prepare(grid, weights, pred, target)
    return _out((w * np.abs(p - t)).sum(axis=(-2, -1)) / total)


def weighted_bias(
    pred: Any, target: Any, grid: Grid, weights: str = "coslat"
) -> float | np.ndarray:
    """Latitude-weighted mean of ``pred − target`` over ``(H, W)``."""
    (p, t), w, total = _prepare(grid, weights, pred, target)
    return _out((w * (p - t)).sum(axis=(-2, -1)) / total)


def pearson_correlation(
    pred: Any, target: Any, grid: Grid, weights: str = "coslat"
) -> float | np.ndarray:
    """Weighted Pearson correlation of ``pred`` and ``target`` over ``(H, W)``."""
    (p, t), w, total = _prepare(grid, weights, pred, target)
    mp = (w * p).sum(axis=(-2, -1), keepdims=True) / total[..., None, None]
    mt = (w * t).sum(axis=(-2, -1), keepdims=True) / total[..., None, None]
    a, b = np.where(w > 0, p - mp, 0.0), np.where(w > 0, t - mt, 0.0)
    return _out(_correlation(a, b, w))


def _correlation(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    num = (w * a * b).sum(axis=(-2, -1))
    den = np.sqrt((w * a * a).sum(axis=(-2, -1)) * (w * b * b).sum(axis=(-2, -1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def anomaly_correlation(
    pred: Any, target: Any, climatology: Any, grid: Grid, weights: str = "coslat"
) -> float | np.ndarray:
    """ACC of ``pred`` and ``target`` against ``climatology`` (all ``(..., H, W)``, broadcast)."""
    (p, t, c), w, _ = _prepare(grid, weights, pred, target, climatology)
    return _out(_correlation(p - c, t - c, w))


def zonal_power_spectrum(
    field: Any, grid: Grid, weights: str = "coslat", max_abs_lat: float = 90.0
) -> tuple[np.ndarray, np.ndarray]:
    """Mean zonal (along-longitude) power spectrum of ``(..., H, W)`` fields.

    Args:
        field: ``(..., H, W)`` on a periodic ``grid``.
        grid: the field's grid (must be periodic in longitude).
        weights: how rows are averaged (see the module docstring).
        max_abs_lat: only rows with ``|lat| ≤ max_abs_lat`` count (e.g. 60 to leave out the
            polar rows, where a zonal wavenumber is a very short distance).

    Returns:
        ``(k, power)``: zonal wavenumbers ``0 … W//2`` (cycles per circle) and the ``(..., W//2+1)``
        power; rows with a NaN are left out.
    """
    if not grid.periodic_lon:
        raise ValueError(f"a zonal spectrum needs a periodic (global) grid, got {grid!r}")
    x = np.asarray(field, dtype=np.float64)
    check_field(x, grid)
    n = grid.shape[1]
    spec = np.abs(np.fft.rfft(np.nan_to_num(x), axis=-1)) ** 2 / n**2
    spec[..., 1 : (n + 1) // 2] *= 2.0  # one-sided: fold the negative wavenumbers in
    row_ok = np.all(np.isfinite(x), axis=-1) & (np.abs(grid.lat) <= max_abs_lat)
    w = np.where(row_ok, spatial_weights(grid, weights)[:, 0], 0.0)
    total = w.sum(axis=-1)
    if np.any(total <= 0):
        raise ValueError("no complete (NaN-free) latitude row to take a zonal spectrum of")
    power = (w[..., None] * spec).sum(axis=-2) / total[..., None]
    return np.arange(n // 2 + 1), power


def plot_zonal_spectra(
    spectra: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = ""
) -> Path:
    """Plot named ``(k, power)`` spectra on log-log axes into ``path`` (PNG); needs matplotlib.

    Args:
        spectra: label → ``(k, power)`` as returned by :func:`zonal_power_spectrum` (1-D power).
        path: output image file.
        title: figure title.

    Returns:
        ``path``.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from exc
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (k, power) in spectra.items():
        ax.loglog(k[1:], np.asarray(power)[1:], label=label)
    ax.set_xlabel("zonal wavenumber k")
    ax.set_ylabel("power")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    from ..io import atomic_write

    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
    return path


def conservation_error(
    output: Any, output_grid: Grid, source: Any, source_grid: Grid
) -> np.ndarray:
    """``output`` conservatively remapped back to ``source_grid``, minus ``source``.

    Args:
        output: ``(..., H, W)`` downscaled field on ``output_grid``.
        output_grid: the fine grid.
        source: ``(..., h, w)`` input field on ``source_grid``.
        source_grid: the coarse grid.

    Returns:
        ``(..., h, w)`` difference; score it e.g. with :func:`weighted_rmse` against zeros.
    """
    back = regrid(np.asarray(output, dtype=np.float64), output_grid, source_grid, "conservative")
    return back - np.asarray(source, dtype=np.float64)


def global_mean(field: Any, grid: Grid, weights: str = "area") -> float | np.ndarray:
    """Weighted mean over ``(H, W)`` of ``(..., H, W)``, NaNs left out (area weights by default)."""
    (f,), w, total = _prepare(grid, weights, field)
    return _out((w * f).sum(axis=(-2, -1)) / total)
