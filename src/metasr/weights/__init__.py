"""Bundled model weights.

The models that ship inside the package, by name (:data:`BUNDLED`), each a safetensors file
written by ``scripts/export_default_model.py`` from a BasicSR training run:

* ``"default"``: the model ``metasr upscale`` uses unless told otherwise (``default.safetensors``);
* ``"default-v1"``: the first default model, a 6 × 32 Meta-EDSR with a bicubic residual trained
  50 minutes on scikit-image's photographs (``options/train/MetaEDSR_tiny_default.yml``). It is
  still the default, so both names load the same file; when a new default replaces it, its file
  moves to ``default_v1.safetensors`` and this name keeps loading it, so that results made with
  it stay reproducible.

Load them with ``metasr.checkpoints.load_model(name)``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUNDLED", "DEFAULT_CHECKPOINT", "bundled_checkpoint", "default_checkpoint"]

_HERE = Path(__file__).resolve().parent

#: Where the default model lives inside the installed package.
DEFAULT_CHECKPOINT = _HERE / "default.safetensors"

#: Bundled model names and their files.
BUNDLED: dict[str, Path] = {
    "default": DEFAULT_CHECKPOINT,
    "default-v1": DEFAULT_CHECKPOINT,
}


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
            f"the bundled model {name!r} is missing from this installation ({path}); "
            "pass --model with a checkpoint file, or create it with scripts/export_default_model.py"
        )
    return path


def default_checkpoint() -> Path:
    """Path of the bundled default model.

    Raises:
        FileNotFoundError: this installation has no bundled default model.
    """
    return bundled_checkpoint("default")
