"""scripts/t2m_maps.py (the "why a cell is lost" figures of docs/climate.md) on a tiny grid."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from metasr.climate import regular_grid

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"

pytest.importorskip("matplotlib")


def _maps():
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module("t2m_maps")


def test_rmse_maps_bands_and_figure(tmp_path: Path) -> None:
    m = _maps()
    grid = regular_grid(19, 36, north_first=False)
    hr = np.zeros((3, 19, 36))
    pred = hr.copy()
    pred[:, 0] = 2.0  # the south pole row off by 2 K, everything else exact
    pred[:, 5, :4] = np.nan  # masked points are left out, not counted as errors
    per_point, per_lat = m.rmse_maps(pred, hr)
    assert per_point.shape == (19, 36) and per_lat.shape == (19,)
    np.testing.assert_allclose(per_lat[0], 2.0)
    np.testing.assert_allclose(per_lat[1:], 0.0)
    assert np.isnan(per_point[5, :4]).all()
    bands = m.band_rmse(per_lat, grid.lat)
    assert bands["60S-60N"] == 0.0 and bands["north of 60N"] == 0.0
    assert 0.0 < bands["south of 60S"] < 2.0  # the pole row has weight cos(90°) ≈ 0
    path = tmp_path / "cell.png"
    maps = {"model": per_point, "bicubic": per_point, "bicubic-conservative": per_point * 0.5}
    lats = {k: m.rmse_maps(pred * (0.5 if "cons" in k else 1), hr)[1] for k in maps}
    m.plot_cell(path, "a tiny cell", grid, maps, lats)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size < 150_000
