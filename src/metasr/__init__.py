"""metasr: magnification-arbitrary super-resolution with Meta-Upscale (any scale per axis).

Public API::

    from metasr import MetaUpsample, Pos2Weight, meta_upscale, meta_upscale_weights, backends
    up = MetaUpsample(64, 3)
    y = up(features, scale=(2.5, 3.0))      # or scale=3.7, or size=(721, 1440)

    big = metasr.upscale("photo.png", scale=2.5)   # a whole image: PIL/numpy/tensor/path in

``import metasr`` imports nothing heavy: torch and the rest load when a name is first used;
Triton, BasicSR and image libraries load lazily.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import upscale
    from .geometry import CoordinateGrid, UpscaleRequest, build_geometry, resolve_output_size
    from .modules import HeadConfig, MetaUpsample, Pos2Weight
    from .ops.meta_upscale import UpscalePlan, meta_upscale, plan
    from .ops.meta_upscale.dispatch import BackendUnavailableError, backends
    from .ops.meta_upscale.weights import meta_upscale_weights

from ._version import __version__

# Every public name is imported on first use (PEP 562): `metasr --help` and the climate
# baselines import `metasr.cli` / `metasr.climate`, which must not pay for importing torch.
_LAZY = {
    "CoordinateGrid": ".geometry",
    "UpscaleRequest": ".geometry",
    "build_geometry": ".geometry",
    "resolve_output_size": ".geometry",
    "HeadConfig": ".modules",
    "MetaUpsample": ".modules",
    "Pos2Weight": ".modules",
    "meta_upscale": ".ops.meta_upscale",
    "UpscalePlan": ".ops.meta_upscale",
    "plan": ".ops.meta_upscale",
    "BackendUnavailableError": ".ops.meta_upscale.dispatch",
    "backends": ".ops.meta_upscale.dispatch",
    "meta_upscale_weights": ".ops.meta_upscale.weights",
    "create_model": ".archs",
    "list_models": ".archs",
    "upscale": ".api",
}

__all__ = [
    "BackendUnavailableError",
    "CoordinateGrid",
    "HeadConfig",
    "MetaUpsample",
    "Pos2Weight",
    "UpscalePlan",
    "UpscaleRequest",
    "__version__",
    "backends",
    "build_geometry",
    "create_model",
    "list_models",
    "meta_upscale",
    "meta_upscale_weights",
    "plan",
    "resolve_output_size",
    "upscale",
]


def __getattr__(name: str) -> Any:
    if name == "archs":
        return importlib.import_module(".archs", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'metasr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
