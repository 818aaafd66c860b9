"""UpscaleRequest (metasr.geometry) and the op's plan (metasr.ops.meta_upscale.plan)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import metasr
import metasr.geometry as geometry
from metasr.geometry import CoordinateGrid, Region, UpscaleRequest, build_geometry

COORDS = CoordinateGrid(
    [50.0, 10.0, -30.0],
    [0.0, 90.0, 180.0, 270.0],
    [50, 30, 10, -10, -30],
    [-180 + 30.0 * i for i in range(12)],
)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of scale"),
        ({"scale": 2, "size": (8, 8)}, "exactly one of scale"),
        ({"scale": 2, "coords": COORDS}, "either coords"),
        ({"size": (8, 8), "coords": COORDS}, "either coords"),
        ({"scale": 0.5}, ">= 1"),
        ({"scale": (2, 3, 4)}, "pair"),
        ({"size": (8, 8, 8)}, "pair"),
        ({"scale": 2, "arithmetic": "fast"}, "arithmetic must be"),
        ({"coords": COORDS, "arithmetic": "official"}, "not coords"),
    ],
)
def test_every_check_runs_when_the_request_is_made(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UpscaleRequest(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale": "2"}, "scale must be a real number"),
        ({"scale": (2, None)}, "horizontal scale r_h must be a real number"),
        ({"scale": True}, "scale must be a real number"),
        ({"size": (8.0, 8)}, "must be an integer"),
        ({"size": 8}, "size must be a pair"),
        ({"scale": 2, "arithmetic": 1}, "arithmetic must be a string"),
        ({"scale": 2, "periodic_lon": 1}, "periodic_lon must be True or False"),
        ({"scale": 2, "region": (0, 1)}, "region must be"),
        ({"coords": "grid"}, "CoordinateGrid"),
    ],
)
def test_wrong_types_are_type_errors(kwargs, match):
    with pytest.raises(TypeError, match=match):
        UpscaleRequest(**kwargs)


def test_a_wrapping_window_needs_periodic_coordinates():
    regional = CoordinateGrid(
        COORDS.src_lat, COORDS.src_lon, COORDS.dst_lat, COORDS.dst_lon, periodic_lon=False
    )
    with pytest.raises(ValueError, match="make both periodic or neither"):
        UpscaleRequest(coords=regional, periodic_lon=True)
    # A window that does not wrap may place its output on a global grid.
    assert UpscaleRequest(coords=COORDS).coords.periodic_lon


def test_requests_are_normalised_values():
    a, b = UpscaleRequest(scale=2), UpscaleRequest(scale=(2.0, 2.0))
    assert a == b and hash(a) == hash(b) and a.scale == (2.0, 2.0)
    assert UpscaleRequest(size=torch.Size([9, 7])).size == (9, 7)
    assert len({a, b, UpscaleRequest(size=(9, 7))}) == 2


@pytest.mark.parametrize(
    "request_",
    [
        UpscaleRequest(scale=(2.3, 3.7)),
        UpscaleRequest(scale=2.3, arithmetic="official"),
        UpscaleRequest(size=(17, 29)),
        UpscaleRequest(coords=COORDS, periodic_lon=True),
        UpscaleRequest(
            scale=(2.5, 3.0),
            periodic_lon=True,
            region=Region((4, 5), (10, 15), (1, 4), (0, 5), (3, 8), (0, 15)),
        ),
    ],
)
def test_the_flat_form_round_trips(request_):
    ints, floats = request_.to_flat()
    assert all(type(v) is int for v in ints) and all(type(v) is float for v in floats)
    assert UpscaleRequest.from_flat(ints, floats) == request_


@pytest.mark.parametrize("arithmetic", ["exact", "official"])
def test_out_shape_is_the_geometrys_size(arithmetic):
    for h in (1, 7, 50, 97):
        for r in (1.0, 1.1, 2.3, 2.5, 3.7, 4.0, 7.77):
            req = UpscaleRequest(scale=(r, r + 0.5), arithmetic=arithmetic)
            geom = req.geometry(h, h + 3)
            assert req.out_shape(h, h + 3) == (geom.H, geom.W)


def test_transposed_request_gives_the_transposed_geometry():
    req = UpscaleRequest(scale=(2.3, 3.5))
    g, t = req.geometry(7, 5), req.transposed().geometry(5, 7)
    assert (t.H, t.W) == (g.W, g.H)
    np.testing.assert_array_equal(t.row_idx, g.col_idx)
    np.testing.assert_array_equal(t.col_off, g.row_off)
    assert UpscaleRequest(size=(9, 4)).transposed().size == (4, 9)
    region = Region((7, 5), (g.H, g.W), (2, 7), (0, 3), (6, g.H), (0, 7))
    tr = req.with_region(region).transposed()
    assert tr.region.in_rows == (0, 3) and tr.region.out_cols == (6, g.H)
    for bad in (UpscaleRequest(coords=COORDS), UpscaleRequest(scale=2, periodic_lon=True)):
        with pytest.raises(ValueError, match="cannot be transposed"):
            bad.transposed()


def test_with_region_cuts_the_whole_geometry():
    req = UpscaleRequest(scale=(2.5, 3.0))
    whole = req.geometry(4, 5)
    region = Region((4, 5), (10, 15), (1, 4), (0, 5), (3, 8), (0, 15))
    part = req.with_region(region).geometry(3, 5)
    np.testing.assert_array_equal(part.row_off, whole.row_off[3:8])
    np.testing.assert_array_equal(part.row_idx, whole.row_idx[3:8] - 1)
    assert req.with_region(region).whole() == req
    with pytest.raises(ValueError, match="region's input window"):
        req.with_region(region).geometry(4, 5)


def test_build_geometry_is_the_requests_geometry():
    g = build_geometry(6, 7, scale=(2.5, 1.5), pos_encoding="asymmetric")
    r = UpscaleRequest(scale=(2.5, 1.5)).geometry(6, 7)
    np.testing.assert_array_equal(g.row_pos, r.row_pos)
    np.testing.assert_array_equal(g.col_idx, r.col_idx)


def _count_builds(monkeypatch) -> list[int]:
    """Count whole geometries built (each builds its two axis maps once)."""
    geometry._whole_geometry.cache_clear()
    calls = [0]
    for name in ("_axis_map", "coordinate_axis_map"):
        real = getattr(geometry, name)

        def counted(*args, _real=real, **kwargs):
            calls[0] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(geometry, name, counted)
    return calls


@pytest.mark.parametrize("by_coords", [False, True])
def test_the_geometry_is_built_once_per_network_forward(monkeypatch, by_coords):
    torch.manual_seed(0)
    net = metasr.create_model("meta_edsr_tiny", in_channels=1, out_channels=1, n_resblocks=1,
                              n_feats=8, hidden=8).eval()  # fmt: skip
    assert net.bicubic_residual
    x = torch.rand(1, 1, 3, 4)
    call = {"coords": COORDS} if by_coords else {"scale": (2.5, 1.5)}
    calls = _count_builds(monkeypatch)
    seen = [0]
    real_geometry = UpscaleRequest.geometry

    def counted(self, *args, **kwargs):
        seen[0] += 1
        return real_geometry(self, *args, **kwargs)

    monkeypatch.setattr(UpscaleRequest, "geometry", counted)
    with torch.no_grad():
        net(x, **call)
    assert seen[0] == 1  # one geometry per forward: the head and the residual share it
    assert calls[0] == 2  # its two axis maps, once each


def test_a_tiled_call_builds_the_whole_geometry_once(monkeypatch):
    from metasr.tiling import upscale

    torch.manual_seed(0)
    net = metasr.create_model("meta_edsr_tiny", in_channels=1, out_channels=1, n_resblocks=1,
                              n_feats=8, hidden=8).eval()  # fmt: skip
    x = torch.rand(1, 1, 12, 10)
    calls = _count_builds(monkeypatch)
    with torch.no_grad():
        y = upscale(
            net, x, UpscaleRequest(scale=2.5), tile=4, overlap=16
        )  # each window: the whole input
    assert calls[0] == 2  # the whole image's two axis maps, cut for each of the 9 tiles
    with torch.no_grad():
        torch.testing.assert_close(y, net(x, scale=2.5), rtol=0, atol=1e-5)


def test_a_tiled_coords_call_builds_three_whole_geometries_and_no_tile_builds_one(monkeypatch):
    """A tiled coords call (the target's longitudes start at -180, so the source's order
    differs): the target's geometry, the same in the source's order (the tiles run on it),
    and the index-ratio grid of the bicubic residual's taps, whatever the number of tiles;
    every tile's forward cuts the source-ordered one (UpscaleRequest.geometry, memoised)."""
    from metasr.tiling import plan_tiling, upscale

    torch.manual_seed(0)
    net = metasr.create_model("meta_edsr_tiny", in_channels=1, out_channels=1, n_resblocks=1,
                              n_feats=8, hidden=8, periodic_lon=True).eval()  # fmt: skip
    request = UpscaleRequest(coords=COORDS, periodic_lon=True)
    x = torch.rand(1, 1, 3, 4)
    with torch.no_grad():
        whole = net(x, coords=COORDS)
    for tile in (1, 2):
        calls = _count_builds(monkeypatch)
        with torch.no_grad():
            y = upscale(net, x, request, tile=tile, overlap=16)
        assert len(plan_tiling(net, request, 3, 4, tile, 16).tiles) == 3 // tile + (tile == 2)
        assert calls[0] == 3 * 2  # three whole geometries, two axis maps each
        torch.testing.assert_close(y, whole, rtol=0, atol=1e-5)


def test_plan_decides_and_meta_upscale_runs_it():
    torch.manual_seed(0)
    up = metasr.MetaUpsample(3, 2, hidden=8)
    x = torch.randn(2, 3, 4, 5)
    stand_in = x.new_empty(()).expand(x.shape)
    plan = metasr.plan(stand_in, up.phi, UpscaleRequest(scale=(2.5, 3.0)), "torch")
    assert plan.backend.name == "torch" and plan.dtype == torch.float32
    assert plan.out_shape == (10, 15) and (plan.geometry.H, plan.geometry.W) == (10, 15)
    assert plan.estimate_bytes() > 2 * 2 * 10 * 15 * 4 - 1
    assert plan.backend_reasons()["torch"] == []
    assert "tiny outputs" not in " ".join(plan.backend_reasons()["naive"])
    y = metasr.meta_upscale(x, up.phi, plan=plan)
    torch.testing.assert_close(y, metasr.meta_upscale(x, up.phi, scale=(2.5, 3.0)))
    torch.testing.assert_close(y, up(x, plan=plan))
    with pytest.raises(ValueError, match="not both"):
        metasr.meta_upscale(x, up.phi, scale=2, plan=plan)
    with pytest.raises(ValueError, match="plan was made for"):
        metasr.meta_upscale(x[:1], up.phi, plan=plan)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert metasr.plan(stand_in, up.phi, UpscaleRequest(scale=2)).dtype == torch.bfloat16


def test_an_inference_call_hands_one_request_down_to_every_tile(monkeypatch):
    """metasr.api.run_checked (what ``metasr upscale`` runs): the request made once by the
    caller reaches every tile's forward as ``request=`` (no loose scale/size re-derived on the
    way), and the memory estimate and the tiles all cut one whole geometry."""
    from metasr.api import run_checked
    from metasr.checkpoints import LoadedModel, network_value_range
    from metasr.io import Raster

    torch.manual_seed(0)
    net = metasr.create_model("meta_edsr_tiny", n_resblocks=1, n_feats=8, hidden=8).eval()
    loaded = LoadedModel(net, "tiny", "meta_edsr_tiny", {}, 3, 3, network_value_range(net))
    raster = Raster(np.random.default_rng(0).random((3, 12, 10)), "field", np.dtype(np.float32))
    request = UpscaleRequest(scale=(2.5, 1.5))
    seen: list[dict] = []
    real_forward = type(net).forward

    def spy(self, x, *args, **kwargs):
        seen.append(kwargs)
        return real_forward(self, x, *args, **kwargs)

    monkeypatch.setattr(type(net), "forward", spy)
    calls = _count_builds(monkeypatch)
    result, tile = run_checked(loaded, raster, request, tile=4, overlap=16)
    assert tile == 4 and result.data.shape == (3, 30, 15)
    assert len(seen) == 9  # 3 x 3 tiles
    assert all(set(kw) == {"request"} for kw in seen)
    assert {kw["request"].whole() for kw in seen} == {net.request(request=request)}
    assert len({kw["request"].region for kw in seen}) == 9
    assert calls[0] == 2  # one whole geometry: the estimate's and every tile's


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x, phi: metasr.meta_upscale(x.numpy(), phi, scale=2), "x must be a torch.Tensor"),
        (lambda x, phi: metasr.meta_upscale(x, "phi", scale=2), "phi must be an nn.Module"),
        (lambda x, phi: metasr.meta_upscale(x, phi, scale="2"), "scale must be a real number"),
        (lambda x, phi: metasr.meta_upscale(x, phi, size=(8.5, 8)), "must be an integer"),
        (lambda x, phi: metasr.meta_upscale(x, phi, scale=2, backend=1), "backend must be a str"),
        (lambda x, phi: metasr.meta_upscale(x, phi, scale=2, periodic_lon=1), "periodic_lon"),
        (lambda x, phi: metasr.meta_upscale(x, phi, plan="plan"), "plan must be an UpscalePlan"),
        (lambda x, phi: metasr.plan(x, phi, {"scale": 2}), "request must be a metasr"),
        (lambda x, phi: metasr.plan(x.numpy(), phi, UpscaleRequest(scale=2)), "x must be a"),
        (lambda x, phi: metasr.plan(x, phi, UpscaleRequest(scale=2), 1), "backend must be a str"),
    ],
)
def test_wrong_types_at_the_op_are_type_errors(call, match):
    phi = metasr.Pos2Weight(3, 2, hidden=8)
    with pytest.raises(TypeError, match=match):
        call(torch.randn(1, 3, 4, 4), phi)
