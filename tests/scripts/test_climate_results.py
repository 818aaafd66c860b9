"""The results and demo scripts (``scripts/climate_results.py``, ``scripts/climate_demo.py``) on
tiny synthetic fields, without the downloads; and the evaluator options they use (held-out
latitude bands, kept predictions, coarsening a finer original)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import metasr
from metasr import climate as mc
from metasr.checkpoints import load_model, save_checkpoint
from metasr.climate.stats import FieldStats, stats_metadata

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _script(name: str):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))  # climate_demo imports climate_results
    return importlib.import_module(name)


def _smooth(grid: mc.Grid, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lat, lon = np.deg2rad(grid.lat)[:, None], np.deg2rad(grid.lon)[None, :]
    a, b = rng.standard_normal(2)
    return 1000 * (
        np.cos(lat) * (a * np.sin(3 * lon) + b * np.cos(5 * lon + lat)) + np.sin(2 * lat)
    )


def _checkpoint(path: Path, name: str, units: str, mean: float, std: float) -> Path:
    kw = dict(in_channels=1, out_channels=1, n_resblocks=1, n_feats=8, hidden=16, img_range=1.0,
              mean=0.0, bicubic_residual=True, periodic_lon=True)  # fmt: skip
    torch.manual_seed(0)
    model = metasr.create_model("meta_edsr", **kw)
    stats = FieldStats((name,), (units,), (mean,), (std,), "9x16")
    save_checkpoint(path, model, "meta_edsr", kw, metadata=stats_metadata(stats))
    return path


# ------------------------------------------------------------------------------------ evaluator


def test_latitude_band_mask_and_masked_scores():
    grid = mc.regular_grid(19, 24)  # 90 … -90 every 10°
    mask = mc.latitude_band_mask(grid, [(-30, -10), (60, 40)])
    assert mask.shape == (19, 1)
    np.testing.assert_array_equal(grid.lat[mask[:, 0]], [60, 50, 40, -10, -20, -30])
    truth = _smooth(grid)
    pred = truth.copy()
    pred[~mask[:, 0]] += 500.0  # wrong outside the bands only
    lr, lr_grid = mc.coarsen(truth, grid, 2)
    whole = mc.score_field(pred[None], truth[None], grid, lr[None], lr_grid)
    bands = mc.score_field(pred[None], truth[None], grid, lr[None], lr_grid, mask=mask)
    assert whole["rmse"][0] > 100 and bands["rmse"][0] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="no row"):
        mc.latitude_band_mask(grid, [(1, 9)])
    with pytest.raises(ValueError, match="at least one"):
        mc.latitude_band_mask(grid, [])


def test_evaluate_fields_keeps_predictions_and_coarsens_a_source():
    fine = mc.regular_grid(37, 48)
    grid = mc.Grid.from_coords(fine.lat[::2], fine.lon[::2])  # every 2nd point: 19x24
    native = _smooth(fine)
    truth = native[::2, ::2]
    keep: dict = {}
    setting = mc.LRSize(7, 8)
    rows = mc.evaluate_fields(
        [("f", truth, grid)], [setting], baselines=("bicubic",), keep=keep, sources=[(native, fine)]
    )
    lr_grid = mc.coarse_grid(grid, (7, 8))
    want_lr, _ = mc.coarsen(native, fine, target=lr_grid)
    np.testing.assert_allclose(keep[(setting.label, "input")][0], want_lr)
    pred = mc.regrid(want_lr, lr_grid, grid, "bicubic")
    np.testing.assert_allclose(keep[(setting.label, "bicubic")][0], pred)
    assert rows[0]["rmse"] == pytest.approx(float(mc.weighted_rmse(pred, truth, grid)))
    # Without the source the field itself is coarsened: another input.
    rows2 = mc.evaluate_fields([("f", truth, grid)], [setting], baselines=("bicubic",))
    assert rows2[0]["rmse"] != pytest.approx(rows[0]["rmse"])
    with pytest.raises(ValueError, match="sources"):
        mc.evaluate_fields([("f", truth, grid)], [setting], sources=[None, None])


# ------------------------------------------------------------------------------ results script


def test_parse_bands():
    results = _script("climate_results")
    assert results.parse_bands("alt:30") == [(-90, -60), (-30, 0), (30, 60)]
    assert results.parse_bands("alt:30:odd") == [(-60, -30), (0, 30), (60, 90)]
    assert results.parse_bands("10:-20, 40:50") == [(-20, 10), (40, 50)]
    assert results.parse_score_bands("not:alt:90") == ([(-90, 0)], True)
    assert results.parse_score_bands("0:90") == ([(0, 90)], False)
    for bad in ("alt:0", "alt:15:third", "10", "a:b", "0:0", "-95:0"):
        with pytest.raises(ValueError):
            results.parse_bands(bad)


def test_run_recipe_scores_model_and_baselines_and_draws(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("safetensors")
    results = _script("climate_results")
    grid = mc.regular_grid(33, 64)
    truth = _smooth(grid)
    ckpt = _checkpoint(tmp_path / "m.safetensors", "relief", "m", 0.0, 1000.0)
    loaded = load_model(ckpt)
    model = mc.ModelDownscaler(loaded, mc.model_stats(loaded))
    bands = results.parse_bands("alt:30:odd")
    run = results.run_recipe(truth, grid, (9, 16), model, "tiny", bands)
    methods = [r["method"] for r in run.rows]
    assert methods == ["tiny", *results.BASELINES] * 2
    assert [r["scope"] for r in run.rows] == ["globe"] * 5 + ["bands"] * 5
    # The globe rows are metasr eval's protocol on the same field.
    ref = mc.summarize_fields(
        mc.evaluate_fields(
            [("relief", truth[None], grid)],
            [mc.LRSize(9, 16)],
            model,
            results.BASELINES,
            model_name="tiny",
        )  # fmt: skip
    )
    for a, b in zip(run.rows[:5], ref, strict=True):
        assert a["rmse"] == pytest.approx(b["rmse"], rel=1e-6)
    text = results.markdown(run.rows, "m", bands)
    assert "| tiny |" in text and "latitude bands -60…-30" in text
    # Outside the bands: the other rows (edges belong to the bands).
    out = results.run_recipe(truth, grid, (9, 16), None, bands=bands, outside=True)
    mask = ~mc.latitude_band_mask(grid, bands)
    pred = out.fields["bicubic"]
    want = mc.weighted_rmse(np.where(mask, pred, np.nan), truth, grid)
    got = [r for r in out.rows if r["scope"] == "bands" and r["method"] == "bicubic"]
    assert got[0]["rmse"] == pytest.approx(float(want))
    assert "outside the bands" in results.markdown(out.rows, "m", bands, outside=True)
    paths = results.figures(run, truth, grid, tmp_path / "fig", "relief", zoom="-30,30,0,90",
                            model_name="tiny", units="m", cmap="terrain")  # fmt: skip
    assert [p.name for p in paths] == ["relief_spectra.png", "relief_maps.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


# ---------------------------------------------------------------------------------- demo script


def test_demo_core_writes_netcdf_and_png(tmp_path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("netCDF4")
    pytest.importorskip("matplotlib")
    pytest.importorskip("safetensors")
    demo = _script("climate_demo")
    src = mc.Grid.from_coords(np.linspace(-90, 90, 9), np.arange(16) * 22.5)  # ascending, as N96
    dst = mc.regular_grid(33, 48)  # descending, as ERA5

    def profile(lat: np.ndarray, w: int) -> np.ndarray:  # warm equator, warmer north pole
        lat = np.deg2rad(lat)[:, None]
        return 278.0 + 20.0 * np.cos(lat) + 15.0 * np.sin(lat) + np.zeros((1, w))

    values = profile(src.lat, 16)
    da = demo.as_dataarray(values, src, "surface_temperature", "K", "surface temperature")
    ckpt = _checkpoint(tmp_path / "t2m.safetensors", "surface_temperature", "K", 278.0, 21.0)
    truth = profile(dst.lat, 48)
    done = demo.demo_field(da, dst, {"model": load_model(ckpt)}, tmp_path / "out", "t2m",
                           truth=truth, zoom="-40,40,0,180")  # fmt: skip
    names = [p.name for p in done["files"]]
    assert names == ["t2m_input.nc", "t2m_bicubic.nc", "t2m_conservative.nc", "t2m_model.nc",
                     "t2m.png"]  # fmt: skip
    with xr.open_dataset(tmp_path / "out" / "t2m_model.nc") as ds:
        out = ds["surface_temperature"]
        assert out.shape == (33, 48) and out.attrs["units"] == "K"
        np.testing.assert_allclose(ds["lat"].values, dst.lat)
        # The model's output is the right way up (the source runs south → north, the target
        # north → south): warm equator, north pole 30 K warmer than the south pole.
        rows = out.values.mean(axis=1)
        assert rows[16] > rows[0] + 3 and rows[0] > rows[-1] + 20
    assert set(done["rmse"]) == {"bicubic", "conservative", "model"}
    # A model for another unit is refused (one clear error), nothing written for it.
    wrong = _checkpoint(tmp_path / "m.safetensors", "relief", "m", 0.0, 1.0)
    with pytest.raises(ValueError, match="units"):
        demo.demo_field(da, dst, {"model": load_model(wrong)}, tmp_path / "bad", "t2m")
    assert not (tmp_path / "bad" / "t2m_model.nc").exists()


def test_demo_main_reports_a_missing_data_folder(tmp_path, capsys):
    pytest.importorskip("safetensors")
    demo = _script("climate_demo")
    ckpt = _checkpoint(tmp_path / "t2m.safetensors", "surface_temperature", "K", 278.0, 21.0)
    assert demo.main(["--data", str(tmp_path / "none"), "--model", str(ckpt),
                      "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1


def test_zoom_boxes_and_map_errors(tmp_path):
    from metasr.climate.figures import ZOOMS, plot_field_maps, zoom_box

    assert zoom_box("andes") == ZOOMS["andes"]
    assert zoom_box("10,20,30,40") == (10.0, 20.0, 30.0, 40.0)
    for bad in ("atlantis", "20,10,0,10", "1,2,3", "a,b,c,d"):
        with pytest.raises(ValueError, match="zoom"):
            zoom_box(bad)
    pytest.importorskip("matplotlib")
    grid = mc.regular_grid(9, 16)
    with pytest.raises(ValueError, match="no panels"):
        plot_field_maps([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="its grid"):
        plot_field_maps([("a", np.zeros((8, 16)), grid)], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no cell centre"):
        plot_field_maps([("a", _smooth(grid), grid)], tmp_path / "x.png", zoom=(1, 2, 1, 2))
    with pytest.raises(ValueError, match="reference"):
        plot_field_maps([("a", _smooth(grid), grid)], tmp_path / "x.png", reference=1)
    assert not (tmp_path / "x.png").exists()
