"""Meta-EDSR: EDSR backbone + Meta-Upscale (the Meta-SR authors' ``model/metaedsr.py`` layout).

State_dict keys follow the official Meta-EDSR, so its checkpoints load::

    sub_mean.*, add_mean.*              MeanShift (frozen 1×1 convs)
    head.0.*                            Conv(Cin, F, 3)
    body.{i}.body.{0,2}.*               residual blocks: Conv, ReLU, Conv  (i < n_resblocks)
    body.{n_resblocks}.*                Conv(F, F, 3) closing the body
    P2W.meta_block.{0,2}.*              Linear(P, hidden), Linear(hidden, 3·3·F·Cout)

except that the head's predictor is ``upsample.phi.meta_block.*`` here, the head of every metasr
network (:class:`metasr.MetaUpsample`); the official ``P2W.*`` names are renamed on load
(:func:`metasr.archs.base.upgrade_state_dict`).

Input convention (EDSR-PyTorch ``rgb_range``): values in ``[0, img_range]``; ``sub_mean``
subtracts ``img_range · mean``, ``add_mean`` adds it back. Use ``img_range=1`` for data in
``[0, 1]`` (BasicSR), 255 for 8-bit values as in the official code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..modules import HeadConfig
from ..validation import check_positive_float, check_positive_int
from ._registry import register_model
from .base import MeanShift, MeanShiftMetaSRNet, resolve_mean

__all__ = ["MetaEDSR"]


class _ResBlock(nn.Module):
    """EDSR residual block without batch norm: ``x + res_scale · conv(ReLU(conv(x)))``.

    Shape:
        ``(N, F, H, W)`` → ``(N, F, H, W)``.
    """

    def __init__(self, n_feats: int, kernel_size: int, res_scale: float) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.body = nn.Sequential(
            nn.Conv2d(n_feats, n_feats, kernel_size, padding=pad),
            nn.ReLU(inplace=True),
            nn.Conv2d(n_feats, n_feats, kernel_size, padding=pad),
        )
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.body(x)
        if self.res_scale != 1.0:
            res = res * self.res_scale
        return res + x


@register_model("meta_edsr_tiny", n_resblocks=6, n_feats=32, img_range=1.0, bicubic_residual=True)
@register_model("meta_edsr")
class MetaEDSR(MeanShiftMetaSRNet):
    """Meta-EDSR: an EDSR backbone (default: EDSR-baseline, 16 blocks × 64 features,
    ``res_scale`` 1) with a Meta-Upscale head.

    Registered as ``"meta_edsr"`` (EDSR-baseline, official conventions) and ``"meta_edsr_tiny"``
    (6 blocks × 32 features, inputs in ``[0, 1]``, bicubic residual: the small CPU-trainable
    default model of ``docs/design.md`` §7).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        n_resblocks: residual blocks in the body.
        n_feats: feature width.
        res_scale: residual scaling inside each block (0.1 for the large EDSR).
        kernel_size: convolution kernel size of the backbone.
        img_range: inputs are in ``[0, img_range]`` (official ``rgb_range``: 255).
        mean: per-channel mean in ``[0, 1]`` units; ``None``: DIV2K RGB mean for 3 channels,
            else 0.
        upsample: the Meta-Upscale head's options (:class:`metasr.HeadConfig`, or a mapping of
            its fields; default: the paper's head). Option files and checkpoint metadata may
            spell them flat (``hidden``, ``meta_kernel_size``, ...:
            :func:`metasr.modules.fold_head_options`).
        bicubic_residual: add ``bicubic(x)`` to the output; the head's last layer starts ×0.1.
        periodic_lon: periodic in longitude (the width): every padded convolution wraps along
            the width (zero padding along the height), and so do the bicubic residual and the
            head's window. State_dict keys are those of the non-periodic network.

    Shape:
        forward: ``x (N, in_channels, h, w)`` → ``(N, out_channels, H, W)``.
    """

    # A channels-last input measured 1.3-1.7x faster on CPU (docs/benchmarks.md).
    channels_last_cpu = True

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        n_resblocks: int = 16,
        n_feats: int = 64,
        res_scale: float = 1.0,
        kernel_size: int = 3,
        img_range: float = 255.0,
        mean: float | Sequence[float] | None = None,
        upsample: HeadConfig | Mapping[str, Any] | None = None,
        bicubic_residual: bool = False,
        periodic_lon: bool = False,
    ) -> None:
        super().__init__()
        head = self._init_meta_options(
            in_channels, out_channels, upsample, bicubic_residual, periodic_lon
        )
        self.n_resblocks = check_positive_int("n_resblocks", n_resblocks)
        self.n_feats = check_positive_int("n_feats", n_feats)
        self.res_scale = check_positive_float("res_scale", res_scale)
        k = check_positive_int("kernel_size", kernel_size)
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.img_range = check_positive_float("img_range", img_range)

        # Registration order = the official state_dict order.
        self.sub_mean = MeanShift(
            in_channels, self.img_range, resolve_mean(mean, in_channels, "input"), -1
        )
        self.head = nn.Sequential(nn.Conv2d(in_channels, n_feats, k, padding=k // 2))
        self.body = nn.Sequential(
            *[_ResBlock(n_feats, k, self.res_scale) for _ in range(n_resblocks)],
            nn.Conv2d(n_feats, n_feats, k, padding=k // 2),
        )
        self.add_mean = MeanShift(
            out_channels, self.img_range, resolve_mean(mean, out_channels, "output"), 1
        )
        self._init_head(n_feats, head)
        self._wrap_backbone_longitude()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """EDSR features of the mean-shifted input: ``(N, Cin, h, w)`` → ``(N, F, h, w)``."""
        f = self.head(x)
        return self.body(f) + f

    def extra_repr(self) -> str:
        return (
            f"n_resblocks={self.n_resblocks}, n_feats={self.n_feats}, "
            f"res_scale={self.res_scale:g}, img_range={self.img_range:g}, "
            f"pos_encoding={self.pos_encoding!r}, backend={self.backend!r}, "
            f"bicubic_residual={self.bicubic_residual}, periodic_lon={self.periodic_lon}"
        )
