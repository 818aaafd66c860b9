"""Geometry: output sizes, LR maps, offsets, encodings (DESIGN.md §1)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metasr.geometry import Region, axis_map, build_geometry, parse_scale, resolve_output_size


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
    "scale",
    [0.5, 0.999, float("nan"), float("inf"), -2, "2", None, (2, 3, 4), (1.5, 0.9), True],
)
def test_bad_scales(scale):
    with pytest.raises(ValueError):
        if scale is None:
            resolve_output_size(4, 4)
        else:
            resolve_output_size(4, 4, scale=scale)


def test_bad_size_and_both():
    with pytest.raises(ValueError, match="exactly one"):
        resolve_output_size(4, 4, scale=2, size=(8, 8))
    with pytest.raises(ValueError, match="smaller than the input"):
        resolve_output_size(4, 4, size=(3, 8))
    with pytest.raises(ValueError, match="integer"):
        resolve_output_size(4, 4, size=(8.5, 8))
    with pytest.raises(ValueError, match="pair"):
        resolve_output_size(4, 4, size=8)


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
    with pytest.raises(ValueError, match="must be a metasr.geometry.Region"):
        build_geometry(6, 10, scale=2, region="rows 2..8")
    # Output rows 2..3 belong to LR row 1, outside the window's rows [2, 8).
    early = _whole_region(whole, (2, 8), (0, 10), (2, 14), (0, 20))
    with pytest.raises(ValueError, match="outside its input window"):
        build_geometry(6, 10, scale=2, region=early)
    late = _whole_region(whole, (0, 10), (2, 8), (0, 20), (4, 18))
    with pytest.raises(ValueError, match="columns use LR columns 2..8"):
        build_geometry(10, 6, scale=2, region=late)
