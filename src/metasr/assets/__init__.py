"""Small sample data shipped with metasr (used by ``metasr demo`` and the tests).

``chelsea_crop.png``: 160×200 RGB, rows 60:220 and columns 120:320 of scikit-image's
``chelsea`` photograph (Chelsea the cat, by Stefan van der Walt, CC0 / no copyright
restrictions, distributed with scikit-image).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SAMPLE_IMAGE"]

#: The bundled sample photograph.
SAMPLE_IMAGE = Path(__file__).resolve().parent / "chelsea_crop.png"
