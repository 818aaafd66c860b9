"""The period form of Meta-Upscale and of the bicubic residual (dynamic-size export), in float64
against the spec (``naive``) and ``bicubic_upsample`` at input sizes that are and are not whole
periods; the scales it accepts and refuses.
"""

from __future__ import annotations

import pytest
import torch

import metasr
from helpers import randomize_parameters
from metasr.archs.bicubic import bicubic_period_kernel, bicubic_upsample
from metasr.ops.meta_upscale.rational import head_period_weight, period_conv, rational_scale

SCALES = [(2.0, 2.0), (4.0, 4.0), (2.5, 2.5), (3.5, 2.0), (1.5, 4.0), (2.3, 1.1), (4 / 3, 1.75)]
SIZES = [(1, 1), (2, 3), (7, 9), (10, 4), (13, 11)]


def _phi(periodic: bool = False, k: int = 3) -> metasr.MetaUpsample:
    torch.manual_seed(0)
    up = metasr.MetaUpsample(3, 2, kernel_size=k, hidden=8, backend="naive", periodic_lon=periodic)
    return randomize_parameters(up).double()


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"{s[0]:.4g}x{s[1]:.4g}")
@pytest.mark.parametrize("periodic", [False, True], ids=["zeros", "periodic"])
def test_head_period_form_equals_the_spec(scale, periodic):
    up = _phi(periodic)
    period = rational_scale(scale)
    weight = head_period_weight(up.phi, scale, periodic=periodic)
    for h, w in SIZES:
        x = torch.randn(2, 3, h, w, dtype=torch.float64)
        with torch.no_grad():
            ref = up(x, scale=scale)
            y = period_conv(x, weight, period, halo=1, periodic=periodic)
        assert y.shape == ref.shape, (h, w)
        torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)


def test_head_period_form_with_a_5x5_window():
    up = _phi(k=5)
    weight = head_period_weight(up.phi, (2.5, 1.5))
    x = torch.randn(1, 3, 8, 5, dtype=torch.float64)
    with torch.no_grad():
        ref = up(x, scale=(2.5, 1.5))
        y = period_conv(x, weight, rational_scale((2.5, 1.5)), halo=2)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"{s[0]:.4g}x{s[1]:.4g}")
@pytest.mark.parametrize("periodic", [False, True], ids=["clamped", "periodic"])
def test_bicubic_period_form_equals_bicubic_upsample(scale, periodic):
    period = rational_scale(scale)
    kernel = bicubic_period_kernel(period, 2, torch.float64)
    for h, w in SIZES:
        x = torch.randn(1, 2, h, w, dtype=torch.float64)
        y = period_conv(x, kernel, period, halo=2, border="replicate", periodic=periodic)
        ref = bicubic_upsample(x, size=tuple(y.shape[-2:]), periodic_lon=periodic, scale=scale)
        H, W, _, _ = metasr.geometry.resolve_output_size(h, w, scale=scale)
        assert y.shape[-2:] == (H, W)
        # ATen's bicubic computes its source positions in the input's dtype, float64 here.
        torch.testing.assert_close(y, ref, rtol=1e-9, atol=1e-9)


def test_rational_scale_accepts_small_fractions():
    assert rational_scale(2) == ((2, 1), (2, 1))
    assert rational_scale((3.5, 2.3)) == ((7, 2), (23, 10))
    assert rational_scale(4 / 3) == ((4, 3), (4, 3))


@pytest.mark.parametrize("scale", [1.333, 2.25 + 1e-9, 1.01, 2 + 1 / 11])
def test_rational_scale_refuses_other_scales(scale):
    with pytest.raises(ValueError, match="is not p/q with q <= 10 to full precision"):
        rational_scale(scale)


def test_official_arithmetic_has_no_period_form():
    up = metasr.MetaUpsample(3, 2, hidden=8, arithmetic="official")
    with pytest.raises(ValueError, match="official.*does not repeat exactly"):
        head_period_weight(up.phi, (2.0, 2.0), arithmetic="official")
