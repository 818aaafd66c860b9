"""``nn.Module`` front-ends of the Meta-Upscale op: ``Pos2Weight`` and ``MetaUpsample``, and
``HeadConfig``, the head's options as one value."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .geometry import (
    POS_ENCODINGS,
    Arithmetic,
    CoordinateGrid,
    Region,
    UpscaleRequest,
    check_arithmetic,
    check_periodic_lon,
    check_pos_encoding,
)
from .ops.meta_upscale import UpscalePlan, meta_upscale, plan
from .ops.meta_upscale.dispatch import check_backend_name
from .validation import (
    ArgumentTypeError,
    check_choice,
    check_positive_float,
    check_positive_int,
    is_integer,
)

__all__ = [
    "ACTIVATIONS",
    "ENCODINGS",
    "HEAD_OPTION_NAMES",
    "FourierFeatures",
    "HeadConfig",
    "MetaUpsample",
    "Pos2Weight",
    "fold_head_options",
]

#: Activations of :class:`Pos2Weight`'s hidden layers, by name.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}

#: Position encodings :class:`Pos2Weight` can put in front of its MLP (``None``: the raw vector).
ENCODINGS = ("fourier",)

#: Seed of :class:`FourierFeatures`' projection: the same options give the same module.
FOURIER_SEED = 0


@dataclass(frozen=True)
class HeadConfig:
    """The options of a network's Meta-Upscale head (:class:`MetaUpsample`), as one value.

    Networks take it as ``upsample=`` (a ``HeadConfig`` or a mapping of its fields). BasicSR
    option files and checkpoint metadata spell the fields flat beside the network's own
    arguments (``hidden: 64``, ``meta_kernel_size: 3``; :data:`HEAD_OPTION_NAMES`), which
    :func:`fold_head_options` gathers into ``upsample=``.

    Attributes:
        kernel_size: ``k`` (odd), the LR window each output pixel sees (3 in the paper).
        hidden: hidden width of the weight-prediction MLP (256 in the paper).
        pos_encoding: ``"asymmetric"`` (default) or ``"official"``.
        backend: ``"auto"`` or a backend name (see :func:`metasr.backends`).
        arithmetic: ``"exact"`` (default) or ``"official"`` float32 grid arithmetic of the
            published code (only for reproducing official checkpoints bit for bit).
        hidden_layers, activation, encoding, fourier_features, fourier_scale: the predictor's
            options (:class:`Pos2Weight`); the defaults build the paper's Linear-ReLU-Linear
            (the fast path; official checkpoints load).
    """

    kernel_size: int = 3
    hidden: int = 256
    pos_encoding: str = "asymmetric"
    backend: str = "auto"
    arithmetic: Arithmetic = "exact"
    hidden_layers: int = 1
    activation: str = "relu"
    encoding: str | None = None
    fourier_features: int = 32
    fourier_scale: float = 1.0

    @classmethod
    def of(cls, value: HeadConfig | Mapping[str, object] | None) -> HeadConfig:
        """``value`` as a :class:`HeadConfig` (``None``: the defaults).

        Raises:
            TypeError: ``value`` is neither a ``HeadConfig``, a mapping nor ``None``.
            ValueError: a mapping with a key that is not a field.
        """
        if value is None:
            return cls()
        if isinstance(value, HeadConfig):
            return value
        if not isinstance(value, Mapping):
            raise ArgumentTypeError(
                f"upsample must be a metasr.HeadConfig or a mapping of its fields, got {value!r}"
            )
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(k) for k in value if k not in fields)
        if unknown:
            raise ValueError(
                f"unknown head option(s) {unknown}; the head's options are {', '.join(fields)}"
            )
        return cls(**value)

    def predictor_options(self) -> dict[str, object]:
        """The :class:`Pos2Weight` options beyond its sizes and encoding, as keywords."""
        return {
            "hidden_layers": self.hidden_layers,
            "activation": self.activation,
            "encoding": self.encoding,
            "fourier_features": self.fourier_features,
            "fourier_scale": self.fourier_scale,
        }


#: The head's options as spelled flat among a network's arguments (BasicSR ``network_g``,
#: checkpoint metadata) → :class:`HeadConfig` field. ``meta_kernel_size``, because a network's
#: ``kernel_size`` is its backbone's.
HEAD_OPTION_NAMES: dict[str, str] = {
    "meta_kernel_size": "kernel_size",
    **{f.name: f.name for f in dataclasses.fields(HeadConfig) if f.name != "kernel_size"},
}


def fold_head_options(kwargs: Mapping[str, object]) -> dict[str, object]:
    """A network's keyword arguments with flat head options (:data:`HEAD_OPTION_NAMES`, as in
    BasicSR option files and checkpoint metadata) gathered into ``upsample=``.

    A :class:`HeadConfig` given as ``upsample`` is amended by the flat options.

    Raises:
        ValueError: an option given both flat and inside an ``upsample`` mapping.
    """
    flat = {k: v for k, v in kwargs.items() if k in HEAD_OPTION_NAMES}
    if not flat:
        return dict(kwargs)
    rest = {k: v for k, v in kwargs.items() if k not in HEAD_OPTION_NAMES}
    named = {HEAD_OPTION_NAMES[k]: v for k, v in flat.items()}
    given = rest.get("upsample")
    if isinstance(given, HeadConfig):
        # A whole config names every field: the flat options amend it.
        rest["upsample"] = dataclasses.replace(given, **named)
        return rest
    if given is not None and not isinstance(given, Mapping):
        HeadConfig.of(given)  # raises its TypeError
    head = dict(given or {})
    for key, name in ((k, HEAD_OPTION_NAMES[k]) for k in flat):
        if name in head:
            raise ValueError(f"the head option {name!r} is given twice: as {key} and in upsample")
    head.update(named)
    rest["upsample"] = head
    return rest


class FourierFeatures(nn.Module):
    """Random Fourier features of a position: ``[sin(2π·B·p), cos(2π·B·p)]``.

    ``B`` is a fixed ``(features, P)`` Gaussian matrix with standard deviation ``scale``, drawn
    from a generator seeded with :data:`FOURIER_SEED` (the global RNG is untouched, so the same
    arguments always give the same ``B``) and registered as the buffer ``projection``, so
    checkpoints carry it. Tancik et al., "Fourier features let networks learn high frequency
    functions in low dimensional domains" (NeurIPS 2020).

    Args:
        num_pos: ``P``, values per position.
        features: rows of ``B``; the output has ``2·features`` values.
        scale: standard deviation of ``B``'s entries (higher: finer detail in the offsets).

    Shape:
        forward: ``(M, P)`` → ``(M, 2·features)``.
    """

    def __init__(self, num_pos: int, features: int = 32, scale: float = 1.0) -> None:
        super().__init__()
        self.features = check_positive_int("fourier_features", features)
        self.scale = check_positive_float("fourier_scale", scale)
        gen = torch.Generator().manual_seed(FOURIER_SEED)
        proj = torch.randn(self.features, num_pos, generator=gen, dtype=torch.float64) * self.scale
        self.register_buffer("projection", proj.to(torch.get_default_dtype()))

    @property
    def out_features(self) -> int:
        return 2 * self.features

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        angle = (2 * math.pi) * (pos @ self.projection.t())  # (M, features)
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)

    def extra_repr(self) -> str:
        return f"features={self.features}, scale={self.scale:g}"


def _check_predictor_size(width: int, hidden: int, hidden_layers: int, out: int) -> None:
    """Refuse, from arithmetic alone, a predictor past the model caps of ``create_model``
    (``hidden_layers=10**6`` would take minutes and gigabytes before failing).

    Raises:
        ValueError: the count and the cap.
    """
    from ._limits import MAX_MODEL_ELEMENTS, MAX_MODEL_MODULES

    modules = 2 * hidden_layers + 2
    elements = (width + 1) * hidden + (hidden_layers - 1) * (hidden + 1) * hidden
    elements += (hidden + 1) * out
    if modules > MAX_MODEL_MODULES or elements > MAX_MODEL_ELEMENTS:
        raise ValueError(
            f"the weight predictor would have {elements:,} parameters in {modules:,} modules, "
            f"over the limits ({MAX_MODEL_ELEMENTS:,} and {MAX_MODEL_MODULES:,}, "
            "metasr._limits.MAX_MODEL_ELEMENTS/MAX_MODEL_MODULES)"
        )


class Pos2Weight(nn.Module):
    """Weight-prediction MLP of Meta-SR: position → ``k·k·Cin·Cout`` filter weights.

    By default ``meta_block = Sequential(Linear(P, hidden), ReLU, Linear(hidden, k·k·Cin·Cout))``
    with ``P = 4`` for ``pos_encoding="asymmetric"`` ``(Δv, Δh, 1/r_v, 1/r_h)`` and ``P = 3`` for
    ``"official"`` ``(1/r, Δv, Δh)``. The output vector of a position is laid out as
    ``index = ((c·k + ky)·k + kx)·Cout + o`` (``F.unfold`` channel order, output channel fastest),
    which is the layout of the official Meta-SR code, so its ``P2W.meta_block.*`` weights load.

    The options build other predictors of the same interface: ``hidden_layers`` hidden layers
    (each ``Linear`` + activation), another ``activation``, and ``encoding="fourier"``
    (:class:`FourierFeatures` of the position in front of ``meta_block``, as the submodule
    ``encoding``). ``meta_block`` always ends in an ``nn.Linear`` (:attr:`head`), so every such
    predictor runs features-first (:func:`metasr.meta_upscale`); only the default is
    Linear-ReLU-Linear, the separable fast path (and the only one Triton and ``torch.compile``
    run). The defaults build exactly the paper's module (same state_dict keys).

    Args:
        in_channels: ``Cin``, channels of the LR feature map.
        out_channels: ``Cout``, channels of the output.
        kernel_size: ``k``, odd.
        hidden: width of the hidden layers (256 in the paper).
        pos_encoding: ``"asymmetric"`` (default) or ``"official"``.
        hidden_layers: number of hidden layers (1 in the paper).
        activation: ``"relu"`` (default), ``"gelu"``, ``"silu"`` or ``"tanh"``
            (:data:`ACTIVATIONS`).
        encoding: ``None`` (the raw position vector) or ``"fourier"``.
        fourier_features: with ``encoding="fourier"``, rows of the projection (the MLP then
            sees ``2·fourier_features`` values).
        fourier_scale: with ``encoding="fourier"``, the projection's standard deviation.

    Shape:
        forward: ``(M, P)`` → ``(M, k·k·Cin·Cout)``; :meth:`body`: ``(M, P)`` → ``(M, hidden)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        hidden: int = 256,
        pos_encoding: str = "asymmetric",
        hidden_layers: int = 1,
        activation: str = "relu",
        encoding: str | None = None,
        fourier_features: int = 32,
        fourier_scale: float = 1.0,
    ) -> None:
        super().__init__()
        in_channels = check_positive_int("in_channels", in_channels)
        out_channels = check_positive_int("out_channels", out_channels)
        hidden = check_positive_int("hidden", hidden)
        hidden_layers = check_positive_int("hidden_layers", hidden_layers)
        check_positive_int("fourier_features", fourier_features)
        check_positive_float("fourier_scale", fourier_scale)
        check_choice("activation", activation, tuple(ACTIVATIONS))
        if encoding is not None:
            check_choice("encoding", encoding, ENCODINGS)
        if not is_integer(kernel_size):
            raise ArgumentTypeError(
                f"kernel_size must be a positive odd integer, got {type(kernel_size).__name__} "
                f"{kernel_size!r}"
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
        kernel_size = int(kernel_size)
        check_pos_encoding(pos_encoding)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.hidden = hidden
        self.pos_encoding = pos_encoding
        self.hidden_layers = hidden_layers
        self.activation = activation
        num_pos = POS_ENCODINGS[pos_encoding]
        _check_predictor_size(
            num_pos if encoding is None else 2 * fourier_features,
            hidden,
            hidden_layers,
            kernel_size * kernel_size * in_channels * out_channels,
        )
        # Registered before meta_block only when present: the default's keys stay meta_block.*.
        self.encoding: FourierFeatures | None = None
        if encoding == "fourier":
            self.encoding = FourierFeatures(num_pos, fourier_features, fourier_scale)
        width = num_pos if self.encoding is None else self.encoding.out_features
        layers: list[nn.Module] = []
        for _ in range(hidden_layers):
            act = nn.ReLU(inplace=True) if activation == "relu" else ACTIVATIONS[activation]()
            layers += [nn.Linear(width, hidden), act]
            width = hidden
        layers.append(nn.Linear(hidden, kernel_size * kernel_size * in_channels * out_channels))
        self.meta_block = nn.Sequential(*layers)

    @property
    def num_pos(self) -> int:
        return POS_ENCODINGS[self.pos_encoding]

    @property
    def head(self) -> nn.Linear:
        """The last layer, ``meta_block[-1]``: ``(M, hidden)`` → ``(M, k·k·Cin·Cout)``."""
        return self.meta_block[-1]

    def body(self, pos: torch.Tensor) -> torch.Tensor:
        """Everything before :attr:`head`: positions ``(M, P)`` → features ``(M, hidden)``."""
        if self.encoding is not None:
            pos = self.encoding(pos)
        return self.meta_block[:-1](pos)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        if self.encoding is not None:
            pos = self.encoding(pos)
        return self.meta_block(pos)

    def extra_repr(self) -> str:
        extra = ""
        if self.hidden_layers != 1:
            extra += f", hidden_layers={self.hidden_layers}"
        if self.activation != "relu":
            extra += f", activation={self.activation!r}"
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"kernel_size={self.kernel_size}, hidden={self.hidden}, "
            f"pos_encoding={self.pos_encoding!r}{extra}"
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
        hidden_layers, activation, encoding, fourier_features, fourier_scale: the predictor's
            options (:class:`Pos2Weight`).

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
        hidden_layers: int = 1,
        activation: str = "relu",
        encoding: str | None = None,
        fourier_features: int = 32,
        fourier_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.phi = Pos2Weight(
            in_channels,
            out_channels,
            kernel_size,
            hidden,
            pos_encoding,
            hidden_layers=hidden_layers,
            activation=activation,
            encoding=encoding,
            fourier_features=fourier_features,
            fourier_scale=fourier_scale,
        )
        check_backend_name(backend)
        self.backend = backend
        self.arithmetic = check_arithmetic(arithmetic)
        self.periodic_lon = check_periodic_lon(periodic_lon)

    @classmethod
    def from_config(
        cls,
        in_channels: int,
        out_channels: int,
        config: HeadConfig | Mapping[str, object] | None = None,
        periodic_lon: bool = False,
    ) -> MetaUpsample:
        """The head of a network: ``in_channels`` features → ``out_channels``, with the options
        of ``config`` (:meth:`HeadConfig.of`)."""
        c = HeadConfig.of(config)
        return cls(
            in_channels,
            out_channels,
            c.kernel_size,
            c.hidden,
            c.pos_encoding,
            backend=c.backend,
            arithmetic=c.arithmetic,
            periodic_lon=periodic_lon,
            **c.predictor_options(),
        )

    def request(
        self,
        scale: object = None,
        size: object = None,
        region: Region | None = None,
        coords: CoordinateGrid | None = None,
        *,
        request: UpscaleRequest | None = None,
    ) -> UpscaleRequest:
        """The :class:`~metasr.geometry.UpscaleRequest` of a call, with this head's
        ``arithmetic`` and ``periodic_lon``: made from ``scale``/``size``/``region``/``coords``,
        or ``request`` made by the caller (:meth:`~metasr.geometry.UpscaleRequest.for_head`).

        Raises:
            TypeError: ``request`` is not an :class:`~metasr.geometry.UpscaleRequest`.
            ValueError: ``request`` beside the loose form, or a bad request.
        """
        if request is None:
            return UpscaleRequest(scale, size, coords, region, self.arithmetic, self.periodic_lon)
        if not isinstance(request, UpscaleRequest):
            raise ArgumentTypeError(
                f"request must be a metasr.UpscaleRequest, got {type(request).__name__}"
            )
        if any(v is not None for v in (scale, size, region, coords)):
            raise ValueError("give request= alone, or scale=/size=/region=/coords=, not both")
        return request.for_head(self.arithmetic, self.periodic_lon)

    def plan(self, x: torch.Tensor, request: UpscaleRequest, **options: object) -> UpscalePlan:
        """:func:`metasr.ops.meta_upscale.plan` of a call of this head (``x`` may be a
        stand-in of the features' shape); ``options`` are that function's keywords."""
        return plan(x, self.phi, request, self.backend, **options)

    def forward(
        self,
        x: torch.Tensor,
        scale: float | tuple[float, float] | None = None,
        size: tuple[int, int] | None = None,
        region: Region | None = None,
        coords: CoordinateGrid | None = None,
        *,
        request: UpscaleRequest | None = None,
        plan: UpscalePlan | None = None,
    ) -> torch.Tensor:
        """Upscale ``x`` by ``scale`` or to ``size``; see :func:`metasr.meta_upscale`.

        ``region`` computes only that part of the whole image's output from the features of
        its LR window (tiled inference); ``coords`` places the output by latitude/longitude
        instead of ``scale``/``size``; ``request`` is all of these as one value
        (:meth:`request`); ``plan`` runs a plan made by :meth:`plan` instead (the request is
        then left out).
        """
        if plan is None:
            plan = self.plan(x, self.request(scale, size, region, coords, request=request))
            return meta_upscale(x, self.phi, plan=plan)
        # meta_upscale refuses a request beside the plan.
        return meta_upscale(x, self.phi, scale, size, region=region, coords=coords, plan=plan)

    def extra_repr(self) -> str:
        extra = ", periodic_lon=True" if self.periodic_lon else ""
        return f"backend={self.backend!r}{extra}"
