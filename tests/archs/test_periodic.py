"""Periodic longitude in the networks (``periodic_lon=True``): the backbones are equivariant to
rolls of the input along the width, differ from the plain networks only near the seam, keep
their state_dict keys; the bicubic residual wraps; tiled inference cuts rows only.

MetaSwinIR is equivariant only to rolls by multiples of its window: a roll by another amount
moves the window partition relative to the content (as for any Swin model), which the last
SwinIR test documents. The convolutional networks are equivariant to any roll.

The whole-network roll tests (output rolled by ``r_h·s`` columns) need the Meta-Upscale op's
``periodic_lon``; they are skipped until the op has it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import metasr
from helpers import perturb_parameters, random_field, registered_networks
from metasr.archs import MetaEDSR, MetaRDN, MetaSwinIR
from metasr.archs.bicubic import bicubic_upsample
from metasr.archs.periodic import PeriodicLonConv2d, wrap_longitude
from metasr.archs.swin_blocks import shift_attn_mask
from metasr.geometry import Region, UpscaleRequest
from metasr.tiling import AxisTile, plan_tiles, upscale

WINDOW = 4


def _rdn(**kw) -> MetaRDN:
    return MetaRDN(2, 2, G0=8, D=2, C=2, G=4, img_range=1.0, upsample={"hidden": 16}, **kw)


def _edsr(**kw) -> MetaEDSR:
    return MetaEDSR(2, 2, n_resblocks=2, n_feats=8, img_range=1.0, upsample={"hidden": 16}, **kw)


def _swinir(**kw) -> MetaSwinIR:
    return MetaSwinIR(
        img_size=(8, 16),
        in_chans=2,
        embed_dim=8,
        depths=(2, 2),
        num_heads=(2, 2),
        window_size=WINDOW,
        mlp_ratio=2.0,
        num_feat=8,
        drop_path_rate=0.0,
        upsample={"hidden": 16},
        **kw,
    )


BUILDERS = {"meta_rdn": _rdn, "meta_edsr": _edsr, "meta_swinir": _swinir}
#: Every registered network (metasr.list_models()); one without a builder fails.
NETWORKS = registered_networks(BUILDERS)
#: The same, for the tests of any roll: window attention is equivariant to whole windows only.
ANY_ROLL = [
    pytest.param(
        p,
        marks=pytest.mark.skip(
            reason="window attention: equivariant to rolls by whole windows only "
            "(test_swinir_backbone_is_equivariant_to_rolls_by_whole_windows)"
        ),
    )
    if p == "meta_swinir"
    else p
    for p in NETWORKS
]
# 3×3 convolutions between the input and the head features: how far (in columns) the seam's
# wrap reaches into the conv nets' features.
CONV_REACH = {"meta_rdn": 2 + 2 * 2 + 1, "meta_edsr": 1 + 2 * 2 + 1}


def _model(name: str, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return perturb_parameters(BUILDERS[name](**kw).double().eval())


def _field(h: int, w: int, seed: int = 1) -> torch.Tensor:
    return random_field(1, 2, h, w, seed=seed)


# --------------------------------------------------------------------------------------------
# backbones
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("s", [1, 5, -3, 15])
@pytest.mark.parametrize("name", ANY_ROLL)
def test_conv_backbone_is_roll_equivariant(name, s):
    model = _model(name, periodic_lon=True)
    x = _field(9, 16)
    with torch.no_grad():
        f = model.head_features(x)
        f_rolled = model.head_features(torch.roll(x, s, dims=-1))
    torch.testing.assert_close(f_rolled, torch.roll(f, s, dims=-1), rtol=0, atol=1e-12)


# (8, 16) is the training size (the blocks' precomputed masks), (10, 16) is padded to (12, 16)
# in height and uses a mask built at run time.
@pytest.mark.parametrize("hw", [(8, 16), (10, 16)])
@pytest.mark.parametrize("s", [WINDOW, 2 * WINDOW, -WINDOW, 3 * WINDOW])
@pytest.mark.parametrize("resi", ["1conv", "3conv"])
def test_swinir_backbone_is_equivariant_to_rolls_by_whole_windows(hw, s, resi):
    model = _model("meta_swinir", periodic_lon=True, resi_connection=resi)
    x = _field(*hw)
    with torch.no_grad():
        f = model.head_features(x)
        f_rolled = model.head_features(torch.roll(x, s, dims=-1))
    torch.testing.assert_close(f_rolled, torch.roll(f, s, dims=-1), rtol=0, atol=1e-12)


def test_swinir_roll_by_part_of_a_window_moves_the_partition():
    # Documented limit: the window partition is fixed to the grid, so a roll by s not a
    # multiple of the window attends over other groups of pixels and changes the features.
    model = _model("meta_swinir", periodic_lon=True)
    x = _field(8, 16)
    with torch.no_grad():
        f = model.head_features(x)
        f_rolled = model.head_features(torch.roll(x, 1, dims=-1))
    assert (f_rolled - torch.roll(f, 1, dims=-1)).abs().max() > 1e-6


@pytest.mark.parametrize("name", NETWORKS)
def test_periodic_and_plain_features_differ_only_near_the_seam(name):
    periodic = _model(name, periodic_lon=True)
    plain = BUILDERS[name]().double().eval()
    plain.load_state_dict(periodic.state_dict())
    w = 64
    x = _field(8, w)
    with torch.no_grad():
        diff = (periodic.head_features(x) - plain.head_features(x)).abs().amax(dim=(0, 1, 2))
    # Conv nets: each 3×3 conv carries the seam one column further. SwinIR: 3 convs outside
    # the layers, and per layer (2 of them) its conv plus up to a window of spread for each of
    # its plain and shifted windows.
    reach = CONV_REACH.get(name, 3 + 2 * (2 * WINDOW + 1))
    assert diff[0] > 1e-6 and diff[-1] > 1e-6
    assert diff[reach : w - reach].max() == 0.0, diff


@pytest.mark.parametrize("name", NETWORKS)
def test_periodic_keeps_state_dict_keys_and_swaps_every_padded_conv(name):
    periodic, plain = BUILDERS[name](periodic_lon=True), BUILDERS[name]()
    assert [(k, v.shape) for k, v in periodic.state_dict().items()] == [
        (k, v.shape) for k, v in plain.state_dict().items()
    ]
    padded = [
        n for n, m in plain.named_modules() if isinstance(m, torch.nn.Conv2d) and m.padding[1]
    ]
    assert padded
    for n, m in periodic.named_modules():
        if n in padded:
            assert isinstance(m, PeriodicLonConv2d), n
        else:
            assert not isinstance(m, PeriodicLonConv2d), n
    assert periodic.periodic_lon and not plain.periodic_lon
    assert "periodic_lon=True" in repr(periodic) or name == "meta_swinir"


def test_periodic_conv_pads_width_circularly_and_height_with_zeros():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1).double()
    x = torch.randn(1, 2, 5, 7, dtype=torch.float64)
    ref = F.conv2d(
        F.pad(F.pad(x, (1, 1, 0, 0), mode="circular"), (0, 0, 1, 1)), conv.weight, conv.bias
    )
    seq = torch.nn.Sequential(conv)
    assert wrap_longitude(seq) == 1
    assert seq[0].weight is conv.weight
    torch.testing.assert_close(seq[0](x), ref, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="zero-padded"):
        PeriodicLonConv2d.from_conv(torch.nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))


def test_periodic_conv_gradcheck():
    torch.manual_seed(0)
    conv = PeriodicLonConv2d.from_conv(torch.nn.Conv2d(2, 2, 3, padding=(1, 2), dilation=(1, 2)))
    conv = conv.double()
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: conv(t), (x,))
    assert conv(x).shape == x.shape


def test_periodic_option_errors():
    with pytest.raises(TypeError, match="periodic_lon must be True or False"):
        _edsr(periodic_lon="yes")
    model = _model("meta_swinir", periodic_lon=True)
    with pytest.raises(ValueError, match="multiple of the window size 4"):
        model.head_features(_field(8, 18))


# --------------------------------------------------------------------------------------------
# shifted-window mask
# --------------------------------------------------------------------------------------------


def test_periodic_shift_mask_cuts_latitude_only():
    H, W, ws, shift = 8, 12, 4, 2
    plain = shift_attn_mask(H, W, ws, shift)
    periodic = shift_attn_mask(H, W, ws, shift, periodic_lon=True)
    n_cols = W // ws
    # Windows in the last row of windows straddle the latitude cut: masked in both.
    last_row = [(H // ws - 1) * n_cols + j for j in range(n_cols)]
    for i in last_row:
        assert (periodic[i] != 0).any()
    # The window at the seam of an inner row is masked only without periodicity.
    seam = n_cols - 1
    assert (plain[seam] != 0).any() and (periodic[seam] == 0).all()
    # Away from the seam both agree.
    for i in range(plain.shape[0]):
        if i % n_cols != n_cols - 1:
            assert torch.equal(plain[i], periodic[i]), i


# --------------------------------------------------------------------------------------------
# bicubic residual
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(15, 27), (20, 18), (7, 36)])
def test_periodic_bicubic_is_bicubic_of_the_circularly_padded_input(size):
    # Integer horizontal ratios (27/9, 18/9, 36/9): the padded image's output grid then holds
    # the unpadded one's at an integer offset of p·r_h columns.
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    H, W = size
    rh, p = W // 9, 4
    ref = F.interpolate(
        F.pad(x, (p, p, 0, 0), mode="circular"),
        size=(H, W + 2 * p * rh),
        mode="bicubic",
        align_corners=False,
    )[..., p * rh : p * rh + W]
    got = bicubic_upsample(x, size=size, periodic_lon=True)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    plain = bicubic_upsample(x, size=size)
    assert (got - plain).abs()[..., :2].max() > 1e-3  # the edge columns do change


def test_periodic_bicubic_region_is_a_band_of_the_whole_image():
    x = torch.randn(1, 2, 12, 10, dtype=torch.float64)
    whole = bicubic_upsample(x, size=(30, 23), periodic_lon=True)
    region = Region((12, 10), (30, 23), (1, 11), (0, 10), (10, 20), (0, 23))
    band = bicubic_upsample(x[..., 1:11, :], region=region, periodic_lon=True)
    torch.testing.assert_close(band, whole[..., 10:20, :], rtol=0, atol=1e-12)
    narrow = Region((12, 10), (30, 23), (1, 11), (0, 8), (10, 20), (0, 15))
    with pytest.raises(ValueError, match="whole width"):
        bicubic_upsample(x[..., 1:11, :8], region=narrow, periodic_lon=True)


# --------------------------------------------------------------------------------------------
# tiling
# --------------------------------------------------------------------------------------------


def test_periodic_model_is_tiled_in_full_width_bands():
    model = _model("meta_edsr", periodic_lon=True)
    regions: list[Region] = []

    def record(x, request):
        regions.append(request.region)
        return torch.zeros(1, 2, *request.region.out_shape, dtype=x.dtype)

    model.forward = record
    upscale(model, _field(12, 16), UpscaleRequest(scale=(2.0, 3.0)), tile=4, overlap=2)
    assert len(regions) == 3
    assert all(r.in_cols == (0, 16) and r.out_cols == (0, 48) for r in regions)
    assert [r.out_rows for r in regions] == [(0, 8), (8, 16), (16, 24)]


@pytest.mark.parametrize("name", NETWORKS)
def test_periodic_network_refuses_a_narrow_region(name):
    model = _model(name, periodic_lon=True)
    region = Region((8, 16), (16, 32), (0, 8), (0, 8), (0, 16), (0, 16))
    with pytest.raises(ValueError, match="whole width"):
        model(_field(8, 8), scale=2, region=region)


# --------------------------------------------------------------------------------------------
# whole networks (need the op's periodic_lon)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NETWORKS)
def test_periodic_network_output_rolls_with_the_input(name):
    model = _model(name, periodic_lon=True, bicubic_residual=True)
    x = _field(8, 16)
    s, rh = WINDOW, 3
    with torch.no_grad():
        y = model(x, scale=(1.5, float(rh)))
        y_rolled = model(torch.roll(x, s, dims=-1), scale=(1.5, float(rh)))
    torch.testing.assert_close(y_rolled, torch.roll(y, rh * s, dims=-1), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", NETWORKS)
def test_periodic_tiles_equal_the_whole_image(name):
    model = _model(name, periodic_lon=True, bicubic_residual=True)
    x = _field(24, 16)
    with torch.no_grad():
        whole = model(x, scale=(2.5, 2.0))
        tiled = upscale(model, x, UpscaleRequest(scale=(2.5, 2.0)), tile=8, overlap=16)
    torch.testing.assert_close(tiled, whole.float(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("periodic", [False, True])
def test_plan_tiles_keeps_a_periodic_models_width_whole(periodic):
    model = _model("meta_swinir", periodic_lon=periodic)
    geom = metasr.build_geometry(24, 32, scale=(2.0, 1.5))
    rows, cols = plan_tiles(model, geom, tile=8, overlap=2)
    assert [(t.in_lo, t.core_lo, t.core_hi) for t in rows] == [(0, 0, 8), (4, 8, 16), (12, 16, 24)]
    if periodic:
        assert cols == [AxisTile(0, 32, 0, 32, 0, 48)]
    else:
        assert len(cols) == 4 and cols[-1].out_hi == 48
