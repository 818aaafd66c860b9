"""Deprecated alias of :mod:`metasr.checkpoints` and :mod:`metasr.inference` (one release).

``metasr.hub`` mixed checkpoint formats with array inference, and "hub" means fetching weights
elsewhere (timm, ``torch.hub``). Load models with :mod:`metasr.checkpoints` and upscale with
:mod:`metasr.inference`; the names below are the same objects.
"""

from __future__ import annotations

import warnings

from .checkpoints import (
    CHECKPOINT_FORMAT,
    LoadedModel,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from .inference import upscale_alpha, upscale_array, upscale_raster

__all__ = [
    "CHECKPOINT_FORMAT",
    "LoadedModel",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "upscale_alpha",
    "upscale_array",
    "upscale_raster",
]

warnings.warn(
    "metasr.hub is deprecated and will be removed in the next release: use "
    "metasr.checkpoints (load_model, load_checkpoint, save_checkpoint, LoadedModel) and "
    "metasr.inference (upscale_array, upscale_raster, upscale_alpha)",
    DeprecationWarning,
    stacklevel=2,
)
