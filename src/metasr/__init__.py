"""metasr: magnification-arbitrary super-resolution with Meta-Upscale (any scale per axis).

Public API::

    from metasr import MetaUpsample, Pos2Weight, meta_upscale, meta_upscale_weights, backends
    up = MetaUpsample(64, 3)
    y = up(features, scale=(2.5, 3.0))      # or scale=3.7, or size=(721, 1440)

``import metasr`` needs only torch (and numpy); Triton, BasicSR and image libraries load lazily.
"""

from __future__ import annotations

from typing import Any

from .geometry import CoordinateGrid, UpscaleRequest, build_geometry, resolve_output_size
from .modules import HeadConfig, MetaUpsample, Pos2Weight
from .ops.meta_upscale import UpscalePlan, meta_upscale, plan
from .ops.meta_upscale.dispatch import BackendUnavailableError, backends
from .ops.meta_upscale.weights import meta_upscale_weights

__version__ = "0.1.0"

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
]


def __getattr__(name: str) -> Any:
    # The model zoo is imported on first use so that `import metasr` stays light.
    if name in ("create_model", "list_models", "archs"):
        import importlib

        archs = importlib.import_module(".archs", __name__)
        return archs if name == "archs" else getattr(archs, name)
    raise AttributeError(f"module 'metasr' has no attribute {name!r}")
