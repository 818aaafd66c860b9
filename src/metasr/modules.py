"""``nn.Module`` front-ends of the Meta-Upscale op: ``Pos2Weight`` and ``MetaUpsample``."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from .geometry import POS_ENCODINGS, Arithmetic, CoordinateGrid, Region
from .ops.meta_upscale import meta_upscale
from .ops.meta_upscale._dispatch import check_backend_name

__all__ = ["MetaUpsample", "Pos2Weight"]


def _positive_int(name: str, value: object) -> int:
    """``value`` (any integer, NumPy's included; not a bool) as an ``int`` ≥ 1, or ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Pos2Weight(nn.Module):
    """Weight-prediction MLP of Meta-SR: position → ``k·k·Cin·Cout`` filter weights.

    ``meta_block = Sequential(Linear(P, hidden), ReLU, Linear(hidden, k·k·Cin·Cout))`` with
    ``P = 4`` for ``pos_encoding="asymmetric"`` ``(Δv, Δh, 1/r_v, 1/r_h)`` and ``P = 3`` for
    ``"official"`` ``(1/r, Δv, Δh)``. The output vector of a position is laid out as
    ``index = ((c·k + ky)·k + kx)·Cout + o`` (``F.unfold`` channel order, output channel fastest),
    which is the layout of the official Meta-SR code, so its ``P2W.meta_block.*`` weights load.

    Args:
        in_channels: ``Cin``, channels of the LR feature map.
        out_channels: ``Cout``, channels of the output.
        kernel_size: ``k``, odd.
        hidden: width of the hidden layer (256 in the paper).
        pos_encoding: ``"asymmetric"`` (default) or ``"official"``.

    Shape:
        forward: ``(M, P)`` → ``(M, k·k·Cin·Cout)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        hidden: int = 256,
        pos_encoding: str = "asymmetric",
    ) -> None:
        super().__init__()
        in_channels = _positive_int("in_channels", in_channels)
        out_channels = _positive_int("out_channels", out_channels)
        hidden = _positive_int("hidden", hidden)
        if (
            isinstance(kernel_size, bool)
            or not isinstance(kernel_size, numbers.Integral)
            or kernel_size < 1
            or kernel_size % 2 == 0
        ):
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
        kernel_size = int(kernel_size)
        if not isinstance(pos_encoding, str) or pos_encoding not in POS_ENCODINGS:
            raise ValueError(
                f"pos_encoding must be one of {sorted(POS_ENCODINGS)}, got {pos_encoding!r}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.hidden = hidden
        self.pos_encoding = pos_encoding
        num_pos = POS_ENCODINGS[pos_encoding]
        self.meta_block = nn.Sequential(
            nn.Linear(num_pos, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, kernel_size * kernel_size * in_channels * out_channels),
        )

    @property
    def num_pos(self) -> int:
        return POS_ENCODINGS[self.pos_encoding]

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return self.meta_block(pos)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"kernel_size={self.kernel_size}, hidden={self.hidden}, "
            f"pos_encoding={self.pos_encoding!r}"
        )


class MetaUpsample(nn.Module):
    """Meta-Upscale: upsample a feature map by any scale ≥ 1 per axis, or to a given size.

    Args:
        in_channels: ``Cin``.
        out_channels: ``Cout``.
        kernel_size: ``k`` (odd), the LR window each output pixel sees.
        hidden: hidden width of the weight-prediction MLP.
        pos_encoding: ``"asymmetric"`` (default) or ``"official"``.
        backend: ``"auto"`` or a backend name (see :func:`metasr.backends`).
        arithmetic: ``"exact"`` (default) or ``"official"`` float32 grid arithmetic of the
            published code (only for reproducing official checkpoints bit for bit).
        periodic_lon: wrap the LR window along width (global longitude grids); see
            :func:`metasr.meta_upscale`. A plain attribute, so a network may set it later.

    Shape:
        forward: ``x (N, Cin, h, w)`` → ``(N, Cout, H, W)``; with ``region``,
        ``x (N, Cin, *region.in_shape)`` → ``(N, Cout, *region.out_shape)``.

    Example:
        >>> up = MetaUpsample(64, 3)
        >>> up(torch.randn(1, 64, 24, 24), scale=(2.5, 3.0)).shape
        torch.Size([1, 3, 60, 72])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        hidden: int = 256,
        pos_encoding: str = "asymmetric",
        backend: str = "auto",
        arithmetic: Arithmetic = "exact",
        periodic_lon: bool = False,
    ) -> None:
        super().__init__()
        self.phi = Pos2Weight(in_channels, out_channels, kernel_size, hidden, pos_encoding)
        check_backend_name(backend)
        if not isinstance(arithmetic, str) or arithmetic not in ("exact", "official"):
            raise ValueError(f"arithmetic must be 'exact' or 'official', got {arithmetic!r}")
        self.backend = backend
        self.arithmetic = arithmetic
        if not isinstance(periodic_lon, bool):
            raise ValueError(f"periodic_lon must be a bool, got {periodic_lon!r}")
        self.periodic_lon = periodic_lon

    def forward(
        self,
        x: torch.Tensor,
        scale: float | tuple[float, float] | None = None,
        size: tuple[int, int] | None = None,
        region: Region | None = None,
        coords: CoordinateGrid | None = None,
    ) -> torch.Tensor:
        """Upscale ``x`` by ``scale`` or to ``size``; see :func:`metasr.meta_upscale`.

        ``region`` computes only that part of the whole image's output from the features of
        its LR window (tiled inference); ``coords`` places the output by latitude/longitude
        instead of ``scale``/``size``.
        """
        return meta_upscale(
            x,
            self.phi,
            scale=scale,
            size=size,
            backend=self.backend,
            arithmetic=self.arithmetic,
            region=region,
            periodic_lon=self.periodic_lon,
            coords=coords,
        )

    def extra_repr(self) -> str:
        extra = ", periodic_lon=True" if self.periodic_lon else ""
        return f"backend={self.backend!r}{extra}"
