"""Size limits that need no torch (the netCDF baseline path never imports it).

:mod:`metasr.geometry` exposes the output caps (``MAX_OUTPUT_PIXELS``, ``MAX_OUTPUT_SIDE``,
``max_output_pixels``); the parsing of ``METASR_MAX_OUTPUT_PIXELS`` lives here so that
:mod:`metasr.climate` can apply it without importing torch, and the model-size caps so that
the registry and :mod:`metasr.modules` share them without importing each other.
"""

from __future__ import annotations

import os
import sys

__all__ = [
    "DEFAULT_MAX_OUTPUT_PIXELS",
    "MAX_MODEL_ELEMENTS",
    "MAX_MODEL_MODULES",
    "MAX_OUTPUT_SIDE",
    "pixel_cap",
]

#: Default cap on ``H·W`` of one output (see :data:`metasr.geometry.MAX_OUTPUT_PIXELS`).
DEFAULT_MAX_OUTPUT_PIXELS = 1 << 30

#: Most parameter + buffer elements a model built by :func:`metasr.create_model` (and a
#: ``Pos2Weight``) may have: 2**30, 4 GiB in float32. The largest registered configuration
#: (``meta_rdn``) has 22 million.
MAX_MODEL_ELEMENTS = 1 << 30

#: Most modules such a model may have (``meta_rdn`` has 574). Bounds deep requests such
#: as ``n_resblocks=10**7`` of tiny blocks, whose Python objects alone would fill memory.
MAX_MODEL_MODULES = 20_000

#: Cap on ``H`` and on ``W`` (2**22): the geometry keeps about 80 bytes per output row and column.
MAX_OUTPUT_SIDE = 1 << 22


def pixel_cap(default: int | None = None) -> int:
    """``METASR_MAX_OUTPUT_PIXELS`` if set, else ``default`` (else the value of
    :data:`metasr.geometry.MAX_OUTPUT_PIXELS` when that module is loaded, where a program may
    have changed it, else :data:`DEFAULT_MAX_OUTPUT_PIXELS`).

    Raises:
        ValueError: if the environment variable is not a positive integer.
    """
    text = os.environ.get("METASR_MAX_OUTPUT_PIXELS", "").strip()
    if not text:
        if default is not None:
            return default
        geometry = sys.modules.get("metasr.geometry")
        return getattr(geometry, "MAX_OUTPUT_PIXELS", DEFAULT_MAX_OUTPUT_PIXELS)
    try:
        value = int(float(text)) if "e" in text.lower() else int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"METASR_MAX_OUTPUT_PIXELS must be a positive integer, got {text!r}")
    return value
