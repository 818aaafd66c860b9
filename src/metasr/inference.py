"""Apply a loaded model to whole images and arrays: value scaling, channels, alpha, tiling.

* :func:`upscale_array`: a ``(C, h, w)`` array of image values (0..1) or field values.
* :func:`upscale_raster`: a :class:`metasr.io.Raster` read from a file (colour through the
  model, alpha bicubic, optional min-max normalisation of fields).
* :func:`upscale_alpha`: the alpha plane alone.
* :func:`estimate_upscale` / :func:`check_upscale_memory`: the memory a call of
  :func:`upscale_array` needs, and its refusal before any work when that is more than is free.

Models come from :func:`metasr.checkpoints.load_model`. The conventions are listed in
``docs/usage.md``. Every public function checks its arguments (array type and layout, ``kind``,
``normalize``, the raster's sample type and alpha size) and raises one ``ValueError`` naming the
offending value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoints import LoadedModel
from .io import Raster
from .tiling import DEFAULT_OVERLAP, upscale

__all__ = [
    "UpscaleEstimate",
    "check_upscale_memory",
    "estimate_upscale",
    "upscale_alpha",
    "upscale_array",
    "upscale_raster",
]


@dataclass(frozen=True)
class UpscaleEstimate:
    """What :func:`estimate_upscale` counts for one input.

    Attributes:
        output_size: ``(H, W)``.
        host_bytes: the result and its copies on the host (float32 output, the division by the
            value range, per-channel means and the conversion for writing).
        work_bytes: the working set of the largest tile (the whole input without tiling) on the
            model's device: the backend's estimate of the Meta-Upscale head (output included),
            the network's output-sized copies and twice the head's input features (a lower
            bound of the backbone's, which depends on the architecture).
        device: the model's device.
    """

    output_size: tuple[int, int]
    host_bytes: int
    work_bytes: int
    device: torch.device


def estimate_upscale(
    loaded: LoadedModel,
    in_shape: tuple[int, int, int],
    scale: object = None,
    size: object = None,
    tile: int = 0,
    overlap: int = DEFAULT_OVERLAP,
) -> UpscaleEstimate:
    """Memory that :func:`upscale_array` of an input ``(C, h, w)`` needs, computed from shapes.

    Nothing of the output's size is allocated: the request is first checked against the pixel
    cap (:func:`metasr.geometry.resolve_output_size`), then only per-row/column tables exist.

    Raises:
        ValueError: for a bad request or an output over the pixel cap, or when no backend can
            run the head for reasons other than memory.
    """
    from .geometry import build_geometry, resolve_output_size
    from .ops.meta_upscale import _autocast_dtype
    from .ops.meta_upscale._dispatch import select_backend
    from .ops.meta_upscale.params import MLPParams
    from .tiling import plan_axis, tile_region

    C, h, w = in_shape
    model = loaded.model
    p = next(model.parameters())
    H, W, _, _ = resolve_output_size(h, w, scale=scale, size=size)
    n = 1 if C == loaded.in_channels else C
    cout = loaded.out_channels
    host = 2 * n * cout * H * W * 4 + 3 * C * H * W * 4
    geom = build_geometry(
        h, w, scale=scale, size=size, pos_encoding=model.pos_encoding, arithmetic=model.arithmetic
    )
    if tile and (tile < h or tile < w):
        overlap = max(overlap, model.min_tile_overlap)

        def largest(tiles):
            return max(tiles, key=lambda t: (t.out_hi - t.out_lo, t.in_hi - t.in_lo))

        rt = largest(plan_axis(geom.row_idx, h, tile, overlap, model.tile_alignment))
        ct = largest(plan_axis(geom.col_idx, w, tile, overlap, model.tile_alignment))
        geom = geom.cut(tile_region(geom, rt, ct))
    else:
        host -= n * cout * H * W * 4  # the whole-image result is the device's output, moved
    p2w = model.pos2weight
    dtype = _autocast_dtype(p.device.type) or p.dtype
    probe = torch.zeros(1, dtype=dtype, device=p.device).expand(n, p2w.in_channels, geom.h, geom.w)
    params = MLPParams.from_module(p2w, dtype)
    backend = select_backend(
        getattr(model, "backend", "auto"), probe, params, geom, check_memory=False
    )
    out = n * cout * geom.H * geom.W * probe.element_size()
    features = n * p2w.in_channels * geom.h * geom.w * probe.element_size()
    work = backend.estimate_bytes(probe, params, geom) + out * (3 if model.bicubic_residual else 1)
    return UpscaleEstimate((H, W), host, work + 2 * features, p.device)


def check_upscale_memory(
    loaded: LoadedModel,
    in_shape: tuple[int, int, int],
    scale: object = None,
    size: object = None,
    tile: int = 0,
    overlap: int = DEFAULT_OVERLAP,
) -> UpscaleEstimate | None:
    """Refuse, before any work, an :func:`upscale_array` call that cannot fit in free memory.

    Tiling is suggested only when a smaller tile would fit: not when the result alone is too
    large for the host, nor when the tile is already as small as the suggestions go (64).

    Returns:
        The :func:`estimate_upscale` of the call, when it fits (or free memory is unknown);
        ``None`` for an exported (ONNX) model, whose runtime plans its own memory and which
        checks its one input size and request itself.

    Raises:
        ValueError: one line with the estimate and the free memory, as :func:`estimate_upscale`.
    """
    from .ops.memory import available_memory_bytes, gib

    if loaded.format == "onnx":
        return None
    est = estimate_upscale(loaded, in_shape, scale, size, tile, overlap)
    cpu = torch.device("cpu")
    on_host = est.device.type == "cpu"

    def fits(e: UpscaleEstimate) -> bool:
        free_host = available_memory_bytes(cpu)
        host_need = e.host_bytes + (e.work_bytes if on_host else 0)
        if free_host is not None and host_need > free_host:
            return False
        if not on_host:
            free_dev = available_memory_bytes(e.device)
            return free_dev is None or e.work_bytes <= free_dev
        return True

    if fits(est):
        return est
    (H, W), (_, h, w) = est.output_size, in_shape
    where = "per tile" if tile and (tile < h or tile < w) else "whole"
    msg = (
        f"upscaling {h}x{w} to {H}x{W} needs about {gib(est.host_bytes)} on the host for the "
        f"result and {gib(est.work_bytes)} on {est.device.type} to compute it ({where}), but "
        f"{est.device.type} has {gib(available_memory_bytes(est.device) or 0)} free"
    )
    if not on_host:
        msg += f" and the host {gib(available_memory_bytes(cpu) or 0)}"
    free_host = available_memory_bytes(cpu)
    if free_host is None or est.host_bytes <= free_host:
        current = tile if tile and (tile < h or tile < w) else max(h, w)
        for t in (512, 256, 128, 64):
            if t < current and fits(estimate_upscale(loaded, in_shape, scale, size, t, overlap)):
                msg += f"; tiles of {t} (--tile {t}) would fit"
                break
    raise ValueError(msg)


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
