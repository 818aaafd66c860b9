"""CF fidelity of downscaled files (issue 24): what the input says that still applies is kept,
the grid is the target's, and ``cfchecks`` finds no error in outputs of CF-clean inputs.

``cfchecks`` (the cfchecker package; needs the udunits2 library) runs offline with the small
standard-name, area-type and region tables in ``cf_tables/`` (the names these files use).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from metasr import climate as mc
from metasr.cli import main

xr = pytest.importorskip("xarray")
netCDF4 = pytest.importorskip("netCDF4")

TABLES = Path(__file__).parent / "cf_tables"
LAT = np.linspace(-87.5, 87.5, 8)
LON = np.arange(16) * 22.5


def cf_input(path: Path, *, packed: bool = False, area: bool = False, nt: int = 3) -> Path:
    """A small CF-1.8-clean file: time with bounds and a 360-day calendar, lat/lon bounds, a
    scalar height coordinate, a grid mapping, two fields and global attributes."""
    t = np.arange(nt) * 24.0 + 12.0
    rng = np.random.default_rng(0)
    tas = (280 + 5 * rng.standard_normal((nt, 8, 16))).astype(np.float32)
    tas[0, 2, 3] = np.nan
    pr = (1e-5 * rng.random((nt, 8, 16))).astype(np.float32)
    field_attrs = {"cell_methods": "time: mean", "grid_mapping": "crs"}
    ds = xr.Dataset(
        {
            "tas": (("time", "lat", "lon"), tas, {
                "standard_name": "air_temperature", "units": "K", "coordinates": "height",
                "long_name": "near-surface air temperature", **field_attrs,
                **({"cell_measures": "area: areacella"} if area else {})}),
            "pr": (("time", "lat", "lon"), pr, {
                "standard_name": "precipitation_flux", "units": "kg m-2 s-1", **field_attrs}),
            "time_bnds": (("time", "bnds"), np.stack([t - 12, t + 12], -1)),
            "lat_bnds": (("lat", "bnds"), np.stack([LAT - 12.5, LAT + 12.5], -1)),
            "lon_bnds": (("lon", "bnds"), np.stack([LON - 11.25, LON + 11.25], -1)),
            "crs": ((), np.int32(0), {
                "grid_mapping_name": "latitude_longitude", "semi_major_axis": 6371000.0,
                "inverse_flattening": 0.0}),
        },
        coords={
            "time": ("time", t, {
                "standard_name": "time", "units": "hours since 2000-01-01 00:00:00",
                "calendar": "360_day", "bounds": "time_bnds", "axis": "T"}),
            "lat": ("lat", LAT, {"standard_name": "latitude", "units": "degrees_north",
                                 "bounds": "lat_bnds", "axis": "Y"}),
            "lon": ("lon", LON, {"standard_name": "longitude", "units": "degrees_east",
                                 "bounds": "lon_bnds", "axis": "X"}),
            "height": ((), 2.0, {"standard_name": "height", "units": "m", "positive": "up",
                                 "axis": "Z"}),
        },
        attrs={"Conventions": "CF-1.8", "title": "metasr CF test", "institution": "tests",
               "source": "synthetic", "history": "2026-12-06 made by the tests",
               "references": "none"},
    )  # fmt: skip
    if area:
        areas = mc.Grid.from_coords(LAT, LON).cell_areas()
        ds["areacella"] = (("lat", "lon"), areas, {"standard_name": "cell_area", "units": "m2"})
    enc: dict = {v: {"_FillValue": None} for v in ds.variables if v not in ("tas", "pr")}
    enc["pr"] = {"_FillValue": np.float32(1e20)}
    enc["tas"] = {"_FillValue": np.float32(1e20)}
    if packed:
        enc["tas"] = {"dtype": "int16", "scale_factor": np.float32(0.01),
                      "add_offset": np.float32(280.0), "_FillValue": np.int16(-32768)}  # fmt: skip
    ds.to_netcdf(path, encoding=enc)
    return path


def cfchecks_errors(path: Path) -> tuple[int, str]:
    """``cfchecks`` run offline on ``path``: its error count and report."""
    exe = shutil.which("cfchecks", path=str(Path(sys.executable).parent)) or shutil.which(
        "cfchecks"
    )
    if exe is None:
        pytest.skip("cfchecks not installed (pip install cfchecker)")
    tables = ["-s", TABLES / "standard-names.xml", "-a", TABLES / "area-types.xml",
              "-r", TABLES / "region-names.xml"]  # fmt: skip
    done = subprocess.run(
        [exe, *map(str, tables), str(path)], capture_output=True, text=True, timeout=120
    )
    report = done.stdout + done.stderr
    if "udunits" in report.lower() and "ERRORS detected" not in report:
        pytest.skip("cfchecks needs the udunits2 library (Debian: libudunits2-0)")
    found = re.search(r"ERRORS detected: (\d+)", report)
    assert found, report
    return int(found.group(1)), report


def upscale(src: Path, out: Path, *extra: str) -> None:
    argv = ["upscale", str(src), "--var", "tas,pr", "--target-grid", "19x40", "-o", str(out),
            "-q", *extra]  # fmt: skip
    assert main(argv) == 0


@pytest.mark.parametrize("method", ["conservative", "bilinear"])
@pytest.mark.parametrize("packed", [False, True], ids=["float32", "int16-packed"])
def test_outputs_of_cf_clean_inputs_pass_cfchecks(tmp_path, method, packed):
    src = cf_input(tmp_path / "in.nc", packed=packed)
    errors, report = cfchecks_errors(src)
    assert errors == 0, report  # the input is clean
    out = tmp_path / "out.nc"
    upscale(src, out, "--baseline", method)
    errors, report = cfchecks_errors(out)
    assert errors == 0, report
    assert "WARNINGS given: 0" in report, report


def test_what_still_applies_is_kept_and_the_grid_replaced(tmp_path):
    src = cf_input(tmp_path / "in.nc", packed=True, area=True)
    out = tmp_path / "out.nc"
    upscale(src, out, "--baseline", "conservative")
    with netCDF4.Dataset(src) as a, netCDF4.Dataset(out) as b:
        # Global attributes kept; one history line per step, newest first.
        for key in ("Conventions", "title", "institution", "source", "references"):
            assert b.getncattr(key) == a.getncattr(key)
        history = b.history.splitlines()
        assert "metasr upscale" in history[0] and "conservative regridding" in history[1]
        assert history[-1] == "2026-12-06 made by the tests"
        # Time exactly as stored: values, units text, calendar; bounds kept without units.
        assert b["time"].units == "hours since 2000-01-01 00:00:00"
        assert b["time"].calendar == "360_day" and b["time"].bounds == "time_bnds"
        np.testing.assert_array_equal(b["time"][:], a["time"][:])
        np.testing.assert_array_equal(b["time_bnds"][:], a["time_bnds"][:])
        # No _FillValue on coordinates or bounds.
        for name in ("time", "lat", "lon", "time_bnds", "lat_bnds", "lon_bnds", "height"):
            assert "_FillValue" not in b[name].ncattrs(), name
        # Scalar coordinate and grid mapping kept and referenced.
        assert float(b["height"][()]) == 2.0 and b["crs"].grid_mapping_name == "latitude_longitude"
        assert b["tas"].grid_mapping == "crs" and "height" in b["tas"].coordinates
        assert b["tas"].cell_methods == "time: mean"
        # The old grid's cell areas do not apply: dropped, and so is the reference to them.
        assert "areacella" not in b.variables and "cell_measures" not in b["tas"].ncattrs()
        # Packed int16 in, float32 out, unpacked; float32 stays float32.
        assert b["tas"].dtype == np.float32 and "scale_factor" not in b["tas"].ncattrs()
        assert b["pr"].dtype == np.float32
        # The target grid and its bounds.
        grid = mc.named_grid("19x40")
        np.testing.assert_array_equal(b["lat"][:], grid.lat)
        np.testing.assert_array_equal(b["lon"][:], grid.lon)
        np.testing.assert_array_equal(b["lat_bnds"][:, 0], grid.lat_bounds[:-1])
        np.testing.assert_array_equal(b["lon_bnds"][:, 1], grid.lon_bounds[1:])
        assert b["lat"].bounds == "lat_bnds" and b["lat"].standard_name == "latitude"
    # The values: each variable as downscaled on its own, with the file's bounds.
    ds = xr.open_dataset(src)
    got = xr.open_dataset(out)
    for v in ("tas", "pr"):
        want = mc.downscale(ds[v], "19x40", "conservative", source_grid=mc.grid_of(ds, v))
        np.testing.assert_array_equal(got[v].values, want.values)
    ds.close()
    got.close()


def test_variables_on_different_grids_are_refused_in_one_line(tmp_path, capsys):
    src = cf_input(tmp_path / "in.nc")
    ds = xr.open_dataset(src)
    ds["other"] = xr.DataArray(np.ones((3, 4)), dims=("time", "y"),
                               coords={"y": ("y", np.linspace(-60, 60, 4),
                                             {"units": "degrees_north"})})  # fmt: skip
    ds.load().to_netcdf(tmp_path / "two.nc")
    ds.close()
    out = tmp_path / "out.nc"
    argv = ["upscale", str(tmp_path / "two.nc"), "--var", "tas,other", "--target-grid", "19x40",
            "--baseline", "bilinear", "-o", str(out), "-q"]  # fmt: skip
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "longitude" in err, err
    assert not out.exists()
