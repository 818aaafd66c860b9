"""Tiled inference (``metasr.tiling``) and the regions it runs networks on.

A tile is one ordinary ``forward`` with a :class:`metasr.geometry.Region`; with more overlap
than a network's receptive field, the assembled tiles must equal the whole-image output up to
rounding. The networks are tiny and run in float64; ``tiling.upscale`` assembles in float32, so
"equal" is float32 rounding (relative 1e-6) there and 1e-12 elsewhere.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metasr import MetaUpsample, build_geometry, meta_upscale
from metasr.archs import MetaEDSR, MetaRDN, MetaSwinIR
from metasr.archs.bicubic import BICUBIC_CONTEXT, bicubic_upsample
from metasr.geometry import Region, UpscaleRequest
from metasr.tiling import plan_axis, tile_region, upscale

# Receptive-field radius in LR pixels: EDSR 2 blocks = 6 convs, RDN D=C=2 = 7, both plus the
# head's 3x3; SwinIR: convs plus a plain and a shifted window of 4 (wrapping at a tile's edge).
NETS = {
    "edsr": (
        lambda br: MetaEDSR(n_resblocks=2, n_feats=8, upsample={"hidden": 16}, bicubic_residual=br),
        8,
    ),
    "rdn": (
        lambda br: MetaRDN(G0=8, D=2, C=2, G=4, upsample={"hidden": 16}, bicubic_residual=br),
        9,
    ),
    "swinir": (
        lambda br: MetaSwinIR(
            img_size=16,
            embed_dim=8,
            depths=(2,),
            num_heads=(2,),
            window_size=4,
            upsample={"hidden": 16},
            bicubic_residual=br,
        ),
        16,
    ),
}
REQUESTS = {
    "x2.3/3.1": {"scale": (2.3, 3.1)},
    "x1.37": {"scale": 1.37},
    "x3": {"scale": 3},
    "size": {"size": (71, 131)},
}


def _net(name: str, bicubic_residual: bool) -> tuple[torch.nn.Module, int]:
    torch.manual_seed(0)
    build, radius = NETS[name]
    model = build(bicubic_residual).double().eval()
    if bicubic_residual:
        # The head starts at x0.1; undo it so the backbone's share is not hidden by bicubic.
        with torch.no_grad():
            model.pos2weight.meta_block[2].weight.mul_(10)
    return model, radius


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the largest value (the networks output 0..255)."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _image(h: int, w: int, c: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, c, h, w, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("request_", list(REQUESTS.values()), ids=list(REQUESTS))
@pytest.mark.parametrize("bicubic_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("name", list(NETS))
def test_tiled_equals_whole_with_enough_overlap(name, bicubic_residual, request_):
    model, radius = _net(name, bicubic_residual)
    x = _image(29, 41)
    with torch.no_grad():
        whole = model(x, **request_)
        tiled = upscale(model, x, UpscaleRequest(**request_), tile=10, overlap=radius)
        assert tiled.shape == whole.shape
        assert _rel_diff(tiled, whole) < 1e-6
        # Not vacuous: a tile without context differs from the whole image.
        if not bicubic_residual:
            cut = upscale(model, x, UpscaleRequest(**request_), tile=10, overlap=0)
            assert _rel_diff(cut, whole) > 1e-3


def _tile_by_hand(model, x, request_, tile, overlap, align) -> torch.Tensor:
    """``tiling.upscale`` with a chosen alignment instead of the model's."""
    geom = build_geometry(*x.shape[-2:], **request_)
    out = torch.empty(1, 3, geom.H, geom.W, dtype=x.dtype)
    for rt in plan_axis(geom.row_idx, geom.h, tile, overlap, align):
        for ct in plan_axis(geom.col_idx, geom.w, tile, overlap, align):
            xt = x[..., rt.in_lo : rt.in_hi, ct.in_lo : ct.in_hi]
            yt = model(xt, **request_, region=tile_region(geom, rt, ct))
            out[..., rt.out_lo : rt.out_hi, ct.out_lo : ct.out_hi] = yt
    return out


@pytest.mark.parametrize(
    ("img_size", "window_size", "effective"),
    [(16, 4, 4), (6, 8, 6)],
    ids=["window-4", "window-8-shrunk-to-6"],
)
def test_swinir_tiles_align_to_the_effective_window(img_size, window_size, effective):
    """SwinIR blocks shrink the window to min(img_size) when it is not smaller; tiles must start
    at multiples of the window actually used, and any other alignment changes the result."""
    torch.manual_seed(0)
    model = MetaSwinIR(
        img_size=img_size,
        embed_dim=8,
        depths=(2,),
        num_heads=(2,),
        window_size=window_size,
        upsample={"hidden": 16},
    )
    model = model.double().eval()
    assert model.tile_alignment == model.effective_window_size == effective
    x = _image(37, 45)
    request_ = {"scale": (2.5, 1.5)}
    with torch.no_grad():
        whole = model(x, **request_)
        # Overlap 17 puts unaligned tile inputs at LR rows 7 and 19.
        tiled = upscale(model, x, UpscaleRequest(**request_), tile=12, overlap=17)
        assert _rel_diff(tiled, whole) < 1e-6
        # The configured window (8 in the shrunk case) or no alignment puts windows elsewhere.
        for wrong in {window_size + 1 if window_size == effective else window_size, 1}:
            misaligned = _tile_by_hand(model, x, request_, 12, 17, wrong)
            assert _rel_diff(misaligned, whole) > 1e-4


def test_conv_nets_need_no_alignment():
    assert MetaEDSR(n_resblocks=1, n_feats=8, upsample={"hidden": 16}).tile_alignment == 1
    assert MetaRDN(G0=8, D=1, C=1, G=4, upsample={"hidden": 16}).tile_alignment == 1


def test_bicubic_residual_sets_the_minimum_overlap():
    assert _net("edsr", False)[0].min_tile_overlap == 0
    model, _ = _net("edsr", True)
    assert model.min_tile_overlap == BICUBIC_CONTEXT
    # overlap=0 is raised to the bicubic taps' context instead of failing on them.
    x = _image(20, 26)
    with torch.no_grad():
        y = upscale(model, x, UpscaleRequest(scale=(2.7, 3.3)), tile=7, overlap=0)
    assert y.shape == (1, 3, 54, 85)


# ----------------------------------------------------------------------------- regions


@pytest.mark.parametrize(
    ("h", "w", "request_"),
    [(17, 23, {"scale": (2.3, 3.1)}), (13, 11, {"size": (40, 11)}), (9, 30, {"scale": 1.0})],
)
def test_region_bicubic_is_the_whole_images_bicubic(h, w, request_):
    x = _image(h, w)
    geom = build_geometry(h, w, **request_)
    whole = F.interpolate(x, size=(geom.H, geom.W), mode="bicubic", align_corners=False)
    torch.testing.assert_close(bicubic_upsample(x, size=(geom.H, geom.W)), whole)
    for tile in (1, 4, h):
        for rt in plan_axis(geom.row_idx, h, tile, BICUBIC_CONTEXT):
            for ct in plan_axis(geom.col_idx, w, tile, BICUBIC_CONTEXT):
                region = tile_region(geom, rt, ct)
                xt = x[..., rt.in_lo : rt.in_hi, ct.in_lo : ct.in_hi]
                got = bicubic_upsample(xt, region=region)
                want = whole[..., rt.out_lo : rt.out_hi, ct.out_lo : ct.out_hi]
                torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("h", "w", "scale"),
    # 50 x 2.3 = 114.99999999999999: the guarded floor gives 115 rows; 17 x 3.1 = 52.7 -> 52.
    [(50, 17, (2.3, 3.1)), (21, 9, (1.5, 4.0)), (11, 7, (3.5, 2.0)), (12, 8, (2.0, 3.0))],
)
@pytest.mark.parametrize("periodic", [False, True])
def test_bicubic_by_scale_samples_where_the_head_puts_each_row(h, w, scale, periodic):
    x = _image(h, w).double()
    geom = build_geometry(h, w, scale=scale)
    H, W = geom.H, geom.W
    whole = bicubic_upsample(x, size=(H, W), scale=scale, periodic_lon=periodic)

    # The reference, written out: output i samples (i + 0.5)/r - 0.5 (Keys, A = -0.75),
    # taps clamped (rows; columns too unless periodic, where they wrap).
    def matrix(n_out, n_in, r, wrap):
        m = torch.zeros(n_out, n_in, dtype=torch.float64)
        for i in range(n_out):
            s = (i + 0.5) / r - 0.5
            f = math.floor(s)
            for tap in range(f - 1, f + 3):
                d = abs(s - tap)
                a = -0.75
                wgt = (
                    ((a + 2) * d - (a + 3)) * d * d + 1
                    if d <= 1
                    else (((a * d - 5 * a) * d + 8 * a) * d - 4 * a)
                )
                j = tap % n_in if wrap else min(max(tap, 0), n_in - 1)
                m[i, j] += wgt
        return m

    want = matrix(H, h, scale[0], False) @ x @ matrix(W, w, scale[1], periodic).T
    torch.testing.assert_close(whole, want, rtol=0, atol=1e-12)
    # Where h·r is not whole, this is not F.interpolate to the rounded size.
    if H != h * scale[0] and not periodic:
        by_size = F.interpolate(x, size=(H, W), mode="bicubic", align_corners=False)
        assert (whole - by_size).abs().max() > 1e-3
    # Regions of it, from their windows alone.
    for tile in (1, 4):
        for rt in plan_axis(geom.row_idx, h, tile, BICUBIC_CONTEXT):
            cts = [None] if periodic else plan_axis(geom.col_idx, w, tile, BICUBIC_CONTEXT)
            for ct in cts:
                if ct is None:  # a periodic region spans the whole width
                    region = Region(
                        (h, w), (H, W), (rt.in_lo, rt.in_hi), (0, w), (rt.out_lo, rt.out_hi), (0, W)
                    )
                    xt, cols = x[..., rt.in_lo : rt.in_hi, :], slice(0, W)
                else:
                    region = tile_region(geom, rt, ct)
                    xt = x[..., rt.in_lo : rt.in_hi, ct.in_lo : ct.in_hi]
                    cols = slice(ct.out_lo, ct.out_hi)
                got = bicubic_upsample(xt, region=region, scale=scale, periodic_lon=periodic)
                torch.testing.assert_close(
                    got, whole[..., rt.out_lo : rt.out_hi, cols], rtol=0, atol=1e-12
                )


def test_region_bicubic_needs_its_taps():
    x = _image(20, 20)
    geom = build_geometry(20, 20, scale=2.5)
    rt = plan_axis(geom.row_idx, 20, 6, 1)[1]  # one LR row of context: too little
    ct = plan_axis(geom.col_idx, 20, 6, BICUBIC_CONTEXT)[1]
    region = tile_region(geom, rt, ct)
    xt = x[..., rt.in_lo : rt.in_hi, ct.in_lo : ct.in_hi]
    with pytest.raises(ValueError, match="overlap is too small"):
        bicubic_upsample(xt, region=region)
    model, _ = _net("edsr", True)
    with pytest.raises(ValueError, match="overlap is too small"):
        model(xt, scale=2.5, region=region)
    with pytest.raises(ValueError, match="exactly one"):
        bicubic_upsample(xt)
    with pytest.raises(ValueError, match="input window"):
        bicubic_upsample(x, region=region)


def test_meta_upscale_region_is_a_block_of_the_whole_output():
    """With one LR pixel of margin (the 3x3 window) a region reproduces the whole op exactly."""
    torch.manual_seed(0)
    up = MetaUpsample(4, 2, hidden=16).double()
    f = torch.randn(2, 4, 15, 19, dtype=torch.float64)
    for request_ in ({"scale": (2.3, 3.1)}, {"size": (50, 19)}):
        whole = up(f, **request_)
        geom = build_geometry(15, 19, **request_)
        for rt in plan_axis(geom.row_idx, 15, 4, 1):
            for ct in plan_axis(geom.col_idx, 19, 5, 1):
                region = tile_region(geom, rt, ct)
                ft = f[..., rt.in_lo : rt.in_hi, ct.in_lo : ct.in_hi]
                got = meta_upscale(ft, up.phi, **request_, region=region)
                want = whole[..., rt.out_lo : rt.out_hi, ct.out_lo : ct.out_hi]
                torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_region_errors():
    torch.manual_seed(0)
    up = MetaUpsample(4, 2, hidden=16)
    geom = build_geometry(15, 19, scale=2)
    rt, ct = plan_axis(geom.row_idx, 15, 5, 2)[1], plan_axis(geom.col_idx, 19, 5, 2)[1]
    region = tile_region(geom, rt, ct)
    ft = torch.randn(1, 4, *region.in_shape)
    assert up(ft, scale=2, region=region).shape == (1, 2, *region.out_shape)
    with pytest.raises(ValueError, match="feature map is"):
        up(torch.randn(1, 4, 15, 19), scale=2, region=region)
    with pytest.raises(ValueError, match="region is part of"):
        up(ft, scale=2.5, region=region)  # the region was planned for x2
    with pytest.raises(TypeError, match="must be a metasr.geometry.Region"):
        up(ft, scale=2, region=(0, 5))
    model, _ = _net("rdn", False)
    with pytest.raises(ValueError, match="feature map is"):
        model(torch.rand(1, 3, 15, 19, dtype=torch.float64), scale=2, region=region)


def test_tiling_needs_a_metasr_network():
    class Plain(torch.nn.Module):
        def forward(self, x, scale=None, size=None):
            return F.interpolate(x, scale_factor=scale)

    x = torch.rand(1, 3, 20, 20)
    assert upscale(Plain(), x, UpscaleRequest(scale=2)).shape == (1, 3, 40, 40)  # whole: any model
    with pytest.raises(ValueError, match="MetaSRNet"):
        upscale(Plain(), x, UpscaleRequest(scale=2), tile=8)


# ----------------------------------------------------------------------------- planning


@pytest.mark.parametrize("n_in", [1, 7, 30, 53])
@pytest.mark.parametrize("r", [1.0, 1.37, 2.3, 4.0, 7.5104])
def test_plan_axis_partitions_inputs_and_outputs(n_in, r):
    geom = build_geometry(n_in, 3, scale=(r, 1))
    idx = geom.row_idx
    for tile, overlap, align in ((1, 0, 1), (5, 2, 1), (8, 3, 4), (11, 16, 6), (n_in, 0, 1)):
        tiles = plan_axis(idx, n_in, tile, overlap, align)
        # Cores cover every LR row that owns an output (the last rows may own none, e.g. 7
        # rows at x1.37 give 9 outputs on rows 0..5); outputs cover every output row.
        assert tiles[0].core_lo == 0 and idx.max() < tiles[-1].core_hi <= n_in
        assert tiles[0].out_lo == 0 and tiles[-1].out_hi == geom.H
        for a, b in zip(tiles, tiles[1:], strict=False):
            assert a.core_hi == b.core_lo and a.out_hi == b.out_lo  # no gaps, no overlaps
        for t in tiles:
            assert t.core_hi - t.core_lo <= tile
            assert t.in_lo % align == 0
            assert t.in_lo <= max(t.core_lo - overlap, 0) and t.in_hi == min(
                t.core_hi + overlap, n_in
            )
            own = idx[t.out_lo : t.out_hi]
            assert own.size and own.min() >= t.core_lo and own.max() < t.core_hi


def test_plan_axis_errors():
    idx = np.arange(10)
    for kwargs, match in (
        (dict(tile=0, overlap=0), "tile must be"),
        (dict(tile=3, overlap=-1), "overlap must be"),
        (dict(tile=3, overlap=0, align=0), "align must be"),
    ):
        with pytest.raises(ValueError, match=match):
            plan_axis(idx, 10, **kwargs)
    model, _ = _net("edsr", False)
    with pytest.raises(ValueError, match="overlap must be"):
        upscale(model, _image(20, 20), UpscaleRequest(scale=2), tile=8, overlap=-1)


def test_region_validates_its_ranges():
    ok = dict(
        image_size=(10, 12),
        output_size=(20, 24),
        in_rows=(0, 5),
        in_cols=(2, 12),
        out_rows=(0, 8),
        out_cols=(6, 24),
    )
    region = Region(**ok)
    assert (region.in_shape, region.out_shape) == ((5, 10), (8, 18))
    for field, bad in (
        ("in_rows", (5, 5)),
        ("in_cols", (0, 13)),
        ("out_rows", (-1, 3)),
        ("image_size", (0, 12)),
        ("output_size", (20,)),
    ):
        with pytest.raises(ValueError, match="region"):
            Region(**{**ok, field: bad})
    for field, bad in (("out_cols", (1.5, 3)), ("in_rows", "0:5"), ("image_size", (10.0, 12))):
        with pytest.raises(TypeError, match="region"):  # a wrong type
            Region(**{**ok, field: bad})
