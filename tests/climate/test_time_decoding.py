"""Time decoding fallback (issue 24): an undecodable time axis (COADS's ``hour since
0000-01-01``) is kept as raw numbers with its attributes and a warning, never a failure;
``--no-decode-times`` forces it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from metasr import climate as mc
from metasr.cli import main

xr = pytest.importorskip("xarray")
netCDF4 = pytest.importorskip("netCDF4")

COADS_UNITS = "hour since 0000-01-01 00:00:00"  # as in COADS's climatology file


def make(path: Path, units: str) -> Path:
    """A 12-month field whose time axis is written as given (raw, no decoding)."""
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("TIME", 12)
        nc.createDimension("Y", 9)
        nc.createDimension("X", 18)
        t = nc.createVariable("TIME", "f8", ("TIME",))
        t.units = units
        t.time_origin = "1-JAN-0000 00:00:00"
        t[:] = 366.0 + 730.5 * np.arange(12)
        y = nc.createVariable("Y", "f8", ("Y",))
        y.units = "degrees_north"
        y[:] = np.linspace(-80, 80, 9)
        x = nc.createVariable("X", "f8", ("X",))
        x.units = "degrees_east"
        x[:] = 21.0 + 20.0 * np.arange(18)
        v = nc.createVariable("SST", "f4", ("TIME", "Y", "X"), fill_value=np.float32(-1e34))
        v.units = "Deg C"
        v[:] = 15 + np.random.default_rng(0).standard_normal((12, 9, 18))
    return path


def run_upscale(src: Path, out: Path, *extra: str) -> int:
    argv = ["upscale", str(src), "--var", "SST", "--target-grid", "19x36", "--baseline",
            "bilinear", "-o", str(out), "-q", *extra]  # fmt: skip
    return main(argv)


def test_undecodable_time_is_kept_raw_with_one_warning_line(tmp_path, capsys):
    src = make(tmp_path / "coads.nc", COADS_UNITS)
    out = tmp_path / "out.nc"
    assert run_upscale(src, out) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metasr: warning:"), err
    assert "time axis kept as raw numbers" in err[0]
    with netCDF4.Dataset(src) as a, netCDF4.Dataset(out) as b:
        np.testing.assert_array_equal(b["TIME"][:], a["TIME"][:])
        assert b["TIME"].units == COADS_UNITS
        assert b["TIME"].time_origin == "1-JAN-0000 00:00:00"
        assert "_FillValue" not in b["TIME"].ncattrs()
        assert b["SST"].shape == (12, 19, 36)


def test_read_field_warns_and_keeps_raw_numbers(tmp_path):
    src = make(tmp_path / "coads.nc", COADS_UNITS)
    with pytest.warns(UserWarning, match="kept as raw numbers"):
        da = mc.read_field(src, "SST")
    assert da["TIME"].dtype == np.float64 and da["TIME"].attrs["units"] == COADS_UNITS


def test_no_decode_times_forces_raw_time_without_a_warning(tmp_path, capsys):
    src = make(tmp_path / "ok.nc", "hours since 2000-01-01")  # decodable
    out = tmp_path / "out.nc"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        da = mc.read_field(src, "SST", decode_times=False)
    assert da["TIME"].dtype == np.float64
    assert run_upscale(src, out, "--no-decode-times") == 0
    assert capsys.readouterr().err == ""
    with netCDF4.Dataset(src) as a, netCDF4.Dataset(out) as b:
        np.testing.assert_array_equal(b["TIME"][:], a["TIME"][:])
        assert b["TIME"].units == "hours since 2000-01-01"
    # Decoded by default: the same numbers and units on disk.
    out2 = tmp_path / "out2.nc"
    assert run_upscale(src, out2) == 0
    with netCDF4.Dataset(out) as b, netCDF4.Dataset(out2) as c:
        np.testing.assert_array_equal(c["TIME"][:], b["TIME"][:])
        assert c["TIME"].units == b["TIME"].units
