"""BasicSR metric functions for the arbitrary-scale protocol (:mod:`metasr.metrics`).

BasicSR calls a metric as ``fn(img=..., img2=..., **metric_options)``. These accept both what
:class:`MetaSRModel` passes (tensors ``(C, H, W)``, RGB in 0..1 or raw field values, plus the
sample's ``scale``) and what BasicSR's own models pass (``tensor2img`` output: uint8 ``HWC``
BGR in 0..255), so they also work in a plain ``SRModel`` option file.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ... import metrics as _m

__all__ = ["calculate_psnr_metasr", "calculate_ssim_metasr"]


def _to_chw(img: Any, input_order: str) -> tuple[torch.Tensor, bool]:
    """``(tensor (C, H, W) or (N, C, H, W), came_from_basicsr_uint8_convention)``."""
    if isinstance(img, torch.Tensor):
        return img, False
    arr = np.asarray(img).astype(np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    elif input_order == "HWC":
        arr = arr.transpose(2, 0, 1)
    if arr.shape[0] == 3:  # BasicSR images are BGR (OpenCV order)
        arr = arr[::-1]
    return torch.from_numpy(np.ascontiguousarray(arr / 255.0)), True


def _call(fn, img, img2, scale, crop_border, test_y_channel, data_range, input_order) -> float:
    a, _ = _to_chw(img, input_order)
    b, _ = _to_chw(img2, input_order)
    if isinstance(scale, torch.Tensor):
        scale = tuple(float(v) for v in scale.flatten()[:2])
    if scale is None and crop_border is None:
        raise ValueError("metasr metrics need the sample's 'scale' or an explicit 'crop_border'")
    if isinstance(crop_border, list):
        crop_border = tuple(crop_border)
    value = fn(
        a,
        b,
        scale=scale,
        crop_border=crop_border,
        y_channel=test_y_channel,
        data_range=1.0 if data_range is None else data_range,
    )
    return float(value.mean())


def calculate_psnr_metasr(
    img: Any,
    img2: Any,
    scale: Any = None,
    crop_border: int | tuple[int, int] | None = None,
    test_y_channel: bool | None = None,
    data_range: float | str | None = None,
    input_order: str = "HWC",
    **kwargs: Any,
) -> float:
    """PSNR with border ``ceil(r_v)`` rows / ``ceil(r_h)`` columns (or ``crop_border``).

    ``test_y_channel``: None → Y for RGB, raw values otherwise. ``data_range``: peak value
    (default 1 on 0..1 images) or ``"gt"`` (``max − min`` of the ground truth, raw fields).
    """
    return _call(_m.psnr, img, img2, scale, crop_border, test_y_channel, data_range, input_order)


def calculate_ssim_metasr(
    img: Any,
    img2: Any,
    scale: Any = None,
    crop_border: int | tuple[int, int] | None = None,
    test_y_channel: bool | None = None,
    data_range: float | str | None = None,
    input_order: str = "HWC",
    **kwargs: Any,
) -> float:
    """SSIM (11×11 Gaussian, σ 1.5) with the same border and channel rules as PSNR."""
    return _call(_m.ssim, img, img2, scale, crop_border, test_y_channel, data_range, input_order)
