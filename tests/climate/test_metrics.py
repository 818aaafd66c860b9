"""metasr.climate.metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metasr.climate import (
    Grid,
    anomaly_correlation,
    conservation_error,
    global_mean,
    pearson_correlation,
    plot_zonal_spectra,
    regrid,
    regular_grid,
    spatial_weights,
    weighted_bias,
    weighted_mae,
    weighted_rmse,
    zonal_power_spectrum,
)

# Rows at 0° and 60°: cos-lat weights 1 and 1/2.
GRID = Grid.from_coords([0.0, 60.0], [0.0, 10.0])
TARGET = np.array([[10.0, 20.0], [30.0, 40.0]])
ERROR = np.array([[1.0, 3.0], [2.0, -2.0]])


def test_rmse_mae_bias_hand_values() -> None:
    pred = TARGET + ERROR
    # Σw = 1+1+0.5+0.5 = 3
    assert weighted_rmse(pred, TARGET, GRID) == pytest.approx(math.sqrt((1 + 9 + 0.5 * 8) / 3))
    assert weighted_mae(pred, TARGET, GRID) == pytest.approx((4 + 0.5 * 4) / 3)
    assert weighted_bias(pred, TARGET, GRID) == pytest.approx(4 / 3)


def test_area_weights_hand_values() -> None:
    grid = Grid.from_coords([0.0, 30.0], [0.0, 10.0])  # bounds −15, 15, 45
    w = spatial_weights(grid, "area")
    ratio = (math.sin(math.radians(45)) - math.sin(math.radians(15))) / (
        2 * math.sin(math.radians(15))
    )
    assert w[1, 0] / w[0, 0] == pytest.approx(ratio)
    pred = TARGET + ERROR
    expected = (1 * 4 + ratio * 0) / (2 + 2 * ratio)
    assert weighted_bias(pred, TARGET, grid, weights="area") == pytest.approx(expected)


def test_nan_points_left_out_and_leading_dims() -> None:
    pred = np.stack([TARGET + ERROR, TARGET + 2 * ERROR])
    pred[0, 0, 1] = np.nan  # drops the error 3 (weight 1)
    rmse = weighted_rmse(pred, TARGET, GRID)
    assert rmse.shape == (2,)
    assert rmse[0] == pytest.approx(math.sqrt((1 + 0.5 * 8) / 2))
    assert rmse[1] == pytest.approx(2 * math.sqrt((1 + 9 + 0.5 * 8) / 3))


def test_pearson_matches_weighted_covariance() -> None:
    rng = np.random.default_rng(1)
    grid = Grid.from_coords([-50.0, -10.0, 20.0, 70.0], np.arange(5.0))
    a, b = rng.standard_normal((2, 4, 5))
    b = a + 0.5 * b
    w = np.cos(np.deg2rad(grid.lat))[:, None] * np.ones((4, 5))
    cov = np.cov(a.ravel(), b.ravel(), aweights=w.ravel())
    expected = cov[0, 1] / math.sqrt(cov[0, 0] * cov[1, 1])
    assert pearson_correlation(a, b, grid) == pytest.approx(expected, rel=1e-12)
    assert pearson_correlation(a, 3 * a + 1, grid) == pytest.approx(1.0)


def test_acc_hand_value() -> None:
    clim = np.full((2, 2), 5.0)
    pred = clim + np.array([[1.0, 0.0], [0.0, 2.0]])
    target = clim + np.array([[1.0, 1.0], [0.0, 1.0]])
    # a·b: 1·1 + 0.5·2 = 2; a²: 1 + 0.5·4 = 3; b²: 1 + 1 + 0.5·1 = 2.5
    assert anomaly_correlation(pred, target, clim, GRID) == pytest.approx(2 / math.sqrt(7.5))


def test_zonal_power_spectrum_of_known_waves() -> None:
    grid = regular_grid(5, 16, pole_rows=False)
    lam = np.deg2rad(grid.lon)
    row = 2 + 3 * np.cos(2 * lam) + np.sin(5 * lam)
    k, power = zonal_power_spectrum(np.tile(row, (5, 1)), grid)
    assert k.tolist() == list(range(9))
    expected = np.zeros(9)
    expected[[0, 2, 5]] = [4.0, 4.5, 0.5]
    np.testing.assert_allclose(power, expected, atol=1e-12)
    assert power.sum() == pytest.approx(np.mean(row**2))


def test_zonal_spectrum_needs_periodic_grid() -> None:
    with pytest.raises(ValueError, match="periodic"):
        zonal_power_spectrum(TARGET, GRID)


def test_conservation_error() -> None:
    coarse = regular_grid(6, 12, pole_rows=False)
    fine = regular_grid(18, 36, pole_rows=False)  # nested: 3×3 fine cells per coarse cell
    x = 280 + np.random.default_rng(2).standard_normal(coarse.shape)
    up = regrid(x, coarse, fine, "conservative")
    np.testing.assert_allclose(conservation_error(up, fine, x, coarse), 0.0, atol=1e-10)
    err = conservation_error(np.full(fine.shape, 3.0), fine, np.full(coarse.shape, 1.0), coarse)
    np.testing.assert_allclose(err, 2.0)
    bilinear = regrid(x, coarse, fine, "bilinear")
    assert np.abs(conservation_error(bilinear, fine, x, coarse)).max() > 1e-3


def test_global_mean_and_errors() -> None:
    grid = regular_grid(10, 20, pole_rows=False)
    assert global_mean(np.full(grid.shape, 4.0), grid) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="all NaN"):
        weighted_rmse(np.full(grid.shape, np.nan), np.zeros(grid.shape), grid)
    with pytest.raises(ValueError, match="unknown weights"):
        weighted_rmse(np.zeros(grid.shape), np.zeros(grid.shape), grid, weights="flat")


def test_plot_zonal_spectra(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    grid = regular_grid(9, 32, pole_rows=False)
    x = np.random.default_rng(3).standard_normal(grid.shape)
    out = plot_zonal_spectra({"noise": zonal_power_spectrum(x, grid)}, tmp_path / "s.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
