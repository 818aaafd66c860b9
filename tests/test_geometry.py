"""Geometry: output sizes, LR maps, offsets, encodings (docs/design.md §1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import metasr
from metasr.geometry import (
    CoordinateGrid,
    Region,
    axis_map,
    build_geometry,
    build_geometry_from_coords,
    parse_scale,
    resolve_output_size,
)


def test_output_size_guard_against_float_products():
    # 2.3 * 50 = 114.99999999999999 in float64: the official int(h*r) drops a row, we do not.
    assert 2.3 * 50 < 115
    H, W, r_v, r_h = resolve_output_size(50, 50, scale=2.3)
    assert (H, W) == (115, 115)
    assert (r_v, r_h) == (2.3, 2.3)


def test_output_size_from_asymmetric_scale_and_size():
    assert resolve_output_size(96, 144, scale=(721 / 96, 10))[:2] == (721, 1440)
    H, W, r_v, r_h = resolve_output_size(7, 9, size=(17, 31))
    assert (H, W) == (17, 31)
    assert r_v == 17 / 7 and r_h == 31 / 9


def test_row_69_at_x2_3_maps_to_lr_row_30():
    # float32 math (the official code's 69 * float32(1/2.3)) gives 29.999998 and LR row 29.
    assert int(np.floor(np.float32(69) * np.float32(1 / 2.3))) == 29
    idx, off = axis_map(115, 50, 2.3)
    assert idx[69] == 30
    assert 0.0 <= off[69] < 1e-12
    assert idx[68] == 29 and off[68] == pytest.approx(68 / 2.3 - 29)


def test_guarded_floor_in_float64():
    # 81 / 2.7 = 29.999999999999996 and 33 / 1.1 = 29.999999999999996 in float64: without the
    # 1e-6 guard these rows would land one LR row early with an offset of ~1.
    assert math.floor(81 / 2.7) == 29 and math.floor(33 / 1.1) == 29
    idx, off = axis_map(135, 50, 2.7)
    assert idx[81] == 30 and off[81] == 0.0
    idx, off = axis_map(55, 50, 1.1)
    assert idx[33] == 30 and off[33] == 0.0


def test_axis_map_properties_many_scales():
    for n_in in (1, 5, 7, 50):
        for r in (1.0, 1.1, 1.5, 2.0, 2.3, 2.7, 3.7, 4.0, 7.5104):
            n_out = math.floor(n_in * r + 1e-6)
            idx, off = axis_map(n_out, n_in, r)
            assert idx.dtype == np.int64 and idx.shape == (n_out,)
            assert np.all(np.diff(idx) >= 0), "LR map must be monotone"
            assert idx.min() == 0
            # every LR row is used once r >= 1 leaves no gaps, except possibly tails of size<r
            assert idx.max() >= n_in - 1 - 1 and idx.max() <= n_in - 1
            assert np.all((off >= 0) & (off <= 1))
            np.testing.assert_allclose(idx + off, np.arange(n_out) / r, atol=1e-9)


def test_axis_map_clamps_to_last_row():
    # Output larger than the scale implies (size given): clamp to the last LR row, offset ≤ 1.
    idx, off = axis_map(10, 3, 2.0)
    assert idx.max() == 2
    assert np.all(off <= 1)


def test_official_arithmetic_differs_where_float32_rounds():
    # The official float32 grid differs from the spec at exactly one row for these scales.
    for r, n_out, row in ((2.3, 115, 69), (2.7, 135, 81), (3.7, 185, 111)):
        exact, _ = axis_map(n_out, 50, r)
        official, off = axis_map(n_out, 50, r, arithmetic="official")
        assert np.nonzero(exact != official)[0].tolist() == [row]
        assert official[row] == exact[row] - 1 and off[row] > 0.999


def test_position_encodings():
    g = build_geometry(4, 5, scale=(2.5, 3.0))
    assert g.num_pos == 4
    pos = g.positions().reshape(g.H, g.W, 4)
    np.testing.assert_allclose(pos[..., 0], np.broadcast_to(g.row_off[:, None], (g.H, g.W)))
    np.testing.assert_allclose(pos[..., 1], np.broadcast_to(g.col_off[None, :], (g.H, g.W)))
    np.testing.assert_allclose(pos[..., 2], 1 / 2.5)
    np.testing.assert_allclose(pos[..., 3], 1 / 3.0)
    o = build_geometry(4, 5, scale=2.0, pos_encoding="official")
    pos = o.positions().reshape(o.H, o.W, 3)
    np.testing.assert_allclose(pos[..., 0], 0.5)
    np.testing.assert_allclose(pos[..., 1], np.broadcast_to(o.row_off[:, None], (o.H, o.W)))
    np.testing.assert_allclose(pos[..., 2], np.broadcast_to(o.col_off[None, :], (o.H, o.W)))


@pytest.mark.parametrize(
    "scale", [0.5, 0.999, float("nan"), float("inf"), -2, None, (2, 3, 4), (1.5, 0.9)]
)
def test_bad_scales(scale):
    with pytest.raises(ValueError):
        if scale is None:
            resolve_output_size(4, 4)
        else:
            resolve_output_size(4, 4, scale=scale)


@pytest.mark.parametrize("scale", ["2", True, (2, "3"), [None, 2]])
def test_scales_of_the_wrong_type_are_type_errors(scale):
    with pytest.raises(TypeError, match="scale"):
        resolve_output_size(4, 4, scale=scale)


def test_bad_size_and_both():
    with pytest.raises(ValueError, match="exactly one"):
        resolve_output_size(4, 4, scale=2, size=(8, 8))
    with pytest.raises(ValueError, match="smaller than the input"):
        resolve_output_size(4, 4, size=(3, 8))
    with pytest.raises(TypeError, match="integer"):
        resolve_output_size(4, 4, size=(8.5, 8))
    with pytest.raises(TypeError, match="pair"):
        resolve_output_size(4, 4, size=8)
    with pytest.raises(ValueError, match="pair"):
        resolve_output_size(4, 4, size=(8, 8, 8))


def test_official_encoding_needs_equal_scales():
    with pytest.raises(ValueError, match="r_v == r_h"):
        build_geometry(4, 4, scale=(2, 3), pos_encoding="official")
    with pytest.raises(ValueError, match="pos_encoding"):
        build_geometry(4, 4, scale=2, pos_encoding="nope")


def test_parse_scale():
    assert parse_scale(2) == (2.0, 2.0)
    assert parse_scale((1.5, 4)) == (1.5, 4.0)


# ----------------------------------------------------------------------------- regions


def _whole_region(geom, in_rows, in_cols, out_rows, out_cols) -> Region:
    return Region((geom.h, geom.w), (geom.H, geom.W), in_rows, in_cols, out_rows, out_cols)


@pytest.mark.parametrize(
    ("request_", "arithmetic", "pos_encoding"),
    [
        ({"scale": (2.3, 3.1)}, "exact", "asymmetric"),
        ({"size": (61, 47)}, "exact", "asymmetric"),
        ({"scale": 3.7}, "official", "official"),
    ],
)
def test_region_geometry_is_the_slice_of_the_whole_geometry(request_, arithmetic, pos_encoding):
    h, w = 23, 17
    kw = dict(request_, arithmetic=arithmetic, pos_encoding=pos_encoding)
    whole = build_geometry(h, w, **kw)
    rng = np.random.default_rng(0)
    for _ in range(20):
        o_r = np.sort(rng.choice(whole.H + 1, 2, replace=False))
        o_c = np.sort(rng.choice(whole.W + 1, 2, replace=False))
        # The input window: the LR rows the outputs use, plus a random margin.
        i_r = (max(whole.row_idx[o_r[0]] - rng.integers(3), 0),
               min(whole.row_idx[o_r[1] - 1] + 1 + rng.integers(3), h))  # fmt: skip
        i_c = (max(whole.col_idx[o_c[0]] - rng.integers(3), 0),
               min(whole.col_idx[o_c[1] - 1] + 1 + rng.integers(3), w))  # fmt: skip
        region = _whole_region(whole, i_r, i_c, tuple(o_r), tuple(o_c))
        part = build_geometry(*region.in_shape, **kw, region=region)
        assert (part.h, part.w, part.H, part.W) == (*region.in_shape, *region.out_shape)
        assert (part.r_v, part.r_h, part.pos_encoding) == (whole.r_v, whole.r_h, pos_encoding)
        r, c = slice(*o_r), slice(*o_c)
        np.testing.assert_array_equal(part.row_idx, whole.row_idx[r] - i_r[0])
        np.testing.assert_array_equal(part.col_idx, whole.col_idx[c] - i_c[0])
        np.testing.assert_array_equal(part.row_off, whole.row_off[r])
        np.testing.assert_array_equal(part.col_off, whole.col_off[c])
        np.testing.assert_array_equal(part.const_pos, whole.const_pos)
        pos = whole.positions().reshape(whole.H, whole.W, -1)[r, c]
        np.testing.assert_array_equal(part.positions(), pos.reshape(-1, whole.num_pos))


def test_region_that_covers_everything_is_the_whole_geometry():
    whole = build_geometry(9, 14, scale=(2.5, 1.3))
    region = _whole_region(whole, (0, 9), (0, 14), (0, whole.H), (0, whole.W))
    part = build_geometry(9, 14, scale=(2.5, 1.3), region=region)
    for name in ("row_idx", "col_idx", "row_off", "col_off", "row_pos", "col_pos"):
        np.testing.assert_array_equal(getattr(part, name), getattr(whole, name))


def test_region_errors_in_build_geometry():
    whole = build_geometry(10, 10, scale=2)
    region = _whole_region(whole, (2, 8), (0, 10), (6, 14), (0, 20))
    build_geometry(6, 10, scale=2, region=region)
    with pytest.raises(ValueError, match="feature map is 10x10"):
        build_geometry(10, 10, scale=2, region=region)
    with pytest.raises(ValueError, match="region is part of"):
        build_geometry(6, 10, scale=2.5, region=region)
    with pytest.raises(TypeError, match="must be a metasr.geometry.Region"):
        build_geometry(6, 10, scale=2, region="rows 2..8")
    # Output rows 2..3 belong to LR row 1, outside the window's rows [2, 8).
    early = _whole_region(whole, (2, 8), (0, 10), (2, 14), (0, 20))
    with pytest.raises(ValueError, match="outside its input window"):
        build_geometry(6, 10, scale=2, region=early)
    late = _whole_region(whole, (0, 10), (2, 8), (0, 20), (4, 18))
    with pytest.raises(ValueError, match="columns use LR columns 2..8"):
        build_geometry(10, 6, scale=2, region=late)


# ------------------------------------------------------------------ coordinate-aware geometry


def _frac(geom) -> tuple[np.ndarray, np.ndarray]:
    """Fractional source index ``i' + Δ`` of every output row and column, in the request's
    order (the geometry stores them sorted by LR index)."""
    rows = geom.row_idx + geom.row_off
    cols = geom.col_idx + geom.col_off
    if geom.row_order is not None:
        rows = rows[geom.row_order]
    if geom.col_order is not None:
        cols = cols[geom.col_order]
    return rows, cols


def test_index_ratio_compatible_grids_agree_with_the_index_geometry():
    # Same first coordinate, target spacing = source spacing · h / H: the index-ratio case.
    src_lat, dst_lat = 90 - 1.875 * np.arange(96), 90 - 0.25 * np.arange(720)
    src_lon, dst_lon = 1.875 * np.arange(192), 0.25 * np.arange(1440)
    coords = CoordinateGrid(src_lat, src_lon, dst_lat, dst_lon)
    by_coords = build_geometry(96, 192, coords=coords)
    by_index = build_geometry(96, 192, size=(720, 1440))
    assert by_coords.row_order is None and by_coords.col_order is None
    for name in ("row_idx", "col_idx"):
        np.testing.assert_array_equal(getattr(by_coords, name), getattr(by_index, name))
    for name in ("row_off", "col_off", "row_pos", "col_pos", "const_pos"):
        np.testing.assert_allclose(getattr(by_coords, name), getattr(by_index, name), atol=1e-9)
    assert (by_coords.r_v, by_coords.r_h) == (by_index.r_v, by_index.r_h) == (7.5, 7.5)


def test_op_with_compatible_coordinates_equals_the_size_request():
    phi = metasr.Pos2Weight(2, 3, hidden=8).double()
    x = torch.randn(1, 2, 4, 6, dtype=torch.float64)
    coords = CoordinateGrid(
        90 - 30 * np.arange(4), 60 * np.arange(6), 90 - 12 * np.arange(10), 24 * np.arange(15)
    )
    for backend in ("naive", "im2col", "torch"):
        want = metasr.meta_upscale(x, phi, size=(10, 15), backend=backend, periodic_lon=True)
        got = metasr.meta_upscale(x, phi, coords=coords, backend=backend, periodic_lon=True)
        torch.testing.assert_close(got, want)


def test_pole_rows_96_to_721_land_on_the_true_latitude():
    src_lat, dst_lat = np.linspace(90, -90, 96), np.linspace(90, -90, 721)
    lon = np.arange(4) * 90.0
    geom = build_geometry_from_coords(CoordinateGrid(src_lat, lon, dst_lat, lon))
    rows, _ = _frac(geom)
    # i' + Δ mapped back through the source latitudes is the target latitude.
    np.testing.assert_allclose(np.interp(rows, np.arange(96), src_lat), dst_lat, atol=1e-9)
    assert geom.row_idx[0] == 0 and geom.row_off[0] == 0
    assert geom.row_idx[-1] == 95 and geom.row_off[-1] == 0  # both poles exactly on rows
    index = build_geometry(96, 4, size=(721, 4))
    gap = np.abs(rows - (index.row_idx + index.row_off))
    assert gap.max() > 0.8  # the index-ratio placement is up to ~0.87 LR rows off here
    assert (geom.r_v, geom.r_h) == (721 / 96, 1.0)


def test_ascending_and_descending_latitudes():
    src = np.linspace(-87.5, 87.5, 8)  # cell-centred, 22.5° apart
    dst = np.linspace(-88.75, 88.75, 20)
    lon = np.arange(3) * 120.0
    for s, d in ((src, dst), (src[::-1], dst[::-1])):
        geom = build_geometry_from_coords(CoordinateGrid(s, lon, d, lon))
        assert geom.row_order is None
        rows, _ = _frac(geom)
        inside = (d >= src.min()) & (d <= src.max())
        np.testing.assert_allclose(np.interp(rows[inside], np.arange(8), s), d[inside], atol=1e-9)
        # beyond the outermost source rows: clamped to the first/last row
        assert np.all(geom.row_idx[geom.row_off == 0][:1] == 0)
    # Source and target running opposite ways: the output rows come back in the target's order.
    phi = metasr.Pos2Weight(2, 3, hidden=8).double()
    x = torch.randn(1, 2, 8, 3, dtype=torch.float64)
    same = metasr.meta_upscale(x, phi, coords=CoordinateGrid(src, lon, dst, lon), backend="torch")
    flipped = metasr.meta_upscale(
        x, phi, coords=CoordinateGrid(src, lon, dst[::-1], lon), backend="torch"
    )
    torch.testing.assert_close(flipped, same.flip(2))


def test_gaussian_latitudes():
    nodes, _ = np.polynomial.legendre.leggauss(48)
    src_lat = np.degrees(np.arcsin(nodes))[::-1]  # N24 Gaussian grid, north to south
    dst_lat = np.linspace(90, -90, 181)
    lon = np.arange(4) * 90.0
    geom = build_geometry_from_coords(CoordinateGrid(src_lat, lon, dst_lat, lon))
    rows, _ = _frac(geom)
    inside = (dst_lat <= src_lat[0]) & (dst_lat >= src_lat[-1])
    np.testing.assert_allclose(
        np.interp(rows[inside], np.arange(48), src_lat), dst_lat[inside], atol=1e-9
    )
    assert np.all(np.diff(geom.row_idx) >= 0)
    assert geom.row_idx[0] == 0 and geom.row_off[0] == 0  # the pole, north of every row
    assert geom.row_idx[-1] == 47 and 0 < geom.row_off[-1] <= 1


def test_longitude_wrap_from_the_dateline():
    src_lon = 1.875 * np.arange(192)  # 0 .. 358.125
    dst_lon = -180 + 0.25 * np.arange(1440)  # -180 .. 179.75
    lat = np.array([45.0, -45.0])
    geom = build_geometry_from_coords(CoordinateGrid(lat, src_lon, lat, dst_lon))
    assert np.all(np.diff(geom.col_idx) >= 0)
    _, cols = _frac(geom)
    np.testing.assert_allclose(cols * 1.875, np.mod(dst_lon, 360), atol=1e-9)
    # past the last source column (358.125 .. 360): j' = w - 1, Δ towards the wrapped column 0
    past = np.mod(dst_lon, 360) > 358.125
    j = np.flatnonzero(past)
    assert np.all(geom.col_idx[geom.col_order[j]] == 191)
    assert np.all((geom.col_off[geom.col_order[j]] > 0) & (geom.col_off[geom.col_order[j]] < 1))


def test_op_output_from_the_dateline_is_the_rolled_output():
    phi = metasr.Pos2Weight(2, 3, hidden=8).double()
    x = torch.randn(1, 2, 3, 8, dtype=torch.float64)
    lat = np.array([60.0, 0.0, -60.0])
    src_lon = 45.0 * np.arange(8)
    base = CoordinateGrid(lat, src_lon, lat, 15.0 * np.arange(24))
    dateline = CoordinateGrid(lat, src_lon, lat, -180 + 15.0 * np.arange(24))
    for backend in ("naive", "im2col", "torch"):
        kw = {"backend": backend, "periodic_lon": True}
        y0 = metasr.meta_upscale(x, phi, coords=base, **kw)
        y1 = metasr.meta_upscale(x, phi, coords=dateline, **kw)
        torch.testing.assert_close(y1, torch.roll(y0, 12, dims=3))


def test_coordinate_geometry_under_compile_and_in_the_module():
    phi = metasr.Pos2Weight(2, 3, hidden=8)
    x = torch.randn(1, 2, 3, 8)
    lat = np.array([60.0, 0.0, -60.0])
    dst_lat, dst_lon = np.linspace(60, -60, 7), -180 + 15.0 * np.arange(24)
    coords = CoordinateGrid(lat, 45.0 * np.arange(8), dst_lat, dst_lon)
    want = metasr.meta_upscale(x, phi, coords=coords, periodic_lon=True)
    compiled = torch.compile(
        lambda t: metasr.meta_upscale(t, phi, coords=coords, periodic_lon=True),
        backend="eager",
        fullgraph=True,
    )
    torch.testing.assert_close(compiled(x), want)
    up = metasr.MetaUpsample(2, 3, hidden=8, periodic_lon=True)
    up.phi.load_state_dict(phi.state_dict())
    torch.testing.assert_close(up(x, coords=coords), want)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"src_lat": [0.0, 1.0, 0.5]}, "strictly increasing or strictly decreasing"),
        ({"src_lat": [[0.0, 1.0]]}, "curvilinear"),
        ({"dst_lat": [0.0]}, "only magnifies"),
        ({"src_lon": [0.0, 180.0, 360.0]}, "less than 360"),
        ({"dst_lon": [0.0, 90.0, 270.0, 180.0]}, "round the circle once"),
        ({"dst_lat": [0.0, float("nan"), 1.0]}, "finite"),
        ({"periodic_lon": 1}, "periodic_lon must be True or False"),
        ({"src_lat": ["north", "south"]}, "1-D array of numbers"),
    ],
)
def test_bad_coordinates_are_refused(kwargs, match):
    args = {
        "src_lat": [10.0, 0.0],
        "src_lon": [0.0, 180.0],
        "dst_lat": [10.0, 5.0, 0.0],
        "dst_lon": [0.0, 90.0, 180.0, 270.0],
    }
    args.update(kwargs)
    # A wrong type (a non-bool flag, strings for numbers) is a TypeError, a bad value a
    # ValueError.
    wrong_type = "periodic_lon" in kwargs or "numbers" in match
    with pytest.raises(TypeError if wrong_type else ValueError, match=match):
        CoordinateGrid(**args)


def test_bad_coordinate_requests_are_refused():
    coords = CoordinateGrid([10.0, 0.0], [0.0, 180.0], [10.0, 5.0, 0.0], [90.0, 180.0, 270.0, 0.0])
    phi = metasr.Pos2Weight(2, 3, hidden=8)
    x = torch.randn(1, 2, 2, 2)
    with pytest.raises(ValueError, match="not both"):
        metasr.meta_upscale(x, phi, scale=2, coords=coords)
    with pytest.raises(ValueError, match="source grid of coords is 2x2"):
        metasr.meta_upscale(torch.randn(1, 2, 3, 2), phi, coords=coords)
    with pytest.raises(TypeError, match="CoordinateGrid"):
        build_geometry(2, 2, coords=(1, 2))
    region = Region((2, 2), (3, 4), (0, 2), (0, 2), (0, 3), (0, 2))
    with pytest.raises(ValueError, match="reordered"):
        metasr.meta_upscale(x, phi, coords=coords, region=region)


def test_regional_longitudes_without_wrap_are_placed_like_latitudes():
    src_lon, dst_lon = np.array([10.0, 20.0, 30.0]), np.array([5.0, 12.5, 20.0, 27.5, 35.0])
    lat = np.array([1.0, 0.0])
    geom = build_geometry_from_coords(
        CoordinateGrid(lat, src_lon, lat, dst_lon, periodic_lon=False)
    )
    np.testing.assert_array_equal(geom.col_idx, [0, 0, 1, 1, 2])
    # 5° lies before the first column: clamped to it; 35° past the last: offset 0.5 beyond it
    np.testing.assert_allclose(geom.col_off, [0.0, 0.25, 0.0, 0.75, 0.5])


def test_coordinate_region_along_rows_matches_the_whole_output():
    phi = metasr.Pos2Weight(2, 3, hidden=8).double()
    x = torch.randn(1, 2, 6, 4, dtype=torch.float64)
    coords = CoordinateGrid(np.linspace(75, -75, 6), 90.0 * np.arange(4), np.linspace(90, -90, 13),
                            22.5 * np.arange(16))  # fmt: skip
    whole = metasr.meta_upscale(x, phi, coords=coords, periodic_lon=True)
    geom = build_geometry(6, 4, coords=coords)
    # output rows of LR rows 2..3; their 3x3 windows lie in the LR rows 1..4 the call receives
    rows = np.flatnonzero((geom.row_idx >= 2) & (geom.row_idx < 4))
    region = Region((6, 4), (13, 16), (1, 5), (0, 4), (int(rows[0]), int(rows[-1]) + 1), (0, 16))
    part = metasr.meta_upscale(x[:, :, 1:5], phi, coords=coords, region=region, periodic_lon=True)
    torch.testing.assert_close(part, whole[:, :, rows[0] : rows[-1] + 1])
