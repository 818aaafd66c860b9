"""``metasr upscale --target-mask FILE[:VAR]``: the target's own mask, and conservation over
its valid cells (issue 23, the masked COADS cells)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import metasr
from metasr.checkpoints import save_checkpoint
from metasr.cli import main
from metasr.climate import regrid, regular_grid
from metasr.climate.card import ModelCard
from metasr.field_stats import FieldStats, stats_metadata

xr = pytest.importorskip("xarray")
pytest.importorskip("netCDF4")
pytest.importorskip("safetensors")

SRC = regular_grid(12, 24, pole_rows=False, north_first=True)
DST = regular_grid(36, 72, pole_rows=False, north_first=True)


def _sea(grid) -> np.ndarray:  # noqa: ANN001
    lat, lon = grid.lat[:, None], grid.lon[None, :]
    land = ((lat > 10) & (lat < 55) & (lon > 60) & (lon < 140)) | (lat < -70)
    return ~(land | ((lat > -40) & (lat < 0) & (lon > 280) & (lon < 310)))


def _write(values: np.ndarray, grid, path: Path, name: str = "sst", extra: bool = False) -> Path:  # noqa: ANN001
    ds = xr.Dataset(
        {name: (("time", "lat", "lon"), values.astype(np.float32), {"units": "K"})},
        coords={"time": np.arange(values.shape[0]),
                "lat": ("lat", grid.lat, {"units": "degrees_north"}),
                "lon": ("lon", grid.lon, {"units": "degrees_east"})},
    )  # fmt: skip
    if extra:
        ds["other"] = ds[name] * 0
    ds.to_netcdf(path)
    return path


def _truth() -> np.ndarray:
    rng = np.random.default_rng(0)
    lat, lon = np.deg2rad(DST.lat)[:, None], np.deg2rad(DST.lon)[None, :]
    base = 275 + 25 * np.cos(lat) + 3 * np.sin(3 * lon) * np.cos(lat)
    return np.where(_sea(DST), base + rng.normal(0, 0.5, (2, *DST.shape)), np.nan)


def _carded(path: Path) -> Path:
    kw = {"in_channels": 1, "out_channels": 1, "n_resblocks": 1, "n_feats": 8, "hidden": 16,
          "img_range": 1.0, "mean": 0.0, "bicubic_residual": True,
          "periodic_lon": True}  # fmt: skip
    torch.manual_seed(0)
    net = metasr.create_model("meta_edsr", **kw)
    card = ModelCard("air_temperature", "K", layouts=["global", "no-pole-rows", "masked"],
                     ratio_min=1.5, ratio_max=10.0)  # fmt: skip
    stats = FieldStats(("air_temperature",), ("K",), (280.0,), (20.0,), "per-sample")
    save_checkpoint(
        path, net, "meta_edsr", kw, metadata={**stats_metadata(stats), **card.metadata()}
    )
    return path


@pytest.mark.parametrize("how", ["bicubic-conservative", "model"])
def test_output_is_masked_and_conserves_over_the_valid_cells(tmp_path: Path, how: str) -> None:
    truth = _truth()
    lr = regrid(truth, DST, SRC, "conservative")  # the means over the sea part of each cell
    src = _write(lr, SRC, tmp_path / "lr.nc")
    target = _write(truth[:1], DST, tmp_path / "target.nc")
    method = (
        ["--baseline", how] if how != "model" else ["--model", _carded(tmp_path / "m.safetensors")]
    )
    out = tmp_path / "out.nc"
    argv = ["upscale", src, "--var", "sst", "--target-grid", target, "--target-mask", target,
            "-o", out, "-q", *method]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    got = xr.open_dataset(out)["sst"].values.astype(np.float64)
    assert np.array_equal(np.isfinite(got), np.broadcast_to(_sea(DST), got.shape))
    back = regrid(got, DST, SRC, "conservative")
    ok = np.isfinite(back) & np.isfinite(lr)
    assert ok.sum() > 0.8 * np.isfinite(lr).sum()
    # float32 output file: 1e-4 K of rounding room at 300 K is 3e-5 K per value.
    assert np.max(np.abs(back - lr)[ok]) <= 1e-4
    # Without the mask the whole-cell constraint leaves the sea part of coastal cells off.
    plain = tmp_path / "plain.nc"
    argv = ["upscale", src, "--var", "sst", "--target-grid", target, "-o", plain, "-q", *method]
    assert main([str(a) for a in argv]) == 0
    got = xr.open_dataset(plain)["sst"].values.astype(np.float64)
    back = regrid(np.where(_sea(DST), got, np.nan), DST, SRC, "conservative")
    assert np.nanmax(np.abs(back - lr)) > 0.01


def _other_grid(p: Path) -> Path:
    return _write(np.zeros((1, 24, 72)), regular_grid(24, 72, pole_rows=False), p)


BAD = {
    "other grid": (_other_grid, "", "is not the target grid"),
    "two variables": (lambda p: _write(_truth()[:1], DST, p, extra=True), "", "name one"),
    "no such variable": (lambda p: _write(_truth()[:1], DST, p), ":tos", "no variable 'tos'"),
    "no valid cell": (lambda p: _write(np.full((1, *DST.shape), np.nan), DST, p), "", "no valid"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_target_mask_is_one_line_and_writes_nothing(tmp_path, capsys, case) -> None:  # noqa: ANN001
    make, suffix, fragment = BAD[case]
    mask = make(tmp_path / "mask.nc")
    src = _write(regrid(_truth(), DST, SRC, "conservative"), SRC, tmp_path / "lr.nc")
    out = tmp_path / "out.nc"
    argv = ["upscale", src, "--var", "sst", "--target-grid", "36x72", "--target-mask",
            f"{mask}{suffix}", "-o", out, "-q", "--baseline", "bicubic-conservative"]  # fmt: skip
    if case != "other grid":
        argv[argv.index("36x72")] = str(mask)
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--target-mask" in err and fragment in err, err
    assert not out.exists()


def test_target_mask_is_for_netcdf_inputs(tmp_path, capsys) -> None:  # noqa: ANN001
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    argv = ["upscale", tmp_path / "a.png", "--scale", "2", "--target-mask", "m.nc", "-o",
            tmp_path / "b.png"]  # fmt: skip
    assert main([str(a) for a in argv]) == 2
    assert "--target-mask is for netCDF" in capsys.readouterr().err
