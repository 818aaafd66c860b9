"""``metasr.inference``: channel handling, value range, min-max normalisation and alpha."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import metasr
from metasr.checkpoints import LoadedModel, load_model, network_value_range
from metasr.geometry import UpscaleRequest
from metasr.inference import upscale_alpha, upscale_array, upscale_raster
from metasr.io import Raster


def _loaded(in_channels: int = 3, out_channels: int | None = None, img_range: float = 1.0):
    torch.manual_seed(0)
    out_channels = in_channels if out_channels is None else out_channels
    model = metasr.create_model(
        "meta_edsr",
        n_resblocks=1,
        n_feats=8,
        hidden=16,
        in_channels=in_channels,
        out_channels=out_channels,
        img_range=img_range,
    ).eval()
    return LoadedModel(
        model, "tiny", "meta_edsr", {}, in_channels, out_channels, network_value_range(model)
    )


def _run(loaded: LoadedModel, x: torch.Tensor, scale) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(x, scale=scale)


def _data(c: int, h: int = 7, w: int = 9, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((c, h, w)).astype(np.float32)


def test_matching_channels_go_through_together():
    loaded = _loaded(3)
    data = _data(3)
    got = upscale_array(loaded, data, UpscaleRequest(scale=(2.0, 1.5)))
    want = _run(loaded, torch.from_numpy(data)[None], (2.0, 1.5))[0]
    assert got.shape == (3, 14, 13) and got.dtype == np.float32
    np.testing.assert_allclose(got, want.numpy(), atol=1e-6)


@pytest.mark.parametrize(("model_channels", "data_channels"), [(3, 1), (3, 2), (1, 3), (1, 2)])
def test_other_channel_counts_run_one_by_one(model_channels, data_channels):
    """Each data channel replicated to the model's channels, the mean of the outputs kept."""
    loaded = _loaded(model_channels)
    data = _data(data_channels)
    got = upscale_array(loaded, data, UpscaleRequest(scale=2), kind="field")
    for c in range(data_channels):
        x = torch.from_numpy(data[c])[None, None].expand(1, model_channels, 7, 9)
        want = _run(loaded, x, 2)[0].mean(0)
        np.testing.assert_allclose(got[c], want.numpy(), atol=1e-6)


def test_channel_errors():
    with pytest.raises(ValueError, match="takes 4 channels; the input has 3"):
        upscale_array(_loaded(4), _data(3), UpscaleRequest(scale=2))
    with pytest.raises(ValueError, match="maps 3 to 1 channels"):
        upscale_array(_loaded(3, 1), _data(3), UpscaleRequest(scale=2))
    with pytest.raises(ValueError, match=r"expected an array \(C, h, w\)"):
        upscale_array(_loaded(3), _data(3)[0], UpscaleRequest(scale=2))


def test_value_range_images_scaled_fields_not():
    """A 0..255 network gets image values ×255 (and ÷255 back); field values pass unchanged."""
    loaded = _loaded(3, img_range=255.0)
    assert loaded.value_range == 255.0
    data = _data(3)
    x = torch.from_numpy(data)[None]
    image = upscale_array(loaded, data, UpscaleRequest(scale=1.5), kind="image")
    np.testing.assert_allclose(image, (_run(loaded, x * 255, 1.5)[0] / 255).numpy(), atol=1e-5)
    field = upscale_array(loaded, data, UpscaleRequest(scale=1.5), kind="field")
    np.testing.assert_allclose(field, _run(loaded, x, 1.5)[0].numpy(), atol=1e-5)
    assert np.abs(image - field).max() > 1e-3  # the two conventions really differ


def test_minmax_normalisation():
    loaded = _loaded(1)
    field = np.stack([280 + 30 * _data(1)[0], np.full((7, 9), 5.0)])  # second channel constant
    raster = Raster(data=field, kind="field", dtype=np.dtype(np.float64))
    out = upscale_raster(loaded, raster, UpscaleRequest(scale=2), normalize="minmax")
    assert out.kind == "field" and out.dtype == np.float64 and out.data.shape == (2, 14, 18)
    lo, span = field[0].min(), field[0].max() - field[0].min()
    unit = torch.from_numpy(((field[0] - lo) / span).astype(np.float32))[None, None]
    want = _run(loaded, unit, 2)[0, 0].numpy().astype(np.float64) * span + lo
    np.testing.assert_allclose(out.data[0], want, rtol=1e-6)
    # A constant channel is mapped with span 1: the model's output on zeros, shifted by 5.
    zeros = _run(loaded, torch.zeros(1, 1, 7, 9), 2)[0, 0].numpy()
    np.testing.assert_allclose(out.data[1], zeros + 5.0, atol=1e-6)
    with pytest.warns(UserWarning, match="give --normalize minmax"):  # values outside 0..1
        plain = upscale_raster(loaded, raster, UpscaleRequest(scale=2))
    raw = torch.from_numpy(field[0].astype(np.float32))[None, None]  # "none": values as stored
    np.testing.assert_allclose(plain.data[0], _run(loaded, raw, 2)[0, 0].numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="normalize must be"):
        upscale_raster(loaded, raster, UpscaleRequest(scale=2), normalize="zscore")


def test_alpha_is_bicubic_and_clamped():
    loaded = _loaded(3)
    alpha = np.zeros((7, 9), np.float32)
    alpha[2:5, 3:7] = 1.0  # hard edges: bicubic overshoots, the clamp must catch it
    raster = Raster(data=_data(3), kind="image", dtype=np.dtype(np.uint8), alpha=alpha)
    out = upscale_raster(loaded, raster, UpscaleRequest(scale=(2.5, 3)))
    assert out.alpha.shape == (17, 27) and out.dtype == np.uint8
    raw = F.interpolate(torch.from_numpy(alpha)[None, None], size=(17, 27), mode="bicubic")[0, 0]
    assert raw.max() > 1 or raw.min() < 0
    np.testing.assert_allclose(out.alpha, raw.clamp(0, 1).numpy(), atol=1e-6)
    np.testing.assert_array_equal(upscale_alpha(alpha, (17, 27)), out.alpha)
    no_alpha = upscale_raster(
        loaded, Raster(_data(3), "image", np.dtype(np.uint8)), UpscaleRequest(scale=(2.5, 3))
    )
    np.testing.assert_array_equal(no_alpha.data, out.data)  # colour does not see the alpha


# ------------------------------------------------- argument checks (issue 10, item 11)


def _random_tiny():
    with pytest.warns(UserWarning, match="random weights"):
        return load_model("meta_edsr_tiny")


def _float_image(c: int = 3, h: int = 6, w: int = 7) -> np.ndarray:
    return np.random.default_rng(0).random((c, h, w)).astype(np.float32)


def test_upscale_array_arguments():
    loaded = _random_tiny()
    for bad in (_float_image()[0], _float_image()[None]):  # 2-D and 4-D
        with pytest.raises(ValueError, match=r"expected an array \(C, h, w\), got shape"):
            upscale_array(loaded, bad, UpscaleRequest(scale=2))
    with pytest.raises(ValueError, match="must be a numpy array"):
        upscale_array(loaded, torch.rand(3, 6, 7), UpscaleRequest(scale=2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="real numbers, got dtype complex64"):
        upscale_array(loaded, _float_image().astype(np.complex64), UpscaleRequest(scale=2))
    with pytest.raises(ValueError, match="empty"):
        upscale_array(loaded, np.zeros((3, 0, 4), np.float32), UpscaleRequest(scale=2))
    with pytest.raises(ValueError, match="kind must be 'image' or 'field', got 'photo'"):
        upscale_array(loaded, _float_image(), UpscaleRequest(scale=2), kind="photo")  # type: ignore[arg-type]


def test_upscale_raster_arguments():
    loaded = _random_tiny()
    good = Raster(_float_image(), "image", np.dtype(np.uint8))
    with pytest.raises(ValueError, match="normalize must be 'none' or 'minmax', got 'zscore'"):
        upscale_raster(loaded, good, UpscaleRequest(scale=2), normalize="zscore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uint8 or uint16, got float32; .*kind='field'"):
        upscale_raster(
            loaded, Raster(_float_image(), "image", np.dtype(np.float32)), UpscaleRequest(scale=2)
        )
    with pytest.raises(ValueError, match=r"raster.data: expected an array \(C, h, w\)"):
        upscale_raster(
            loaded, Raster(_float_image()[0], "image", np.dtype(np.uint8)), UpscaleRequest(scale=2)
        )
    with pytest.raises(ValueError, match="raster.kind must be 'image' or 'field'"):
        upscale_raster(
            loaded, Raster(_float_image(), "photo", np.dtype(np.uint8)), UpscaleRequest(scale=2)
        )  # type: ignore[arg-type]
    alpha = np.ones((3, 7), np.float32)  # the data is 6 x 7
    with pytest.raises(ValueError, match=r"raster.alpha must be an array \(h, w\) = \(6, 7\)"):
        upscale_raster(
            loaded,
            Raster(_float_image(), "image", np.dtype(np.uint8), alpha),
            UpscaleRequest(scale=2),
        )
    with pytest.raises(ValueError, match="expected a metasr.io.Raster"):
        upscale_raster(loaded, _float_image(), UpscaleRequest(scale=2))  # type: ignore[arg-type]
    with_alpha = Raster(_float_image(), "image", np.dtype(np.uint8), alpha[:1].repeat(6, 0))
    out = upscale_raster(loaded, with_alpha, UpscaleRequest(scale=2))
    assert out.data.shape == (3, 12, 14) and out.alpha.shape == (12, 14)


def test_upscale_alpha_arguments():
    with pytest.raises(ValueError, match=r"alpha must be a non-empty array \(h, w\)"):
        upscale_alpha(np.ones((1, 4, 4), np.float32), (8, 8))
    with pytest.raises(ValueError, match="out_shape must be two positive integers"):
        upscale_alpha(np.ones((4, 4), np.float32), (8, 0))
    with pytest.raises(ValueError, match="out_shape must be two positive integers"):
        upscale_alpha(np.ones((4, 4), np.float32), (8.0, 8))  # type: ignore[arg-type]
    assert upscale_alpha(np.ones((4, 4), np.float32), (np.int64(8), 6)).shape == (8, 6)
