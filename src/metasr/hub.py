"""Load models for inference and apply them to whole images and arrays.

``load_model(spec)`` accepts

* ``"default"``: the bundled model (``metasr/weights/default.safetensors``);
* a metasr checkpoint (``.safetensors``): the state dict plus, in the file's metadata, the
  registry name and constructor arguments of the architecture (written by
  :func:`save_checkpoint`), so the file alone rebuilds the model;
* the official Meta-SR checkpoint (``model_1000.pt``, a raw ``state_dict`` of their MetaRDN),
  recognised by its keys and loaded with :func:`metasr.archs.load_official_metardn`;
* a registry name (:func:`metasr.list_models`): the architecture with random weights, which is
  useful for trying shapes and speed, not for real images (a warning says so).

Anything else (a BasicSR training state, a pickled object, an unrelated file) is refused with a
``ValueError`` that says what the file is and what was expected.

:func:`upscale_raster` applies a loaded model to a :class:`metasr.io.Raster`: value scaling,
channel handling, alpha and tiling. The conventions are listed in ``docs/usage.md``.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .integrations.checkpoints import network_value_range
from .io import Raster
from .tiling import DEFAULT_OVERLAP, upscale

__all__ = [
    "CHECKPOINT_FORMAT",
    "LoadedModel",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "upscale_array",
    "upscale_raster",
]

#: Value of the ``format`` metadata entry of a metasr checkpoint.
CHECKPOINT_FORMAT = "metasr-model"
_FORMAT_VERSION = "1"

#: Keys that only the official Meta-SR RDN state dict has together.
_OFFICIAL_KEYS = ("SFENet1.weight", "P2W.meta_block.0.weight")


@dataclass
class LoadedModel:
    """A model ready for inference and what is needed to feed it.

    Attributes:
        model: the network, in eval mode, ``forward(x, scale=None, size=None)``.
        name: what was asked for (``"default"``, a path or a registry name).
        arch: registry name of the architecture (``"official"`` for the Meta-SR checkpoint).
        kwargs: constructor arguments.
        in_channels, out_channels: channels the network takes and gives.
        value_range: the network's input for an image in 0..1 is ``value · value_range``:
            the model's ``img_range`` (255 for the paper networks, which take 0..255), else 1.
        metadata: the checkpoint's metadata (empty for registry models).
    """

    model: nn.Module
    name: str
    arch: str
    kwargs: dict = field(default_factory=dict)
    in_channels: int = 3
    out_channels: int = 3
    value_range: float = 1.0
    metadata: dict[str, str] = field(default_factory=dict)


def _require_safetensors():
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        raise ValueError(
            "metasr checkpoints are safetensors files: pip install safetensors"
        ) from None
    import safetensors

    return safetensors


def _finish(model: nn.Module, name: str, arch: str, kwargs: dict, metadata: dict) -> LoadedModel:
    model.eval()
    return LoadedModel(
        model,
        name,
        arch,
        kwargs,
        model.in_channels,
        model.out_channels,
        network_value_range(model),
        metadata,
    )


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    arch: str,
    kwargs: dict,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``model``'s weights and how to rebuild it to a safetensors file.

    Args:
        path: destination ``.safetensors`` file (written atomically).
        model: the network; its ``state_dict`` is stored.
        arch: registry name, so that ``metasr.create_model(arch, **kwargs)`` rebuilds it.
        kwargs: JSON-serialisable constructor arguments.
        metadata: extra string entries (training notes, source checkpoint, ...).
    """
    _require_safetensors()
    from safetensors.torch import save_file

    from . import __version__
    from .io import atomic_write

    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update(
        format=CHECKPOINT_FORMAT,
        format_version=_FORMAT_VERSION,
        arch=arch,
        kwargs=json.dumps(kwargs, sort_keys=True),
        metasr_version=__version__,
    )
    # safetensors refuses tensors that share storage; a copy of each makes every entry its own.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def load_checkpoint(path: str | os.PathLike, name: str | None = None) -> LoadedModel:
    """Rebuild a model from a metasr ``.safetensors`` checkpoint (see :func:`save_checkpoint`).

    Raises:
        ValueError: the file is not a safetensors file, lacks metasr metadata, names an unknown
            architecture, or its tensors do not fit the architecture.
    """
    _require_safetensors()
    from safetensors import safe_open
    from safetensors.torch import load_file

    from . import archs

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        state = load_file(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    if meta.get("format") != CHECKPOINT_FORMAT or "arch" not in meta:
        raise ValueError(
            f"{path}: a safetensors file without metasr model metadata (format, arch, kwargs); "
            "it is not a metasr model checkpoint"
        )
    arch = meta["arch"]
    try:
        kwargs = json.loads(meta.get("kwargs", "{}"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt 'kwargs' metadata ({exc})") from exc
    if arch not in archs.list_models():
        raise ValueError(
            f"{path}: architecture {arch!r} is not registered "
            f"(known: {', '.join(archs.list_models())}); is this metasr version too old?"
        )
    try:
        model = archs.create_model(arch, **kwargs)
    except ValueError as exc:
        raise ValueError(f"{path}: cannot build {arch} from its metadata: {exc}") from exc
    _load_state(model, state, path)
    return _finish(model, name or str(path), arch, kwargs, meta)


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # missing/unexpected keys or shape mismatches
        detail = str(exc).strip().splitlines()
        raise ValueError(
            f"{path}: weights do not fit {type(model).__name__}: "
            f"{' '.join(line.strip() for line in detail[1:3])}"
        ) from exc


def _load_torch_file(path: Path) -> LoadedModel:
    """A ``.pt``/``.pth`` file: the official Meta-SR checkpoint, or a clear refusal."""
    try:
        # weights_only: a checkpoint is data; never run the code a pickle can carry.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path}: not a PyTorch weights file that can be loaded safely ({type(exc).__name__})"
        ) from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a model's weights")
    # The official file is a raw state dict; re-saved copies often wrap it one level down.
    for state in (obj, *(obj[k] for k in ("state_dict", "model", "params") if k in obj)):
        if isinstance(state, dict) and all(k in state for k in _OFFICIAL_KEYS):
            from .archs import load_official_metardn

            return _finish(load_official_metardn(obj), str(path), "official", {}, {})
    if "params" in obj or "params_ema" in obj:
        raise ValueError(
            f"{path}: a BasicSR training checkpoint (weights without the architecture); "
            "convert it with scripts/export_default_model.py --checkpoint ... --opt ..."
        )
    raise ValueError(
        f"{path}: not a model checkpoint (expected a metasr .safetensors file or the official "
        "Meta-SR model_1000.pt)"
    )


def load_model(
    spec: str | os.PathLike = "default",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: str | None = None,
) -> LoadedModel:
    """Load a model by name or path (see the module docstring) onto ``device``.

    Args:
        spec: ``"default"``, a checkpoint path, or a registry name.
        device: where the model runs.
        dtype: parameter dtype (``torch.float16`` for half precision).
        backend: Meta-Upscale backend for every head (``None``: keep the model's, ``"auto"``).

    Raises:
        FileNotFoundError: no such file and no such registered model, or no bundled default.
        ValueError: the file is not a model (see :func:`load_checkpoint`).
    """
    spec = str(spec)
    path = Path(spec)
    if spec == "default":
        from .weights import default_checkpoint

        loaded = load_checkpoint(default_checkpoint(), name="default")
    elif path.is_file():
        if path.suffix.lower() == ".safetensors":
            loaded = load_checkpoint(path)
        elif path.suffix.lower() in (".pt", ".pth"):
            loaded = _load_torch_file(path)
        else:
            raise ValueError(
                f"{path}: not a model checkpoint (expected .safetensors, or .pt/.pth for the "
                "official Meta-SR model)"
            )
    elif path.exists():
        raise ValueError(f"{path}: not a file")
    elif os.sep in spec or path.suffix.lower() in (".safetensors", ".pt", ".pth"):
        raise FileNotFoundError(f"model file {spec}: no such file")
    else:
        from . import archs

        if spec.lower() not in archs.list_models():
            raise ValueError(
                f"model {spec!r}: no such file, and not 'default' or a registered architecture "
                f"({', '.join(archs.list_models())})"
            )
        warnings.warn(
            f"model {spec!r} is built with random weights; its output is not a real upscaling",
            stacklevel=2,
        )
        loaded = _finish(archs.create_model(spec), spec, spec.lower(), {}, {})
    if backend is not None:
        # Models keep the backend on themselves (MetaRDN, ...) or on their MetaUpsample heads.
        for m in loaded.model.modules():
            if hasattr(m, "backend"):
                m.backend = backend
    loaded.model.to(device=device, dtype=dtype)
    return loaded


def upscale_array(
    loaded: LoadedModel,
    data: np.ndarray,
    scale: object = None,
    size: object = None,
    kind: Literal["image", "field"] = "image",
    tile: int = 0,
    overlap: int = DEFAULT_OVERLAP,
    progress: bool = False,
) -> np.ndarray:
    """Upscale ``data`` ``(C, h, w)`` with a loaded model.

    Channels: when ``C`` equals the model's input channels they go through together. Otherwise
    (a gray image or one-channel field on an RGB model, a multi-channel field, ...) each channel
    goes through on its own, replicated to the model's input channels, and the mean of the
    output channels is kept; the channels are stacked as one batch. For a gray image on an RGB
    model this is the natural inverse of gray → RGB (the mean of three equal channels is the
    gray value; luma weights also sum to one and would differ only where the model invents
    colour).

    Values: ``kind="image"`` data is in 0..1 and is multiplied by the model's ``value_range``
    on the way in and divided on the way out (not clamped here); ``kind="field"`` data is passed
    through as it is: a model for fields expects its own normalisation.

    Returns:
        ``(C, H, W)`` float32.
    """
    model = loaded.model
    p = next(model.parameters())  # the device and dtype the model runs in
    C, h, w = data.shape
    cin, cout = loaded.in_channels, loaded.out_channels
    if C == cin:
        if cout != cin:
            raise ValueError(
                f"model {loaded.name} maps {cin} to {cout} channels; an image needs as many out"
            )
        x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None]
        per_channel = False
    elif cin in (1, 3):
        x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[:, None]
        x = x.expand(C, cin, h, w)
        per_channel = True
    else:
        raise ValueError(
            f"model {loaded.name} takes {cin} channels; the input has {C} "
            "(channels are run one by one only for 1- or 3-channel models)"
        )
    gain = loaded.value_range if kind == "image" else 1.0
    x = (x * gain).to(device=p.device, dtype=p.dtype)
    with torch.inference_mode():
        y = upscale(model, x, scale=scale, size=size, tile=tile, overlap=overlap, progress=progress)
    y = y.float().cpu() / gain
    y = y.mean(dim=1) if per_channel else y[0]  # (C, H, W)
    return y.numpy()


def upscale_alpha(alpha: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Bicubic upsampling of an alpha plane ``(h, w)`` in 0..1 to ``out_shape``, clamped."""
    a = torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32))[None, None]
    out = F.interpolate(a, size=out_shape, mode="bicubic", align_corners=False)
    return out[0, 0].clamp_(0.0, 1.0).numpy()


def upscale_raster(
    loaded: LoadedModel,
    raster: Raster,
    scale: object = None,
    size: object = None,
    tile: int = 0,
    overlap: int = DEFAULT_OVERLAP,
    normalize: Literal["none", "minmax"] = "none",
    progress: bool = False,
) -> Raster:
    """Upscale a whole :class:`metasr.io.Raster` (colour through the model, alpha bicubic).

    Args:
        normalize: for fields, ``"minmax"`` maps each channel's range to 0..1 before the model
            and back after it (for models trained on images); ``"none"`` passes values as they
            are. Images are always in 0..1.

    Returns:
        A raster of the same kind and dtype, ``(C, H, W)``.
    """
    data = raster.data
    kind = raster.kind
    if kind == "field" and normalize == "minmax":
        lo = data.min(axis=(1, 2), keepdims=True)
        span = data.max(axis=(1, 2), keepdims=True) - lo
        span = np.where(span > 0, span, 1.0)  # a constant channel stays constant
        y = upscale_array(loaded, (data - lo) / span, scale, size, "image", tile, overlap, progress)
        out = y.astype(np.float64) * span + lo
    else:
        out = upscale_array(loaded, data, scale, size, kind, tile, overlap, progress)
    alpha = None
    if raster.alpha is not None:
        alpha = upscale_alpha(raster.alpha, out.shape[1:])
    return raster.with_data(out, alpha)
