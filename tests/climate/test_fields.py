"""Training on lat/lon fields through the one BasicSR trainer (issue 12, parts 6 and 9).

The field dataset (ratios, full-width bands, held-out bands, coordinates, statistics) on small
synthetic netCDF fields; a real ``metasr train`` of a few iterations with a periodic network
called with coordinates, whose checkpoint carries ``field_stats`` that ``metasr upscale``
applies; the bundled ``t2m`` model's name and statistics; real GloSea4 data when present.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import default_collate

from metasr import climate as mc
from metasr.data.datasets import BatchSpec

xr = pytest.importorskip("xarray")
pytest.importorskip("netCDF4")

from metasr.climate.fields import FieldDataset, FieldTestDataset, field_stats_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GLOSEA4 = ROOT / "datasets" / "climate" / "glosea4"
H, W = 37, 48  # a 5° grid with pole rows, 90 … −90


def synthetic(n: int = 4, seed: int = 0) -> xr.DataArray:
    """Smooth random temperature-like fields (K) on a global grid with pole rows."""
    rng = np.random.default_rng(seed)
    grid = mc.regular_grid(H, W)
    lat, lon = np.deg2rad(grid.lat)[:, None], np.deg2rad(grid.lon)[None, :]
    data = np.empty((n, H, W))
    for i in range(n):
        a = rng.standard_normal(4)
        data[i] = (
            288
            - 30 * np.sin(lat) ** 2
            + 3 * a[0] * np.cos(lat) * np.sin(lon + a[1])
            + 2 * a[2] * np.cos(2 * lat) * np.cos(3 * lon + a[3])
        )
    return xr.DataArray(
        data.astype(np.float32),
        dims=("time", "lat", "lon"),
        coords={"time": np.arange(n), "lat": grid.lat, "lon": grid.lon},
        name="t2m",
        attrs={"units": "K"},
    )


@pytest.fixture(scope="module")
def nc_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fields")
    (root / "train").mkdir()
    (root / "val").mkdir()
    mc.write_field(synthetic(4, 0), root / "train" / "a.nc")
    mc.write_field(synthetic(2, 1), root / "val" / "b.nc")
    return {"root": root, "train": root / "train", "val": root / "val"}


def opts(path: Path, **kw) -> dict:
    return {"source": "netcdf", "dataroot_gt": str(path), "var": "t2m", **kw}


# ------------------------------------------------------------------------------------------
# the dataset


def test_whole_fields_at_asymmetric_ratio(nc_files):
    ds = FieldDataset(opts(nc_files["train"]))
    assert len(ds) == 4 and ds.kind == "field"
    s = ds.sample(1, BatchSpec((2.0, 3.0), None, 0.5))
    assert s["lq"].shape == (1, H // 2, W // 3) and s["gt"].shape == (1, H, W)
    lq_grid = mc.coarse_grid(ds.grid, (H // 2, W // 3))
    np.testing.assert_allclose(s["lq_lat"].numpy(), lq_grid.lat)
    np.testing.assert_allclose(s["lq_lon"].numpy(), lq_grid.lon)
    np.testing.assert_allclose(s["gt_lat"].numpy(), ds.grid.lat)
    assert s["periodic_lon"] is True
    # The LR is the conservative coarsening: the area-weighted global mean is kept.
    gt = s["gt"][0].double().numpy()
    lq = s["lq"][0].double().numpy()
    assert abs(mc.global_mean(lq, lq_grid) - mc.global_mean(gt, ds.grid)) < 1e-3
    expect, _ = mc.coarsen(gt, ds.grid, (2.0, 3.0))
    np.testing.assert_allclose(lq, expect, atol=1e-4)


def test_bands_are_full_width_and_share_one_grid_per_batch(nc_files):
    ds = FieldDataset(opts(nc_files["train"], lq_patch_size=[3, 4]))
    rng = random.Random(0)
    for _ in range(20):
        spec = ds.draw_spec(rng)
        assert spec.lq_patch in (3, 4) and 0 <= spec.offset < 1
        batch = default_collate(ds.__getitems__([0, 1, 2]))
        r_v, r_h = batch["scale"][0].tolist()
        p = batch["lq"].shape[-2]
        assert batch["gt"].shape[-2] == int(np.floor(p * r_v + 1e-6))
        assert batch["gt"].shape[-1] == W  # never cropped in longitude
        assert batch["lq"].shape[-1] == int(np.floor(W / r_h + 1e-6))
        for key in ("lq_lat", "lq_lon", "gt_lat", "gt_lon"):
            assert bool((batch[key] == batch[key][0]).all()), key
        # The LR band lies inside its HR band.
        lat = batch["gt_lat"][0]
        assert batch["lq_lat"][0].max() <= lat.max() and batch["lq_lat"][0].min() >= lat.min()
    # Two batches at different offsets see different bands of the same field.
    a = ds.sample(0, BatchSpec((2.0, 2.0), 4, 0.0))
    b = ds.sample(0, BatchSpec((2.0, 2.0), 4, 0.99))
    assert a["gt_lat"][0] != b["gt_lat"][0]


def test_held_out_bands_are_never_seen(nc_files):
    bands = [[-90, -45], [0, 45]]
    ds = FieldDataset(opts(nc_files["train"], lq_patch_size=2, hr_lat_bands=bands))
    seen: set[float] = set()
    for k in range(40):
        s = ds.sample(0, BatchSpec((2.0, 2.0), 2, k / 40))
        seen.update(s["gt_lat"].tolist())
    seen_a = np.array(sorted(seen))
    inside = ((seen_a >= -90) & (seen_a <= -45)) | ((seen_a >= 0) & (seen_a <= 45))
    assert inside.all() and seen_a.size > 10
    with pytest.raises(ValueError, match="no band of"):
        ds.sample(0, BatchSpec((8.0, 2.0), 4, 0.0))  # 32 rows: longer than any band
    with pytest.raises(ValueError, match="needs band crops"):
        FieldDataset(opts(nc_files["train"], hr_lat_bands=bands))
    # The statistics leave the held-out rows out.
    stats = field_stats_for(opts(nc_files["train"], hr_lat_bands=bands))
    rows = (ds.grid.lat <= -45) | ((ds.grid.lat >= 0) & (ds.grid.lat <= 45))
    values = xr.open_dataset(nc_files["train"] / "a.nc")["t2m"].values.astype(np.float64)
    expect = mc.compute_stats(np.where(rows[:, None], values, np.nan), ds.grid)
    assert stats.mean[0] == pytest.approx(expect.mean[0]) and stats.units == ("K",)
    assert stats.std[0] == pytest.approx(expect.std[0])


def test_stats_option_and_bad_options(nc_files):
    given = field_stats_for(opts(nc_files["train"], stats={"mean": 280.0, "std": 10.0}))
    assert (given.mean, given.std) == ((280.0,), (10.0,))
    auto = field_stats_for(opts(nc_files["train"]))
    assert auto.variables == ("t2m",) and 250 < auto.mean[0] < 300 and auto.std[0] > 0
    with pytest.raises(ValueError, match="source"):
        FieldDataset(opts(nc_files["train"], source="grib"))
    with pytest.raises(ValueError, match="at least 2x2"):
        FieldDataset(opts(nc_files["train"], scale_sampler={"type": "fixed", "scale": 30}))
    with pytest.raises(ValueError, match="lq_patch_size"):
        FieldDataset(opts(nc_files["train"], lq_patch_size=1))


def test_test_dataset_orders_fields_by_ratio(nc_files):
    ds = FieldTestDataset(opts(nc_files["val"], scales=[2, [2, 3]]))
    assert len(ds) == 4
    assert ds[0]["lq"].shape == (1, H // 2, W // 2)
    assert ds[3]["lq"].shape == (1, H // 2, W // 3)


def test_model_batch_coords_and_refusals():
    if importlib.util.find_spec("basicsr") is None:
        pytest.skip("BasicSR is not installed (pip install 'metasr[train]')")
    from metasr.integrations.basicsr.model import _batch_coords

    lat = torch.tensor([[10.0, 0.0], [10.0, 0.0]], dtype=torch.float64)
    lon = torch.tensor([[0.0, 180.0], [0.0, 180.0]], dtype=torch.float64)
    hlat = torch.tensor([[10.0, 5.0, 0.0]] * 2, dtype=torch.float64)
    hlon = torch.tensor([[0.0, 90.0, 180.0, 270.0]] * 2, dtype=torch.float64)
    data = {"lq_lat": lat, "lq_lon": lon, "gt_lat": hlat, "gt_lon": hlon, "periodic_lon": [True]}
    c = _batch_coords(data)
    assert c.in_shape == (2, 2) and c.out_shape == (3, 4) and c.periodic_lon
    assert _batch_coords({"scale": torch.ones(2, 2)}) is None
    bad = dict(data, gt_lat=torch.tensor([[10.0, 5.0, 0.0], [9.0, 5.0, 0.0]]))
    with pytest.raises(ValueError, match="different gt_lat"):
        _batch_coords(bad)


def test_pretrained_checkpoint_gives_its_stats(tmp_path):
    """A continued field model keeps the statistics of the checkpoint it starts from."""
    if importlib.util.find_spec("basicsr") is None:
        pytest.skip("BasicSR is not installed (pip install 'metasr[train]')")
    from metasr.climate.stats import FieldStats, training_checkpoint_stats
    from metasr.integrations.basicsr.model import _stats_of_options

    stats = FieldStats(("tas",), ("K",), (288.2,), (15.6,), "N96")
    good, plain, corrupt = tmp_path / "g.pth", tmp_path / "p.pth", tmp_path / "c.pth"
    torch.save({"params": {}, "field_stats": stats.to_json()}, good)
    torch.save({"params": {}}, plain)
    torch.save({"params": {}, "field_stats": "{not json"}, corrupt)
    assert _stats_of_options({"path": {"pretrain_network_g": str(good)}}) == stats
    assert _stats_of_options({"path": {"pretrain_network_g": str(plain)}}) is None
    assert training_checkpoint_stats(good) == stats
    with pytest.raises(ValueError, match=r"c\.pth: corrupt 'field_stats'"):
        _stats_of_options({"path": {"pretrain_network_g": str(corrupt)}})
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: not a readable training checkpoint"):
        training_checkpoint_stats(tmp_path / "junk.pth")
    # Options that name their statistics win over the checkpoint's.
    given = {"mean": 1.0, "std": 2.0, "units": "m"}
    opt = {"field_stats": given, "path": {"pretrain_network_g": str(good)}}
    assert _stats_of_options(opt).mean == (1.0,)


# ------------------------------------------------------------------------------------------
# a real training run


def _metasr(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "metasr", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(nc_files) -> tuple[Path, subprocess.CompletedProcess]:
    if importlib.util.find_spec("basicsr") is None:
        pytest.skip("BasicSR is not installed (pip install 'metasr[train]')")
    opt = yaml.safe_load((ROOT / "options" / "train" / "MetaEDSR_t2m.yml").read_text())
    opt["name"] = "fields_tiny"
    opt["datasets"]["train"] = {
        **opt["datasets"]["train"],
        **opts(nc_files["train"]),
        "scale_sampler": {"type": "uniform", "min": 2.0, "max": 4.0, "p_symmetric": 0.5},
        "lq_patch_size": [3, 4],
        "batch_size_per_gpu": 2,
        "dataset_enlarge_ratio": 10,
    }
    opt["datasets"]["train"].pop("members")
    opt["datasets"]["val"] = {
        **opt["datasets"]["val"],
        **opts(nc_files["val"]),
        "scales": [2, [2, 3]],
    }
    opt["datasets"]["val"].pop("members")
    opt["network_g"].update(n_resblocks=1, n_feats=8, hidden=16)
    opt["train"].update(total_iter=30, scheduler={"type": "MultiStepLR", "milestones": [100]})
    opt["train"]["optim_g"]["lr"] = 2e-3
    opt["val"]["val_freq"] = 30
    opt["logger"].update(print_freq=1, save_checkpoint_freq=30)
    path = nc_files["root"] / "train.yml"
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return nc_files["root"], _metasr("train", "-opt", str(path), cwd=nc_files["root"])


def test_training_runs_with_coords_and_saves_stats(trained):
    root, done = trained
    assert done.returncode == 0, done.stderr[-3000:]
    log = next((root / "experiments" / "fields_tiny").glob("train_*.log")).read_text()
    losses = [float(x) for x in re.findall(r"l_pix: ([0-9.e+-]+)", log)]
    assert len(losses) == 30 and all(np.isfinite(losses))
    # Bicubic residual + zero-initialised-ish head: the loss must drop from its start.
    assert np.mean(losses[-10:]) < np.mean(losses[:5])
    assert "Field statistics: t2m" in log
    # Per-ratio latitude-weighted RMSE in K at validation.
    assert re.search(r"2x3\s+2\s+[0-9.]+", log), log[-2000:]
    ckpt = root / "experiments" / "fields_tiny" / "models" / "net_g_latest.pth"
    obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    stats = json.loads(obj["field_stats"])
    assert stats["variables"][0]["units"] == "K" and obj["metasr_network"]["periodic_lon"]


def test_trained_checkpoint_upscales_netcdf_with_its_stats(trained, tmp_path):
    from metasr.checkpoints import checkpoint_stats, load_model
    from metasr.cli import main

    root, done = trained
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = root / "experiments" / "fields_tiny" / "models" / "net_g_latest.pth"
    loaded = load_model(ckpt)
    assert checkpoint_stats(loaded).units == ("K",)
    coarse, _ = mc.coarsen(synthetic(1, 3).values, mc.regular_grid(H, W), 2.0)
    lr_grid = mc.coarse_grid(mc.regular_grid(H, W), coarse.shape[-2:])
    da = xr.DataArray(
        coarse.astype(np.float32),
        dims=("time", "lat", "lon"),
        coords={"time": [0], "lat": lr_grid.lat, "lon": lr_grid.lon},
        name="t2m",
        attrs={"units": "K"},
    )
    src = mc.write_field(da, tmp_path / "lr.nc")
    out = tmp_path / "hr.nc"
    rc = main(["upscale", str(src), "--var", "t2m", "--target-grid", f"{H}x{W}",
               "--model", str(ckpt), "-o", str(out)])  # fmt: skip
    assert rc == 0
    hr = mc.read_field(out, "t2m")
    assert hr.shape == (1, H, W) and hr.attrs["units"] == "K"
    assert np.isfinite(hr.values).all() and 230 < float(hr.mean()) < 300


# ------------------------------------------------------------------------------------------
# the bundled model and the real data


def test_t2m_resolves_with_its_stats():
    from metasr.checkpoints import BUNDLED_MODELS, checkpoint_stats, load_model
    from metasr.weights import T2M_CHECKPOINT

    assert "t2m" in BUNDLED_MODELS
    if not T2M_CHECKPOINT.is_file():
        with pytest.raises(FileNotFoundError, match="make t2m-model"):
            load_model("t2m")
        return
    loaded = load_model("t2m")
    stats = checkpoint_stats(loaded)
    assert stats is not None and mc.same_units(stats.units[0], "K")
    assert 250 < stats.mean[0] < 300 and 5 < stats.std[0] < 40
    assert loaded.model.periodic_lon and loaded.in_channels == loaded.out_channels == 1
    # The issue-23 model: its card names what it was trained on and what was held out.
    from metasr.climate.card import model_card

    card = model_card(loaded)
    assert card is not None and card.units == "K"
    assert card.normalisation == "per-sample" and card.constraint == "smooth"
    held = {"ensemble_011", "ensemble_012", "ensemble_013", "hadgem2", "coads_airt", "coads_sst"}
    assert held <= set(card.held_out)
    assert not {s["name"] for s in card.sources} & set(card.held_out)
    # The first model stays loadable as t2m-v1, with its member split.
    v1 = load_model("t2m-v1")
    held_v1 = json.loads(v1.metadata["heldout_members"])
    train_v1 = json.loads(v1.metadata["train_members"])
    assert held_v1 and train_v1 and not set(held_v1) & set(train_v1)
    # N96 coarsened ×4 back onto N96, placed by coordinates.
    n96 = mc.named_grid("n96")
    x = 288 - 30 * np.sin(np.deg2rad(n96.lat))[:, None] ** 2 + np.zeros(n96.shape)
    lr, lr_grid = mc.coarsen(x[None], n96, 4.0)
    fn = mc.ModelDownscaler(loaded, stats)
    y = fn(lr, lr_grid, n96)
    assert y.shape == (1, *n96.shape) and np.isfinite(y).all()
    assert mc.weighted_rmse(y[0], x, n96) < 2.0


def test_upscale_cli_with_model_t2m(tmp_path, capsys):
    from metasr.cli import main
    from metasr.weights import T2M_CHECKPOINT

    if not T2M_CHECKPOINT.is_file():
        pytest.skip("the t2m model is not exported (make t2m-model)")
    da = synthetic(2, 5)  # 37x48 with pole rows, K
    src = mc.write_field(da, tmp_path / "in.nc")
    out = tmp_path / "out.nc"
    rc = main(["upscale", str(src), "--var", "t2m", "--target-grid", "n96",
               "--model", "t2m", "-o", str(out)])  # fmt: skip
    assert rc == 0
    hr = mc.read_field(out, "t2m")
    assert hr.shape == (2, 145, 192) and hr.attrs["units"] == "K"
    # Close to the smooth field's bicubic regridding (the model corrects a bicubic base).
    base = mc.regrid(da.values.astype(np.float64), mc.grid_of(da), mc.named_grid("n96"), "bicubic")
    assert mc.weighted_rmse(hr.values, base, mc.named_grid("n96")).max() < 1.5
    # Fields in °C: the card says temperature, so they are converted to K (one warning line)
    # and give the same output; --strict refuses them and writes nothing.
    celsius = (da - 273.15).assign_attrs(units="degC")
    src_c = mc.write_field(celsius.rename("t2m"), tmp_path / "in_c.nc")
    argv = ["upscale", str(src_c), "--var", "t2m", "--target-grid", "n96", "--model", "t2m"]
    assert main([*argv, "--strict", "-o", str(tmp_path / "strict.nc")]) != 0
    assert not (tmp_path / "strict.nc").exists()
    assert main([*argv, "-o", str(tmp_path / "c.nc")]) == 0
    assert "converted to K" in capsys.readouterr().err
    np.testing.assert_allclose(mc.read_field(tmp_path / "c.nc", "t2m").values, hr.values, atol=1e-3)


@pytest.mark.skipif(not GLOSEA4.is_dir(), reason="GloSea4 data not fetched (make climate-data)")
def test_glosea4_member_split():
    train = FieldDataset(
        {"source": "glosea4", "dataroot_gt": str(GLOSEA4), "members": [0, "ensemble_001"]}
    )
    assert len(train) == 12 and train.grid.shape == (145, 192)
    assert train.source.names[0] == "ensemble_000/2011-08"
    s = train.sample(0, BatchSpec((7.5104, 10.0), None, 0.0))
    assert s["lq"].shape == (1, 19, 19)  # the N96 analogue of 96x144 -> ERA5
    with pytest.raises(ValueError, match="member"):
        FieldDataset({"source": "glosea4", "dataroot_gt": str(GLOSEA4), "members": [6]})


def test_field_training_under_torchrun(trained, tmp_path):
    """Two CPU ranks (gloo): every rank trains the same ratio and band, replicas stay equal."""
    import os
    import socket

    root, done = trained
    assert done.returncode == 0, done.stderr[-3000:]
    opt = yaml.safe_load((root / "train.yml").read_text())
    opt["name"] = "fields_ddp"
    opt["train"]["total_iter"] = 6
    opt["val"]["val_freq"] = 6
    opt["logger"]["save_checkpoint_freq"] = 6
    path = tmp_path / "ddp.yml"
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "metasr", "train",
           "-opt", str(path), "--launcher", "pytorch"]  # fmt: skip
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    log = next((tmp_path / "experiments" / "fields_ddp").glob("train_*.log")).read_text()
    digests = re.findall(r"Parameters @ 6: sha256 per rank (\w+) (\w+)", log)
    assert digests and digests[0][0] == digests[0][1]
    assert (tmp_path / "experiments" / "fields_ddp" / "models" / "net_g_latest.pth").is_file()
