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
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import (
    CoordinateGrid,
    Region,
    UpscaleRequest,
    check_arithmetic,
    check_periodic_lon,
    check_pos_encoding,
)
from ..modules import HeadConfig, MetaUpsample, Pos2Weight
from ..ops.meta_upscale import UpscalePlan, plan
from ..ops.meta_upscale.planning import autocast_dtype
from ..ops.meta_upscale.tables import restore_order
from ..validation import ArgumentTypeError, check_bool, check_positive_int, is_real
from .bicubic import BICUBIC_CONTEXT, bicubic_upsample, check_bicubic_region
from .periodic import wrap_longitude

__all__ = [
    "DIV2K_RGB_MEAN",
    "MeanShift",
    "MeanShiftMetaSRNet",
    "MetaSRNet",
    "resolve_mean",
    "upgrade_state_dict",
]

#: Mean colour of DIV2K (RGB, in [0, 1]) used by EDSR, RDN, Meta-SR and SwinIR.
DIV2K_RGB_MEAN: tuple[float, float, float] = (0.4488, 0.4371, 0.4040)


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
        raise ArgumentTypeError(f"mean must be a number or a sequence of numbers, got {mean!r}")
    if len(mean) != channels:
        raise ValueError(f"mean has {len(mean)} values but the {what} has {channels} channels")
    out = []
    for m in mean:
        if not is_real(m):
            raise ArgumentTypeError(f"mean values must be numbers, got {m!r}")
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

    Every network has one head, :attr:`upsample` (a :class:`metasr.MetaUpsample` built from a
    :class:`metasr.HeadConfig` by :meth:`_init_head`), and exposes the features it reads as
    :meth:`head_features`. Subclasses call :meth:`_init_meta_options` first and
    :meth:`_init_head` where the head's parameters belong in the state dict.
    """

    in_channels: int
    out_channels: int
    bicubic_residual: bool
    upsample: MetaUpsample
    #: Periodic in the width (longitude); read by tiled inference, which then cuts rows only.
    periodic_lon: bool = False
    #: CPU inference is faster with the input in channels-last memory format (measured per
    #: network, ``benchmarks/channels_last.py``); ``precision="auto"`` then uses it
    #: (:func:`metasr.precision.plan_precision`).
    channels_last_cpu: bool = False

    @property
    def pos2weight(self) -> Pos2Weight:
        """The :class:`metasr.Pos2Weight` of the Meta-Upscale head."""
        return self.upsample.phi

    @property
    def pos_encoding(self) -> str:
        """The head's position encoding."""
        return self.upsample.phi.pos_encoding

    @property
    def arithmetic(self) -> str:
        """The head's grid arithmetic."""
        return self.upsample.arithmetic

    # The backend lives on the head module; settable on the network (checkpoints.set_backend).
    @property
    def backend(self) -> str:
        """The head's Meta-Upscale backend."""
        return self.upsample.backend

    @backend.setter
    def backend(self, value: str) -> None:
        self.upsample.backend = value

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
        upsample: HeadConfig | Mapping[str, object] | None,
        bicubic_residual: bool,
        periodic_lon: bool = False,
    ) -> HeadConfig:
        """Check and keep the options every network shares; returns the head's
        :class:`~metasr.HeadConfig` for :meth:`_init_head` (checked before the backbone is
        built)."""
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        config = HeadConfig.of(upsample)
        check_pos_encoding(config.pos_encoding)
        check_arithmetic(config.arithmetic)
        periodic_lon = check_periodic_lon(periodic_lon)
        bicubic_residual = check_bool("bicubic_residual", bicubic_residual)
        if bicubic_residual and in_channels != out_channels:
            raise ValueError(
                "bicubic_residual adds the upsampled input to the output and needs "
                f"in_channels == out_channels, got {in_channels} and {out_channels}"
            )
        self.bicubic_residual = bicubic_residual
        self.periodic_lon = periodic_lon
        return config

    def _init_head(self, features: int, config: HeadConfig) -> None:
        """Build the head :attr:`upsample` on ``features`` channels (its last layer started
        ×0.1 with the bicubic residual)."""
        self.upsample = MetaUpsample.from_config(
            features, self.out_channels, config, self.periodic_lon
        )
        self._scale_head_for_residual()

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

    def request(
        self,
        scale: object = None,
        size: object = None,
        region: Region | None = None,
        coords: CoordinateGrid | None = None,
        *,
        request: UpscaleRequest | None = None,
    ) -> UpscaleRequest:
        """The :class:`~metasr.geometry.UpscaleRequest` of a call: its head's
        (:meth:`metasr.MetaUpsample.request`, with the network's ``arithmetic`` and
        ``periodic_lon``), from the loose form or from a caller's ``request``."""
        return self.upsample.request(scale, size, region, coords, request=request)

    def plan(self, x: torch.Tensor, request: UpscaleRequest) -> UpscalePlan:
        """Check a call and plan its head, before the (expensive) backbone runs.

        The head's features are stood in for by an expanded one-element tensor of their shape
        (:func:`metasr.ops.meta_upscale.plan`), so the plan sees their shape, dtype and device
        without anything being allocated. Besides the head's own estimate, the network's
        output-sized copies are counted (mean shift or scaling, and the bicubic residual and
        its sum).

        Args:
            x: ``(N, in_channels, h, w)``, the network's input.
            request: the call's request (:meth:`request`).

        Returns:
            The head's plan, which :meth:`forward` hands to the head and the bicubic residual.

        Raises:
            TypeError: ``x`` is not a tensor.
            ValueError: for a bad input or request (an output over the pixel cap included), an
                asymmetric scale with ``"official"``, or a region that does not fit ``x`` or the
                request; :class:`metasr.BackendUnavailableError` when no backend can run the
                head (memory included).
        """
        if not isinstance(x, torch.Tensor):
            raise ArgumentTypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"x must be 4-D (N, C, h, w), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"x has {x.shape[1]} channels but the model has in_channels={self.in_channels}"
            )
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
        if self.periodic_lon:
            self._check_periodic(request.region)
        p2w = self.pos2weight
        dtype = autocast_dtype(x.device.type) or x.dtype
        features = x.new_empty((), dtype=dtype).expand(
            x.shape[0], p2w.in_channels, x.shape[2], x.shape[3]
        )
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        H, W = request.out_shape(x.shape[2], x.shape[3])
        out = x.shape[0] * self.out_channels * H * W * features.element_size()
        head = plan(
            features,
            p2w,
            request,
            self.backend,
            requires_grad=grad,
            extra_bytes=out * (3 if self.bicubic_residual else 1),
        )
        if request.region is not None and self.bicubic_residual:
            # Fails here, before the backbone, when the window lacks a bicubic tap.
            check_bicubic_region(request.region, self.periodic_lon, request.scale)
        return head

    def _check_periodic(self, region: Region | None) -> None:
        """Refuse what a periodic-longitude network cannot compute: a region narrower than the
        whole width (wrapped neighbours would be missing)."""
        if region is not None:
            w, W = region.image_size[1], region.output_size[1]
            if region.in_cols != (0, w) or region.out_cols != (0, W):
                raise ValueError(
                    f"periodic_lon=True needs regions spanning the whole width (input columns "
                    f"(0, {w}), output columns (0, {W})), got input columns {region.in_cols} "
                    f"and output columns {region.out_cols}: tile rows only"
                )

    def _add_bicubic(self, y: torch.Tensor, x: torch.Tensor, head: UpscalePlan) -> torch.Tensor:
        """``y`` plus the bicubic upsampling of ``x`` when ``bicubic_residual`` is on, else ``y``.

        The upsampling samples output row ``i`` at ``(i + 0.5)/r − 0.5`` with the request's
        ``scale``, where the head puts it (Meta-SR's ``i/r``, centred as MATLAB's ``imresize``),
        not at ``F.interpolate(size=...)``'s ``(i + 0.5)·h/H − 0.5``, which drifts when
        ``H = floor(h·r)`` is not ``h·r`` (:mod:`metasr.archs.bicubic`); a request by size or
        by coordinates has no other ratio than the sizes'. Without a region the upsampling is to
        ``y``'s size (with ``coords``: the index-ratio bicubic to the target grid's shape, in the
        source's row and column order, then put in the target's order as the head's output is,
        so that a target running the other way or starting elsewhere on the circle gets its
        residual at the same latitude and longitude); with one it is the whole image's
        upsampling restricted to the region (:func:`~metasr.archs.bicubic.bicubic_upsample`).

        Args:
            head: the head's plan (its request, and its geometry's row and column order).

        Shape:
            y: ``(N, Cout, H, W)``, x: ``(N, Cin, h, w)`` with ``Cin == Cout``.
        """
        if not self.bicubic_residual:
            return y
        request = head.request
        ratio = request.scale  # None for size and coords: the sizes' ratio
        if request.region is None:
            up = bicubic_upsample(
                x, size=tuple(y.shape[-2:]), periodic_lon=self.periodic_lon, scale=ratio
            )
            if request.coords is not None:
                # Same permutation as the head's (a region never carries one: Geometry.cut).
                geom = head.geometry
                if geom is None:  # under torch.compile the head builds it inside its node
                    geom = request.geometry(*request.coords.in_shape, self.pos_encoding)
                up = restore_order(up, geom)
        else:
            up = bicubic_upsample(
                x, region=request.region, periodic_lon=self.periodic_lon, scale=ratio
            )
        return y + up.to(y.dtype)


def upgrade_state_dict(state: Mapping[str, torch.Tensor], prefix: str = "") -> dict:
    """``state`` with the official head names (``P2W.meta_block.*``, MetaRDN and MetaEDSR as
    published) renamed to the head's (``upsample.phi.meta_block.*``); other names unchanged.

    Args:
        prefix: where the network's entries start in ``state`` (as in ``load_state_dict``).
    """
    old, new = prefix + "P2W.", prefix + "upsample.phi."
    return {(new + k[len(old) :] if k.startswith(old) else k): v for k, v in state.items()}


class MeanShiftMetaSRNet(MetaSRNet):
    """A Meta-SR network in the EDSR/Meta-SR convention (MetaRDN, MetaEDSR).

    ``sub_mean`` → :meth:`forward_features` → the head :attr:`upsample` → (bicubic residual) →
    ``add_mean``; input values in ``[0, img_range]``. Subclasses define ``sub_mean``,
    ``add_mean`` and :meth:`forward_features`. The official checkpoints name the head's
    predictor ``P2W``; a load-state-dict hook renames those entries
    (:func:`upgrade_state_dict`), so they load unchanged.
    """

    sub_mean: nn.Module
    add_mean: nn.Module
    img_range: float

    def __init__(self) -> None:
        super().__init__()
        self.register_load_state_dict_pre_hook(_official_head_names)

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
        *,
        request: UpscaleRequest | None = None,
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
            request: all of the above as one :class:`~metasr.geometry.UpscaleRequest`
                (tiled inference hands each tile its request), instead of them.

        Returns:
            ``(N, out_channels, H, W)``, or ``(N, out_channels, *region.out_shape)``.
        """
        head = self.plan(x, self.request(scale, size, region, coords, request=request))
        x = self.sub_mean(x)
        y = self.upsample(self.forward_features(x), plan=head)
        # The residual is added in the mean-shifted domain, so the mean is added back only once.
        return self.add_mean(self._add_bicubic(y, x, head))


def _official_head_names(module: nn.Module, state: dict, prefix: str, *args: object) -> None:
    """Load-state-dict pre-hook: rename official ``P2W.*`` entries in place."""
    renamed = upgrade_state_dict(state, prefix)
    state.clear()
    state.update(renamed)
