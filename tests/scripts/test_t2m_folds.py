"""The leave-one-source-out folds of the issue-23 temperature model (options/climate/*.yml):
between them, every temperature source is held out by some fold, and no fold trains on what it
holds out."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDS = sorted((ROOT / "options" / "climate").glob("MetaEDSR_t2m_*.yml"))


def _script():
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    return importlib.import_module("t2m_model")


def test_every_source_is_held_out_by_one_fold() -> None:
    pytest.importorskip("yaml")
    from metasr.climate.training import TrainConfig

    m = _script()
    known = {"glosea4", "hadgem2", "air_temp", "ostia", "north_america", "coads_airt", "coads_sst"}
    held: set[str] = set()
    assert len(FOLDS) >= 2
    for path in FOLDS:
        cfg = m._v2_config(m._options(path))
        assert isinstance(cfg, TrainConfig)
        assert set(cfg.sources) <= known and set(cfg.held_out_sources) <= known, path.name
        assert not set(cfg.sources) & set(cfg.held_out_sources), path.name
        held |= set(cfg.held_out_sources)
        if cfg.held_out_members:
            held.add("glosea4")  # held out by member: the table scores those members
    assert held == known
