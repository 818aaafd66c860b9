"""metasr.climate.io: netCDF round trip, downscale with fill-and-remask, bad input, the extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from metasr.climate import (
    downscale,
    grid_of,
    read_field,
    regrid,
    regular_grid,
    resolve_grid,
    write_field,
)

xr = pytest.importorskip("xarray")
pytest.importorskip("netCDF4")


def make_dataset(nan: bool = True) -> xr.Dataset:
    rng = np.random.default_rng(0)
    lat = np.linspace(87.5, -87.5, 8)  # descending, as ERA5
    lon = np.arange(16) * 22.5
    data = (280 + rng.standard_normal((3, 8, 16))).astype(np.float32)
    if nan:
        data[:, 2, 3:6] = np.nan
    # Stored as (lon, time, lat) to check the transpose to (..., lat, lon).
    da = xr.DataArray(
        data.transpose(2, 0, 1),
        dims=("longitude", "time", "latitude"),
        coords={
            "time": np.array(["2001-01-01", "2001-02-01", "2001-03-01"], dtype="datetime64[ns]"),
            "latitude": ("latitude", lat, {"units": "degrees_north"}),
            "longitude": ("longitude", lon, {"units": "degrees_east"}),
        },
        attrs={"units": "K", "long_name": "2 metre temperature"},
        name="t2m",
    )
    ds = da.to_dataset()
    ds.attrs["history"] = "made by a test"
    return ds


def test_read_write_round_trip(tmp_path: Path) -> None:
    make_dataset().to_netcdf(tmp_path / "in.nc")
    da = read_field(tmp_path / "in.nc", "t2m")
    assert da.dims == ("time", "lat", "lon") and da.shape == (3, 8, 16)
    assert da.attrs["units"] == "K" and "made by a test" in da.attrs["history"]
    assert np.isnan(da.values).sum() == 9
    write_field(da, tmp_path / "out.nc", history="metasr test round trip")
    back = xr.open_dataset(tmp_path / "out.nc")
    var = back["t2m"]
    np.testing.assert_array_equal(var.values, da.values)  # NaNs in the same places
    np.testing.assert_array_equal(back["lat"].values, da["lat"].values)
    np.testing.assert_array_equal(back["time"].values, da["time"].values)
    assert var.attrs["units"] == "K" and var.attrs["long_name"] == "2 metre temperature"
    assert var.encoding["_FillValue"] == np.float32(1e20)
    assert back["lat"].attrs["standard_name"] == "latitude"
    assert back["lon"].attrs["units"] == "degrees_east"
    assert back.attrs["Conventions"] == "CF-1.8"
    history = back.attrs["history"].splitlines()
    assert history[0].endswith("metasr test round trip") and history[1] == "made by a test"
    np.testing.assert_allclose(back["lat_bnds"].values[0], [90.0, 75.0])  # centres 25° apart
    back.close()


def test_downscale_baseline_and_function(tmp_path: Path) -> None:
    da = make_dataset().t2m.rename(latitude="lat", longitude="lon").transpose("time", "lat", "lon")
    out = downscale(da, "20x36", "bilinear")
    assert out.dims == ("time", "lat", "lon") and out.shape == (3, 20, 36)
    assert (
        out.attrs["units"] == "K"
        and "bilinear regridding from 8x16 to 20x36" in (out.attrs["history"])
    )
    expected = regrid(da.values.astype(np.float64), grid_of(da), resolve_grid("20x36"), "bilinear")
    np.testing.assert_allclose(out.values, expected, rtol=1e-6)
    seen = []

    def network(x: np.ndarray, src, dst) -> np.ndarray:
        seen.append(np.isfinite(x).all())
        return regrid(x, src, dst, "bicubic")

    out = downscale(da, regular_grid(24, 48, pole_rows=False), network)
    assert seen == [True]  # the function got filled, finite input
    assert np.isnan(out.values).any() and np.isfinite(out.values).mean() > 0.9
    assert np.array_equal(np.isnan(out.values[0]), np.isnan(out.values[2]))
    # A netCDF file names a target grid by its coordinates.
    write_field(out, tmp_path / "target.nc")
    assert resolve_grid(tmp_path / "target.nc").same_as(regular_grid(24, 48, pole_rows=False))


def test_lat_lon_along_other_dims(tmp_path: Path) -> None:
    ds = xr.Dataset(
        {"v": (("x", "y"), np.arange(12.0).reshape(4, 3))},
        coords={"nav_lat": ("y", [10.0, 0.0, -10.0]), "nav_lon": ("x", [0.0, 5.0, 10.0, 15.0])},
    )
    ds.to_netcdf(tmp_path / "xy.nc")
    da = read_field(tmp_path / "xy.nc", "v")
    assert da.dims == ("lat", "lon") and da["lat"].values.tolist() == [10.0, 0.0, -10.0]
    np.testing.assert_array_equal(da.values, np.arange(12.0).reshape(4, 3).T)
    station = xr.Dataset(
        {"v": ("s", np.ones(3))}, coords={"lat": ("s", [0.0, 1, 2]), "lon": ("s", [0.0, 1, 2])}
    )
    with pytest.raises(ValueError, match="share the dimension"):
        downscale(station.v, "4x8")


def test_bad_input(tmp_path: Path) -> None:
    make_dataset().to_netcdf(tmp_path / "in.nc")
    with pytest.raises(ValueError, match=r"no variable 'tas'.*\['t2m'\]"):
        read_field(tmp_path / "in.nc", "tas")
    xr.Dataset({"v": (("y", "x"), np.ones((3, 4)))}).to_netcdf(tmp_path / "nolatlon.nc")
    with pytest.raises(ValueError, match="no latitude coordinate"):
        read_field(tmp_path / "nolatlon.nc", "v")
    curvi = xr.Dataset(
        {"v": (("y", "x"), np.ones((3, 4)))},
        coords={"lat": (("y", "x"), np.zeros((3, 4))), "lon": (("y", "x"), np.zeros((3, 4)))},
    )
    curvi.to_netcdf(tmp_path / "curvi.nc")
    with pytest.raises(ValueError, match="not supported yet"):
        read_field(tmp_path / "curvi.nc", "v")
    bad = xr.Dataset(
        {"v": (("lat", "lon"), np.ones((3, 4)))},
        coords={"lat": [0.0, 10.0, 5.0], "lon": np.arange(4.0)},
    )
    bad.to_netcdf(tmp_path / "nonmono.nc")
    with pytest.raises(ValueError, match="not strictly monotonic"):
        read_field(tmp_path / "nonmono.nc", "v")
    nan = xr.Dataset(
        {"v": (("lat", "lon"), np.full((3, 4), np.nan))},
        coords={"lat": [0.0, 5.0, 10.0], "lon": np.arange(4.0)},
    )
    nan.to_netcdf(tmp_path / "nan.nc")
    with pytest.raises(ValueError, match="all NaN"):
        read_field(tmp_path / "nan.nc", "v")
    with pytest.raises(ValueError, match="unknown grid"):
        resolve_grid("not-a-grid")


def test_import_metasr_does_not_import_xarray() -> None:
    code = (
        "import sys, metasr, metasr.climate; "
        "assert 'xarray' not in sys.modules and 'netCDF4' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_clear_error_without_xarray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xarray", None)  # `import xarray` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'metasr\[climate\]'"):
        read_field(tmp_path / "x.nc", "t2m")
