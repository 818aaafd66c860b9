"""PSNR/SSIM of the arbitrary-scale protocol: per-axis shave, Y channel, raw fields."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from metasr.metrics import border_shave, format_table, psnr, rgb_to_y, ssim


@pytest.fixture(scope="module")
def bsr_metrics():
    if importlib.util.find_spec("basicsr") is None:
        pytest.skip("BasicSR is not installed (pip install 'metasr[train]')")
    import metasr.integrations.basicsr  # noqa: F401  (installs BasicSR's torchvision shim)

    return importlib.import_module("basicsr.metrics")


def _pair(seed=0, shape=(40, 50, 3)):
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, shape).astype(np.uint8)
    sr = np.clip(hr.astype(int) + rng.integers(-20, 21, shape), 0, 255).astype(np.uint8)
    return sr, hr


def _chw01(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).double() / 255.0


@pytest.mark.parametrize("y", [False, True])
@pytest.mark.parametrize("border", [0, 2, 4])
def test_matches_basicsr_at_integer_scales(bsr_metrics, y, border):
    sr, hr = _pair()
    # BasicSR takes uint8 HWC in OpenCV's BGR order.
    ref_p = bsr_metrics.calculate_psnr(sr[..., ::-1], hr[..., ::-1], border, test_y_channel=y)
    ref_s = bsr_metrics.calculate_ssim(sr[..., ::-1], hr[..., ::-1], border, test_y_channel=y)
    scale = border if border else None
    got_p = psnr(_chw01(sr), _chw01(hr), scale=scale, y_channel=y).item()
    got_s = ssim(_chw01(sr), _chw01(hr), scale=scale, y_channel=y).item()
    # BasicSR's Y conversion runs in float32.
    assert got_p == pytest.approx(ref_p, abs=1e-5)
    assert got_s == pytest.approx(ref_s, abs=1e-6)


def test_basicsr_metric_functions_accept_both_conventions(bsr_metrics):
    from metasr.integrations.basicsr import calculate_psnr_metasr, calculate_ssim_metasr

    sr, hr = _pair(1)
    ref = bsr_metrics.calculate_psnr(sr[..., ::-1], hr[..., ::-1], 3, test_y_channel=True)
    # BasicSR convention (tensor2img output) with an integer scale...
    assert calculate_psnr_metasr(sr[..., ::-1], hr[..., ::-1], scale=3.0) == pytest.approx(
        ref, abs=1e-5
    )
    # ...and MetaSRModel's (RGB tensors in 0..1), same number.
    assert calculate_psnr_metasr(_chw01(sr), _chw01(hr), scale=(3.0, 3.0)) == pytest.approx(
        ref, abs=1e-5
    )
    ref_s = bsr_metrics.calculate_ssim(sr[..., ::-1], hr[..., ::-1], 2, test_y_channel=True)
    assert calculate_ssim_metasr(_chw01(sr), _chw01(hr), crop_border=2) == pytest.approx(
        ref_s, abs=1e-6
    )
    with pytest.raises(ValueError, match="'scale'"):
        calculate_psnr_metasr(_chw01(sr), _chw01(hr))


def test_per_axis_border_shave():
    assert border_shave((1.5, 4.0)) == (2, 4)
    assert border_shave(3.0) == (3, 3)
    assert border_shave(721 / 96) == (8, 8)
    assert border_shave(3.0000000000000004) == (3, 3)
    sr, hr = _pair(2, (30, 44, 3))
    a, b = _chw01(sr), _chw01(hr)
    expect = psnr(a[:, 2:-2, 4:-4], b[:, 2:-2, 4:-4])
    torch.testing.assert_close(psnr(a, b, scale=(1.5, 4.0)), expect)
    torch.testing.assert_close(psnr(a, b, crop_border=(2, 4)), expect)
    expect_s = ssim(a[:, 2:-2, 4:-4], b[:, 2:-2, 4:-4])
    torch.testing.assert_close(ssim(a, b, scale=(1.5, 4.0)), expect_s)


def test_y_channel_default_and_conversion():
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    y = rgb_to_y(x)
    assert y.shape == (2, 1, 8, 8)
    assert float(rgb_to_y(torch.zeros(1, 3, 1, 1))) == pytest.approx(16 / 255)
    assert float(rgb_to_y(torch.ones(1, 3, 1, 1))) == pytest.approx(235 / 255, abs=1e-3)
    z = x + 0.01 * torch.randn_like(x)
    torch.testing.assert_close(psnr(z, x), psnr(z, x, y_channel=True))  # RGB → Y by default
    one = torch.rand(1, 20, 20)
    with pytest.raises(ValueError, match="3 \\(RGB\\)"):
        psnr(one, one, y_channel=True)


def test_raw_fields():
    rng = np.random.default_rng(3)
    hr = rng.normal(280.0, 15.0, (1, 48, 64))
    sr = hr + rng.normal(0, 0.5, hr.shape)
    p = psnr(sr, hr, scale=(7.51, 10.0), data_range="gt").item()
    # The peak is the field's own range: an affine change of units leaves PSNR unchanged.
    p2 = psnr(sr * 1.8 - 459.67, hr * 1.8 - 459.67, scale=(7.51, 10.0), data_range="gt").item()
    assert p == pytest.approx(p2, abs=1e-9)
    peak = hr[:, 8:-8, 10:-10].max() - hr[:, 8:-8, 10:-10].min()
    mse = ((sr - hr)[:, 8:-8, 10:-10] ** 2).mean()
    assert p == pytest.approx(10 * math.log10(peak**2 / mse))
    s = ssim(sr, hr, scale=(7.51, 10.0), data_range="gt").item()
    assert 0.0 < s < 1.0
    with pytest.raises(ValueError, match="not constant"):
        psnr(np.ones((8, 8)), np.ones((8, 8)), data_range="gt")


def test_edge_cases():
    x = torch.rand(2, 3, 16, 16)
    assert torch.isinf(psnr(x, x)).all()
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    assert psnr(x, x.flip(-1)).shape == (2,)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(x, x[..., :15])
    with pytest.raises(ValueError, match="nothing left"):
        psnr(x, x, scale=8)
    with pytest.raises(ValueError, match="11x11"):
        ssim(x, x, scale=3)
    with pytest.raises(ValueError, match="data_range"):
        psnr(x, x, data_range=0)
    with pytest.raises(ValueError, match="data_range"):
        psnr(x, x, data_range="max")  # a string, but not "gt"
    with pytest.raises(TypeError, match="data_range must be a number"):
        psnr(x, x, data_range=[1.0])
    with pytest.raises(ValueError, match="expected"):
        psnr(torch.rand(1, 1, 1, 4, 4), torch.rand(1, 1, 1, 4, 4))


def test_format_table():
    text = format_table(
        [{"scale": "2", "psnr": 30.12346, "n": 3}, {"scale": "mean", "psnr": math.inf, "n": 3}],
        ["scale", "n", "psnr"],
    )
    lines = text.splitlines()
    assert lines[0].split() == ["scale", "n", "psnr"]
    assert lines[2].split() == ["2", "3", "30.1235"] and lines[3].split()[-1] == "inf"
