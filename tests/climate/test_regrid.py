"""metasr.climate grids and baseline regridding: conservation, hand cases, analytic fields, seam."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metasr.climate import (
    Grid,
    axis_weights,
    fill_missing,
    gaussian_grid,
    named_grid,
    regrid,
    regrid_mask,
    regular_grid,
)

SPHERE = 4 * math.pi * 6_371_000.0**2


def area_mean(field: np.ndarray, grid: Grid) -> np.ndarray:
    a = grid.cell_areas()
    return (field * a).sum(axis=(-2, -1)) / a.sum()


def random_field(grid: Grid, lead: tuple[int, ...] = (2,), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 280.0 + 20.0 * rng.standard_normal((*lead, *grid.shape))


# ---------------------------------------------------------------------------------------------
# Grids


def test_named_grids() -> None:
    era5 = named_grid("era5")
    assert era5.shape == (721, 1440)
    assert (era5.lat[0], era5.lat[-1], era5.lon[0], era5.lon[-1]) == (90.0, -90.0, 0.0, 359.75)
    assert era5.same_as(named_grid("721x1440"))
    n96 = named_grid("n96")
    assert n96.shape == (145, 192)
    assert (n96.lat[0], n96.lat[-1], n96.lon[-1]) == (-90.0, 90.0, 358.125)
    assert named_grid("96x144").shape == (96, 144)
    with pytest.raises(ValueError, match="unknown grid"):
        named_grid("t42")


@pytest.mark.parametrize(
    "grid",
    [
        named_grid("era5"),
        named_grid("n96"),
        regular_grid(37, 50, pole_rows=False),
        gaussian_grid(48),
        Grid.from_coords(np.linspace(-88.5, 88.5, 60), np.arange(120) * 3.0 - 180.0),
    ],
    ids=["era5", "n96", "cell-centred", "gaussian", "lon-180"],
)
def test_global_grids_tile_the_sphere(grid: Grid) -> None:
    assert grid.periodic_lon
    assert grid.cell_areas().sum() == pytest.approx(SPHERE, rel=1e-12)


def test_gaussian_bounds_match_weights() -> None:
    grid = gaussian_grid(16)
    _, weights = np.polynomial.legendre.leggauss(16)
    dsin = np.abs(np.diff(np.sin(np.deg2rad(grid.lat_bounds))))
    np.testing.assert_allclose(dsin, weights[::-1], atol=1e-14)


def test_regional_grid_not_periodic() -> None:
    grid = Grid.from_coords(np.arange(30.0, 61.0), np.arange(-10.0, 41.0))
    assert not grid.periodic_lon
    assert grid.lat_bounds[0] == 29.5 and grid.lat_bounds[-1] == 60.5


@pytest.mark.parametrize(
    ("lat", "lon", "match"),
    [
        (np.zeros((3, 4)), np.arange(4.0), "not supported yet"),
        (np.array([0.0, 10.0, 5.0]), np.arange(4.0), "not strictly monotonic"),
        (np.arange(3.0), np.array([0.0, 20.0, 10.0, 30.0]), "not strictly monotonic"),
        (np.arange(3.0), np.arange(4.0)[::-1], "increasing"),
        (np.array([0.0, 95.0]), np.arange(4.0), r"\[-90, 90\]"),
        (np.arange(3.0), np.arange(0.0, 361.0, 10.0), "repeated"),
        (np.array([0.0, np.nan]), np.arange(4.0), "non-finite"),
    ],
)
def test_bad_coordinates(lat: np.ndarray, lon: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Grid.from_coords(lat, lon)


# ---------------------------------------------------------------------------------------------
# Conservative


CONSERVE_CASES = {
    # name: (source, target); non-integer and asymmetric ratios, both directions.
    "n96->era5": (named_grid("n96"), named_grid("era5")),
    "era5->96x144": (named_grid("era5"), named_grid("96x144")),
    "37x50->53x71 cell-centred": (regular_grid(37, 50), regular_grid(53, 71, pole_rows=False)),
    "gaussian->regular": (gaussian_grid(24), regular_grid(61, 37, north_first=False)),
    # Source columns start at −180°, target cells straddle the 0/360 seam of both.
    "seam": (
        Grid.from_coords(np.linspace(-87.5, 87.5, 36), np.arange(72) * 5.0 - 180.0),
        Grid.from_coords(np.linspace(-89, 89, 23), np.arange(31) * (360 / 31) + 3.7),
    ),
}


@pytest.mark.parametrize("case", list(CONSERVE_CASES))
def test_conservative_preserves_global_mean(case: str) -> None:
    src, dst = CONSERVE_CASES[case]
    x = random_field(src)
    y = regrid(x, src, dst, "conservative")
    assert y.shape == (2, *dst.shape)
    np.testing.assert_allclose(area_mean(y, dst), area_mean(x, src), rtol=1e-6, atol=0)
    # And the mean of the anomaly, which is ~1000x smaller than the field itself.
    anomaly = x - 280.0
    np.testing.assert_allclose(
        area_mean(regrid(anomaly, src, dst, "conservative"), dst),
        area_mean(anomaly, src),
        rtol=1e-6,
        atol=1e-12,
    )


def test_conservative_hand_case_across_seam() -> None:
    # Source: 3 latitude bands with edges −90, −30, 30, 90 (equal sin-lat widths of 0.5, 1, 0.5
    # ... sin(-30)-sin(-90) = 0.5, sin(30)-sin(-30) = 1, sin(90)-sin(30) = 0.5) and 4 columns
    # with edges 0, 90, 180, 270, 360.
    src = Grid.from_coords([-60.0, 0.0, 60.0], [45.0, 135.0, 225.0, 315.0])
    # Target: 2 bands (edges −90, 0, 90) and 2 columns with edges −60, 120, 300.
    dst = Grid.from_coords([-45.0, 45.0], [30.0, 210.0])
    np.testing.assert_allclose(dst.lon_bounds, [-60.0, 120.0, 300.0])
    x = np.arange(12.0).reshape(3, 4) ** 1.5
    # Lat: band −90…0 takes the south band (0.5) and the south half of the middle one (0.5).
    rows = np.array([(x[0] + x[1]) / 2, (x[1] + x[2]) / 2])
    # Lon: −60…120 overlaps column 315 (270…360 ≡ −90…0) by 60°, 45 by 90°, 135 by 30°;
    # 120…300 overlaps 135 by 60°, 225 by 90°, 315 by 30°.
    expected = np.stack(
        [
            (60 * rows[:, 3] + 90 * rows[:, 0] + 30 * rows[:, 1]) / 180,
            (60 * rows[:, 1] + 90 * rows[:, 2] + 30 * rows[:, 3]) / 180,
        ],
        axis=-1,
    )
    np.testing.assert_allclose(regrid(x, src, dst, "conservative"), expected, rtol=1e-13)


def test_conservative_nan_aware() -> None:
    src = regular_grid(20, 40, pole_rows=False, north_first=False)
    dst = regular_grid(7, 11, pole_rows=False)
    x = random_field(src, lead=())
    x[:10, :] = np.nan  # southern half missing
    y = regrid(x, src, dst, "conservative")
    # Target rows: −77.1, −51.4, −25.7 (all south) are NaN; 0 (half valid) and north are not.
    assert np.all(np.isnan(y[dst.lat < -20]))
    assert np.all(np.isfinite(y[dst.lat > -1]))
    # A cell that is partly valid averages only its valid part: a constant stays constant.
    c = np.where(np.isnan(x), np.nan, 5.0)
    yc = regrid(c, src, dst, "conservative")
    np.testing.assert_allclose(yc[np.isfinite(yc)], 5.0)


def test_target_outside_source_is_nan() -> None:
    src = Grid.from_coords(np.arange(0.0, 31.0), np.arange(0.0, 41.0))
    dst = regular_grid(19, 36, pole_rows=False)
    y = regrid(np.ones(src.shape), src, dst, "conservative")
    assert np.isnan(y[0, 0]) and np.isfinite(y[dst.lat.size // 2 - 1, 1])


# ---------------------------------------------------------------------------------------------
# Interpolation


def test_bilinear_exact_on_bilinear_field() -> None:
    src = Grid.from_coords(np.arange(10.0, 50.0, 2.0), np.arange(100.0, 160.0, 3.0))
    dst = Grid.from_coords(np.linspace(11.3, 47.9, 29), np.linspace(101.0, 156.5, 41))

    def f(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        return 3 + 0.1 * lat[:, None] + 0.02 * lon[None, :] + 0.001 * lat[:, None] * lon[None, :]

    y = regrid(f(src.lat, src.lon), src, dst, "bilinear")
    np.testing.assert_allclose(y, f(dst.lat, dst.lon), rtol=1e-12)


def test_bicubic_exact_on_quadratic_field() -> None:
    # Keys' cubic (a = −1/2) reproduces quadratics on a uniform grid away from the edges.
    src = Grid.from_coords(np.arange(-40.0, 41.0, 2.5), np.arange(0.0, 360.0, 5.0))
    dst = Grid.from_coords(np.linspace(-35.1, 34.3, 17), np.arange(0.0, 360.0, 7.5) + 1.1)
    lat_part = 1.0 + 0.05 * src.lat + 0.002 * src.lat**2
    y = regrid(np.broadcast_to(lat_part[:, None], src.shape), src, dst, "bicubic")
    expected = 1.0 + 0.05 * dst.lat + 0.002 * dst.lat**2
    np.testing.assert_allclose(y, np.broadcast_to(expected[:, None], dst.shape), rtol=1e-12)


@pytest.mark.parametrize("method", ["nearest", "bilinear", "bicubic"])
def test_regional_edge_targets_stay_at_their_edge(method: str) -> None:
    """A target inside a region's first cell but west of its first centre (the HR columns of
    a regional field coarsened onto its own domain) takes the west edge's value, not the
    east edge's: it was wrapped by +360° and clamped to the last column (8.9 K off on the
    North America field, issue 23)."""
    src = Grid.from_coords(np.arange(16.0, 60.0, 2.5), np.arange(226.0, 314.0, 3.75))
    for lon0 in (225.0, 225.0 - 360.0):  # and the same target written in −180…180
        dst = Grid.from_coords(np.arange(15.0, 60.0, 1.25), lon0 + np.arange(72) * 1.25)
        y = regrid(np.broadcast_to(280.0 + 0.1 * src.lon, src.shape), src, dst, method)
        # Clamped at the edge: the first source column's value, within one cell's gradient.
        assert np.max(np.abs(y[:, 0] - (280.0 + 0.1 * src.lon[0]))) < 0.4, lon0
    # A region across the date line / Greenwich still finds its columns on the other side.
    src = Grid.from_coords(np.arange(30.0, 60.0, 2.0), np.arange(-30.0, 30.0, 2.0))
    dst = Grid.from_coords(np.arange(31.0, 58.0, 1.0), np.arange(331.0, 389.0, 1.0))
    y = regrid(np.broadcast_to(0.5 * src.lon, src.shape), src, dst, method)
    lon = np.where(dst.lon > 180, dst.lon - 360, dst.lon)
    tol = {"nearest": 1.0, "bilinear": 1e-9, "bicubic": 0.1}[method]  # bicubic: clamped ends
    assert np.max(np.abs(y - 0.5 * lon[None, :])) <= tol


@pytest.mark.parametrize(("method", "tol"), [("bilinear", 4e-5), ("bicubic", 1e-6)])
def test_periodic_smooth_field(method: str, tol: float) -> None:
    src = regular_grid(91, 360)  # 2° × 1°
    dst = Grid.from_coords(np.linspace(-80, 80, 33), np.arange(0.0, 360.0, 0.7) + 0.35)

    def f(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        return np.cos(np.deg2rad(lon))[None, :] + 0 * lat[:, None]

    y = regrid(f(src.lat, src.lon), src, dst, method)
    np.testing.assert_allclose(y, f(dst.lat, dst.lon), atol=tol)


def test_seam_is_interpolated_like_any_gap() -> None:
    src = Grid.from_coords([-30.0, 30.0], np.arange(0.0, 360.0, 10.0))
    x = np.tile(np.arange(36.0), (2, 1))
    dst = Grid.from_coords([-30.0, 30.0], [355.0, 359.0, 1.0, 5.0][:2])
    y = regrid(x, src, dst, "bilinear")
    np.testing.assert_allclose(y[0], [(35 + 0) / 2, 35 * 0.1 + 0 * 0.9])
    nearest = regrid(x, src, Grid.from_coords([-30.0, 30.0], [356.0, 359.9]), "nearest")
    np.testing.assert_array_equal(nearest[0], [0.0, 0.0])


@pytest.mark.parametrize("method", ["nearest", "bilinear", "bicubic", "conservative"])
def test_source_longitude_convention_does_not_matter(method: str) -> None:
    # The same field stored with columns 0…357.5 and rolled to −180…177.5 regrids identically.
    lon = np.arange(144) * 2.5
    src_a = Grid.from_coords(np.linspace(-90, 90, 73), lon)
    src_b = Grid.from_coords(np.linspace(-90, 90, 73), lon - 180.0)
    x = random_field(src_a, lead=())
    dst = Grid.from_coords(np.linspace(88.0, -88.0, 50), np.arange(0.0, 360.0, 1.9) + 0.3)
    np.testing.assert_allclose(
        regrid(x, src_a, dst, method), regrid(np.roll(x, 72, axis=-1), src_b, dst, method)
    )


def test_nearest_known_values_and_nan() -> None:
    src = Grid.from_coords([0.0, 10.0, 20.0], [0.0, 10.0, 20.0, 30.0])
    x = np.arange(12.0).reshape(3, 4)
    x[1, 1] = np.nan
    dst = Grid.from_coords([4.0, 6.0, 19.0], [6.0, 26.0])
    y = regrid(x, src, dst, "nearest")
    np.testing.assert_array_equal(y, [[1.0, 3.0], [np.nan, 7.0], [9.0, 11.0]])


def test_bilinear_and_bicubic_nan_aware() -> None:
    src = Grid.from_coords(np.arange(0.0, 20.0), np.arange(0.0, 30.0))
    x = np.full(src.shape, 7.0)
    x[5:8, 5:9] = np.nan
    dst = Grid.from_coords(np.arange(0.25, 19.0, 0.5), np.arange(0.25, 29.0, 0.5))
    for method in ("bilinear", "bicubic"):
        y = regrid(x, src, dst, method)
        # Constant field: the valid neighbours reproduce it; only cells among NaNs are NaN.
        np.testing.assert_allclose(y[np.isfinite(y)], 7.0, rtol=1e-12)
        assert np.isnan(y).sum() == 4 * 6  # 2×3 source gaps, 2 target points per axis each


def test_regrid_bad_input() -> None:
    src = regular_grid(10, 20)
    with pytest.raises(ValueError, match="all NaN"):
        regrid(np.full(src.shape, np.nan), src, regular_grid(5, 8))
    with pytest.raises(ValueError, match="expected"):
        regrid(np.zeros((10, 21)), src, regular_grid(5, 8))
    with pytest.raises(ValueError, match="unknown regridding method"):
        regrid(np.zeros(src.shape), src, regular_grid(5, 8), "spline")
    with pytest.raises(TypeError, match="method must be a string"):
        regrid(np.zeros(src.shape), src, regular_grid(5, 8), 3)


def test_torch_tensor_in_and_out() -> None:
    src, dst = regular_grid(12, 24), regular_grid(30, 50, pole_rows=False)
    x = torch.randn(3, 1, *src.shape, dtype=torch.float32)
    y = regrid(x, src, dst, "bicubic")
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and y.shape == (3, 1, 30, 50)
    np.testing.assert_allclose(
        y.numpy(), regrid(x.double().numpy(), src, dst, "bicubic"), rtol=1e-5, atol=1e-6
    )


def test_axis_weights_rows_sum_to_one() -> None:
    src, dst = gaussian_grid(12), regular_grid(31, 47)
    for method in ("nearest", "bilinear", "bicubic"):
        a_lat, a_lon = axis_weights(src, dst, method)
        np.testing.assert_allclose(a_lat.sum(1), 1.0)
        np.testing.assert_allclose(a_lon.sum(1), 1.0)


def test_fill_missing_and_regrid_mask() -> None:
    src = regular_grid(6, 8, pole_rows=False)
    x = np.arange(48.0).reshape(6, 8)
    x[2, 3] = np.nan
    x[4, :] = np.nan
    filled, valid = fill_missing(x, src)
    assert np.all(np.isfinite(filled)) and valid.sum() == 48 - 9
    np.testing.assert_array_equal(filled[valid], x[valid])
    # Harmonic: a missing cell is the mean of its 4 neighbours (longitude wraps: global grid).
    assert filled[2, 3] == pytest.approx((x[1, 3] + x[3, 3] + x[2, 2] + x[2, 4]) / 4)
    for j in range(8):
        around = filled[3, j] + filled[5, j] + filled[4, j - 1] + filled[4, (j + 1) % 8]
        assert filled[4, j] == pytest.approx(around / 4)
    mask = regrid_mask(valid, src, regular_grid(6, 8, pole_rows=False))
    np.testing.assert_array_equal(mask, valid)


def test_regrid_and_the_op_place_coordinates_with_one_function():
    """The regridding's interpolation positions and the op's coordinate geometry come from one
    formula (metasr.geometry.fractional_index), so they cannot drift apart (a re-implementation
    moved positions by ~1e-14 and flipped "nearest" at exact ties)."""
    import importlib

    from metasr import geometry

    rg = importlib.import_module("metasr.climate.regrid")  # metasr.climate.regrid: the function

    assert rg.fractional_index is geometry.fractional_index
    src, dst = regular_grid(96, 144, pole_rows=False), named_grid("era5")  # ties: cell centres
    for s, d, period, a in (
        (src.lat, dst.lat, None, 0),
        (src.lon, dst.lon, 360.0, 1),
    ):
        t = geometry.fractional_index(s, d, period, extrapolate=False)
        idx, off = geometry.coordinate_axis_map(s, d, period)
        inside = (idx > 0) & (idx < len(s) - 1)  # the op extrapolates past the ends, rg clamps
        np.testing.assert_allclose((idx + off)[inside], t[inside], rtol=0, atol=1e-6)
        weights = rg.axis_weights(src, dst, "bilinear")[a]
        base = np.floor(t).astype(np.int64)
        rows = np.arange(len(t))
        ok = base < len(s) - 1 if period is None else slice(None)
        np.testing.assert_array_equal(weights[rows, base % len(s)][ok], (1.0 - (t - base))[ok])


def test_fill_missing_has_no_front_and_ignores_the_layout() -> None:
    """Whole missing rows (COADS's Antarctic) continue the valid rows instead of taking the
    field's mean; the fill stays within the valid range and follows a flip or roll of the
    field; a regional grid's edges do not wrap; each leading field keeps its own mask."""
    grid = regular_grid(20, 36, pole_rows=False)
    rng = np.random.default_rng(3)
    x = 250.0 + 2.0 * np.arange(20)[:, None] + rng.normal(0, 0.5, (2, 20, 36))
    x[:, :4] = np.nan  # "Antarctica"
    x[0, 8:12, 5:15] = np.nan  # a continent in the first field only
    filled, valid = fill_missing(x, grid)
    assert np.all(np.isfinite(filled))
    assert filled.min() >= np.nanmin(x) and filled.max() <= np.nanmax(x)
    # Next to row 4 (about 258 K), not the field's mean (about 269 K).
    assert abs(filled[:, 3].mean() - np.nanmean(x[:, 4])) < 1.0
    np.testing.assert_array_equal(valid[1, 8:12, 5:15], True)
    np.testing.assert_array_equal(filled[1, 8:12, 5:15], x[1, 8:12, 5:15])
    flipped, _ = fill_missing(np.roll(x[:, ::-1], 11, axis=-1), grid)
    np.testing.assert_allclose(np.roll(flipped, -11, axis=-1)[:, ::-1], filled, atol=1e-9)
    # Regional: the missing east edge is continued from the west only through the interior.
    region = Grid.from_coords(10.0 + 2.0 * np.arange(10), 1.0 + 2.0 * np.arange(12))
    r = np.tile(np.arange(12.0), (10, 1))
    r[:, -3:] = np.nan
    assert fill_missing(r, region)[0][:, -3:] == pytest.approx(8.0)
