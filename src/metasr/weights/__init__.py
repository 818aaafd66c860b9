"""Bundled model weights.

The models that ship inside the package, by name (:data:`BUNDLED`), each a safetensors file
written from a BasicSR training run:

* ``"default"``: the photo model ``metasr upscale`` uses unless told otherwise
  (``default.safetensors``): a 12 × 48 Meta-EDSR with a bicubic residual, trained on Debian's
  wallpaper photographs and scikit-image's photos in six stages (``make default-model``;
  ``options/train/MetaEDSR_photo_default*.yml``), converted by
  ``scripts/export_default_model.py``;
* ``"default-v1"``: the first default model (``default_v1.safetensors``), a 6 × 32 Meta-EDSR
  with a bicubic residual trained 50 minutes on scikit-image's photographs
  (``options/train/MetaEDSR_tiny_default.yml``, ``make default-v1-model``), kept loadable by
  name so that results made with it stay reproducible;
* ``"t2m"``: the temperature model of issue 23 (``t2m.safetensors``): a periodic Meta-EDSR
  with a bicubic residual and coordinate placement, run through
  :func:`metasr.climate.model.field_forward` (canonical layout, per-sample normalisation, one
  value per pole row, the ``smooth`` conservation constraint), trained on four temperature
  sources with a random grid layout per batch by ``make t2m-model``; its model card
  (``model_card``: sources, held-out sources, ratios, layouts, normalisation, constraint) and
  units are in the metadata; see ``docs/climate.md``;
* ``"t2m-v1"``: the first temperature model (``t2m_v1.safetensors``, trained on GloSea4 alone
  with dataset statistics, ``make t2m-v1-model``), kept loadable by name so results made with
  it stay reproducible.

Load them with ``metasr.checkpoints.load_model(name)``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "BUNDLED",
    "DEFAULT_CHECKPOINT",
    "DEFAULT_V1_CHECKPOINT",
    "T2M_CHECKPOINT",
    "T2M_V1_CHECKPOINT",
    "bundled_checkpoint",
]

_HERE = Path(__file__).resolve().parent

#: Where the default model lives inside the installed package.
DEFAULT_CHECKPOINT = _HERE / "default.safetensors"
#: Where the first default model (``"default-v1"``) lives inside the installed package.
DEFAULT_V1_CHECKPOINT = _HERE / "default_v1.safetensors"
#: Where the temperature model lives inside the installed package.
T2M_CHECKPOINT = _HERE / "t2m.safetensors"
#: Where the first temperature model (``"t2m-v1"``) lives inside the installed package.
T2M_V1_CHECKPOINT = _HERE / "t2m_v1.safetensors"

#: Each bundled model: its file, and how to recreate that file when an installation lacks it
#: (one table, so a new model cannot be listed without its recipe).
_MODELS: dict[str, tuple[Path, str]] = {
    "default": (DEFAULT_CHECKPOINT, "make default-model"),
    "default-v1": (DEFAULT_V1_CHECKPOINT, "make default-v1-model"),
    "t2m": (T2M_CHECKPOINT, "make t2m-model"),
    "t2m-v1": (T2M_V1_CHECKPOINT, "make t2m-v1-model"),
}

#: Bundled model names and their files.
BUNDLED: dict[str, Path] = {name: path for name, (path, _) in _MODELS.items()}


def bundled_checkpoint(name: str) -> Path:
    """Path of the bundled model ``name`` (a key of :data:`BUNDLED`).

    Raises:
        ValueError: ``name`` is not a bundled model.
        FileNotFoundError: this installation lacks that model's file.
    """
    if name not in BUNDLED:
        raise ValueError(f"no bundled model {name!r}; bundled: {', '.join(BUNDLED)}")
    path = BUNDLED[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"the bundled model {name!r} is missing from this installation ({path}); pass "
            f"--model with a checkpoint file, or create it with {_MODELS[name][1]}"
        )
    return path
