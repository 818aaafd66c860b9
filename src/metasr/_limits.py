"""Size and range limits that need no torch (the netCDF baseline path never imports it).

:mod:`metasr.geometry` exposes the output caps (``MAX_OUTPUT_PIXELS``, ``MAX_OUTPUT_SIDE``,
``max_output_pixels``); the parsing of ``METASR_MAX_OUTPUT_PIXELS`` and the float-range check
live here so that :mod:`metasr.climate` can apply them without importing torch.
"""

from __future__ import annotations

import os
import sys

import numpy as np

__all__ = ["DEFAULT_MAX_OUTPUT_PIXELS", "MAX_OUTPUT_SIDE", "check_fits_dtype", "pixel_cap"]

#: Default cap on ``H·W`` of one output (see :data:`metasr.geometry.MAX_OUTPUT_PIXELS`).
DEFAULT_MAX_OUTPUT_PIXELS = 1 << 30

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


def check_fits_dtype(values: np.ndarray, dtype: np.dtype | type) -> None:
    """Refuse finite ``values`` (computed in a wider type) that a float ``dtype`` cannot hold.

    The cast would turn them into infinity without a word (3e38 K through a model, stored as
    float32). NaN and infinity already in ``values`` are not counted: the caller checks those.

    Raises:
        ValueError: the largest magnitude and the range of ``dtype``.
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f" or values.size == 0:
        return
    top = float(np.finfo(dtype).max)
    finite = np.abs(values[np.isfinite(values)])
    largest = float(finite.max()) if finite.size else 0.0
    if largest > top:
        raise ValueError(
            f"the result reaches {largest:.3g}, beyond the range of {dtype} "
            f"(±{top:.3g}); nothing written"
        )
