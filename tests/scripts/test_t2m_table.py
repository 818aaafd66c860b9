"""scripts/t2m_table.py's cells of the sources fold "aux" holds out (air_temp, OSTIA, North
America), built and scored on tiny stand-ins of the three sources."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np

from metasr.climate import regular_grid
from metasr.climate.grids import Grid
from metasr.climate.training import Source

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _table():
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module("t2m_table")


def _band(h: int, w: int, lat0: float, lat1: float, lon0: float, lon1: float) -> Grid:
    lat_e, lon_e = np.linspace(lat0, lat1, h + 1), np.linspace(lon0, lon1, w + 1)
    return Grid.from_coords(0.5 * (lat_e[1:] + lat_e[:-1]), 0.5 * (lon_e[1:] + lon_e[:-1]),
                            lat_bounds=lat_e, lon_bounds=lon_e)  # fmt: skip


def _sources() -> dict[str, Source]:
    rng = np.random.default_rng(0)
    air = regular_grid(17, 24)  # pole rows, north first, as air_temp.pp
    ost = _band(6, 48, -5.0, 5.0, -3.75, 356.25)  # a global-in-longitude tropical band
    na = _band(9, 13, 15.0, 60.0, 225.0, 315.0)  # regional
    smooth = lambda g, n: (  # noqa: E731
        280 + 20 * np.cos(np.deg2rad(g.lat))[None, :, None]
        + np.sin(np.deg2rad(g.lon))[None, None, :] + rng.normal(0, 0.3, (n, *g.shape))
    )  # fmt: skip
    sst = smooth(ost, 3)
    sst[:, 2:4, 10:16] = np.nan  # land
    return {
        "air_temp": Source(smooth(air, 1), air, "t", ["a"]),
        "ostia": Source(sst, ost, "sst", ["o0", "o1", "o2"]),
        "north_america": Source(smooth(na, 2), na, "t", ["n0", "n1"]),
    }


def test_aux_cells_layouts() -> None:
    t = _table()
    cells = t.aux_cells(_sources())
    shapes = {label: lr.shape for label, _, _, lr, _ in cells}
    assert list(shapes.values()) == [(9, 12), (5, 6), (3, 24), (3, 12), (4, 6), (2, 3)]
    for label, hr, grid, lr, flip in cells:
        assert not flip and hr.shape[1:] == grid.shape
        # The LR layout covers exactly the HR domain, in the HR's storage order.
        np.testing.assert_allclose(sorted(lr.lat_bounds[[0, -1]]), sorted(grid.lat_bounds[[0, -1]]))
        assert (lr.lat[0] > lr.lat[-1]) == (grid.lat[0] > grid.lat[-1]), label
        assert lr.periodic_lon == grid.periodic_lon, label
    air = [lr for label, *_, lr, _ in cells if label.startswith("air_temp")]
    assert all(lr.has_pole_rows and lr.lat[0] == 90.0 for lr in air)
    assert not cells[-1][3].periodic_lon  # North America: regional, never wrapped


def test_aux_cells_scored_by_the_baselines() -> None:
    t = _table()
    methods = t.methods_for([])
    rows = t.score_cells(t.aux_cells(_sources()), methods)
    assert len(rows) == 6
    for row in rows:
        for name in ("bicubic", "bicubic-conservative", "conservative"):
            assert np.isfinite(row[name]["rmse"]) and row[name]["rmse"] > 0, (row["cell"], name)
        assert abs(row["conservative"]["bias"]) < 0.05
        if "OSTIA" not in row["cell"]:  # complete fields: back-projection conserves exactly
            assert row["bicubic-conservative"]["conservation"] < 1e-4
    md = t.markdown(rows, list(methods))
    assert md.count("\n") == 2 + len(rows) and "OSTIA SST (held out by aux) 2x4" in md


def test_target_mask_runs_on_masked_cells_only() -> None:
    t = _table()
    cells = t.aux_cells(_sources())
    rows = t.score_cells(cells, t.methods_for([]), target_mask=True)
    masked = {r["cell"] for r in rows if "bicubic-conservative + target mask" in r}
    assert masked == {label for label, hr, *_ in cells if np.isnan(hr).any()} != set()
    for r in rows:
        if r["cell"] in masked:
            m = r["bicubic-conservative + target mask"]
            assert (
                m["conservation"] <= 1e-4
                and abs(m["bias"]) < abs(r["bicubic-conservative"]["bias"]) + 1e-9
            )
    md = t.markdown(rows, ["bicubic", "bicubic-conservative + target mask"])
    assert md.count("|  |") >= 1  # complete cells leave the masked column empty
