"""Regional domains (issue 24): global or regional from the cells, "coarser" by cell size,
target points outside the source's cells missing for every method, regional targets inside a
global source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from metasr import climate as mc
from metasr.cli import main

N96 = mc.named_grid("n96")
ERA5 = mc.named_grid("era5")
# The UK at 0.25°: 41 x 41 points of the ERA5 grid (49…59°N, 6°W…4°E).
UK = mc.Grid.from_coords(np.arange(49.0, 59.01, 0.25), np.arange(-6.0, 4.01, 0.25))
# Europe at N96 spacing: 35…72.5°N, 20°W…40°E.
EUROPE = mc.Grid.from_coords(np.arange(35.0, 72.51, 1.25), np.arange(-20.0, 40.1, 1.875))


def smooth(grid: mc.Grid, nt: int = 2) -> np.ndarray:
    lat = np.deg2rad(grid.lat)[:, None]
    lon = np.deg2rad(grid.lon)[None, :]
    base = 260 + 30 * np.cos(lat) + 5 * np.sin(2 * lon) * np.cos(lat)
    return np.stack([base + k for k in range(nt)])


def test_global_and_regional_are_told_apart_by_the_cells():
    assert N96.periodic_lon and ERA5.periodic_lon
    assert not UK.periodic_lon and not EUROPE.periodic_lon


def test_coarser_compares_cell_size_not_point_count():
    assert UK.shape[0] < N96.shape[0] and UK.shape[1] < N96.shape[1]
    mc.check_finer(N96, UK)  # 0.25° is finer than 1.25° x 1.875°: accepted
    with pytest.raises(ValueError, match="coarser"):
        mc.check_finer(UK, N96)  # more points, but coarser cells
    with pytest.raises(ValueError, match="coarser"):
        mc.check_finer(N96, mc.named_grid("145x96"))  # longitude 3.75° > 1.875°


@pytest.mark.parametrize("method", mc.METHODS)
def test_regional_target_inside_a_global_source_is_the_global_result_there(method):
    x = smooth(N96)
    uk = mc.regrid(x, N96, UK, method)
    era5 = mc.regrid(x, N96, ERA5, method)
    rows = np.searchsorted(-ERA5.lat, -UK.lat)  # ERA5 runs north to south
    cols = np.searchsorted(ERA5.lon, np.mod(UK.lon, 360.0))
    assert np.isfinite(uk).all()
    np.testing.assert_allclose(uk, era5[:, rows][:, :, cols], rtol=0, atol=1e-9)


@pytest.mark.parametrize("method", mc.METHODS)
def test_points_outside_a_regional_source_are_missing_for_every_method(method):
    out = mc.regrid(smooth(EUROPE), EUROPE, ERA5, method)
    rows, cols = mc.inside_source(EUROPE, ERA5)
    inside = rows[:, None] & cols[None, :]
    assert 0 < inside.sum() < inside.size
    if method == "conservative":
        # A target cell partly over the source keeps its overlap's value (as CDO remapcon).
        assert np.isfinite(out[:, inside]).all()
    else:
        np.testing.assert_array_equal(np.isfinite(out[0]), inside)
    sixty_south = np.argmin(np.abs(ERA5.lat + 60))
    assert np.isnan(out[:, sixty_south]).all()  # the 309 K at 60°S is gone
    assert np.isnan(out[:, :, np.argmin(np.abs(ERA5.lon - 180))]).all()  # not wrapped


def test_a_regional_source_is_not_wrapped_across_its_edges():
    # Targets east of Europe's last column and west of its first are outside: no wrap, no clamp.
    dst = mc.Grid.from_coords(np.array([50.0, 51.0]), np.array([-25.0, -19.0, 39.0, 45.0]))
    out = mc.regrid(smooth(EUROPE, 1), EUROPE, dst, "bilinear")[0]
    assert np.isnan(out[:, [0, 3]]).all() and np.isfinite(out[:, [1, 2]]).all()


def test_model_path_blanks_outside_points_too():
    def fn(filled, src, dst):  # a stand-in network that fills every point
        return np.full((filled.shape[0], *dst.shape), 280.0)

    out = mc.apply_downscaler(fn, smooth(EUROPE), EUROPE, ERA5)
    rows, cols = mc.inside_source(EUROPE, ERA5)
    np.testing.assert_array_equal(np.isfinite(out[0]), rows[:, None] & cols[None, :])


def test_cli_uk_target_from_a_global_file(tmp_path: Path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("netCDF4")
    src = tmp_path / "n96.nc"
    xr.DataArray(
        smooth(N96).astype(np.float32),
        dims=("time", "lat", "lon"),
        coords={"time": [0.0, 1.0], "lat": N96.lat, "lon": N96.lon},
        name="tas",
        attrs={"units": "K"},
    ).to_dataset().to_netcdf(src)
    target = tmp_path / "uk.nc"
    lat = ("lat", UK.lat, {"units": "degrees_north"})
    xr.Dataset(coords={"lat": lat, "lon": ("lon", UK.lon, {"units": "degrees_east"})}).to_netcdf(
        target
    )
    out = tmp_path / "out.nc"
    argv = ["upscale", str(src), "--var", "tas", "--target-grid", str(target), "--baseline",
            "bilinear", "-o", str(out), "-q"]  # fmt: skip
    assert main(argv) == 0
    got = xr.open_dataset(out)["tas"]
    assert got.shape == (2, 41, 41)
    want = mc.regrid(smooth(N96).astype(np.float32), N96, UK, "bilinear")
    np.testing.assert_allclose(got.values, want, rtol=0, atol=1e-4)
