"""metasr.climate.data: coarsening at any ratio, static predictors; ETOPO5 when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metasr.climate import (
    Grid,
    coarse_grid,
    coarse_size,
    coarsen,
    global_mean,
    latitude_channel,
    named_grid,
    regular_grid,
    static_predictors,
    with_static_channels,
)

ETOPO5 = Path(__file__).resolve().parents[2] / "datasets" / "climate" / "etopo5.cdf"


def test_coarse_size_and_grid_layout() -> None:
    assert coarse_size((721, 1440), (7.5104, 10)) == (96, 144)
    assert coarse_size((145, 192), 2.5) == (58, 76)
    era5 = named_grid("era5")
    g = coarse_grid(era5, (96, 144))
    assert g.has_pole_rows and g.lat[0] == 90.0 and g.lon[0] == 0.0 and g.periodic_lon
    assert g.same_as(named_grid("96x144"))
    cell = regular_grid(40, 80, pole_rows=False)
    c = coarse_grid(cell, (15, 30))
    np.testing.assert_allclose(c.lat_bounds[[0, -1]], [90.0, -90.0])
    with pytest.raises(ValueError, match=">= 1"):
        coarse_size((10, 10), 0.5)
    for bad in ("2", (2, "3"), True, (2, 3, 4)):
        with pytest.raises(TypeError, match="coarsening ratio"):
            coarse_size((10, 10), bad)
    with pytest.raises(ValueError, match="at least 2x2"):
        coarse_size((10, 10), 6)


@pytest.mark.parametrize("scale", [2.5, (3.3, 1.7), (7.5104, 10.0)])
def test_conservative_coarsening_keeps_the_mean(scale) -> None:
    grid = named_grid("n96") if scale != (7.5104, 10.0) else regular_grid(721, 1440)
    x = (
        250
        + 40 * np.cos(np.deg2rad(grid.lat))[:, None]
        + np.random.default_rng(0).standard_normal(grid.shape)
    )
    lr, lr_grid = coarsen(x, grid, scale)
    assert lr.shape == coarse_size(grid.shape, scale) == lr_grid.shape
    assert global_mean(lr, lr_grid) == pytest.approx(global_mean(x, grid), rel=1e-6)


def test_bicubic_coarsening_and_nan() -> None:
    grid = regular_grid(40, 60, pole_rows=False)
    x = np.full((2, *grid.shape), 3.0)
    x[:, 10:20, 10:30] = np.nan
    lr, lr_grid = coarsen(x, grid, size=(16, 24), method="bicubic")
    assert lr.shape == (2, 16, 24)
    np.testing.assert_allclose(lr[np.isfinite(lr)], 3.0, rtol=1e-6)
    assert np.isnan(lr).any() and np.isfinite(lr).mean() > 0.7
    with pytest.raises(ValueError, match="exactly one"):
        coarsen(x, grid, 2.0, size=(10, 10))
    with pytest.raises(ValueError, match="finer"):
        coarsen(x, grid, target=regular_grid(80, 60))


def test_static_predictors() -> None:
    relief_grid = regular_grid(60, 120, pole_rows=False)
    relief = np.where(np.abs(relief_grid.lat)[:, None] < 30, 2000.0, -4000.0) * np.ones(
        relief_grid.shape
    )
    grid = regular_grid(12, 24, pole_rows=False)
    s = static_predictors(
        grid, orography=(relief, relief_grid), land_sea_mask=(relief > 0, relief_grid)
    )
    assert s.shape == (3, 12, 24)
    tropics = np.abs(grid.lat) < 15
    np.testing.assert_allclose(s[0][tropics], 2.0)  # km, land
    np.testing.assert_allclose(s[0][np.abs(grid.lat) > 45], 0.0)  # sea clipped to 0
    np.testing.assert_allclose(s[1][tropics], 1.0)
    np.testing.assert_allclose(s[2], latitude_channel(grid))
    with pytest.raises(ValueError, match="no static predictor"):
        static_predictors(grid, latitude=False)
    batch = np.zeros((2, 1, 12, 24), dtype=np.float32)
    assert with_static_channels(batch, s).shape == (2, 4, 12, 24)
    t = with_static_channels(torch.zeros(2, 1, 12, 24), s)
    assert t.shape == (2, 4, 12, 24) and t.dtype == torch.float32
    np.testing.assert_allclose(t[1, 3].numpy(), s[2], rtol=1e-6)


@pytest.mark.skipif(not ETOPO5.is_file(), reason="run `make climate-data` for etopo5.cdf")
def test_etopo5_every_third_point_is_the_era5_grid() -> None:
    pytest.importorskip("xarray")
    from metasr.climate import grid_of, read_field
    from metasr.climate.sources import read_etopo5

    raw = read_field(ETOPO5, "ROSE")
    assert raw.shape == (2161, 4320)
    # Latitudes are exact; the stored longitudes are linspace(0, 359.92, 4320), up to 0.0033°
    # east of the 1/12° lines, which read_etopo5 snaps back.
    np.testing.assert_array_equal(raw["lat"].values, np.linspace(-90, 90, 2161))
    off = np.abs(raw["lon"].values - np.arange(4320) / 12)
    assert 0.003 < off.max() < 0.0034
    da = read_etopo5(ETOPO5)
    grid = grid_of(da)
    assert grid.periodic_lon
    era5 = named_grid("era5")
    every_third = Grid.from_coords(da["lat"].values[::3][::-1], da["lon"].values[::3])
    np.testing.assert_array_equal(every_third.lat, era5.lat)  # poles included
    np.testing.assert_array_equal(every_third.lon, era5.lon)
