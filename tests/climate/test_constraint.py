"""Conservation by construction and layout invariance (issue 23, parts 1-3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metasr import create_model
from metasr.climate import regrid
from metasr.climate.constraint import ConservativeConstraint, pole_rows
from metasr.climate.grids import Grid, gaussian_grid, regular_grid
from metasr.climate.layout import canonical_layout, target_layout
from metasr.climate.model import field_forward, regional_call
from metasr.field_stats import FieldStats


def _field(grid: Grid, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lat, lon = np.deg2rad(grid.lat)[:, None], np.deg2rad(grid.lon)[None, :]
    smooth = 280 + 25 * np.cos(lat) + 3 * np.sin(2 * lon) * np.cos(lat)
    return smooth + rng.normal(0, 0.5, grid.shape)


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (regular_grid(19, 23, pole_rows=True), regular_grid(145, 192, pole_rows=True)),  # ~x7.6
        (regular_grid(13, 17, pole_rows=False), gaussian_grid(48, 97)),  # not nested
        (gaussian_grid(12, 20), regular_grid(37, 61, pole_rows=False, north_first=False)),
        (regular_grid(10, 14, pole_rows=False), regular_grid(15, 21, pole_rows=True)),  # x1.5
    ],
)
@pytest.mark.parametrize("smooth", [False, True])
def test_constraint_makes_any_ratio_conservative(src: Grid, dst: Grid, smooth: bool) -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(280, 10, (3, *dst.shape))
    x = rng.normal(280, 10, (3, *src.shape))
    con = ConservativeConstraint(src, dst, frozen_rows=pole_rows(dst), smooth=smooth)
    before = con.error(y, x)
    out = con(y, x)
    assert before > 1.0
    # Independent check: the module's conservative regridding of the output back to src.
    back = regrid(out, dst, src, "conservative")
    covered = np.ix_(con.rows, con.cols)
    assert np.max(np.abs(back[..., covered[0], covered[1]] - x[..., covered[0], covered[1]])) < 1e-4
    # Frozen pole rows are left as they were.
    assert np.array_equal(out[:, pole_rows(dst)], y[:, pole_rows(dst)])
    # A projection: applying it again changes nothing.
    assert np.max(np.abs(con(out, x) - out)) < 1e-8
    if not smooth:
        # Minimum change: any other conservative field is further away (area-weighted).
        other = con(out + rng.normal(0, 1, out.shape), x)
        area = dst.cell_areas()
        assert np.sum(area * (out - y) ** 2) < np.sum(area * (other - y) ** 2)


def test_constraint_regional_target_constrains_covered_cells_only() -> None:
    src = regular_grid(18, 36, pole_rows=False)
    dst = Grid.from_coords(np.arange(-20.25, 40, 0.5), np.arange(10.25, 70, 0.5))
    con = ConservativeConstraint(src, dst)
    assert 0 < con.rows.size < src.shape[0] and 0 < con.cols.size < src.shape[1]
    x = _field(src)
    y = torch.tensor(np.random.default_rng(2).normal(280, 5, (2, *dst.shape)), requires_grad=True)
    out = con(y, torch.tensor(np.stack([x, x])))
    assert con.error(out, torch.tensor(np.stack([x, x]))) < 1e-4
    out.sum().backward()  # differentiable
    assert y.grad is not None and torch.isfinite(y.grad).all()


def test_constraint_refuses_uncovered_target() -> None:
    src = regular_grid(18, 36, pole_rows=False)
    dst = Grid.from_coords(np.arange(1.0, 2.0, 0.25), np.arange(1.0, 2.0, 0.25))
    with pytest.raises(ValueError, match="covers no cell"):
        ConservativeConstraint(src, dst)


def _flip_lat(grid: Grid) -> Grid:
    return Grid.from_coords(grid.lat[::-1], grid.lon, lat_bounds=grid.lat_bounds[::-1])


def _roll_lon(grid: Grid, k: int, origin_shift: float = 0.0) -> Grid:
    lon = np.roll(grid.lon, -k)
    lon = np.where(np.arange(lon.size) >= lon.size - k, lon + 360.0, lon) + origin_shift
    return Grid.from_coords(grid.lat, lon)


def test_canonical_layout_is_the_same_for_every_storage() -> None:
    g = regular_grid(13, 24, pole_rows=False, north_first=False)
    base = canonical_layout(g).grid
    for other in (_flip_lat(g), _roll_lon(g, 5), _roll_lon(g, 12, -360.0)):
        c = canonical_layout(other).grid
        assert np.allclose(c.lat, base.lat) and np.allclose(c.lon, base.lon)
        assert np.allclose(c.lon_bounds, base.lon_bounds)
        assert np.allclose(c.lat_bounds, base.lat_bounds)
    region = Grid.from_coords(np.arange(35.5, 60, 1.0), np.arange(-9.5, 30, 1.0))
    shifted = Grid.from_coords(region.lat, region.lon + 360.0)
    assert np.allclose(canonical_layout(region).grid.lon, canonical_layout(shifted).grid.lon)
    t = target_layout(
        Grid.from_coords(region.lat, np.arange(-9.75, 30, 0.5)), canonical_layout(shifted)
    )
    assert np.all(np.diff(t.grid.lon) > 0) and 349 < t.grid.lon[0] < 351


@pytest.fixture(scope="module")
def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = create_model(
        "meta_edsr", in_channels=1, out_channels=1, n_resblocks=1, n_feats=8, hidden=16,
        img_range=1.0, mean=0.0, bicubic_residual=True, periodic_lon=True,
    )  # fmt: skip
    return net.eval()


def _call(net: torch.nn.Module, z: torch.Tensor, coords) -> torch.Tensor:  # noqa: ANN001
    with regional_call(net, coords):
        return net(z.float(), coords=coords).double()


def _run(net: torch.nn.Module, field: np.ndarray, src: Grid, dst: Grid) -> np.ndarray:
    x = torch.tensor(np.ascontiguousarray(field)[None], dtype=torch.float64)
    with torch.no_grad():
        y, _, _ = field_forward(lambda z, c: _call(net, z, c), x, src, dst)
    return y[0].numpy()


def test_field_forward_is_layout_invariant_and_conservative(tiny_net: torch.nn.Module) -> None:
    src = regular_grid(19, 24, pole_rows=True, north_first=False)
    dst = regular_grid(73, 96, pole_rows=True, north_first=True)
    x = _field(src)
    ref = _run(tiny_net, x, src, dst)
    # Same field stored north -> south, rolled by 7 columns, with origin at -180.
    for grid, values in (
        (_flip_lat(src), x[::-1]),
        (_roll_lon(src, 7), np.roll(x, -7, axis=1)),
        (_roll_lon(src, 12, -360.0), np.roll(x, -12, axis=1)),
    ):
        assert np.max(np.abs(_run(tiny_net, values, grid, dst) - ref)) <= 1e-4
    # The target in another order gives the same values at the same places.
    flipped = _run(tiny_net, x, src, _flip_lat(dst))
    assert np.max(np.abs(flipped[::-1] - ref)) <= 1e-4
    for smooth in (False, True):
        con = ConservativeConstraint(src, dst, frozen_rows=pole_rows(dst), smooth=smooth)
        assert con.error(ref, x) <= 1e-4
    # One value per pole row.
    assert np.ptp(ref[0]) < 1e-9 and np.ptp(ref[-1]) < 1e-9


def test_field_forward_regional_never_wraps(tiny_net: torch.nn.Module) -> None:
    """East and west edges of a region do not see each other: changing the field near the
    west edge leaves the east edge's output unchanged (replicate padding, not a wrap)."""
    src = Grid.from_coords(np.arange(35.5, 60, 1.0), np.arange(-9.5, 30, 1.0))
    dst = Grid.from_coords(np.arange(35.25, 60, 0.5), np.arange(-9.75, 30, 0.5))
    x = _field(src)
    ref = _run(tiny_net, x, src, dst)
    bumped = x.copy()
    bumped[:, :2] += 20.0
    out = _run(tiny_net, bumped, src, dst)
    # Without the constraint's (global, per-row) correction the east edge would be bit-equal;
    # with it, the edges must still be far below the 20 K bump.
    x_t = torch.tensor(x[None])
    with torch.no_grad():
        a, _, _ = field_forward(
            lambda z, c: _call(tiny_net, z, c), x_t, src, dst,
            constraint="none", normalisation="dataset",
            stats=FieldStats(("t",), ("K",), (280.0,), (10.0,)),
        )  # fmt: skip
        b_in = torch.tensor(bumped[None])
        b, _, _ = field_forward(
            lambda z, c: _call(tiny_net, z, c), b_in, src, dst,
            constraint="none", normalisation="dataset",
            stats=FieldStats(("t",), ("K",), (280.0,), (10.0,)),
        )  # fmt: skip
    assert torch.equal(a[..., -6:], b[..., -6:])
    assert np.isfinite(out).all() and np.isfinite(ref).all()
