"""Tiled inference of coordinate-placed networks (``tiling.upscale`` of a ``coords`` request).

Tiles are full-width bands of rows of the coordinate geometry; with more overlap than a
network's receptive field the assembled tiles equal the whole field's output up to rounding
(``tiling.upscale`` assembles in float32, the networks run in float64). Grids with pole rows
(13 → 49 rows, placed by latitude, not by index ratio) and targets in another order than the
source (latitudes reversed, longitudes starting at 180°) are covered, for MetaEDSR, MetaRDN and
MetaSwinIR, with and without the bicubic residual; then ``ModelDownscaler`` and
``metasr upscale --tile`` on a netCDF file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import metasr
from helpers import perturb_parameters, random_field
from metasr.archs import MetaEDSR, MetaRDN, MetaSwinIR
from metasr.checkpoints import LoadedModel
from metasr.climate import model as mcm
from metasr.climate.grids import Grid, regular_grid
from metasr.climate.stats import FieldStats
from metasr.geometry import CoordinateGrid, Region, UpscaleRequest, build_geometry_from_coords
from metasr.tiling import plan_tiles, tile_region, upscale

# Receptive field in LR rows of each tiny network (convs; SwinIR: plus two windows of 4).
NETS = {
    "meta_edsr": (
        lambda **kw: MetaEDSR(
            1, 1, n_resblocks=2, n_feats=8, img_range=1.0, upsample={"hidden": 16}, **kw
        ),
        8,
    ),
    "meta_rdn": (
        lambda **kw: MetaRDN(
            1, 1, G0=8, D=2, C=2, G=4, img_range=1.0, upsample={"hidden": 16}, **kw
        ),
        9,
    ),
    "meta_swinir": (
        lambda **kw: MetaSwinIR(
            img_size=(8, 16),
            in_chans=1,
            embed_dim=8,
            depths=(2,),
            num_heads=(2,),
            window_size=4,
            num_feat=8,
            upsample={"hidden": 16},
            **kw,
        ),
        16,
    ),
}


def _net(name: str, bicubic_residual: bool = True, periodic_lon: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    build, _ = NETS[name]
    return perturb_parameters(
        build(bicubic_residual=bicubic_residual, periodic_lon=periodic_lon).double().eval()
    )


def _residual(geom) -> object:
    """The grid a coordinate-placed network's bicubic residual reads: the index-ratio
    upsampling to the target's shape."""
    return UpscaleRequest(size=(geom.H, geom.W)).geometry(geom.h, geom.w)


def _field(h: int, w: int, seed: int = 1) -> torch.Tensor:
    return random_field(2, 1, h, w, seed=seed)


def _pole_rows() -> CoordinateGrid:
    """ERA5-like: source and target both with pole rows, so rows are not at index ratio."""
    return CoordinateGrid(
        np.linspace(90, -90, 13),
        np.arange(16) * 22.5,
        np.linspace(90, -90, 49),
        np.arange(40) * 9.0,
    )


def _reordered() -> CoordinateGrid:
    """Ascending source (as the GloSea4 files), descending target starting at 180°E."""
    return CoordinateGrid(
        np.linspace(-90, 90, 13),
        np.arange(16) * 22.5,
        np.linspace(90, -90, 49),
        (180.0 + np.arange(40) * 9.0) % 360.0,
    )


GRIDS = {"pole-rows": _pole_rows, "reordered": _reordered}


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("bicubic_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("name", list(NETS))
def test_coordinate_tiles_equal_the_whole_field(name, bicubic_residual, grid):
    model, radius = _net(name, bicubic_residual), NETS[name][1]
    coords = GRIDS[grid]()
    x = _field(13, 16)
    with torch.no_grad():
        whole = model(x, coords=coords)
        tiled = upscale(model, x, UpscaleRequest(coords=coords), tile=4, overlap=radius)
        assert tiled.shape == whole.shape == (2, 1, 49, 40)
        assert _rel_diff(tiled, whole) < 1e-6
        if not bicubic_residual:
            # Not vacuous: tiles without context differ from the whole field.
            cut = upscale(model, x, UpscaleRequest(coords=coords), tile=4, overlap=0)
            assert _rel_diff(cut, whole) > 1e-4


def test_coordinate_tiles_are_full_width_bands_in_latitude():
    model = _net("meta_edsr")
    coords = _pole_rows()
    geom = build_geometry_from_coords(coords, periodic_lon=True)
    rows, cols = plan_tiles(model, geom, tile=4, overlap=3, residual=_residual(geom))
    assert len(cols) == 1 and (cols[0].in_lo, cols[0].in_hi, cols[0].out_hi) == (0, 16, 40)
    # Each output row sits in the tile whose core holds its LR row by latitude.
    for t in rows:
        lat = np.asarray(coords.dst_lat[t.out_lo : t.out_hi])
        src = np.asarray(coords.src_lat)
        assert np.all(lat <= src[t.core_lo] + 1e-9)
        assert t.core_hi == 13 or np.all(lat > src[t.core_hi] - 1e-9)


def test_windows_hold_the_index_ratio_residual_taps():
    # With pole rows the index-ratio row of an output can lie below its coordinate row; the
    # planner widens the window so the residual's taps are inside it even at the minimum overlap.
    model = _net("meta_edsr", bicubic_residual=True)
    coords = _pole_rows()
    x = _field(13, 16)
    with torch.no_grad():
        whole = model(x, coords=coords)
        tiled = upscale(model, x, UpscaleRequest(coords=coords), tile=1, overlap=0)  # raised to 3
    assert tiled.shape == whole.shape
    geom = build_geometry_from_coords(coords, periodic_lon=True)
    plain = plan_tiles(model, geom, tile=1, overlap=3)[0]
    widened = plan_tiles(model, geom, tile=1, overlap=3, residual=_residual(geom))[0]
    assert any(a.in_hi < b.in_hi or a.in_lo > b.in_lo for a, b in zip(plain, widened, strict=True))


@pytest.mark.parametrize("name", list(NETS))
def test_residual_follows_a_reordered_target(name):
    # Reversing the target's latitudes reverses the output rows; starting the longitudes at 180°
    # rolls the columns: the head and the bicubic residual move together.
    model = _net(name, bicubic_residual=True)
    x = _field(13, 16)
    src_lat, src_lon = np.linspace(-90, 90, 13), np.arange(16) * 22.5
    lat, lon = np.linspace(-90, 90, 49), np.arange(40) * 9.0
    with torch.no_grad():
        same = model(x, coords=CoordinateGrid(src_lat, src_lon, lat, lon))
        flipped = model(x, coords=CoordinateGrid(src_lat, src_lon, lat[::-1], lon))
        rolled = model(x, coords=CoordinateGrid(src_lat, src_lon, lat, np.roll(lon, -20)))
    torch.testing.assert_close(flipped, same.flip(-2), rtol=0, atol=1e-12)
    torch.testing.assert_close(rolled, same.roll(-20, dims=-1), rtol=0, atol=1e-12)


def test_source_ordered_request_round_trip():
    coords = _reordered()
    request = UpscaleRequest(coords=coords, periodic_lon=True)
    ordered_request, row_order, col_order = request.source_ordered()
    ordered = ordered_request.coords
    assert ordered_request.periodic_lon
    assert row_order is not None and col_order is not None
    np.testing.assert_array_equal(np.asarray(ordered.dst_lat)[row_order], coords.dst_lat)
    np.testing.assert_array_equal(np.asarray(ordered.dst_lon)[col_order], coords.dst_lon)
    geom = build_geometry_from_coords(ordered, periodic_lon=True)
    assert geom.row_order is None and geom.col_order is None
    request = UpscaleRequest(coords=_pole_rows())
    same, r, c = request.source_ordered()
    assert same is request and r is None and c is None


def test_a_region_of_a_reordered_target_is_refused():
    model = _net("meta_edsr")
    coords = _reordered()
    region = Region((13, 16), (49, 40), (0, 13), (0, 16), (0, 49), (0, 40))
    with pytest.raises(ValueError, match="reordered"):
        model(_field(13, 16), coords=coords, region=region)
    # In the source's order the same region is the whole output.
    request = UpscaleRequest(coords=coords, periodic_lon=True)
    ordered_request, row_order, col_order = request.source_ordered()
    ordered = ordered_request.coords
    geom = build_geometry_from_coords(ordered, periodic_lon=True)
    rows, cols = plan_tiles(model, geom, tile=13, overlap=0, residual=_residual(geom))
    with torch.no_grad():
        y = model(_field(13, 16), coords=ordered, region=tile_region(geom, rows[0], cols[0]))
        whole = model(_field(13, 16), coords=coords)
    torch.testing.assert_close(y[..., row_order, :][..., col_order], whole, rtol=0, atol=1e-12)


def test_coords_and_scale_are_exclusive_when_tiled():
    model = _net("meta_edsr")
    with pytest.raises(ValueError, match="not both"):
        upscale(model, _field(13, 16), UpscaleRequest(scale=2, coords=_pole_rows()), tile=4)
    with pytest.raises(ValueError, match="source grid"):
        upscale(model, _field(12, 16), UpscaleRequest(coords=_pole_rows()), tile=4)


# ------------------------------------------------------------------------------ ModelDownscaler


def _loaded(name: str = "meta_edsr") -> LoadedModel:
    return LoadedModel(_net(name).float(), "tiny", name, in_channels=1, out_channels=1)


@pytest.mark.parametrize(
    "src",
    [regular_grid(13, 16), Grid.from_coords(np.linspace(-90, 90, 13), np.arange(16) * 22.5)],
    ids=["descending", "ascending"],
)
def test_model_downscaler_tiled_equals_whole(src):
    loaded = _loaded()
    stats = FieldStats(("t2m",), ("K",), (280.0,), (2.0,), "13x16")
    dst = regular_grid(49, 40)
    fields = 280.0 + 2.0 * np.random.default_rng(0).standard_normal((3, 13, 16))
    whole = mcm.ModelDownscaler(loaded, stats, batch_size=2)(fields, src, dst)
    tiled = mcm.ModelDownscaler(loaded, stats, batch_size=2, tile=3, overlap=8)(fields, src, dst)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-4)  # kelvin, float32 network


def test_cli_upscale_tiled_equals_whole(tmp_path: Path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("netCDF4")
    pytest.importorskip("safetensors")
    from metasr.checkpoints import save_checkpoint
    from metasr.cli import main
    from metasr.climate.stats import stats_metadata

    kwargs = dict(in_channels=1, out_channels=1, n_resblocks=1, n_feats=8, periodic_lon=True)
    torch.manual_seed(0)
    model = metasr.create_model("meta_edsr", **kwargs)
    ckpt = tmp_path / "m.safetensors"
    stats = FieldStats(("t2m",), ("K",), (280.0,), (2.0,), "13x16")
    save_checkpoint(ckpt, model, "meta_edsr", kwargs, metadata=stats_metadata(stats))
    data = 280 + 2 * np.random.default_rng(0).standard_normal((2, 13, 16))
    da = xr.DataArray(
        data.astype(np.float32),
        dims=("time", "lat", "lon"),
        coords={"time": [0, 1], "lat": np.linspace(-90, 90, 13), "lon": np.arange(16) * 22.5},
        attrs={"units": "K"},
        name="t2m",
    )
    src = tmp_path / "in.nc"
    da.to_dataset().to_netcdf(src)
    outs = {}
    for tile in (0, 3):
        out = tmp_path / f"out{tile}.nc"
        args = ["upscale", src, "--var", "t2m", "--target-grid", "49x40", "-o", out]
        assert main([str(a) for a in [*args, "--model", ckpt, "--tile", tile]]) == 0
        with xr.open_dataset(out) as ds:
            outs[tile] = ds["t2m"].values
    assert outs[0].shape == (2, 49, 40)
    np.testing.assert_allclose(outs[3], outs[0], rtol=0, atol=1e-4)
