"""PSNR and SSIM under the arbitrary-scale SR protocol (Meta-SR / ArbSR).

* Border shave per axis: ``ceil(r_v)`` rows and ``ceil(r_h)`` columns on each side (BasicSR's
  ``calculate_psnr/ssim`` take one integer ``crop_border``, which cannot express ``1.5×4``).
* RGB images: on the Y channel of ITU-R BT.601 YCbCr (``Y = 16 + 65.481 R + 128.553 G +
  24.966 B`` for R, G, B in 0..1), as MATLAB's ``rgb2ycbcr`` and BasicSR; other channel counts
  (1-channel data, raw fields): on the values themselves.
* SSIM: Wang et al. with an 11×11 Gaussian window (σ = 1.5), ``K1 = 0.01``, ``K2 = 0.03``,
  "valid" filtering, averaged over channels — BasicSR's ``calculate_ssim`` (MATLAB's reference).

Computed with torch in float64. For images with values in 0..1 and ``data_range=1`` the numbers
equal BasicSR's (which works in 0..255); ``tests/test_metrics.py`` checks this. For raw fields
pass ``data_range="gt"`` to use the ground truth's ``max − min``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .validation import ArgumentTypeError, is_real

__all__ = [
    "border_shave",
    "format_table",
    "psnr",
    "quantize_8bit",
    "rgb_to_y",
    "shave",
    "ssim",
]

DataRange = float | Literal["gt"]


def border_shave(scale: object) -> tuple[int, int]:
    """``(ceil(r_v), ceil(r_h))`` for a scale number or pair (the protocol's border)."""
    if isinstance(scale, (tuple, list)) and len(scale) == 2:
        r_v, r_h = float(scale[0]), float(scale[1])
    else:
        r_v = r_h = float(scale)  # type: ignore[arg-type]
    # The 1e-9 keeps ceil(3.0000000000000004) at 3 for scales computed as H/h.
    return math.ceil(r_v - 1e-9), math.ceil(r_h - 1e-9)


def _as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    t = t.detach().to("cpu", torch.float64)
    if t.dim() == 2:
        t = t[None, None]
    elif t.dim() == 3:
        t = t[None]
    elif t.dim() != 4:
        raise ValueError(f"expected (H, W), (C, H, W) or (N, C, H, W), got shape {tuple(t.shape)}")
    return t


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Round an image in 0..1 to the 256 levels of an 8-bit file, keeping its dtype and shape.

    The protocol scores the image a user would save (as BasicSR's ``tensor2img``), and generated
    LR images are rounded the same way, as an LR file saved as PNG would be. This is the one
    place that does it: ``clamp(0, 1)``, ``·255``, round half to even, ``/255``.
    """
    return x.clamp(0, 1).mul(255.0).round().div(255.0)


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """Y of BT.601 YCbCr, divided by 255: ``(N, 3, H, W)`` RGB in 0..1 → ``(N, 1, H, W)``."""
    w = torch.tensor([65.481, 128.553, 24.966], dtype=x.dtype, device=x.device)
    return ((x * w.view(1, 3, 1, 1)).sum(1, keepdim=True) + 16.0) / 255.0


def shave(x: torch.Tensor, border: tuple[int, int]) -> torch.Tensor:
    """Drop ``border[0]`` rows and ``border[1]`` columns on each side of ``(..., H, W)``."""
    bv, bh = border
    H, W = x.shape[-2:]
    if 2 * bv >= H or 2 * bh >= W:
        raise ValueError(f"a {H}x{W} image has nothing left after shaving {bv} rows/{bh} columns")
    return x[..., bv : H - bv, bh : W - bh]


def _prepare(
    sr: torch.Tensor | np.ndarray,
    hr: torch.Tensor | np.ndarray,
    scale: object,
    crop_border: int | tuple[int, int] | None,
    y_channel: bool | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_tensor(sr), _as_tensor(hr)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if crop_border is not None:
        border = (crop_border, crop_border) if isinstance(crop_border, int) else crop_border
    elif scale is not None:
        border = border_shave(scale)
    else:
        border = (0, 0)
    a, b = shave(a, border), shave(b, border)
    if y_channel is None:
        y_channel = a.shape[1] == 3
    if y_channel:
        if a.shape[1] != 3:
            raise ValueError(f"Y channel needs 3 (RGB) channels, got {a.shape[1]}")
        a, b = rgb_to_y(a), rgb_to_y(b)
    return a, b


def _range(b: torch.Tensor, data_range: DataRange) -> torch.Tensor:
    """Per-sample peak value ``(N,)``."""
    if data_range == "gt":
        flat = b.flatten(1)
        rng = flat.amax(1) - flat.amin(1)
        if bool((rng <= 0).any()):
            raise ValueError("data_range='gt' needs a ground truth that is not constant")
        return rng
    if not is_real(data_range):  # another string than "gt" is a bad value of the right type
        if isinstance(data_range, str):
            raise ValueError(f"data_range must be > 0 or 'gt', got {data_range!r}")
        raise ArgumentTypeError(f"data_range must be a number or 'gt', got {data_range!r}")
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0 or 'gt', got {data_range!r}")
    return torch.full((b.shape[0],), float(data_range), dtype=b.dtype)


def psnr(
    sr: torch.Tensor | np.ndarray,
    hr: torch.Tensor | np.ndarray,
    scale: object = None,
    crop_border: int | tuple[int, int] | None = None,
    y_channel: bool | None = None,
    data_range: DataRange = 1.0,
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image.

    Args:
        sr, hr: ``(H, W)``, ``(C, H, W)`` or ``(N, C, H, W)``, same shape.
        scale: ``r`` or ``(r_v, r_h)``: shave ``ceil(r_v)`` rows and ``ceil(r_h)`` columns.
        crop_border: explicit border (int or ``(rows, cols)``) instead of ``scale``.
        y_channel: on BT.601 Y; default: True for 3 channels, False otherwise.
        data_range: peak value (1.0 for images in 0..1), or ``"gt"`` for ``max − min`` of the
            ground truth (raw fields).

    Returns:
        ``(N,)`` float64 (``inf`` where the images are identical).
    """
    a, b = _prepare(sr, hr, scale, crop_border, y_channel)
    peak = _range(b, data_range)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(peak.pow(2) / mse)


def _gaussian_window(dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(11, dtype=dtype) - 5.0
    g = torch.exp(-(x**2) / (2 * 1.5**2))
    return g / g.sum()


def ssim(
    sr: torch.Tensor | np.ndarray,
    hr: torch.Tensor | np.ndarray,
    scale: object = None,
    crop_border: int | tuple[int, int] | None = None,
    y_channel: bool | None = None,
    data_range: DataRange = 1.0,
) -> torch.Tensor:
    """Structural similarity (mean SSIM map, averaged over channels), per image.

    Arguments as :func:`psnr`. The shaved images must be at least 11×11.

    Returns:
        ``(N,)`` float64.
    """
    a, b = _prepare(sr, hr, scale, crop_border, y_channel)
    if a.shape[-2] < 11 or a.shape[-1] < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after shaving, got {tuple(a.shape)}")
    peak = _range(b, data_range).view(-1, 1, 1, 1)
    c1 = (0.01 * peak) ** 2
    c2 = (0.03 * peak) ** 2
    n, c = a.shape[:2]
    g = _gaussian_window(a.dtype)
    # Separable valid Gaussian filtering of every channel (grouped convolution).
    kv = g.view(1, 1, 11, 1).repeat(c, 1, 1, 1)
    kh = g.view(1, 1, 1, 11).repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kv, groups=c), kh, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    s_aa = blur(a * a) - mu_a**2
    s_bb = blur(b * b) - mu_b**2
    s_ab = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * s_ab + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2)
    return (num / den).flatten(2).mean(2).mean(1).view(n)


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Fixed-width text table of result ``rows`` (dicts) over ``columns``; floats to 4 places."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "inf" if math.isinf(v) else f"{v:.4f}"
        return str(v)

    body = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)
