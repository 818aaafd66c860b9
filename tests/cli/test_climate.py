"""``metasr upscale`` / ``eval`` / ``climate-stats`` on netCDF fields, and the stats metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import metasr
from metasr import climate as mc
from metasr.checkpoints import checkpoint_stats, load_model, save_checkpoint
from metasr.cli import main
from metasr.climate.layout import canonical_layout
from metasr.climate.model import coordinate_grid
from metasr.climate.stats import FieldStats, add_checkpoint_stats, stats_metadata

xr = pytest.importorskip("xarray")
pytest.importorskip("netCDF4")
pytest.importorskip("safetensors")

KW = {"in_channels": 1, "out_channels": 1, "n_resblocks": 1, "n_feats": 8}
T2M = FieldStats(("t2m",), ("K",), (280.0,), (2.0,), "8x16")


def field(nan: bool = True, lead: tuple[int, ...] = (3,), units: str | None = "K") -> xr.DataArray:
    rng = np.random.default_rng(0)
    lat = np.linspace(87.5, -87.5, 8)
    lon = np.arange(16) * 22.5
    data = (280 + 2 * rng.standard_normal((*lead, 8, 16))).astype(np.float32)
    if nan:
        data[..., 2, 3:6] = np.nan
    dims = ("time", "member")[: len(lead)] + ("lat", "lon")
    coords = {d: np.arange(n) for d, n in zip(dims, lead, strict=False)}
    coords["lat"] = ("lat", lat, {"units": "degrees_north"})
    coords["lon"] = ("lon", lon, {"units": "degrees_east"})
    attrs = {"long_name": "2 metre temperature"} | ({"units": units} if units else {})
    return xr.DataArray(data, dims=dims, coords=coords, attrs=attrs, name="t2m")


def write(da: xr.DataArray, path: Path) -> Path:
    da.to_dataset().to_netcdf(path)
    return path


def checkpoint(path: Path, stats: FieldStats | None = T2M, **kw) -> Path:
    torch.manual_seed(0)
    kwargs = {**KW, **kw}
    model = metasr.create_model("meta_edsr", **kwargs)
    meta = stats_metadata(stats) if stats is not None else None
    save_checkpoint(path, model, "meta_edsr", kwargs, metadata=meta)
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {
        "in": write(field(), tmp_path / "in.nc"),
        "model": checkpoint(tmp_path / "m.safetensors"),
        "bare": checkpoint(tmp_path / "bare.safetensors", stats=None),
    }


def run(*args: object) -> int:
    return main([str(a) for a in args])


# ------------------------------------------------------------------------------------------
# upscale


def test_model_round_trip_keeps_coordinates_attributes_and_nans(files, tmp_path, capsys):
    out = tmp_path / "out.nc"
    assert (
        run(
            "upscale",
            files["in"],
            "--var",
            "t2m",
            "--target-grid",
            "16x32",
            "-o",
            out,
            "--model",
            files["model"],
            "-q",
        )
        == 0
    )
    src = mc.read_field(files["in"], "t2m")
    got = xr.open_dataset(out)
    var = got["t2m"]
    assert var.dims == ("time", "lat", "lon") and var.shape == (3, 16, 32)
    grid = mc.named_grid("16x32")
    np.testing.assert_array_equal(got["lat"].values, grid.lat)
    np.testing.assert_array_equal(got["lon"].values, grid.lon)
    np.testing.assert_array_equal(got["time"].values, src["time"].values)
    assert var.attrs["units"] == "K" and var.attrs["long_name"] == "2 metre temperature"
    assert "metasr upscale" in got.attrs["history"]
    assert got["lat"].attrs["standard_name"] == "latitude"
    # NaN exactly where under half of a target cell is valid; finite elsewhere.
    keep = mc.regrid_mask(np.isfinite(src.values), mc.grid_of(src), grid)
    np.testing.assert_array_equal(np.isfinite(var.values), keep)
    assert 0 < (~keep).sum() < keep.size
    # The same as the Python API, which equals normalise -> network -> de-normalise.
    loaded = load_model(files["model"])
    api = mc.downscale_with_model(src, loaded, "16x32")
    np.testing.assert_allclose(var.values, api.values, rtol=0, atol=1e-4, equal_nan=True)
    filled, valid = mc.fill_missing(src.values, mc.grid_of(src))
    # The network sees both grids in the canonical layout (latitude ascending, issue 23): the
    # source and target here run north to south, so rows are flipped in and out.
    s_c, d_c = canonical_layout(mc.grid_of(src)), canonical_layout(grid)
    with torch.no_grad():
        z = torch.from_numpy(((s_c.apply(filled) - 280.0) / 2.0).astype(np.float32))[:, None]
        # The network places the target rows and columns by latitude/longitude.
        coords = coordinate_grid(s_c.grid, d_c.grid)
        ref = d_c.restore(loaded.model(z, coords=coords)[:, 0].numpy()) * 2.0 + 280.0
    # Pole rows hold one value each (issue 23): their longitude mean; other rows as the network.
    poles = np.abs(np.abs(grid.lat) - 90.0) < 1e-6
    ref[:, poles] = ref[:, poles].mean(axis=-1, keepdims=True)
    np.testing.assert_allclose(api.values[keep], ref[keep], rtol=0, atol=1e-4)


def test_every_leading_dim_is_processed(tmp_path):
    da = field(nan=False, lead=(2, 3))
    src = write(da, tmp_path / "in.nc")
    ckpt = checkpoint(tmp_path / "m.safetensors")
    out = tmp_path / "out.nc"
    assert (
        run(
            "upscale",
            src,
            "--var",
            "t2m",
            "--target-grid",
            "12x20",
            "-o",
            out,
            "--model",
            ckpt,
            "--batch-size",
            "4",
            "-q",
        )
        == 0
    )
    got = xr.open_dataset(out)["t2m"]
    assert got.dims == ("time", "member", "lat", "lon") and got.shape == (2, 3, 12, 20)
    loaded = load_model(ckpt)
    # Each (time, member) field on its own gives the same as the batched run.
    one = mc.downscale_with_model(mc.as_field(da[1, 2]), loaded, "12x20")
    np.testing.assert_allclose(got.values[1, 2], one.values, rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", mc.METHODS)
def test_baselines_are_written(files, tmp_path, method):
    out = tmp_path / f"{method}.nc"
    assert (
        run(
            "upscale",
            files["in"],
            "--var",
            "t2m",
            "--target-grid",
            "n96",
            "-o",
            out,
            "--baseline",
            method,
            "-q",
        )
        == 0
    )
    got = xr.open_dataset(out)["t2m"]
    want = mc.downscale(mc.read_field(files["in"], "t2m"), "n96", method)
    np.testing.assert_array_equal(got.values, want.values)
    assert f"{method} regridding" in xr.open_dataset(out).attrs["history"]


def test_target_grid_from_a_netcdf_file(files, tmp_path):
    grid_file = write(field(nan=False).interp(lat=np.linspace(80, -80, 12)), tmp_path / "g.nc")
    out = tmp_path / "out.nc"
    assert (
        run(
            "upscale",
            files["in"],
            "--var",
            "t2m",
            "--target-grid",
            grid_file,
            "-o",
            out,
            "--baseline",
            "bilinear",
            "-q",
        )
        == 0
    )
    got = xr.open_dataset(out)
    np.testing.assert_allclose(got["lat"].values, np.linspace(80, -80, 12))
    assert got["t2m"].shape == (3, 12, 16)


def test_stats_given_on_the_command_line_and_from_a_file(files, tmp_path):
    a, b = tmp_path / "a.nc", tmp_path / "b.nc"
    assert (
        run(
            "upscale",
            files["in"],
            "--var",
            "t2m",
            "--target-grid",
            "16x32",
            "-o",
            a,
            "--model",
            files["bare"],
            "--stats",
            "280,2",
            "-q",
        )
        == 0
    )
    stats_file = tmp_path / "s.json"
    stats_file.write_text(T2M.to_json())
    assert (
        run(
            "upscale",
            files["in"],
            "--var",
            "t2m",
            "--target-grid",
            "16x32",
            "-o",
            b,
            "--model",
            files["bare"],
            "--stats",
            stats_file,
            "-q",
        )
        == 0
    )
    ref = mc.downscale_with_model(
        mc.read_field(files["in"], "t2m"), load_model(files["bare"]), "16x32", stats=T2M
    )
    for path in (a, b):
        got = xr.open_dataset(path)["t2m"].values
        np.testing.assert_allclose(got, ref.values, rtol=0, atol=1e-4, equal_nan=True)


# ------------------------------------------------------------------------------------------
# bad input: one line, non-zero exit, nothing written


def _no_lat(path: Path) -> Path:
    return write(field().rename(lat="y").assign_coords(y=np.arange(8.0)), path)


def _curvilinear(path: Path) -> Path:
    da = field(nan=False)
    lat2, lon2 = np.meshgrid(da["lat"].values, da["lon"].values, indexing="ij")
    ds = xr.Dataset(
        {"t2m": (("time", "y", "x"), da.values, {"units": "K"})},
        coords={
            "lat": (("y", "x"), lat2, {"units": "degrees_north"}),
            "lon": (("y", "x"), lon2, {"units": "degrees_east"}),
        },
    )
    ds.to_netcdf(path)
    return path


def _non_monotonic(path: Path) -> Path:
    da = field()
    lat = da["lat"].values.copy()
    lat[[2, 3]] = lat[[3, 2]]
    return write(da.assign_coords(lat=("lat", lat, {"units": "degrees_north"})), path)


def _all_nan(path: Path) -> Path:
    return write(field() * np.nan, path)


def _celsius(path: Path) -> Path:
    return write(field(units="degC"), path)


BAD = {
    "missing variable": (lambda p: write(field(), p), ["--var", "tas"], "no variable 'tas'"),
    "no lat/lon": (_no_lat, [], "no latitude"),
    "2-D lat/lon": (_curvilinear, [], "not supported yet"),
    "non-monotonic": (_non_monotonic, [], "not strictly monotonic"),
    "all NaN": (_all_nan, [], "all NaN"),
    "coarser target": (lambda p: write(field(), p), ["--target-grid", "4x32"], "coarser"),
    "units": (_celsius, [], "'degC' but the model's statistics"),
    "no stats": (lambda p: write(field(), p), ["--model", "BARE"], "no normalisation statistics"),
    "bad stats": (lambda p: write(field(), p), ["--stats", "1,0"], "bad --stats"),
    "bad grid": (lambda p: write(field(), p), ["--target-grid", "era6"], "unknown grid"),
    "scale": (lambda p: write(field(), p), ["--scale", "2"], "--target-grid"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(files, tmp_path, capsys, case):
    make, extra, fragment = BAD[case]
    src = make(tmp_path / "bad.nc")
    args = {"--var": "t2m", "--target-grid": "16x32", "--model": str(files["model"])}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        args[flag] = str(files["bare"]) if value == "BARE" else value
    if case == "scale":
        del args["--target-grid"]
    out = tmp_path / "out.nc"
    argv = ["upscale", src, "-o", out, "-q"] + [x for kv in args.items() for x in kv]
    assert run(*argv) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert not out.exists() and not list(tmp_path.glob("*.part"))


EVAL_BAD = {k: BAD[k] for k in ("missing variable", "no lat/lon", "2-D lat/lon", "non-monotonic",
                                 "all NaN", "units", "no stats")}  # fmt: skip


@pytest.mark.parametrize("case", list(EVAL_BAD))
def test_eval_bad_input_is_one_line_and_writes_nothing(files, tmp_path, capsys, case):
    # metasr eval on netCDF refuses the bad inputs as upscale does, before any score.
    make, extra, fragment = EVAL_BAD[case]
    src = make(tmp_path / "bad.nc")
    args = {"--var": "t2m", "--model": str(files["model"])}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        args[flag] = str(files["bare"]) if value == "BARE" else value
    out = tmp_path / "scores.json"
    argv = ["eval", "--data", src, "--scales", "2", "--json", out]
    assert run(*argv, *[x for kv in args.items() for x in kv]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert not out.exists()


def test_model_for_another_variable_count_is_refused(tmp_path, capsys):
    src = write(field(), tmp_path / "in.nc")
    two = FieldStats(("t2m", "sp"), ("K", "Pa"), (280.0, 1e5), (2.0, 1e3))
    ckpt = checkpoint(tmp_path / "two.safetensors", stats=two, in_channels=2, out_channels=2)
    out = tmp_path / "out.nc"
    assert (
        run("upscale", src, "--var", "t2m", "--target-grid", "16x32", "-o", out, "--model", ckpt)
        == 1
    )
    err = capsys.readouterr().err
    assert "maps 2 to 2 channels" in err and not out.exists()
    assert run("eval", "--data", src, "--var", "t2m", "--scales", "2", "--model", ckpt) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "maps 2 to 2 channels" in err


def test_checkpoint_stats_are_validated_on_load(tmp_path):
    ok = checkpoint(tmp_path / "ok.safetensors")
    assert checkpoint_stats(load_model(ok)) == T2M
    assert checkpoint_stats(load_model(checkpoint(tmp_path / "b.safetensors", None))) is None
    two = FieldStats(("a", "b"), ("K", "K"), (0.0, 0.0), (1.0, 1.0))
    with pytest.raises(ValueError, match="2 variable.*takes 1 channels"):
        load_model(checkpoint(tmp_path / "two.safetensors", stats=two))
    torch.manual_seed(0)
    model = metasr.create_model("meta_edsr", **KW)
    for bad in (
        '{"version": 1, "variables": []}',
        "not json",
        '{"version": 1, "variables": [{"name": "t", "units": "K", "mean": 1, "std": -1}]}',
    ):
        path = tmp_path / "corrupt.safetensors"
        save_checkpoint(path, model, "meta_edsr", KW, metadata={"field_stats": bad})
        with pytest.raises(ValueError, match="corrupt 'field_stats'"):
            load_model(path)


def test_field_stats_validation_and_json_round_trip():
    assert FieldStats.from_json(T2M.to_json()) == T2M
    with pytest.raises(ValueError, match="std"):
        FieldStats(("t",), ("K",), (0.0,), (0.0,))
    with pytest.raises(ValueError, match="one name, unit"):
        FieldStats(("t", "u"), ("K",), (0.0,), (1.0,))
    with pytest.raises(ValueError, match="number"):
        FieldStats.from_json(
            '{"version": 1, "variables": [{"name": "t", "units": "K", "mean": true, "std": 1}]}'
        )
    # A wrong type in the API is a TypeError; the same in a file is corrupt data (ValueError).
    with pytest.raises(TypeError, match="must be numbers"):
        FieldStats(("t",), ("K",), ("280",), (1.0,))
    with pytest.raises(TypeError, match="variables must be strings"):
        FieldStats((2,), ("K",), (0.0,), (1.0,))
    with pytest.raises(TypeError, match="stats must be a FieldStats"):
        stats_metadata({"t2m": (280.0, 2.0)})
    with pytest.raises(ValueError, match="variables must be strings"):
        FieldStats.from_json(
            '{"version": 1, "variables": [{"name": 7, "units": "K", "mean": 1, "std": 1}]}'
        )
    with pytest.raises(TypeError, match="expected an array"):
        T2M.normalise([[[280.0]]])


# ------------------------------------------------------------------------------------------
# climate-stats


def test_compute_stats_is_the_area_weighted_mean_and_std():
    da = field()
    grid = mc.grid_of(da)
    stats = mc.compute_stats(da)
    x = da.values.astype(np.float64)
    a = np.broadcast_to(grid.cell_areas(), x.shape)
    ok = np.isfinite(x)
    mean = (a[ok] * x[ok]).sum() / a[ok].sum()
    std = np.sqrt((a[ok] * (x[ok] - mean) ** 2).sum() / a[ok].sum())
    assert stats.variables == ("t2m",) and stats.units == ("K",)
    assert stats.mean[0] == pytest.approx(mean, rel=1e-12)
    assert stats.std[0] == pytest.approx(std, rel=1e-12)
    with pytest.raises(ValueError, match="constant"):
        mc.compute_stats(np.ones((8, 16)), grid)


def test_climate_stats_command_writes_json_and_checkpoint(files, tmp_path, capsys):
    js, into = tmp_path / "s.json", tmp_path / "with.safetensors"
    assert (
        run(
            "climate-stats",
            files["in"],
            "--var",
            "t2m",
            "-o",
            js,
            "--checkpoint",
            files["bare"],
            "--into",
            into,
        )
        == 0
    )
    want = mc.compute_stats(mc.read_field(files["in"], "t2m"))
    assert FieldStats.from_json(js.read_text()) == want
    assert checkpoint_stats(load_model(into)) == want
    assert checkpoint_stats(load_model(files["bare"])) is None  # --into: source untouched
    add_checkpoint_stats(files["bare"], want)
    assert checkpoint_stats(load_model(files["bare"])) == want


def test_units_spellings_and_mismatch():
    assert mc.same_units("K", "kelvin") and mc.same_units("degC", "Celsius")
    assert not mc.same_units("K", "degC")
    mc.check_units(T2M, "degK")
    with pytest.raises(ValueError, match="convert the field"):
        mc.check_units(T2M, "Pa")


# ------------------------------------------------------------------------------------------
# eval


def test_eval_fields_equals_the_metrics_on_the_same_arrays(files, tmp_path, capsys):
    js = tmp_path / "r.json"
    assert (
        run(
            "eval",
            "--data",
            files["in"],
            "--var",
            "t2m",
            "--model",
            files["model"],
            "--scales",
            "2,2x4",
            "--baselines",
            "bilinear,conservative",
            "--json",
            js,
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "conservation_rmse" in out and "bilinear" in out
    payload = json.loads(js.read_text())
    da = mc.read_field(files["in"], "t2m")
    hr, grid = da.values.astype(np.float64), mc.grid_of(da)
    loaded = load_model(files["model"])
    rows = {(r["setting"], r["method"], r["index"]): r for r in payload["per_field"]}
    assert len(rows) == 2 * 3 * 3
    for label, scale in (("2", (2.0, 2.0)), ("2x4", (2.0, 4.0))):
        lr, lr_grid = mc.coarsen(hr, grid, scale)
        preds = {
            "bilinear": mc.regrid(lr, lr_grid, grid, "bilinear"),
            "conservative": mc.regrid(lr, lr_grid, grid, "conservative"),
            str(files["model"]): mc.apply_downscaler(
                mc.ModelDownscaler(loaded, T2M), lr, lr_grid, grid
            ),
        }
        for method, pred in preds.items():
            for i in range(3):
                r = rows[(label, method, i)]
                assert r["rmse"] == pytest.approx(mc.weighted_rmse(pred[i], hr[i], grid), 1e-9)
                assert r["mae"] == pytest.approx(mc.weighted_mae(pred[i], hr[i], grid), 1e-9)
                assert r["bias"] == pytest.approx(mc.weighted_bias(pred[i], hr[i], grid), 1e-6)
                assert r["pearson"] == pytest.approx(
                    mc.pearson_correlation(pred[i], hr[i], grid), 1e-9
                )
                err = mc.conservation_error(pred[i], grid, lr[i], lr_grid)
                want = mc.weighted_rmse(err, np.zeros_like(err), lr_grid)
                assert r["conservation_rmse"] == pytest.approx(want, rel=1e-9, abs=1e-12)
    means = {(r["setting"], r["method"]): r for r in payload["results"]}
    r = means[("2", "bilinear")]
    assert r["fields"] == 3
    assert r["rmse"] == pytest.approx(
        np.mean([rows[("2", "bilinear", i)]["rmse"] for i in range(3)])
    )


def test_eval_fields_baselines_only_and_bad_baseline(files, capsys):
    assert (
        run(
            "eval",
            "--data",
            files["in"],
            "--var",
            "t2m",
            "--model",
            "conservative",
            "--baselines",
            "",
            "--lq-size",
            "4x8",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "lr4x8" in out and "conservative" in out
    assert (
        run(
            "eval",
            "--data",
            files["in"],
            "--var",
            "t2m",
            "--model",
            "bicubic",
            "--baselines",
            "cubic",
        )
        == 2
    )
    assert "unknown baseline 'cubic'" in capsys.readouterr().err
    assert run("eval", "--data", files["in"], "--var", "t2m", "--model", files["bare"]) == 1
    assert "no normalisation statistics" in capsys.readouterr().err


def test_a_safetensors_header_length_ending_in_0x80_is_not_taken_for_a_pickle(tmp_path):
    # Found with the statistics metadata: 1 file in 256 has a header length whose first
    # (little-endian) byte is 0x80, pickle's PROTO opcode.
    torch.manual_seed(0)
    model = metasr.create_model("meta_edsr", **KW)
    path = tmp_path / "m.safetensors"
    for pad in range(256):
        save_checkpoint(path, model, "meta_edsr", KW, metadata={"note": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert load_model(path).metadata["note"] == "x" * pad
