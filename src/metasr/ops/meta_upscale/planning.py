"""One plan per call: everything :func:`metasr.meta_upscale` decides before it computes.

:func:`plan` reads the features' shape, dtype and device (a stand-in of their shape will do),
the weight predictor and the :class:`~metasr.geometry.UpscaleRequest`, and returns an
:class:`UpscalePlan`: the geometry, the compute dtype (autocast's, when on), the predictor's
parameters and path, the backend and its memory estimate. The op runs a plan
(``meta_upscale(x, phi, plan=...)``); a network makes its plan once per forward, before its
backbone, so a request that cannot run is refused before anything expensive happens, and the
head, the bicubic residual and the checks all read the same geometry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ...geometry import Geometry, UpscaleRequest
from ...validation import ArgumentTypeError
from .dispatch import BACKENDS, Backend, check_backend_name, select_backend
from .params import MLPParams, PredictorParams
from .predictor import PredictorKind, check_predictor, predictor_params
from .tracing import tracing_mode

if TYPE_CHECKING:
    from .torch_chunked import OrderChoice

__all__ = ["UpscalePlan", "autocast_dtype", "plan"]


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active for ``device_type``, or None when autocast is off."""
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except TypeError:  # torch < 2.4 has no per-device query
        if device_type == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
        if device_type == "cpu" and torch.is_autocast_cpu_enabled():
            return torch.get_autocast_cpu_dtype()
    return None


@dataclass(frozen=True)
class UpscalePlan:
    """The decisions of one Meta-Upscale call (see :func:`plan`).

    Attributes:
        request: what is asked for.
        in_shape: ``(N, Cin, h, w)`` of the features the plan is for.
        mode: ``None`` (eager), ``"compile"`` or ``"export"`` (:mod:`.tracing`).
        kind: the predictor's path (:class:`~metasr.ops.meta_upscale.predictor.PredictorKind`).
        dtype: the compute dtype (autocast's when on, else the features').
        params: the predictor's tensors in ``dtype``.
        geometry: the output geometry; ``None`` under ``torch.compile`` (built inside the op's
            graph node).
        backend: the backend that runs the call; ``None`` under ``torch.compile`` and export.
        backend_name: the backend asked for (``"auto"`` or a name), what the compiled op's node
            chooses from.
        probe: a one-element stand-in expanded to ``in_shape`` in ``dtype`` (what the backend
            was chosen for; nothing of the features' size); ``None`` while tracing.
    """

    request: UpscaleRequest
    in_shape: tuple[int, int, int, int]
    mode: str | None
    kind: PredictorKind
    dtype: torch.dtype
    params: PredictorParams
    geometry: Geometry | None
    backend: Backend | None
    backend_name: str
    probe: torch.Tensor | None

    @property
    def out_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the call's output."""
        return self.request.out_shape(self.in_shape[2], self.in_shape[3])

    def estimate_bytes(self) -> int:
        """The chosen backend's estimate of the call's peak bytes (its output included)."""
        if self.backend is None or self.geometry is None or self.probe is None:
            raise ValueError(f"a plan made under {self.mode} has no backend to estimate")
        return self.backend.estimate_bytes(self.probe, self.params, self.geometry)

    def evaluation_order(self) -> OrderChoice | None:
        """The ``torch`` backend's evaluation order for this call and why its fused CPU
        intervals order was not taken (:func:`.torch_chunked.evaluation_order`); ``None`` when
        another backend runs the call, or under a tracer.

        With ``METASR_CPU_KERNELS=1`` set this may build the CPU kernel (its first use).
        """
        if self.backend is None or self.backend.name != "torch":
            return None
        if self.geometry is None or self.probe is None:
            return None
        from .torch_chunked import evaluation_order

        return evaluation_order(self.probe, self.params, self.geometry)

    def backend_reasons(self) -> dict[str, list[str]]:
        """Why each registered backend could or could not run this call (empty: it can)."""
        if self.geometry is None or self.probe is None:
            return {}
        return {
            name: b.not_supported_reasons(self.probe, self.params, self.geometry)
            for name, b in BACKENDS.items()
        }


def _check_features(x: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, h, w), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"x must not be empty, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")


def plan(
    x: torch.Tensor,
    phi: nn.Module,
    request: UpscaleRequest,
    backend: str | None = None,
    *,
    requires_grad: bool | None = None,
    extra_bytes: int = 0,
    check_memory: bool = True,
) -> UpscalePlan:
    """Check a call and decide how it runs, without computing it.

    Args:
        x: ``(N, Cin, h, w)`` floating-point features, or a stand-in of their shape, dtype and
            device (``x.new_empty(1).expand(shape)``); nothing of it is read.
        phi: the weight predictor (:func:`metasr.meta_upscale`).
        request: the call's :class:`~metasr.geometry.UpscaleRequest`.
        backend: ``None``/``"auto"`` or a backend name.
        requires_grad: whether the features will require grad (default: ``x``'s, under grad
            mode); the backends' estimates count what a backward keeps.
        extra_bytes: what the caller allocates alongside (a network's output-sized copies),
            added to the memory check.
        check_memory: refuse a backend whose estimate exceeds the device's free memory.

    Returns:
        The :class:`UpscalePlan`.

    Raises:
        ValueError: for bad features, predictor or request (a size smaller than the input, an
            output over the pixel cap, a region that does not fit), or under ``torch.compile`` a
            predictor other than Linear-ReLU-Linear; :class:`metasr.BackendUnavailableError`
            when no backend can run the call.
    """
    _check_features(x)
    if not isinstance(request, UpscaleRequest):
        raise ArgumentTypeError(
            f"request must be a metasr.geometry.UpscaleRequest, got {type(request).__name__}"
        )
    mode = tracing_mode()
    # Validates phi (attributes, sizes, device, batch-dependent layers) and picks its path.
    kind = check_predictor(phi, x, probe=mode is None)
    if mode == "compile" and kind is not PredictorKind.SEPARABLE:
        raise ValueError(
            "under torch.compile, meta_upscale supports only phi = Linear, ReLU, Linear "
            f"(metasr.Pos2Weight's default); this phi is {kind.value} "
            f"({type(phi).__name__}): call it outside the compiled region "
            "(torch.compiler.disable) or eagerly"
        )
    backend_name = check_backend_name(backend)
    dtype = autocast_dtype(x.device.type) or x.dtype
    # The casts of phi's parameters are made with autocast off (and are differentiable), so
    # every backend sees one consistent dtype.
    with torch.autocast(device_type=x.device.type, enabled=False):
        if mode == "compile":
            # The host-side geometry is built inside the op's graph node (custom_op.py).
            params: PredictorParams = MLPParams.from_module(phi, dtype)
            geom = None
        else:
            params = predictor_params(phi, dtype, kind)
            geom = request.geometry(x.shape[2], x.shape[3], phi.pos_encoding)
    if mode is not None:
        # Under a tracer nothing is chosen here: no stand-in enters the traced graph.
        return UpscalePlan(
            request, tuple(x.shape), mode, kind, dtype, params, geom, None, backend_name, None
        )
    if requires_grad is None:
        requires_grad = x.requires_grad
    grad = bool(requires_grad) and torch.is_grad_enabled()
    probe = torch.zeros(1, dtype=dtype, device=x.device, requires_grad=grad).expand(x.shape)
    chosen = select_backend(
        backend_name, probe, params, geom, check_memory=check_memory, extra_bytes=extra_bytes
    )
    shape = tuple(int(n) for n in x.shape)
    return UpscalePlan(request, shape, mode, kind, dtype, params, geom, chosen, backend_name, probe)
