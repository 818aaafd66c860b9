"""netCDF input that is wrong, odd or too large: one line, the right exit code, nothing written.

Issue 22 items 5-7, 11-15, 20 and 21 (each test here failed before the fix).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from helpers import field_dataset
from metasr.cli import main

xr = pytest.importorskip("xarray")
pytest.importorskip("netCDF4")


def _dataset(
    name: str = "t2m",
    value: float = 280.0,
    lat_units: str = "degrees_north",
    shape: tuple[int, int, int] = (2, 8, 16),
) -> xr.Dataset:
    lat = np.linspace(87.5, -87.5, shape[1])
    if lat_units == "radians":
        lat = np.deg2rad(lat)
    return field_dataset(shape, lat=lat, name=name, value=value, lat_units=lat_units)


def _file(path: Path, **kw) -> Path:
    _dataset(**kw).to_netcdf(path)
    return path


def _run(capsys, *argv: object) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if not line.startswith("metasr: warning")]
    assert len(lines) == 1, err
    return lines[0]


UP = ("upscale", "--var", "t2m", "-q")


# ---- item 5: a result beyond float32 ---------------------------------------------------------


def test_a_result_beyond_float32_is_refused_not_written_as_inf(tmp_path, capsys):
    from metasr import climate as mc

    src = _file(tmp_path / "big.nc", value=3e38)
    da = mc.read_field(src, "t2m")  # float32, finite

    def doubling(x, s, d):  # (N, h, w) -> (N, 2h, 2w) in float64: 6e38, finite
        return 2.0 * np.repeat(np.repeat(x, 2, axis=-2), 2, axis=-1)

    with pytest.raises(ValueError, match="beyond the range of float32"):
        mc.downscale(da, "16x32", doubling)
    out = tmp_path / "out.nc"
    code, err = _run(capsys, *UP, src, "--target-grid", "16x32", "--model", "t2m", "-o", out)
    if code == 0:
        assert np.isfinite(xr.open_dataset(out)["t2m"].values).all()
    else:
        assert code == 1 and not out.exists() and _one_line(err)


def test_a_field_named_like_the_bounds_is_written_whole(tmp_path, capsys):
    src = _file(tmp_path / "b.nc", name="lat_bnds")
    out = tmp_path / "out.nc"
    argv = ["upscale", src, "--var", "lat_bnds", "--target-grid", "16x32", "--baseline"]
    code, err = _run(capsys, *argv, "bilinear", "-o", out, "-q")
    assert code == 0, err
    ds = xr.open_dataset(out)
    assert ds["lat_bnds"].dims == ("time", "lat", "lon") and ds["lat_bnds"].shape == (2, 16, 32)
    bounds = ds["lat"].attrs["bounds"]
    assert bounds != "lat_bnds" and ds[bounds].shape == (16, 2)


# ---- item 7: --tta on netCDF -----------------------------------------------------------------


def test_tta_on_netcdf_is_refused(tmp_path, capsys):
    src = _file(tmp_path / "a.nc")
    out = tmp_path / "o.nc"
    code, err = _run(capsys, *UP, src, "--target-grid", "16x32", "--tta", "-o", out)
    assert code == 2 and "--tta" in _one_line(err) and not out.exists()
    code, err = _run(capsys, "eval", "--model", "bilinear", "--data", src, "--var", "t2m", "--tta")
    assert code == 2 and "--tta" in _one_line(err)


# ---- item 11: coordinate units ---------------------------------------------------------------


def test_latitude_in_radians_is_refused(tmp_path, capsys):
    src = _file(tmp_path / "rad.nc", lat_units="radians")
    out = tmp_path / "o.nc"
    code, err = _run(capsys, *UP, src, "--target-grid", "16x32", "--baseline", "nearest", "-o", out)
    assert code == 1 and "'radians'" in _one_line(err) and not out.exists()
    for units in ("degrees_north", "degree_N", "degrees"):
        _file(tmp_path / "ok.nc", lat_units=units)
        code, err = _run(capsys, *UP, tmp_path / "ok.nc", "--target-grid", "16x32",
                         "--baseline", "nearest", "--overwrite", "-o", out)  # fmt: skip
        assert code == 0, err


# ---- item 12: files that are not netCDF ------------------------------------------------------


@pytest.mark.parametrize("kind", ["truncated", "text", "png", "empty"])
def test_unreadable_netcdf_is_one_line_everywhere(tmp_path, capsys, kind):
    good = _file(tmp_path / "good.nc")
    bad = tmp_path / "bad.nc"
    if kind == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "text":
        bad.write_text("just some text\n")
    elif kind == "png":
        from PIL import Image

        Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
        bad.write_bytes((tmp_path / "x.png").read_bytes())
    else:
        bad.write_bytes(b"")
    out = tmp_path / "o.nc"
    runs = [
        [*UP, bad, "--target-grid", "16x32", "--baseline", "nearest", "-o", out],
        [*UP, good, "--target-grid", bad, "--baseline", "nearest", "-o", out],
        ["climate-stats", bad, "--var", "t2m"],
        ["eval", "--model", "bilinear", "--data", bad, "--var", "t2m", "--scales", "2"],
    ]
    for argv in runs:
        code, err = _run(capsys, *argv)
        assert code in (1, 2), (argv, err)
        line = _one_line(err)
        assert "not a readable netCDF file" in line and "bad.nc" in line, line
        assert "xarray" not in line and "URL" not in line
        assert not out.exists()


# ---- item 13: undecodable time ---------------------------------------------------------------


def test_undecodable_time_units_keep_raw_times_with_a_warning(tmp_path, capsys):
    ds = _dataset()
    ds["time"].attrs["units"] = "hour since 0000-01-01"
    ds["time"].attrs["calendar"] = "standard"
    path = tmp_path / "coads.nc"
    ds.to_netcdf(path)
    out = tmp_path / "o.nc"
    code, err = _run(
        capsys, *UP, path, "--target-grid", "16x32", "--baseline", "nearest", "-o", out
    )
    assert code == 0, err
    assert "decode_times" not in err and "cftime" not in err
    assert out.is_file()


# ---- item 14: --target-grid files ------------------------------------------------------------


def test_target_grid_takes_the_dimension_coordinate(tmp_path):
    from metasr import climate as mc

    ds = _dataset(shape=(1, 12, 24))
    lat_b = np.stack([ds["lat"].values + 7.5, ds["lat"].values - 7.5], axis=-1)
    grid_file = tmp_path / "grid.nc"
    # lat_bnds and a scalar latitude listed before lat: a valid 1-D grid all the same
    ds = xr.Dataset(
        {
            "lat_bnds": (("lat", "bnds"), lat_b, {"units": "degrees_north"}),
            "t2m": ds["t2m"],
        },
        coords={"site_lat": ((), 45.0, {"units": "degrees_north", "standard_name": "latitude"})},
    )
    ds.to_netcdf(grid_file)
    assert mc.resolve_grid(grid_file).shape == (12, 24)


@pytest.mark.parametrize("what", ["missing", "folder_nc", "folder_of_nc"])
def test_target_grid_mistakes_are_named(tmp_path, capsys, what):
    src = _file(tmp_path / "a.nc")
    if what == "missing":
        grid, fragment = tmp_path / "x.nc", "no such file"
    elif what == "folder_nc":
        grid, fragment = tmp_path / "g.nc", "is a folder"
        grid.mkdir()
    else:
        grid, fragment = tmp_path / "grids", "is a folder"
        grid.mkdir()
        _file(grid / "g.nc")
    code, err = _run(capsys, *UP, src, "--target-grid", grid, "--baseline", "nearest",
                     "-o", tmp_path / "o.nc")  # fmt: skip
    line = _one_line(err)
    assert code in (1, 2) and fragment in line.lower() and "unknown grid" not in line, line


def test_a_leading_dimension_named_nv_is_kept(tmp_path, capsys):
    ds = _dataset(shape=(3, 8, 16)).rename({"time": "nv"})  # 3, not the 2 of the bounds' nv
    src = tmp_path / "nv.nc"
    ds.to_netcdf(src)
    out = tmp_path / "o.nc"
    code, err = _run(capsys, *UP, src, "--target-grid", "16x32", "--baseline", "nearest", "-o", out)
    assert code == 0, err
    back = xr.open_dataset(out)
    assert back["t2m"].dims == ("nv", "lat", "lon") and back["t2m"].shape == (3, 16, 32)


# ---- item 15: option checks agree with the image path ----------------------------------------


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--tile-overlap", "-5"], "--tile-overlap"),
        (["--backend", "foo"], "--backend"),
        (["--max-pixels", "0"], "--max-pixels"),
        (["--model", ""], "--model"),
    ],
)
def test_netcdf_option_errors_are_usage_errors(tmp_path, capsys, monkeypatch, extra, fragment):
    import metasr.checkpoints

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(metasr.checkpoints, "load_model", no_loading)
    src = _file(tmp_path / "a.nc")
    code, err = _run(capsys, *UP, src, "--target-grid", "16x32", *extra, "-o", tmp_path / "o.nc")
    assert code == 2 and fragment in _one_line(err)


# ---- items 20 and 21: sizes before allocation ------------------------------------------------


@pytest.mark.parametrize("grid", ["40000x80000", "37x4194305", "99999999x48"])
def test_huge_target_grids_are_refused_before_allocation(tmp_path, capsys, grid):
    import resource

    src = _file(tmp_path / "a.nc")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, err = _run(capsys, *UP, src, "--target-grid", grid, "--baseline", "nearest",
                     "-o", tmp_path / "o.nc")  # fmt: skip
    assert code == 2 and "exceeds the limit" in _one_line(err)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200


def test_a_large_declared_variable_is_refused_from_the_header(tmp_path, capsys, monkeypatch):
    import metasr.ops.memory

    # 40 steps of 181x360 (31 MB to read) compress to almost nothing; pretend 16 MiB are free.
    data = np.zeros((40, 181, 360), np.float32)
    da = xr.DataArray(
        data,
        dims=("time", "lat", "lon"),
        coords={"lat": np.linspace(90, -90, 181), "lon": np.arange(360.0)},
        name="t2m",
        attrs={"units": "K"},
    )
    src = tmp_path / "big.nc"
    da.to_dataset().to_netcdf(src, encoding={"t2m": {"zlib": True}})
    monkeypatch.setattr(metasr.ops.memory, "available_memory_bytes", lambda device: 16 << 20)
    loaded = []
    real = xr.DataArray.load
    monkeypatch.setattr(xr.DataArray, "load", lambda self, **k: loaded.append(1) or real(self))
    # (upscale streams the file in chunks of time steps: it needs no such check)
    code, err = _run(capsys, "climate-stats", src, "--var", "t2m")
    assert code == 1 and "free memory" in _one_line(err) and not loaded
    monkeypatch.undo()
    code, err = _run(capsys, *UP, src, "--target-grid", "362x720", "--baseline", "nearest",
                     "--max-pixels", "1000", "-o", tmp_path / "o.nc")  # fmt: skip
    assert code == 1 and "--max-pixels" in _one_line(err)


def test_open_netcdf_warning_has_no_xarray_advice(tmp_path):
    from metasr.climate.io import _open_dataset as open_netcdf

    ds = _dataset()
    ds["time"].attrs["units"] = "hour since 0000-01-01"
    path = tmp_path / "coads.nc"
    ds.to_netcdf(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_netcdf(path) as back:
            assert back["time"].values.dtype.kind in "iuf"
    texts = [str(w.message) for w in caught]
    assert any("raw" in t for t in texts) and not any("decode_times" in t for t in texts)
