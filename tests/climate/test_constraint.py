"""Conservation by construction and layout invariance (issue 23, parts 1-3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metasr import create_model
from metasr.climate import regrid
from metasr.climate.constraint import ConservativeConstraint, broadcast_masks, pole_rows
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


def _land(grid: Grid, seed: int = 3) -> np.ndarray:
    """``(H, W)`` bool valid cells: a few rectangular continents and a masked polar cap."""
    lat, lon = grid.lat[:, None], grid.lon[None, :] % 360.0
    land = (lat < -70) | ((lat > 10) & (lat < 50) & (lon > 60) & (lon < 130))
    land |= (lat > -30) & (lat < 20) & (lon > 200) & (lon < 230)
    rng = np.random.default_rng(seed)
    return ~(land | (rng.random(grid.shape) < 0.05))  # and scattered islands


def _masked_back(out: np.ndarray, valid: np.ndarray, dst: Grid, src: Grid) -> np.ndarray:
    """The NaN-aware conservative coarsening of the masked output: what the input is of it."""
    return regrid(np.where(valid, out, np.nan), dst, src, "conservative")


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (regular_grid(22, 45, pole_rows=False), regular_grid(90, 180, pole_rows=False)),  # ~x4.1
        (regular_grid(13, 17, pole_rows=False), gaussian_grid(48, 97)),  # not nested
        (regular_grid(19, 24, pole_rows=True), regular_grid(73, 96, pole_rows=True)),  # poles
    ],
)
@pytest.mark.parametrize("smooth", [False, True])
def test_masked_constraint_conserves_over_the_valid_cells(
    src: Grid, dst: Grid, smooth: bool
) -> None:
    from metasr.climate.constraint import MaskedConservativeConstraint

    valid = _land(dst)
    truth = np.stack([_field(dst, s) for s in (4, 5)])
    x = _masked_back(truth, valid, dst, src)  # the input: means over the valid part
    src_valid = np.isfinite(x[0])
    x = np.nan_to_num(x, nan=280.0)  # filled, as a downscaler gets it
    con = MaskedConservativeConstraint(src, dst, valid, src_valid, pole_rows(dst), smooth)
    y = regrid(x, src, dst, "bicubic") + np.random.default_rng(6).normal(0, 2, truth.shape)
    out = con(y, x)
    assert con.error(out, x) <= 1e-4
    back = _masked_back(out, valid, dst, src)
    check = np.zeros(src.shape, bool)
    check.flat[con.index] = True
    assert check.sum() > 0.5 * src_valid.sum()
    assert np.max(np.abs(back - x)[:, check]) <= 1e-4  # independent: the regridder's own sums
    assert np.array_equal(out[:, pole_rows(dst)], y[:, pole_rows(dst)])
    # The whole-cell constraint is off over the valid cells wherever a cell is partly masked.
    whole = ConservativeConstraint(src, dst, pole_rows(dst), smooth)(y, x)
    assert np.max(np.abs(_masked_back(whole, valid, dst, src) - x)[:, check]) > 0.01
    if not smooth:
        # Minimum change over the valid cells: it cannot move the output away from the truth,
        # which satisfies the same constraints (area-weighted, valid cells).
        a = dst.cell_areas() * valid
        assert np.sum(a * (out - truth) ** 2) <= np.sum(a * (y - truth) ** 2)


def test_masked_constraint_straddling_cell_is_one_constraint() -> None:
    """Two source cells whose only valid target cell is the same one (non-nested rows) make
    one constraint, not a singular system."""
    from metasr.climate.constraint import MaskedConservativeConstraint

    src, dst = regular_grid(6, 8, pole_rows=False), regular_grid(9, 16, pole_rows=False)
    valid = np.zeros(dst.shape, bool)
    valid[4, 3] = True  # row 4 of 9 straddles source rows 2 and 3 of 6
    valid[0, :] = True
    x = np.nan_to_num(_masked_back(np.full((1, *dst.shape), 285.0), valid, dst, src), nan=0.0)
    for smooth in (False, True):
        con = MaskedConservativeConstraint(src, dst, valid, np.abs(x[0]) > 0, smooth=smooth)
        out = con(np.full((1, *dst.shape), 280.0), x)
        assert con.error(out, x) <= 1e-4 and abs(out[0, 4, 3] - 285.0) <= 1e-4
    with pytest.raises(ValueError, match="dst_valid has shape"):
        MaskedConservativeConstraint(src, dst, valid[:-1])
    with pytest.raises(ValueError, match="no source cell"):
        MaskedConservativeConstraint(src, dst, np.zeros(dst.shape, bool))


def test_field_forward_masked_target_is_layout_invariant(tiny_net: torch.nn.Module) -> None:
    src = regular_grid(19, 24, pole_rows=False, north_first=False)
    dst = regular_grid(72, 96, pole_rows=False, north_first=True)
    valid = _land(dst)
    truth = _field(dst)[None]
    x = _masked_back(truth, valid, dst, src)
    src_valid = np.isfinite(x[0])
    x = np.nan_to_num(x, nan=float(np.nanmean(x)))[0]

    def run(field: np.ndarray, s: Grid, d: Grid, dv: np.ndarray, sv: np.ndarray) -> np.ndarray:
        t = torch.tensor(np.ascontiguousarray(field)[None], dtype=torch.float64)
        with torch.no_grad():
            y, _, _ = field_forward(lambda z, c: _call(tiny_net, z, c), t, s, d,
                                    dst_valid=dv, src_valid=sv)  # fmt: skip
        return y[0].numpy()

    ref = run(x, src, dst, valid, src_valid)
    back = _masked_back(ref[None], valid, dst, src)[0]
    assert np.nanmax(np.abs(back - x)[src_valid]) <= 1e-4
    for s, field, sv in (
        (_flip_lat(src), x[::-1], src_valid[::-1]),
        (_roll_lon(src, 7), np.roll(x, -7, axis=1), np.roll(src_valid, -7, axis=1)),
        (_roll_lon(src, 12, -360.0), np.roll(x, -12, axis=1), np.roll(src_valid, -12, axis=1)),
    ):
        assert np.max(np.abs(run(field, s, dst, valid, sv) - ref)) <= 1e-4
    flipped = run(x, src, _flip_lat(dst), valid[::-1], src_valid)
    assert np.max(np.abs(flipped[::-1] - ref)) <= 1e-4
    with pytest.raises(ValueError, match="inference"):
        t = torch.tensor(x[None])
        field_forward(lambda z, c: _call(tiny_net, z, c), t, src, dst, dst_valid=valid)


def test_apply_downscaler_target_mask() -> None:
    from metasr.climate.constraint import bicubic_conservative
    from metasr.climate.regrid import apply_downscaler

    src = regular_grid(22, 45, pole_rows=False)
    dst = regular_grid(90, 180, pole_rows=False)
    valid = _land(dst)
    truth = np.stack([_field(dst, s) for s in (7, 8)])
    lr = _masked_back(truth, valid, dst, src)
    out = apply_downscaler(bicubic_conservative, lr, src, dst, target_valid=valid)
    assert np.array_equal(np.isfinite(out), np.broadcast_to(valid, out.shape))
    assert np.nanmax(np.abs(_masked_back(out, valid, dst, src) - lr)) <= 1e-4
    # Without the mask: the whole-cell constraint, re-masked from the input's mask.
    plain = apply_downscaler(bicubic_conservative, lr, src, dst)
    assert np.nanmax(np.abs(_masked_back(plain, valid, dst, src) - lr)) > 0.01
    # A function without mask keywords still gets the target's mask applied to its output.
    out = apply_downscaler(lambda f, s, d: regrid(f, s, d, "bilinear"), lr, src, dst,
                           target_valid=np.stack([valid, valid]))  # fmt: skip
    assert np.array_equal(np.isfinite(out), np.broadcast_to(valid, out.shape))
    with pytest.raises(ValueError, match="target_valid has shape"):
        apply_downscaler(bicubic_conservative, lr, src, dst, target_valid=valid[:, :-1])


def test_float32_pole_rows_are_pole_rows(tiny_net: torch.nn.Module) -> None:
    """air_temp.pp's latitudes (BZY + i·BDY in float32) miss the poles by 1.4e-5° and 5.4e-5°:
    still pole rows, one value each."""
    dst = Grid.from_coords(np.linspace(89.99998569, -89.99994564, 73), np.arange(96) * 3.75)
    assert dst.has_pole_rows and 1e-5 < abs(dst.lat[0] - 90.0) < 1e-4
    assert pole_rows(dst)[[0, -1]].all() and pole_rows(dst).sum() == 2
    src = regular_grid(19, 24, pole_rows=True)
    out = _run(tiny_net, _field(src), src, dst)
    assert np.ptp(out[0]) < 1e-9 and np.ptp(out[-1]) < 1e-9
    assert not regular_grid(1801, 8).lat[1] > 90.0 - 1e-4  # a 0.1° grid's next row is no pole


def test_masks_broadcast_per_field_or_are_refused():
    src, dst = regular_grid(6, 8), regular_grid(12, 16)
    dv, sv = broadcast_masks(np.ones((12, 16), bool), None, 3, src, dst)
    assert dv.shape == (3, 12, 16) and sv is None
    dv, sv = broadcast_masks(np.ones((3, 12, 16)), np.zeros((6, 8)), 3, src, dst)
    assert dv.dtype == bool and sv.shape == (3, 6, 8) and not sv.any()
    with pytest.raises(ValueError, match="do not fit 3 fields"):
        broadcast_masks(np.ones((2, 12, 16), bool), None, 3, src, dst)
    with pytest.raises(ValueError, match="do not fit 3 fields"):
        broadcast_masks(np.ones((12, 16), bool), np.ones((6, 9), bool), 3, src, dst)
