"""Model card, its checks in ``metasr upscale``, ``metasr info --model``, the back-projected
bicubic baseline and the training batches of issue 23."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from metasr import create_model
from metasr.checkpoints import save_checkpoint
from metasr.climate.card import ModelCard, card_warnings, check_input, model_card
from metasr.climate.constraint import ConservativeConstraint, bicubic_conservative
from metasr.climate.grids import Grid, gaussian_grid, regular_grid
from metasr.climate.metrics import weighted_rmse
from metasr.climate.regrid import regrid
from metasr.climate.training import Source, batch_loss, sample_batch
from metasr.field_stats import FieldStats, stats_metadata

xr = pytest.importorskip("xarray")

KWARGS = {
    "in_channels": 1, "out_channels": 1, "n_resblocks": 1, "n_feats": 8, "hidden": 16,
    "img_range": 1.0, "mean": 0.0, "bicubic_residual": True, "periodic_lon": True,
}  # fmt: skip


def _card(**kw: object) -> ModelCard:
    base = {
        "variable": "air_temperature", "units": "K", "sources": [{"name": "glosea4"}],
        "held_out": ["hadgem2"], "ratio_min": 1.5, "ratio_max": 10.0,
        "layouts": ["global", "pole-rows", "no-pole-rows", "gaussian"],
    }  # fmt: skip
    base.update(kw)
    return ModelCard(**base)  # type: ignore[arg-type]


def test_card_round_trip_and_refusals() -> None:
    card = _card()
    assert ModelCard.from_json(card.to_json()) == card
    assert model_card(card.metadata()) == card
    assert model_card({}) is None
    with pytest.raises(ValueError, match="normalisation"):
        _card(normalisation="global")
    with pytest.raises(ValueError, match="layouts"):
        _card(layouts=["sideways"])
    with pytest.raises(ValueError, match="version"):
        ModelCard.from_json('{"variable": "t"}')
    with pytest.raises(ValueError, match="not JSON"):
        ModelCard.from_json("{")


def test_card_warnings_and_units() -> None:
    card = _card()
    src, dst = regular_grid(37, 48), regular_grid(145, 192)
    assert card_warnings(card, src, dst, "K", masked=False) == []
    far = card_warnings(card, regular_grid(10, 12), regular_grid(145, 192), None, masked=True)
    assert any("ratio" in m for m in far) and any("missing values" in m for m in far)
    region = Grid.from_coords(np.arange(35.5, 60, 1.0), np.arange(-9.5, 30, 1.0))
    fine = Grid.from_coords(np.arange(35.25, 60, 0.5), np.arange(-9.75, 30, 0.5))
    assert any("regional" in m for m in card_warnings(card, region, fine, None, False))
    offset, msgs = check_input(card, src, dst, "degC", False, strict=False)
    assert offset == pytest.approx(273.15) and "converted" in msgs[-1]
    with pytest.raises(ValueError, match="--strict"):
        check_input(card, src, dst, "degC", False, strict=True)
    with pytest.raises(ValueError, match="convert it first"):
        check_input(card, src, dst, "m", False, strict=False)
    assert check_input(card, src, dst, "kelvin", False, strict=True) == (0.0, [])


@pytest.fixture(scope="module")
def carded(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    torch.manual_seed(0)
    net = create_model("meta_edsr", **KWARGS)
    path = tmp_path_factory.mktemp("card") / "tiny_t2m.safetensors"
    meta = {**stats_metadata(FieldStats(("t",), ("K",), (280.0,), (20.0,))), **_card().metadata()}
    save_checkpoint(path, net, "meta_edsr", KWARGS, metadata=meta)
    return path


def _write(path, units: str, masked: bool = False) -> None:  # noqa: ANN001
    g = regular_grid(19, 24, pole_rows=True, north_first=True)
    v = 15 + 10 * np.cos(np.deg2rad(g.lat))[:, None] + np.zeros(g.shape)
    if masked:
        v[:2, :3] = np.nan
    da = xr.DataArray(v[None], dims=("time", "lat", "lon"), name="tas", attrs={"units": units},
                      coords={"lat": g.lat, "lon": g.lon - 180.0})  # fmt: skip
    da.to_dataset().to_netcdf(path)


def test_upscale_warns_converts_and_records_card(carded, tmp_path, capsys) -> None:  # noqa: ANN001
    from metasr.cli import main

    src = tmp_path / "in.nc"
    _write(src, "degC", masked=True)
    out = tmp_path / "out.nc"
    rc = main(["upscale", str(src), "--var", "tas", "--target-grid", "37x48",
               "--model", str(carded), "-o", str(out), "-q"])  # fmt: skip
    assert rc == 0
    err = capsys.readouterr().err
    assert "converted to K" in err and "missing values" in err
    with xr.open_dataset(out) as ds:
        assert ds.tas.attrs["units"] == "K"
        assert ds.tas.attrs["metasr_model"] == str(carded)
        assert "constraint smooth" in ds.tas.attrs["metasr_model_card"]
        assert 270 < float(ds.tas.mean()) < 300
    strict = tmp_path / "strict.nc"
    rc = main(["upscale", str(src), "--var", "tas", "--target-grid", "37x48",
               "--model", str(carded), "-o", str(strict), "-q", "--strict"])  # fmt: skip
    assert rc != 0 and not strict.exists()
    assert "--strict" in capsys.readouterr().err


def test_info_prints_the_card(carded, capsys) -> None:  # noqa: ANN001
    from metasr.cli import main

    assert main(["info", "--model", str(carded)]) == 0
    text = capsys.readouterr().out
    assert "normalisation: per-sample" in text and "held out: hadgem2" in text
    assert main(["info", "--model", "t2m-v1"]) == 0
    assert "no model card" in capsys.readouterr().out


def test_bicubic_conservative_is_the_limit_of_back_projection() -> None:
    src, dst = regular_grid(13, 17, pole_rows=False), gaussian_grid(40, 50)
    x = 280 + np.random.default_rng(3).normal(0, 5, src.shape)
    y = regrid(x, src, dst, "bicubic")
    con = ConservativeConstraint(src, dst)
    for _ in range(200):  # explicit back-projection
        y = y + regrid(x - regrid(y, dst, src, "conservative"), src, dst, "bicubic")
    assert con.error(y, x) < 1e-6
    assert np.max(np.abs(y - bicubic_conservative(x, src, dst))) < 1e-5


def test_bicubic_conservative_is_conservative_and_beats_bicubic() -> None:
    hr_grid = regular_grid(73, 96, pole_rows=True, north_first=False)
    lat, lon = np.deg2rad(hr_grid.lat)[:, None], np.deg2rad(hr_grid.lon)[None, :]
    hr = 280 + 30 * np.cos(lat) + 5 * np.sin(3 * lon) * np.cos(lat) ** 2 + 3 * np.sin(5 * lat)
    for lr_grid in (regular_grid(25, 32, pole_rows=False), gaussian_grid(24, 40)):
        lr = regrid(hr, hr_grid, lr_grid, "conservative")
        out = bicubic_conservative(lr, lr_grid, hr_grid)
        assert ConservativeConstraint(lr_grid, hr_grid).error(out, lr) < 1e-6
        bic = regrid(lr, lr_grid, hr_grid, "bicubic")
        assert weighted_rmse(out, hr, hr_grid) < weighted_rmse(bic, hr, hr_grid)


def test_training_batches_cover_layouts_and_train() -> None:
    g = regular_grid(37, 48, pole_rows=True, north_first=False)
    rng = np.random.default_rng(0)
    fields = 280 + 20 * np.cos(np.deg2rad(g.lat))[None, :, None] + rng.normal(0, 1, (3, *g.shape))
    fields[0, 5:9, 10:20] = np.nan
    region = Grid.from_coords(np.arange(20.5, 50, 1.0), np.arange(230.5, 270, 1.0))
    reg = 290 + rng.normal(0, 1, (2, *region.shape))
    sources = {
        "g": Source(fields, g, "t", ["a", "b", "c"]),
        "r": Source(reg, region, "t", ["x", "y"]),
    }
    r = random.Random(0)
    seen = set()
    net = create_model("meta_edsr", **KWARGS)
    for _ in range(12):
        b = sample_batch(sources, r, batch_size=2)
        assert np.isfinite(b.lr).all() and b.lr.shape[0] == 2
        assert b.hr_grid.shape[0] >= b.lr_grid.shape[0] and b.hr_grid.shape[1] >= b.lr_grid.shape[1]
        seen.add((b.hr_grid.periodic_lon, b.lr_grid.has_pole_rows))
        loss = batch_loss(net, b)
        assert torch.isfinite(loss)
    loss.backward()
    assert len(seen) >= 2


def test_eval_accepts_the_back_projected_baseline() -> None:
    from metasr.climate.evaluate import evaluate_fields

    g = regular_grid(37, 48, pole_rows=True)
    lat, lon = np.deg2rad(g.lat)[:, None], np.deg2rad(g.lon)[None, :]
    hr = 280 + 30 * np.cos(lat) + 5 * np.sin(3 * lon) * np.cos(lat) ** 2
    rows = evaluate_fields([("f", hr[None], g)], [2], None, ["bicubic", "bicubic-conservative"])
    rmse = {r["method"]: r["rmse"] for r in rows}
    assert set(rmse) == {"bicubic", "bicubic-conservative"}
    assert rmse["bicubic-conservative"] < rmse["bicubic"]
    with pytest.raises(ValueError, match="bicubic-conservative"):
        evaluate_fields([("f", hr[None], g)], [2], None, ["cubic"])


def test_training_resumes_from_its_state(tmp_path) -> None:  # noqa: ANN001
    from metasr.climate.training import TrainConfig, train

    g = regular_grid(19, 24, pole_rows=True)
    fields = 280 + 20 * np.cos(np.deg2rad(g.lat))[None, :, None] + np.zeros((2, *g.shape))
    sources = {"g": Source(fields, g, "t", ["a", "b"])}
    cfg = TrainConfig(["g"], [], iterations=2, batch_size=1, save_every=1, init=None)
    lines: list[str] = []
    assert train(cfg, tmp_path, tmp_path / "run", sources=sources, log=lines.append) == 2
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=False)
    assert state["iteration"] == 2
    more = cfg._replace(iterations=3)
    assert train(more, tmp_path, tmp_path / "run", sources=sources, log=lines.append) == 3
    assert any("resumed" in line and "iteration 2" in line for line in lines)


def test_a_fold_never_trains_on_its_held_out_sources(tmp_path) -> None:  # noqa: ANN001
    from metasr.climate.training import TrainConfig, fold_sources, train

    g = regular_grid(19, 24, pole_rows=True)
    base = 280 + 20 * np.cos(np.deg2rad(g.lat))[None, :, None] + np.zeros((2, *g.shape))
    sources = {
        "g": Source(base, g, "t", ["a", "b"]),
        "h": Source(base + 1000.0, g, "t", ["c", "d"]),  # a loss far from 0 if ever drawn
    }
    cfg = TrainConfig(["g"], [], iterations=6, batch_size=1, save_every=100, init=None,
                      held_out_sources=["h"])  # fmt: skip
    assert list(fold_sources(cfg, sources)) == ["g"]
    drawn: list[str] = []
    import metasr.climate.training as training

    real = training.sample_batch

    def spy(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        batch = real(*a, **kw)
        drawn.append(batch.source)
        return batch

    training.sample_batch = spy
    try:
        assert train(cfg, tmp_path, tmp_path / "run", sources=sources, log=lambda _: None) == 6
    finally:
        training.sample_batch = real
    assert drawn == ["g"] * 6
    with pytest.raises(ValueError, match=r"\['h'\] are both trained on and held out"):
        fold_sources(cfg._replace(sources=["g", "h"]), sources)
    with pytest.raises(ValueError, match="no training source left"):
        fold_sources(cfg._replace(held_out_sources=["g", "h"], sources=[]), sources)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="both trained on and held out"):
        train(cfg._replace(sources=["g", "h"]), tmp_path, tmp_path / "bad", sources=sources)
    assert not (tmp_path / "bad").exists()  # refused before anything is written
