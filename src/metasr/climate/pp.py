"""A small reader for unpacked Met Office UM "PP" files (the GloSea4 sample data), numpy only.

Format (UMDP F3), as read here: a sequence of Fortran unformatted records, big-endian. Each
field is two records, each framed by a 4-byte length before and after:

1. the 64-word header: words 1–45 are 32-bit integers, words 46–64 32-bit floats;
2. the data: ``LBROW × LBNPT`` 32-bit floats, row by row (``LBROW`` rows of ``LBNPT`` points).

The header words used (1-based, as in UMDP F3): LBYR/LBMON/LBDAT/LBHR (1–4) and LBYRD… (7–10),
the times T1 and T2 (for the GloSea4 monthly means, LBTIM=121: start and end of the month);
LBROW (18) and LBNPT (19), the grid shape; LBPACK (21), the packing (only 0, unpacked, is
read: WGDOS/CRAY-packed fields are refused); LBFC (23), the field code;
LBUSER4 (42), the STASH code; BPLAT/BPLON (56/57), the pole (a rotated pole is refused);
BZY/BDY (59/60) and BZX/BDX (61/62), so that row ``i`` (0-based) lies at latitude
``BZY + (i+1)·BDY`` and column ``j`` at longitude ``BZX + (j+1)·BDX``; BMDI (63), the missing
value (read as NaN). 64-bit PP files, extra data (LBEXT ≠ 0) and irregular grids (BDX or BDY
zero) are refused with a clear error rather than misread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .grids import Grid

_HEADER_WORDS = 64
_N_INT = 45


@dataclass(frozen=True, eq=False)
class PPField:
    """One field of a PP file.

    Attributes:
        data: ``(LBROW, LBNPT)`` float32 values, NaN where the file has BMDI.
        lat: ``(LBROW,)`` latitudes (degrees) of the rows.
        lon: ``(LBNPT,)`` longitudes (degrees) of the columns.
        int_header: the 45 integer header words (index 0 is word 1).
        real_header: the 19 real header words (index 0 is word 46).
    """

    data: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    int_header: np.ndarray
    real_header: np.ndarray

    @property
    def stash(self) -> int:
        """LBUSER4, the STASH code (24: surface temperature)."""
        return int(self.int_header[41])

    @property
    def field_code(self) -> int:
        """LBFC (16: temperature)."""
        return int(self.int_header[22])

    @property
    def t1(self) -> tuple[int, int, int, int]:
        """(year, month, day, hour) of LBYR…LBHR: the validity time, or a mean's start."""
        return tuple(int(v) for v in self.int_header[0:4])  # type: ignore[return-value]

    @property
    def t2(self) -> tuple[int, int, int, int]:
        """(year, month, day, hour) of LBYRD…LBHRD: the data time, or a mean's end."""
        return tuple(int(v) for v in self.int_header[6:10])  # type: ignore[return-value]

    @property
    def grid(self) -> Grid:
        """The field's :class:`Grid`."""
        return Grid.from_coords(self.lat, self.lon)


def _record(buf: bytes, pos: int, path: Path) -> tuple[bytes, int]:
    """One Fortran record at ``pos``: its payload and the position after it."""
    if pos + 4 > len(buf):
        raise ValueError(f"{path}: truncated record length at byte {pos}")
    n = int(np.frombuffer(buf, ">i4", 1, pos)[0])
    end = pos + 4 + n
    if n < 0 or end + 4 > len(buf) or int(np.frombuffer(buf, ">i4", 1, end)[0]) != n:
        raise ValueError(f"{path}: bad record at byte {pos} (not a 32-bit big-endian PP file?)")
    return buf[pos + 4 : end], end + 4


def read_pp(path: str | Path) -> list[PPField]:
    """Read every field of an unpacked, 32-bit, big-endian PP file.

    Args:
        path: the ``.pp`` file.

    Returns:
        The fields in file order.

    Raises:
        ValueError: a malformed file, a packed field (LBPACK ≠ 0), extra data, a rotated pole
            or an irregular grid, naming the field and the offending header word.
    """
    path = Path(path)
    buf = path.read_bytes()
    fields: list[PPField] = []
    pos = 0
    while pos < len(buf):
        head, pos = _record(buf, pos, path)
        if len(head) != 4 * _HEADER_WORDS:
            raise ValueError(
                f"{path}: field {len(fields)} header has {len(head)} bytes, expected "
                f"{4 * _HEADER_WORDS} (64-bit PP files are not supported)"
            )
        ints = np.frombuffer(head, ">i4", _N_INT, 0).astype(np.int64)
        reals = np.frombuffer(head, ">f4", _HEADER_WORDS - _N_INT, 4 * _N_INT).astype(np.float64)
        where = f"{path}: field {len(fields)}"
        lbrow, lbnpt, lbext, lbpack = (int(v) for v in ints[17:21])
        if lbpack != 0:
            raise ValueError(f"{where} is packed (LBPACK={lbpack}); only unpacked fields are read")
        if lbext != 0:
            raise ValueError(f"{where} has extra data (LBEXT={lbext}), not supported")
        bplat, bplon, _bgor, bzy, bdy, bzx, bdx, bmdi = reals[10:18]
        if bplat != 90.0 or bplon not in (0.0, 180.0):
            raise ValueError(f"{where} is on a rotated pole (BPLAT={bplat}, BPLON={bplon})")
        if bdy == 0.0 or bdx == 0.0:
            raise ValueError(f"{where} has an irregular grid (BDY={bdy}, BDX={bdx})")
        raw, pos = _record(buf, pos, path)
        if len(raw) != 4 * lbrow * lbnpt:
            raise ValueError(
                f"{where}: data record has {len(raw)} bytes, expected 4·LBROW·LBNPT = "
                f"4·{lbrow}·{lbnpt}"
            )
        data = np.frombuffer(raw, ">f4").astype(np.float32).reshape(lbrow, lbnpt)
        data = np.where(data == np.float32(bmdi), np.float32(np.nan), data)
        lat = bzy + bdy * np.arange(1, lbrow + 1)
        lon = bzx + bdx * np.arange(1, lbnpt + 1)
        fields.append(PPField(data, lat, lon, ints, reals))
    return fields
