"""Apply a loaded model to whole images and arrays: value scaling, channels, alpha, tiling.

* :func:`upscale_array`: a ``(C, h, w)`` array of image values (0..1) or field values.
* :func:`upscale_raster`: a :class:`metasr.io.Raster` read from a file (colour through the
  model, alpha bicubic, optional min-max normalisation of fields).
* :func:`upscale_alpha`: the alpha plane alone.

Models come from :func:`metasr.checkpoints.load_model`. The conventions are listed in
``docs/usage.md``. Every public function checks its arguments (array type and layout, ``kind``,
``normalize``, the raster's sample type and alpha size) and raises one ``ValueError`` naming the
offending value.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoints import LoadedModel
from .io import Raster
from .tiling import DEFAULT_OVERLAP, upscale

__all__ = ["upscale_alpha", "upscale_array", "upscale_raster"]

#: Sample types an image raster can have (fields keep any numeric type).
_IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


def _check_chw(data: object, what: str) -> np.ndarray:
    """``data`` if it is a real-valued numeric ``(C, h, w)`` array with every side > 0."""
    if not isinstance(data, np.ndarray):
        raise ValueError(f"{what} must be a numpy array (C, h, w), got {type(data).__name__}")
    if data.ndim != 3:
        raise ValueError(f"{what}: expected an array (C, h, w), got shape {data.shape}")
    if data.dtype.kind not in "biuf":
        raise ValueError(f"{what} must hold real numbers, got dtype {data.dtype}")
    if 0 in data.shape:
        raise ValueError(f"{what} is empty: shape {data.shape}")
    return data


def _check_raster(raster: object) -> None:
    """Refuse a raster whose parts do not agree (see :class:`metasr.io.Raster`)."""
    if not isinstance(raster, Raster):
        raise ValueError(f"expected a metasr.io.Raster, got {type(raster).__name__}")
    data = _check_chw(raster.data, "raster.data")
    if raster.kind not in ("image", "field"):
        raise ValueError(f"raster.kind must be 'image' or 'field', got {raster.kind!r}")
    if raster.kind == "image" and np.dtype(raster.dtype) not in _IMAGE_DTYPES:
        raise ValueError(
            f"an image raster has samples of type uint8 or uint16, got {raster.dtype}; "
            "floating-point samples are a field (kind='field')"
        )
    if raster.alpha is not None:
        alpha = raster.alpha
        if not isinstance(alpha, np.ndarray) or alpha.shape != data.shape[1:]:
            shape = alpha.shape if isinstance(alpha, np.ndarray) else type(alpha).__name__
            raise ValueError(
                f"raster.alpha must be an array (h, w) = {data.shape[1:]} like the data, "
                f"got {shape}"
            )


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

    Raises:
        ValueError: ``data`` is not a numeric ``(C, h, w)`` array, ``kind`` is unknown, or the
            channels cannot be fed to the model.
    """
    _check_chw(data, "data")
    if kind not in ("image", "field"):
        raise ValueError(f"kind must be 'image' or 'field', got {kind!r}")
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
    """Bicubic upsampling of an alpha plane ``(h, w)`` in 0..1 to ``out_shape``, clamped.

    Raises:
        ValueError: ``alpha`` is not a non-empty numeric 2-D array, or ``out_shape`` is not
            two positive integers.
    """
    if not isinstance(alpha, np.ndarray) or alpha.ndim != 2 or 0 in alpha.shape:
        shape = alpha.shape if isinstance(alpha, np.ndarray) else type(alpha).__name__
        raise ValueError(f"alpha must be a non-empty array (h, w), got {shape}")
    if alpha.dtype.kind not in "biuf":
        raise ValueError(f"alpha must hold real numbers, got dtype {alpha.dtype}")
    if (
        not isinstance(out_shape, (tuple, list))
        or len(out_shape) != 2
        or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in out_shape)
        or min(out_shape) < 1
    ):
        raise ValueError(f"out_shape must be two positive integers (H, W), got {out_shape!r}")
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

    Raises:
        ValueError: ``normalize`` is unknown, or the raster is inconsistent: ``data`` not a
            numeric ``(C, h, w)`` array, an image whose sample type is not uint8/uint16, or an
            ``alpha`` of another size than the data.
    """
    if normalize not in ("none", "minmax"):
        raise ValueError(f"normalize must be 'none' or 'minmax', got {normalize!r}")
    _check_raster(raster)
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
        alpha = upscale_alpha(raster.alpha, (out.shape[1], out.shape[2]))
    return raster.with_data(out, alpha)
