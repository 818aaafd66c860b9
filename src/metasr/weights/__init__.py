"""Bundled model weights.

- ``default.safetensors``: the small default model of ``metasr upscale`` (a Meta-EDSR with a
  bicubic residual, trained on photographs through metasr's BasicSR training path and converted
  by ``scripts/export_default_model.py``). ``load_model("default")``.
- ``t2m.safetensors``: the temperature model (``--model t2m``): a periodic Meta-EDSR with a
  bicubic residual and coordinate placement, trained on the GloSea4 sample ensemble (surface
  temperature, K) by ``make t2m-model``, with its normalisation statistics (``field_stats``) in
  the metadata. ``load_model("t2m")``; see ``docs/climate.md``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_CHECKPOINT", "T2M_CHECKPOINT", "bundled_checkpoint", "default_checkpoint"]

_HERE = Path(__file__).resolve().parent

#: Where the default model lives inside the installed package.
DEFAULT_CHECKPOINT = _HERE / "default.safetensors"
#: Where the temperature model lives inside the installed package.
T2M_CHECKPOINT = _HERE / "t2m.safetensors"

_HOW_TO_MAKE = {
    "default": "scripts/export_default_model.py (make default-model)",
    "t2m": "make t2m-model",
}


def bundled_checkpoint(name: str) -> Path:
    """Path of the bundled model ``name`` (``"default"`` or ``"t2m"``).

    Raises:
        ValueError: no bundled model of that name.
        FileNotFoundError: this installation lacks the file.
    """
    if name not in _HOW_TO_MAKE:
        raise ValueError(f"no bundled model {name!r}; bundled: {', '.join(_HOW_TO_MAKE)}")
    path = _HERE / f"{name}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"the bundled {name} model is missing from this installation ({path}); pass --model "
            f"with a checkpoint file, or create it with {_HOW_TO_MAKE[name]}"
        )
    return path


def default_checkpoint() -> Path:
    """Path of the bundled default model (:func:`bundled_checkpoint` ``("default")``).

    Raises:
        FileNotFoundError: this installation has no bundled default model.
    """
    return bundled_checkpoint("default")
