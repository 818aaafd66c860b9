"""Base classes of the Meta-SR networks (:class:`MetaSRNet`, :class:`MeanShiftMetaSRNet`),
``MeanShift`` and the argument checks they share.

Every network has ``forward(x, scale=None, size=None, region=None, coords=None)``. ``coords``
(a :class:`metasr.geometry.CoordinateGrid`) places the output rows and columns by latitude and
longitude instead of ``scale``/``size``: the network passes it to its Meta-Upscale head; its
bicubic residual is the index-ratio bicubic upsampling to the target grid's shape (a smooth
base the head corrects, not an interpolation at the coordinates), in the target's row and
column order. ``coords`` and ``region`` combine (tiled coordinate-placed inference), as long as
the target is in the source's order (:meth:`metasr.geometry.Geometry.cut`). ``region`` (a
:class:`metasr.geometry.Region`) makes it compute one part of a whole image's output from that
part's LR window: the network passes it down to :func:`metasr.meta_upscale` and restricts its
bicubic residual to it. Tiled inference (:mod:`metasr.tiling`) relies on that, and on
:attr:`MetaSRNet.tile_alignment` and :attr:`MetaSRNet.min_tile_overlap`.

``periodic_lon=True`` makes a network periodic in longitude (the width of a global lat/lon
field): every padded convolution of its backbone wraps along the width
(:mod:`metasr.archs.periodic`), the bicubic residual's taps wrap, and the Meta-Upscale head is
asked to wrap its window. Its regions must then span the whole width, so tiled inference cuts
rows only.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import (
    POS_ENCODINGS,
    CoordinateGrid,
    Geometry,
    Region,
    build_geometry,
    build_geometry_from_coords,
    parse_scale,
)
from ..modules import Pos2Weight
from ..ops.meta_upscale import _autocast_dtype, meta_upscale
from ..ops.meta_upscale._dispatch import select_backend
from ..ops.meta_upscale._tracing import tracing_mode
from ..ops.meta_upscale.predictor import predictor_params
from ..ops.meta_upscale.tables import restore_order
from .bicubic import BICUBIC_CONTEXT, bicubic_upsample, check_bicubic_region
from .periodic import wrap_longitude

__all__ = [
    "DIV2K_RGB_MEAN",
    "MeanShift",
    "MeanShiftMetaSRNet",
    "MetaSRNet",
    "check_positive_float",
    "check_positive_int",
    "residual_scale",
    "resolve_mean",
]

#: Mean colour of DIV2K (RGB, in [0, 1]) used by EDSR, RDN, Meta-SR and SwinIR.
DIV2K_RGB_MEAN: tuple[float, float, float] = (0.4488, 0.4371, 0.4040)


def residual_scale(scale: object, coords: object = None) -> tuple[float, float] | None:
    """The ``(r_v, r_h)`` the bicubic residual samples at, or None for the sizes' ratio.

    A request by ``scale`` (a number or pair) places output row ``i`` at ``(i + 0.5)/r − 0.5``
    in the head (Meta-SR's ``i/r``, centred as MATLAB's ``imresize``); the residual must sample
    there too, not at ``F.interpolate(size=...)``'s ``(i + 0.5)·h/H − 0.5``, which drifts when
    ``H = floor(h·r)`` is not ``h·r`` (:mod:`metasr.archs.bicubic`). A request by size, or onto
    ``coords``' grid (index ratio), has no other ratio than the sizes'.
    """
    if scale is None or coords is not None:
        return None
    return parse_scale(scale)


def check_positive_int(name: str, value: object) -> int:
    """``value`` as an ``int`` ≥ 1, or a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_positive_float(name: str, value: object) -> float:
    """``value`` as a finite ``float`` > 0, or a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    v = float(value)
    if not (v > 0.0 and v < float("inf")):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def resolve_mean(
    mean: float | Sequence[float] | None, channels: int, what: str
) -> tuple[float, ...]:
    """Per-channel mean (in ``[0, 1]`` units) for ``channels`` channels.

    ``None`` gives the DIV2K RGB mean for 3 channels and 0 otherwise (SwinIR's convention, so
    1-channel gridded data is left unshifted); a number is used for every channel.
    """
    if mean is None:
        return DIV2K_RGB_MEAN if channels == 3 else (0.0,) * channels
    if isinstance(mean, numbers.Real) and not isinstance(mean, bool):
        return (float(mean),) * channels
    if isinstance(mean, torch.Tensor):
        mean = mean.flatten().tolist()
    if not isinstance(mean, Sequence) or isinstance(mean, str):
        raise ValueError(f"mean must be a number or a sequence of numbers, got {mean!r}")
    if len(mean) != channels:
        raise ValueError(f"mean has {len(mean)} values but the {what} has {channels} channels")
    out = []
    for m in mean:
        if isinstance(m, bool) or not isinstance(m, numbers.Real):
            raise ValueError(f"mean values must be numbers, got {m!r}")
        out.append(float(m))
    return tuple(out)


class MeanShift(nn.Module):
    """Per-channel shift by ``sign · img_range · mean`` as a frozen 1×1 convolution.

    The parameters are those of EDSR-PyTorch's ``MeanShift(nn.Conv2d)`` (``weight (C, C, 1, 1)``
    = identity, ``bias (C,)``), so the ``sub_mean.*``/``add_mean.*`` entries of official
    checkpoints load. They are frozen (``requires_grad=False``), which is what the authors
    intended; the forward uses whatever values are loaded, because the official 0.4.0 code set
    ``self.requires_grad = False`` on the module (not on its parameters) and so trained them.

    Shape:
        ``(N, C, H, W)`` → ``(N, C, H, W)``.
    """

    def __init__(self, channels: int, img_range: float, mean: Sequence[float], sign: int) -> None:
        super().__init__()
        eye = torch.eye(channels).view(channels, channels, 1, 1)
        bias = sign * img_range * torch.tensor(mean, dtype=torch.float32)
        self.weight = nn.Parameter(eye, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


class MetaSRNet(nn.Module):
    """Base class of the Meta-SR networks: input checks, early geometry validation, the
    optional bicubic global residual, and what tiled inference needs to know.

    Subclasses set ``in_channels``, ``out_channels``, ``bicubic_residual``, ``pos_encoding``,
    ``arithmetic``, ``periodic_lon``, expose their weight-prediction MLP as :attr:`pos2weight`
    and the features their head reads as :meth:`head_features`.
    """

    in_channels: int
    out_channels: int
    bicubic_residual: bool
    pos_encoding: str
    arithmetic: str
    #: Periodic in the width (longitude); read by tiled inference, which then cuts rows only.
    periodic_lon: bool = False

    @property
    def pos2weight(self) -> Pos2Weight:
        """The :class:`metasr.Pos2Weight` of the Meta-Upscale head."""
        raise NotImplementedError

    def head_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone: the feature map the Meta-Upscale head reads for the network's input.

        Shape:
            ``x (N, in_channels, h, w)`` (the network's input convention) →
            ``(N, F, h, w)``.
        """
        raise NotImplementedError

    @property
    def input_range(self) -> float:
        """What an image in ``[0, 1]`` is multiplied by before this network (and its output
        divided by): 1 for networks that take ``[0, 1]`` (MetaSwinIR applies its ``img_range``
        inside)."""
        return 1.0

    @property
    def tile_alignment(self) -> int:
        """LR multiple at which a region's input window must start for the network to treat it
        as it treats the whole image (1 for convolutional networks)."""
        return 1

    @property
    def min_tile_overlap(self) -> int:
        """LR pixels of context a region needs on each side of the LR pixels its outputs
        belong to: the bicubic residual's taps (:data:`~metasr.archs.bicubic.BICUBIC_CONTEXT`),
        0 without it. More context only brings a tile closer to the whole image."""
        return BICUBIC_CONTEXT if self.bicubic_residual else 0

    def _init_meta_options(
        self,
        in_channels: int,
        out_channels: int,
        pos_encoding: str,
        arithmetic: str,
        bicubic_residual: bool,
        periodic_lon: bool = False,
    ) -> None:
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        if pos_encoding not in POS_ENCODINGS:
            raise ValueError(
                f"pos_encoding must be one of {sorted(POS_ENCODINGS)}, got {pos_encoding!r}"
            )
        if arithmetic not in ("exact", "official"):
            raise ValueError(f"arithmetic must be 'exact' or 'official', got {arithmetic!r}")
        if not isinstance(bicubic_residual, bool):
            raise ValueError(f"bicubic_residual must be a bool, got {bicubic_residual!r}")
        if bicubic_residual and in_channels != out_channels:
            raise ValueError(
                "bicubic_residual adds the upsampled input to the output and needs "
                f"in_channels == out_channels, got {in_channels} and {out_channels}"
            )
        if not isinstance(periodic_lon, bool):
            raise ValueError(f"periodic_lon must be a bool, got {periodic_lon!r}")
        self.pos_encoding = pos_encoding
        self.arithmetic = arithmetic
        self.bicubic_residual = bicubic_residual
        self.periodic_lon = periodic_lon

    def _wrap_backbone_longitude(self) -> None:
        """With ``periodic_lon``, make every padded convolution wrap along the width (call once
        the backbone is built; parameter names stay, so checkpoints load either way)."""
        if self.periodic_lon:
            wrap_longitude(self)

    def _scale_head_for_residual(self) -> None:
        # With the bicubic residual the head only has to predict a correction; starting it
        # 10x smaller keeps the initial output close to bicubic (docs/design.md §7).
        if self.bicubic_residual:
            last = self.pos2weight.head
            with torch.no_grad():
                last.weight.mul_(0.1)
                last.bias.mul_(0.1)

    def _check_call(
        self,
        x: torch.Tensor,
        scale: object,
        size: object,
        region: Region | None,
        coords: CoordinateGrid | None = None,
    ) -> None:
        """Validate input, scale/size/coords and region before the (expensive) backbone runs."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"x must be 4-D (N, C, h, w), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"x has {x.shape[1]} channels but the model has in_channels={self.in_channels}"
            )
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
        if self.periodic_lon:
            self._check_periodic(x, region)
        mode = tracing_mode()
        if mode == "compile":
            # Under torch.compile the host-side geometry is built (and checked) inside the
            # Meta-Upscale op's graph node, not traced here.
            return
        # Raises ValueError for a bad scale/size (an output over the pixel cap included), an
        # asymmetric scale with "official", or a region that does not fit x or the request.
        geom = build_geometry(
            x.shape[2],
            x.shape[3],
            scale=scale,
            size=size,
            pos_encoding=self.pos_encoding,
            arithmetic=self.arithmetic,
            region=region,
            periodic_lon=self.periodic_lon,
            coords=coords,
        )
        if region is not None and self.bicubic_residual:
            # Fails here, before the backbone, when the window lacks a bicubic tap.
            check_bicubic_region(region, self.periodic_lon, residual_scale(scale, coords))
        if mode is None:
            # Eager only: the memory estimate reads concrete sizes, and under torch.export it
            # would specialise the batch dimension that the exported graph keeps dynamic.
            self._check_head(x, geom)

    def _check_periodic(self, x: torch.Tensor, region: Region | None) -> None:
        """Refuse what a periodic-longitude network cannot compute: a region narrower than the
        whole width (wrapped neighbours would be missing), or a head op without wrapping."""
        if region is not None:
            w, W = region.image_size[1], region.output_size[1]
            if region.in_cols != (0, w) or region.out_cols != (0, W):
                raise ValueError(
                    f"periodic_lon=True needs regions spanning the whole width (input columns "
                    f"(0, {w}), output columns (0, {W})), got input columns {region.in_cols} "
                    f"and output columns {region.out_cols}: tile rows only"
                )

    def _check_head(self, x: torch.Tensor, geom: Geometry) -> None:
        """Refuse, before the backbone, a head call no backend can run (memory included).

        The head's features are stood in for by an expanded one-element tensor of their shape,
        so the dispatcher sees their shape, dtype and device without anything being allocated.
        Besides the head's own estimate, the network's output-sized copies are counted (mean
        shift or scaling, and the bicubic residual and its sum).
        """
        p2w = self.pos2weight
        dtype = _autocast_dtype(x.device.type) or x.dtype
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        probe = torch.zeros(1, dtype=dtype, device=x.device, requires_grad=grad)
        probe = probe.expand(x.shape[0], p2w.in_channels, x.shape[2], x.shape[3])
        out = x.shape[0] * self.out_channels * geom.H * geom.W * probe.element_size()
        extra = out * (3 if self.bicubic_residual else 1)
        params = predictor_params(p2w, dtype)
        select_backend(getattr(self, "backend", "auto"), probe, params, geom, extra_bytes=extra)

    def _add_bicubic(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        region: Region | None = None,
        coords: CoordinateGrid | None = None,
        scale: object = None,
    ) -> torch.Tensor:
        """``y`` plus the bicubic upsampling of ``x`` when ``bicubic_residual`` is on, else ``y``.

        The upsampling samples output row ``i`` at ``(i + 0.5)/r − 0.5`` with the request's
        ``scale`` (:func:`residual_scale`; the sizes' ratio when a size was asked for), where
        the head puts it. Without a region the upsampling is to ``y``'s size (with ``coords``: the
        index-ratio bicubic to the target grid's shape, in the source's row and column order,
        then put in the target's order as the head's output is, so that a target running the
        other way or starting elsewhere on the circle gets its residual at the same latitude and
        longitude); with one it is the whole image's upsampling restricted to the region
        (:func:`~metasr.archs.bicubic.bicubic_upsample`).

        Shape:
            y: ``(N, Cout, H, W)``, x: ``(N, Cin, h, w)`` with ``Cin == Cout``.
        """
        if not self.bicubic_residual:
            return y
        ratio = residual_scale(scale, coords)
        if region is None:
            up = bicubic_upsample(
                x, size=tuple(y.shape[-2:]), periodic_lon=self.periodic_lon, scale=ratio
            )
            if coords is not None:
                # Same permutation as the head's (a region never carries one: Geometry.cut).
                up = restore_order(
                    up, build_geometry_from_coords(coords, self.pos_encoding, self.periodic_lon)
                )
        else:
            up = bicubic_upsample(x, region=region, periodic_lon=self.periodic_lon, scale=ratio)
        return y + up.to(y.dtype)


class MeanShiftMetaSRNet(MetaSRNet):
    """A Meta-SR network in the EDSR/Meta-SR convention (MetaRDN, MetaEDSR).

    ``sub_mean`` → :meth:`forward_features` → Meta-Upscale with ``P2W`` → (bicubic residual) →
    ``add_mean``; input values in ``[0, img_range]``. Subclasses define ``sub_mean``,
    ``add_mean``, ``P2W``, ``backend`` and :meth:`forward_features`.
    """

    sub_mean: nn.Module
    add_mean: nn.Module
    P2W: Pos2Weight
    backend: str
    img_range: float

    @property
    def pos2weight(self) -> Pos2Weight:
        return self.P2W

    @property
    def input_range(self) -> float:
        """``img_range``: these networks take ``[0, img_range]`` (EDSR-PyTorch's ``rgb_range``;
        255 in the official recipe), and their mean shift is scaled by it."""
        return float(self.img_range)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features of the mean-shifted input: ``(N, Cin, h, w)`` → ``(N, F, h, w)``."""
        raise NotImplementedError

    def head_features(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward_features` of ``sub_mean(x)``: ``(N, Cin, h, w)`` → ``(N, F, h, w)``."""
        return self.forward_features(self.sub_mean(x))

    def forward(
        self,
        x: torch.Tensor,
        scale: float | tuple[float, float] | None = None,
        size: tuple[int, int] | None = None,
        region: Region | None = None,
        coords: CoordinateGrid | None = None,
    ) -> torch.Tensor:
        """Upscale ``x`` (values in ``[0, img_range]``) by ``scale``, to ``size`` or onto
        ``coords``' target grid.

        Args:
            x: ``(N, in_channels, h, w)``; with ``region``, the region's LR window.
            scale: a number or ``(r_v, r_h)``, each ≥ 1.
            size: ``(H, W)`` instead of ``scale``.
            region: compute only this part of the whole image's output (tiled inference);
                ``scale``/``size`` is then the whole image's request.
            coords: place the output by latitude/longitude instead of ``scale``/``size``
                (``x``'s grid is ``coords``' source grid; with ``region``, the target must be in
                the source's order).

        Returns:
            ``(N, out_channels, H, W)``, or ``(N, out_channels, *region.out_shape)``.
        """
        self._check_call(x, scale, size, region, coords)
        x = self.sub_mean(x)
        y = meta_upscale(
            self.forward_features(x),
            self.P2W,
            scale=scale,
            size=size,
            backend=self.backend,
            arithmetic=self.arithmetic,
            region=region,
            periodic_lon=self.periodic_lon,
            coords=coords,
        )
        # The residual is added in the mean-shifted domain, so the mean is added back only once.
        return self.add_mean(self._add_bicubic(y, x, region, coords, scale))
