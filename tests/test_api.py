"""Issue 25, item 6: ``metasr.upscale`` takes a path, a PIL image, a numpy array or a tensor and
gives back the same kind, with the command line's checks and the command line's result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import metasr
from metasr.cli import main

Image = pytest.importorskip("PIL.Image")


def _rgb(h=10, w=12, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_path_matches_the_cli_and_writes_nothing(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    before = sorted(tmp_path.iterdir())
    out = metasr.upscale(tmp_path / "a.png", scale="1.5x2")
    assert sorted(tmp_path.iterdir()) == before
    assert isinstance(out, Image.Image) and out.size == (24, 15) and out.mode == "RGB"
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "c.png"),
                 "--scale", "1.5x2", "--device", "cpu", "-q"]) == 0  # fmt: skip
    np.testing.assert_array_equal(np.asarray(out), np.asarray(Image.open(tmp_path / "c.png")))


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "P", "I;16"])
def test_pil_in_pil_out(mode):
    base = Image.fromarray(_rgb())
    im = (
        base.convert(mode)
        if mode != "I;16"
        else Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)
    )
    out = metasr.upscale(im, scale=2)
    want = {"P": "RGB"}.get(mode, mode)
    assert isinstance(out, Image.Image) and out.mode == want and out.size == (24, 20)


def test_numpy_layouts_and_dtypes():
    rgb = _rgb()
    out = metasr.upscale(rgb, scale=2)
    assert out.dtype == np.uint8 and out.shape == (20, 24, 3)
    np.testing.assert_array_equal(out, np.asarray(metasr.upscale(Image.fromarray(rgb), scale=2)))
    gray16 = rgb[..., 0].astype(np.uint16) * 257
    out16 = metasr.upscale(gray16, size=(15, 18))
    assert out16.dtype == np.uint16 and out16.shape == (15, 18)
    f = rgb.astype(np.float32) / 255
    outf = metasr.upscale(f, scale=2)
    assert outf.dtype == np.float32 and outf.shape == (20, 24, 3)
    # float values are 0..1 image values: the same picture as the codes, before rounding
    assert np.abs(np.clip(outf, 0, 1) * 255 - out).max() <= 0.5 + 1e-3  # codes are clamped
    rgba = np.concatenate([rgb, np.full((10, 12, 1), 200, np.uint8)], -1)
    outa = metasr.upscale(rgba, scale=2)
    assert outa.shape == (20, 24, 4) and np.all(outa[..., 3] == 200)


def test_tensor_in_tensor_out():
    x = torch.from_numpy(_rgb()).permute(2, 0, 1).float() / 255
    y = metasr.upscale(x, scale=2)
    assert isinstance(y, torch.Tensor) and y.shape == (3, 20, 24) and y.dtype == torch.float32
    yb = metasr.upscale(torch.stack([x, x]).double(), scale=2)
    assert yb.shape == (2, 3, 20, 24) and yb.dtype == torch.float64
    torch.testing.assert_close(yb[1].float(), y, atol=1e-5, rtol=0)
    y8 = metasr.upscale((x * 255).round().to(torch.uint8), scale=2)
    assert y8.dtype == torch.uint8 and y8.shape == (3, 20, 24)


def test_field_model_normalises_arrays():
    from metasr.checkpoints import checkpoint_stats, load_model

    stats = checkpoint_stats(load_model("t2m"))
    field = np.full((8, 16), stats.mean[0], np.float64) + np.linspace(-5, 5, 16)
    out = metasr.upscale(field, scale=2, model="t2m")
    assert out.dtype == np.float64 and out.shape == (16, 32)
    assert abs(float(out.mean()) - float(field.mean())) < 1.0  # kelvin, not normalised units


def test_validation_like_the_cli():
    rgb = _rgb()
    with pytest.raises(ValueError, match="scale"):
        metasr.upscale(rgb)
    with pytest.raises(ValueError, match="not both"):
        metasr.upscale(rgb, scale=2, size=(20, 24))
    with pytest.raises(ValueError):
        metasr.upscale(rgb, scale=0.5)
    with pytest.raises(ValueError, match="bad scale"):
        metasr.upscale(rgb, scale="2x")
    with pytest.raises(TypeError, match="image must be"):
        metasr.upscale([[1, 2]], scale=2)
    with pytest.raises(TypeError, match="dtype int64"):
        metasr.upscale(np.zeros((4, 4), np.int64), scale=2)
    with pytest.raises(ValueError, match="over the limit"):
        metasr.upscale(rgb, scale=2, max_pixels=100)
    with pytest.raises(ValueError, match="tile must be"):
        metasr.upscale(rgb, scale=2, tile=-1)
    with pytest.raises(FileNotFoundError):
        metasr.upscale("no_such.png", scale=2)
