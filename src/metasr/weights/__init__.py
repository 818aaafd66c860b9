"""Bundled model weights.

``default.safetensors`` is the small default model of ``metasr upscale`` (a Meta-EDSR with a
bicubic residual, trained on scikit-image's photographs through metasr's BasicSR training path
and converted by ``scripts/export_default_model.py``). Load it with
``metasr.checkpoints.load_model("default")``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_CHECKPOINT", "default_checkpoint"]

#: Where the default model lives inside the installed package.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "default.safetensors"


def default_checkpoint() -> Path:
    """Path of the bundled default model.

    Raises:
        FileNotFoundError: this installation has no bundled default model.
    """
    if not DEFAULT_CHECKPOINT.is_file():
        raise FileNotFoundError(
            f"the bundled default model is missing from this installation ({DEFAULT_CHECKPOINT}); "
            "pass --model with a checkpoint file, or create it with scripts/export_default_model.py"
        )
    return DEFAULT_CHECKPOINT
