"""Meta-RDN: the official Meta-SR model (RDN backbone + Meta-Upscale), and a loader for the
published checkpoint.

The module tree reproduces the official ``model/metardn.py`` (Meta-SR-Pytorch, branch 0.4.0) so
its state_dict keys and shapes are identical::

    sub_mean.{weight,bias}              MeanShift, (C,C,1,1) / (C,)
    add_mean.{weight,bias}
    SFENet1.{weight,bias}               Conv(Cin, G0, k)
    SFENet2.{weight,bias}               Conv(G0, G0, k)
    RDBs.{d}.convs.{c}.conv.0.*         Conv(G0 + c·G, G, k) + ReLU, d < D, c < C
    RDBs.{d}.LFF.*                      Conv(G0 + C·G, G0, 1)
    GFF.0.*, GFF.1.*                    Conv(D·G0, G0, 1), Conv(G0, G0, k)
    P2W.meta_block.{0,2}.*              Linear(P, 256), Linear(256, 3·3·G0·Cout)

except that the head's predictor is ``upsample.phi.meta_block.*`` here, the head of every metasr
network (:class:`metasr.MetaUpsample`); the official ``P2W.*`` names are renamed on load
(:func:`metasr.archs.base.upgrade_state_dict`).

Input convention (as the official code, ``rgb_range``): pixel values in ``[0, img_range]``
(255 for the published model); ``sub_mean`` subtracts ``img_range · mean`` and ``add_mean`` adds
it back, so the output is in the same range.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._state_dict import clean_state_dict, describe_mismatch
from ..modules import HeadConfig, fold_head_options
from ..validation import check_positive_float, check_positive_int
from ._registry import register_model
from .base import MeanShift, MeanShiftMetaSRNet, resolve_mean, upgrade_state_dict

__all__ = ["MetaRDN", "load_official_metardn"]


class _RDBConv(nn.Module):
    """Densely connected layer ``cat(x, ReLU(conv(x)))``: ``(N, Cin, H, W) → (N, Cin+G, H, W)``."""

    def __init__(self, in_channels: int, growth: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, growth, kernel_size, padding=kernel_size // 2),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.conv(x)), 1)


class _RDB(nn.Module):
    """Residual dense block: ``C`` dense layers, 1×1 local feature fusion, local residual.

    Shape:
        ``(N, G0, H, W)`` → ``(N, G0, H, W)``.
    """

    def __init__(self, g0: int, growth: int, n_layers: int, kernel_size: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            *[_RDBConv(g0 + c * growth, growth, kernel_size) for c in range(n_layers)]
        )
        self.LFF = nn.Conv2d(g0 + n_layers * growth, g0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LFF(self.convs(x)) + x


@register_model("meta_rdn")
class MetaRDN(MeanShiftMetaSRNet):
    """Meta-RDN (Hu et al., CVPR 2019): RDN features + Meta-Upscale to any scale or size.

    Defaults are RDN configuration B of the paper (``G0=64, D=16, C=8, G=64``), whose
    state_dict matches the official ``model_1000.pt`` key for key; load that file with
    :func:`load_official_metardn`. New models should train with the default
    ``pos_encoding="asymmetric"`` (separate vertical/horizontal scales).

    Args:
        in_channels: input channels (3 for RGB, 1 for gridded data).
        out_channels: output channels.
        G0: feature width of the RDN.
        D: number of residual dense blocks.
        C: dense layers per block.
        G: growth rate of a dense layer.
        kernel_size: kernel size of the RDN convolutions (``RDNkSize``).
        img_range: inputs are in ``[0, img_range]`` (official ``rgb_range``: 255).
        mean: per-channel mean in ``[0, 1]`` units, subtracted (×``img_range``) by ``sub_mean``
            and added back by ``add_mean``; ``None``: DIV2K RGB mean for 3 channels, else 0.
        upsample: the Meta-Upscale head's options (:class:`metasr.HeadConfig`, or a mapping of
            its fields; default: the paper's head). Option files and checkpoint metadata may
            spell them flat (``hidden``, ``meta_kernel_size``, ...:
            :func:`metasr.modules.fold_head_options`).
        bicubic_residual: add ``bicubic(x)`` to the output (global residual; the head's last
            layer starts ×0.1). Off for the paper model.
        periodic_lon: periodic in longitude (the width): every padded convolution wraps along
            the width (zero padding along the height), and so do the bicubic residual and the
            head's window. State_dict keys are those of the non-periodic network.

    Shape:
        forward: ``x (N, in_channels, h, w)`` → ``(N, out_channels, H, W)``.
    """

    # A channels-last input measured 1.4x faster on CPU (docs/benchmarks.md).
    channels_last_cpu = True

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        G0: int = 64,
        D: int = 16,
        C: int = 8,
        G: int = 64,
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
        G0, D, C, G = (
            check_positive_int(n, v) for n, v in (("G0", G0), ("D", D), ("C", C), ("G", G))
        )
        k = check_positive_int("kernel_size", kernel_size)
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.img_range = check_positive_float("img_range", img_range)
        self.G0, self.D, self.C, self.G = G0, D, C, G

        # Registration order = the official state_dict order.
        self.sub_mean = MeanShift(
            in_channels, self.img_range, resolve_mean(mean, in_channels, "input"), -1
        )
        self.add_mean = MeanShift(
            out_channels, self.img_range, resolve_mean(mean, out_channels, "output"), 1
        )
        self.SFENet1 = nn.Conv2d(in_channels, G0, k, padding=k // 2)
        self.SFENet2 = nn.Conv2d(G0, G0, k, padding=k // 2)
        self.RDBs = nn.ModuleList([_RDB(G0, G, C, k) for _ in range(D)])
        self.GFF = nn.Sequential(nn.Conv2d(D * G0, G0, 1), nn.Conv2d(G0, G0, k, padding=k // 2))
        self._init_head(G0, head)
        self._wrap_backbone_longitude()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """RDN features of the mean-shifted input: ``(N, Cin, h, w)`` → ``(N, G0, h, w)``."""
        f1 = self.SFENet1(x)
        h = self.SFENet2(f1)
        outs = []
        for rdb in self.RDBs:
            h = rdb(h)
            outs.append(h)
        return self.GFF(torch.cat(outs, 1)) + f1

    def extra_repr(self) -> str:
        return (
            f"G0={self.G0}, D={self.D}, C={self.C}, G={self.G}, img_range={self.img_range:g}, "
            f"pos_encoding={self.pos_encoding!r}, backend={self.backend!r}, "
            f"arithmetic={self.arithmetic!r}, bicubic_residual={self.bicubic_residual}, "
            f"periodic_lon={self.periodic_lon}"
        )


def _infer_rdn_config(sd: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """RDN hyper-parameters from the shapes in an official state_dict."""
    needed = (
        "SFENet1.weight",
        "add_mean.weight",
        "RDBs.0.convs.0.conv.0.weight",
        "upsample.phi.meta_block.2.weight",  # P2W.meta_block.2.weight in the official names
    )
    missing = [k for k in needed if k not in sd]
    if missing:
        raise ValueError(
            f"not an official MetaRDN checkpoint: missing {missing} "
            f"(found keys such as {sorted(sd)[:5]})"
        )
    try:
        D = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("RDBs."))
        C = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("RDBs.0.convs."))
    except (IndexError, ValueError) as exc:
        raise ValueError(f"not an official MetaRDN checkpoint: malformed RDB keys ({exc})") from exc
    sfe = sd["SFENet1.weight"]
    if sfe.dim() != 4:
        raise ValueError(f"SFENet1.weight must be 4-D, got shape {tuple(sfe.shape)}")
    return {
        "in_channels": sfe.shape[1],
        "out_channels": sd["add_mean.weight"].shape[0],
        "G0": sfe.shape[0],
        "D": D,
        "C": C,
        "G": sd["RDBs.0.convs.0.conv.0.weight"].shape[0],
        "kernel_size": sfe.shape[-1],
    }


def load_official_metardn(
    path: str | os.PathLike[str] | Mapping[str, Any], **kwargs: Any
) -> MetaRDN:
    """Load an official Meta-SR-Pytorch MetaRDN checkpoint (e.g. ``model_1000.pt``).

    The RDN configuration (A or B, channels) is read from the tensor shapes; the model is built
    with ``pos_encoding="official"`` and the weights are loaded strictly. Inputs are RGB in
    ``[0, 255]`` as in the official code; use ``arithmetic="official"`` for bit-level agreement
    with the published output grid at scales such as 2.3 or 3.7.

    Args:
        path: a file saved with ``torch.save`` holding the raw state_dict or a dict wrapping one
            (under ``params_ema``/``params``/``state_dict``/``model``/...; ``module.`` prefixes
            removed, see :func:`metasr._state_dict.clean_state_dict`), or such a mapping itself.
        **kwargs: further :class:`MetaRDN` arguments (``upsample={"backend": ...}``, or the head's
            options flat: ``backend``, ``arithmetic``, ...).

    Returns:
        The :class:`MetaRDN`, in training mode like any new module.

    Raises:
        ValueError: if the file cannot be read, is not a dict of tensors, or its keys or shapes
            differ from the official MetaRDN's (the message lists missing/unexpected/mismatched).
    """
    if isinstance(path, Mapping):
        obj: object = path
    else:
        try:
            obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling errors have many types; report them uniformly
            raise ValueError(f"could not read checkpoint {os.fspath(path)!r}: {exc}") from exc
    sd, _ = clean_state_dict(obj)
    sd = upgrade_state_dict(sd)  # the official P2W.* names are the head's upsample.phi.*
    config = _infer_rdn_config(sd)
    kwargs = fold_head_options(kwargs)
    given = kwargs.pop("upsample", None)
    fixed = [k for k in ("pos_encoding", *config) if k in kwargs]
    if isinstance(given, Mapping) and "pos_encoding" in given:
        fixed.append("pos_encoding")
    if fixed:
        raise ValueError(f"load_official_metardn: {fixed[0]!r} is fixed by the checkpoint")
    head = dataclasses.replace(HeadConfig.of(given), pos_encoding="official")
    model = MetaRDN(**config, upsample=head, **kwargs)
    mismatch = describe_mismatch(model.state_dict(), sd)
    if mismatch is not None:
        raise ValueError(
            f"checkpoint does not match MetaRDN(G0={config['G0']}, D={config['D']}, "
            f"C={config['C']}, G={config['G']}): {mismatch}"
        )
    model.load_state_dict(sd, strict=True)
    return model
