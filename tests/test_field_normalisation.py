"""Issue 25, item 1: a field model's stored statistics are applied to every field input the same
way (``FieldStats.normalise``/``denormalise``): ``.npy``, float TIFF and netCDF give the same
values; inputs that do not suit the model get one warning line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metasr.checkpoints import checkpoint_stats, load_model
from metasr.cli import main

H, W, OUT = 24, 48, (48, 96)


def _field() -> np.ndarray:
    """A smooth temperature-like field in kelvin (24×48 global grid, pole rows)."""
    lat = np.linspace(-90, 90, H)
    lon = np.arange(W) * 360 / W
    rng = np.random.default_rng(0)
    t = 288 - 40 * np.sin(np.deg2rad(lat))[:, None] ** 2 + 5 * np.cos(np.deg2rad(lon))[None]
    return (t + rng.normal(0, 0.5, (H, W))).astype(np.float32)


def _bicubic(field: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(field.astype(np.float64))[None, None]
    return F.interpolate(x, size=OUT, mode="bicubic", align_corners=False)[0, 0].numpy()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """``metasr upscale --model t2m`` on the same field as .npy, float TIFF and netCDF."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("netCDF4")
    tifffile = pytest.importorskip("tifffile")
    from metasr.climate import model as climate_model

    tmp = tmp_path_factory.mktemp("fields")
    field = _field()
    np.save(tmp / "t.npy", field)
    tifffile.imwrite(tmp / "t.tif", field)
    da = xr.DataArray(
        field,
        dims=("lat", "lon"),
        coords={
            "lat": ("lat", np.linspace(-90, 90, H), {"units": "degrees_north"}),
            "lon": ("lon", np.arange(W) * 360 / W, {"units": "degrees_east"}),
        },
        name="t2m",
        attrs={"units": "K"},
    )
    da.to_netcdf(tmp / "t.nc")
    out = {}
    size = f"{OUT[0]}x{OUT[1]}"
    for name in ("t.npy", "t.tif"):
        assert main(["upscale", str(tmp / name), "-o", str(tmp / f"o_{name}"), "--size", size,
                     "--model", "t2m", "--device", "cpu", "-q"]) == 0  # fmt: skip
    out["npy"] = np.load(tmp / "o_t.npy")
    out["tif"] = tifffile.imread(tmp / "o_t.tif")
    # netCDF places rows by latitude when the network takes coordinates; by index ratio (as for
    # arrays) otherwise. Compare the normalisation on equal geometry: the index-ratio one.
    mp = pytest.MonkeyPatch()
    mp.setattr(climate_model, "accepts_coords", lambda model: False)
    try:
        argv = ["upscale", str(tmp / "t.nc"), "--var", "t2m", "--target-grid", size, "-o",
                str(tmp / "o.nc"), "--model", "t2m", "--device", "cpu", "-q"]  # fmt: skip
        assert main(argv) == 0
    finally:
        mp.undo()
    with xr.open_dataset(tmp / "o.nc") as ds:
        out["nc"] = ds["t2m"].values.astype(np.float64)
    out["field"] = field
    return out


@pytest.mark.parametrize("kind", ["npy", "tif"])
def test_array_inputs_match_netcdf(results, kind):
    got, ref = results[kind].astype(np.float64), results["nc"]
    assert got.shape == ref.shape == OUT
    assert np.abs(got - ref).max() < 2e-3  # kelvin: float32 rounding of ~290 K values


def test_values_are_physical(results):
    # Without the statistics the network sees raw kelvin and misses bicubic by ~10 K RMS.
    rms = float(np.sqrt(np.mean((results["npy"] - _bicubic(results["field"])) ** 2)))
    assert rms < 1.0, rms


def test_stats_round_trip():
    loaded = load_model("t2m")
    stats = checkpoint_stats(loaded)
    x = _field()[None].astype(np.float64)
    z = stats.normalise(x)
    assert z.dtype == np.float32 and abs(float(z.mean())) < 5
    np.testing.assert_allclose(stats.denormalise(z), x, atol=1e-3)
    with pytest.raises(ValueError, match="cannot normalise"):
        type(stats)(("a", "b"), ("K", "K"), (1.0, 2.0), (1.0, 1.0)).normalise(np.zeros((3, 2, 2)))


def test_image_on_field_model_warns(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / "g.png")
    assert main(["upscale", str(tmp_path / "g.png"), "-o", str(tmp_path / "o.png"),
                 "--scale", "2", "--model", "t2m", "--device", "cpu", "-q"]) == 0  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "field model" in err[0] and "8-bit image" in err[0]


def test_field_on_image_model_warns(tmp_path, capsys):
    np.save(tmp_path / "f.npy", _field()[:8, :8])
    assert main(["upscale", str(tmp_path / "f.npy"), "-o", str(tmp_path / "o.npy"),
                 "--scale", "2", "--model", "default", "--device", "cpu", "-q"]) == 0  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "takes values in 0..1" in err[0] and "minmax" in err[0]
    # in range: no warning
    np.save(tmp_path / "g.npy", np.full((8, 8), 0.5, np.float32))
    assert main(["upscale", str(tmp_path / "g.npy"), "-o", str(tmp_path / "p.npy"),
                 "--scale", "2", "--device", "cpu", "-q"]) == 0  # fmt: skip
    assert capsys.readouterr().err == ""


def test_onnx_file_carries_and_applies_stats(results, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx_path = tmp_path / "t2m.onnx"
    size = f"{OUT[0]}x{OUT[1]}"
    assert main(["export", "--model", "t2m", "--input-size", f"{H}x{W}", "--size", size,
                 "-o", str(onnx_path), "--no-check"]) == 0  # fmt: skip
    assert checkpoint_stats(load_model(onnx_path)) == checkpoint_stats(load_model("t2m"))
    np.save(tmp_path / "t.npy", results["field"])
    assert main(["upscale", str(tmp_path / "t.npy"), "-o", str(tmp_path / "o.npy"), "--size",
                 size, "--model", str(onnx_path), "--device", "cpu", "-q"]) == 0  # fmt: skip
    assert np.abs(np.load(tmp_path / "o.npy") - results["nc"]).max() < 2e-3
