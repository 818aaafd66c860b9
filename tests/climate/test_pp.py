"""metasr.climate.pp on synthetic PP files (written here) and on the GloSea4 files when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from metasr.climate import named_grid, read_pp
from metasr.climate.sources import read_glosea4

GLOSEA4 = Path(__file__).resolve().parents[2] / "datasets" / "climate" / "glosea4"
BMDI = -1.073741824e9


def pp_header(rows: int, cols: int, *, lbpack: int = 0, bplat: float = 90.0) -> tuple:
    """(45 ints, 19 reals) of a global regular field starting at 90°S, 0°E."""
    ints = np.zeros(45, dtype=">i4")
    ints[0:4] = [2011, 8, 1, 0]  # LBYR…LBHR
    ints[6:10] = [2011, 9, 1, 0]  # LBYRD…LBHRD
    ints[14] = rows * cols  # LBLREC
    ints[17], ints[18], ints[20] = rows, cols, lbpack  # LBROW, LBNPT, LBPACK
    ints[22], ints[41] = 16, 24  # LBFC, LBUSER4 (STASH)
    reals = np.zeros(19, dtype=">f4")
    bdy, bdx = 180.0 / (rows - 1), 360.0 / cols
    reals[10] = bplat  # BPLAT
    reals[13:19] = [-90.0 - bdy, bdy, -bdx, bdx, BMDI, 1.0]  # BZY BDY BZX BDX BMDI BMKS
    return ints, reals


def write_pp(path: Path, fields: list[tuple[np.ndarray, tuple]]) -> None:
    """Write unpacked 32-bit big-endian PP records (the layout UM post-processing writes)."""
    with path.open("wb") as fh:
        for data, (ints, reals) in fields:
            head = ints.tobytes() + reals.tobytes()
            body = np.asarray(data, dtype=">f4").tobytes()
            for payload in (head, body):
                n = np.array([len(payload)], dtype=">i4").tobytes()
                fh.write(n + payload + n)


def test_synthetic_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(200, 300, (5, 8)).astype(np.float32)
    b = rng.uniform(200, 300, (5, 8)).astype(np.float32)
    b[1, 2] = BMDI
    write_pp(tmp_path / "x.pp", [(a, pp_header(5, 8)), (b, pp_header(5, 8))])
    fields = read_pp(tmp_path / "x.pp")
    assert len(fields) == 2
    np.testing.assert_array_equal(fields[0].data, a)
    assert np.isnan(fields[1].data[1, 2]) and np.isnan(fields[1].data).sum() == 1
    np.testing.assert_allclose(fields[0].lat, [-90, -45, 0, 45, 90], atol=1e-5)
    np.testing.assert_allclose(fields[0].lon, np.arange(8) * 45.0, atol=1e-5)
    assert fields[0].stash == 24 and fields[0].field_code == 16
    assert fields[0].t1 == (2011, 8, 1, 0) and fields[0].t2 == (2011, 9, 1, 0)
    assert fields[0].grid.periodic_lon


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"lbpack": 1}, r"packed \(LBPACK=1\)"), ({"bplat": 37.5}, "rotated pole")],
)
def test_refused_fields(tmp_path: Path, kwargs: dict, match: str) -> None:
    write_pp(tmp_path / "x.pp", [(np.zeros((3, 4)), pp_header(3, 4, **kwargs))])
    with pytest.raises(ValueError, match=match):
        read_pp(tmp_path / "x.pp")


def test_malformed_files(tmp_path: Path) -> None:
    write_pp(tmp_path / "x.pp", [(np.zeros((3, 4)), pp_header(3, 4))])
    raw = (tmp_path / "x.pp").read_bytes()
    (tmp_path / "cut.pp").write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="bad record"):
        read_pp(tmp_path / "cut.pp")
    (tmp_path / "le.pp").write_bytes(np.frombuffer(raw, ">i4").astype("<i4").tobytes())
    with pytest.raises(ValueError, match="bad record"):
        read_pp(tmp_path / "le.pp")
    write_pp(tmp_path / "short.pp", [(np.zeros((3, 3)), pp_header(3, 4))])
    with pytest.raises(ValueError, match="expected 4·LBROW·LBNPT"):
        read_pp(tmp_path / "short.pp")


@pytest.mark.skipif(not GLOSEA4.is_dir(), reason="run `make climate-data` for the GloSea4 files")
def test_real_glosea4_files() -> None:
    ens = read_glosea4(GLOSEA4)
    assert ens.data.shape == (13, 6, 145, 192)
    assert ens.grid.same_as(named_grid("n96"))
    assert ens.months[0] == (2011, 8) and ens.months[-1] == (2012, 1)
    assert np.isfinite(ens.data).all() and 190 < ens.data.min() and ens.data.max() < 330
    fields = read_pp(GLOSEA4 / "ensemble_000.pp")
    assert {f.stash for f in fields} == {24}
