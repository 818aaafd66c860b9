"""Padding of the LR features around the ``k×k`` window: zeros, or periodic along width.

With ``periodic_lon`` (global latitude/longitude grids) the window of LR column ``j'`` reads
columns ``(j' + dx) mod w``: the 0°/360° seam is continuous, as the Earth is. Rows keep zero
padding (the poles do not wrap). Every backend pads through this module, so the spec
(:mod:`.naive`) and the fast paths agree by construction on what lies outside the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["lr_conv2d", "pad_window", "wrap_columns"]


def wrap_columns(x: torch.Tensor, p: int) -> torch.Tensor:
    """``x`` extended by ``p`` columns on each side, taken periodically.

    Unlike ``F.pad(mode="circular")`` this allows ``p > w`` (the index wraps more than once).

    Args:
        x: ``(N, C, h, w)``.
        p: columns added on each side.

    Returns:
        ``(N, C, h, w + 2p)`` with column ``c`` equal to ``x[..., (c - p) mod w]``
        (differentiable; the gradient of a wrapped column adds to its source).
    """
    if p == 0:
        return x
    w = x.shape[3]
    idx = torch.arange(-p, w + p, device=x.device) % w
    return x.index_select(3, idx)


def pad_window(x: torch.Tensor, k: int, periodic_lon: bool) -> torch.Tensor:
    """``x`` padded by ``k // 2`` on every side: zeros, or periodic along width.

    Args:
        x: ``(N, C, h, w)``.
        k: odd window size.
        periodic_lon: wrap the columns instead of zero padding them.

    Returns:
        ``(N, C, h + 2p, w + 2p)``, ``p = k // 2``.
    """
    p = k // 2
    if not periodic_lon:
        return F.pad(x, [p] * 4)
    return F.pad(wrap_columns(x, p), [0, 0, p, p])


def lr_conv2d(x: torch.Tensor, weight: torch.Tensor, periodic_lon: bool) -> torch.Tensor:
    """``conv2d(x, weight)`` with "same" padding: zeros, or periodic along width.

    Args:
        x: ``(N, Cin, h, w)``.
        weight: ``(Cout', Cin, k, k)``, ``k`` odd.
        periodic_lon: wrap the columns instead of zero padding them.

    Returns:
        ``(N, Cout', h, w)`` (memory format follows cuDNN's choice for ``x``).
    """
    p = weight.shape[-1] // 2
    if not periodic_lon:
        return F.conv2d(x, weight, padding=p)
    xw = wrap_columns(x, p)
    if x.is_contiguous(memory_format=torch.channels_last):
        # index_select returns a contiguous tensor; keep the caller's channels-last layout.
        xw = xw.contiguous(memory_format=torch.channels_last)
    return F.conv2d(xw, weight, padding=(p, 0))
