"""Networks with coordinate-placed output (``forward(x, coords=CoordinateGrid(...))``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import metasr
from helpers import TINY_MODELS
from metasr import CoordinateGrid, meta_upscale
from metasr.archs import MetaRDN, MetaSwinIR
from metasr.archs.bicubic import bicubic_upsample
from metasr.checkpoints import LoadedModel
from metasr.climate import model as mc
from metasr.climate.grids import regular_grid
from metasr.climate.stats import FieldStats

MODELS = metasr.list_models()


def _net(name: str, **extra: object) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {**TINY_MODELS[name], "bicubic_residual": True, **extra}
    return metasr.create_model(name, **kwargs).eval()


def _ratio_grid(h: int, w: int, H: int, W: int) -> CoordinateGrid:
    """Index-ratio compatible grids: each target axis starts at the source's first coordinate
    and steps by ``spacing · n_in / n_out`` (:func:`metasr.geometry.coordinate_axis_map`)."""
    return CoordinateGrid(
        90.0 - np.arange(h) * 180.0 / h,
        np.arange(w) * 360.0 / w,
        90.0 - np.arange(H) * 180.0 / H,
        np.arange(W) * 360.0 / W,
    )


def _manual(net: torch.nn.Module, x: torch.Tensor, c: CoordinateGrid) -> torch.Tensor:
    """The network's forward written out: backbone, the op with coords, bicubic residual."""
    size = (len(c.dst_lat), len(c.dst_lon))
    if isinstance(net, MetaSwinIR):
        y = meta_upscale(net.head_features(x), net.pos2weight, backend=net.backend, coords=c)
        y = y + bicubic_upsample(net._normalize(x), size=size)
        return y / net.img_range + net.out_mean
    xs = net.sub_mean(x)
    y = meta_upscale(net.forward_features(xs), net.pos2weight, backend=net.backend, coords=c)
    return net.add_mean(y + bicubic_upsample(xs, size=size))


@pytest.mark.parametrize("name", MODELS)
def test_coords_on_index_ratio_grid_equal_size(name: str) -> None:
    # On index-ratio compatible grids coordinate placement is the index-ratio placement
    # (a whole ratio on rows, 2.5 on columns).
    net = _net(name)
    x = torch.rand(2, 3, 6, 8)
    with torch.no_grad():
        a = net(x, coords=_ratio_grid(6, 8, 12, 20))
        b = net(x, size=(12, 20))
    assert a.shape == (2, 3, 12, 20)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_coords_pole_rows_follow_latitude(name: str) -> None:
    # ERA5-like grids with pole rows: rows are placed by latitude, not by index ratio.
    net = _net(name)
    x = torch.rand(1, 3, 13, 8)
    c = CoordinateGrid(
        np.linspace(90, -90, 13),
        np.arange(8) * 45.0,
        np.linspace(90, -90, 25),
        np.arange(16) * 22.5,
        periodic_lon=False,
    )
    with torch.no_grad():
        a = net(x, coords=c)
        b = net(x, size=(25, 16))
        m = _manual(net, x, c)
    assert a.shape == (1, 3, 25, 16)
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(a, m, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_coords_refused_with_scale_size(name: str) -> None:
    net = _net(name)
    x = torch.rand(1, 3, 6, 8)
    c = _ratio_grid(6, 8, 12, 16)
    with pytest.raises(ValueError, match="not both"):
        net(x, scale=2, coords=c)
    with pytest.raises(ValueError, match="not both"):
        net(x, size=(12, 16), coords=c)
    from metasr.geometry import Region

    # A region of a coordinate request is a block of it (tiled inference: test_coords_tiling).
    region = Region((6, 8), (12, 16), (0, 6), (0, 8), (0, 12), (0, 16))
    with torch.no_grad():
        y = net(x, coords=c, region=region)
        torch.testing.assert_close(y, net(x, coords=c), rtol=1e-4, atol=1e-4)  # float32
    with pytest.raises(ValueError, match="source grid"):
        net(torch.rand(1, 3, 5, 8), coords=c)


def test_model_downscaler_passes_coords() -> None:
    torch.manual_seed(0)
    net = MetaRDN(
        in_channels=1, out_channels=1, G0=8, D=2, C=2, G=4, upsample={"hidden": 16}
    ).eval()
    seen: list[dict] = []
    net.register_forward_pre_hook(lambda m, a, kw: seen.append(dict(kw)), with_kwargs=True)
    loaded = LoadedModel(net, "tiny", "meta_rdn", in_channels=1, out_channels=1)
    stats = FieldStats(("t2m",), ("K",), (280.0,), (2.0,), "13x8")
    src = regular_grid(13, 8)  # ERA5-like: pole rows, global
    dst = regular_grid(25, 16)
    fields = 280.0 + np.random.default_rng(0).standard_normal((3, 13, 8))
    out = mc.ModelDownscaler(loaded, stats, batch_size=2)(fields, src, dst)
    assert out.shape == (3, 25, 16)
    assert len(seen) == 2
    c = seen[0]["request"].coords  # the request is handed to the network as one value
    assert isinstance(c, CoordinateGrid) and c.periodic_lon is src.periodic_lon
    # The network sees the canonical layout (latitude ascending; issue 23), not the file's.
    assert np.allclose(c.dst_lat, np.sort(dst.lat)) and np.allclose(c.src_lon, src.lon)
    # Tiled runs keep the coordinates (each tile gets them and its region).
    seen.clear()
    tiled = mc.ModelDownscaler(loaded, stats, tile=4)(fields, src, dst)
    assert seen[0]["request"].coords == c and seen[0]["request"].region is not None
    np.testing.assert_allclose(tiled, out, rtol=0, atol=1e-4)
    # The same model through the index-ratio path gives another field (the rows move).
    with torch.no_grad():
        by_size = net(torch.from_numpy(((fields - 280.0) / 2.0)[:, None]).float(), size=(25, 16))
    assert np.abs(out - (by_size[:, 0].numpy() * 2.0 + 280.0)).max() > 1e-4


def test_model_downscaler_official_arithmetic_keeps_size() -> None:
    # arithmetic="official" is an index-ratio grid (coords are refused with it): size= is used.
    torch.manual_seed(0)
    net = MetaRDN(
        in_channels=1,
        out_channels=1,
        G0=8,
        D=2,
        C=2,
        G=4,
        upsample={"hidden": 16, "arithmetic": "official"},
    ).eval()
    seen: list[dict] = []
    net.register_forward_pre_hook(lambda m, a, kw: seen.append(dict(kw)), with_kwargs=True)
    loaded = LoadedModel(net, "tiny", "meta_rdn", in_channels=1, out_channels=1)
    stats = FieldStats(("t2m",), ("K",), (280.0,), (2.0,), "13x8")
    fields = 280.0 + np.random.default_rng(0).standard_normal((1, 13, 8))
    out = mc.ModelDownscaler(loaded, stats)(fields, regular_grid(13, 8), regular_grid(26, 16))
    assert out.shape == (1, 26, 16)
    assert seen[0]["request"].coords is None and seen[0]["request"].size == (26, 16)
