"""Backend registry and the one place where a backend is chosen.

Each backend declares the devices and dtypes it supports and can say why it cannot run a given
call (:meth:`Backend.not_supported_reasons`). ``auto`` is ``triton`` on CUDA when it can run,
else ``torch``. ``backend=`` or the ``METASR_BACKEND`` environment variable override ``auto``; an
impossible request raises :class:`BackendUnavailableError` listing every backend and its reasons.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ...geometry import Geometry
from ..memory import available_memory_bytes
from .params import MLPParams

__all__ = ["BACKENDS", "Backend", "BackendUnavailableError", "backends", "select_backend"]

FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

#: The naive spec loops over output pixels in Python; beyond this it is unusably slow.
NAIVE_MAX_PIXELS = 1 << 16


class BackendUnavailableError(ValueError):
    """No backend can run the requested call; the message lists each backend's reasons."""


@dataclass
class Backend:
    """A registered implementation of :func:`metasr.meta_upscale`.

    Attributes:
        name: the name users pass as ``backend=``.
        description: one line for ``metasr.backends()`` and ``metasr info``.
        devices: device types it runs on.
        dtypes: compute dtypes it accepts.
        load: returns the function ``(x, params, geom) -> y``; imported on first use.
        extra_reasons: call-specific reasons it cannot run (besides device and dtype).
        environment_reasons: reasons that depend only on the installation and device type.
    """

    name: str
    description: str
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    load: Callable[[], Callable[[torch.Tensor, MLPParams, Geometry], torch.Tensor]]
    extra_reasons: Callable[..., list[str]] = field(default=lambda *a, **k: [])
    environment_reasons: Callable[[str], list[str]] = field(default=lambda device_type: [])

    def not_supported_reasons(
        self,
        x: torch.Tensor | None = None,
        params: MLPParams | None = None,
        geom: Geometry | None = None,
        device_type: str | None = None,
        dtype: torch.dtype | None = None,
    ) -> list[str]:
        """Why this backend cannot run the call (empty list: it can)."""
        if x is not None:
            device_type, dtype = x.device.type, x.dtype
        reasons = list(self.environment_reasons(device_type or "cpu"))
        if device_type is not None and device_type not in self.devices:
            reasons.append(f"runs on {'/'.join(self.devices)}, not {device_type}")
        if dtype is not None and dtype not in self.dtypes:
            reasons.append(f"does not support {dtype}")
        if not reasons and x is not None and params is not None and geom is not None:
            reasons.extend(self.extra_reasons(x, params, geom))
        return reasons


def _load_naive():
    from .naive import meta_upscale_naive

    return meta_upscale_naive


def _load_im2col():
    from .im2col import meta_upscale_im2col

    return meta_upscale_im2col


def _load_torch():
    from .torch_chunked import meta_upscale_torch

    return meta_upscale_torch


def _naive_reasons(x: torch.Tensor, params: MLPParams, geom: Geometry) -> list[str]:
    if geom.H * geom.W > NAIVE_MAX_PIXELS:
        return [
            f"is the loop spec for tiny outputs (≤ {NAIVE_MAX_PIXELS} pixels), "
            f"got {geom.H}x{geom.W}"
        ]
    return []


def _im2col_reasons(x: torch.Tensor, params: MLPParams, geom: Geometry) -> list[str]:
    from .im2col import estimate_bytes

    grad = torch.is_grad_enabled() and (
        x.requires_grad
        or any(p.requires_grad for p in (params.w1, params.b1, params.w2, params.b2))
    )
    shape = (params.in_channels, params.out_channels, params.kernel_size, params.hidden)
    need = estimate_bytes(x.shape[0], geom, shape, x.element_size(), grad)
    free = available_memory_bytes(x.device)
    if free is not None and need > 0.9 * free:
        return [
            f"would need about {need / 2**30:.1f} GiB for its per-pixel weights and unfolded "
            f"features but {x.device.type} has {free / 2**30:.1f} GiB free; "
            "use backend='torch' (features-first, bounded memory)"
        ]
    return []


def _triton_environment(device_type: str) -> list[str]:
    if importlib.util.find_spec("triton") is None:
        return ["needs the 'triton' package (pip install triton; it ships with CUDA torch wheels)"]
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return ["runs on CUDA; on CPU only under TRITON_INTERPRET=1 (tests)"]
    if device_type == "cuda" and not torch.cuda.is_available():
        return ["no CUDA device is available"]
    return []


def _triton_reasons(x: torch.Tensor, params: MLPParams, geom: Geometry) -> list[str]:
    from .triton_fused import grid_limit_reasons

    return grid_limit_reasons(x, params, geom)


def _load_triton():
    from .triton_fused import meta_upscale_triton

    return meta_upscale_triton


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "naive",
            "loop spec, per-pixel weights; tiny sizes, tests only",
            ("cpu", "cuda"),
            FLOAT_DTYPES,
            _load_naive,
            _naive_reasons,
        ),
        Backend(
            "im2col",
            "published algorithm: all H·W weights + unfold + bmm (memory-hungry baseline)",
            ("cpu", "cuda"),
            FLOAT_DTYPES,
            _load_im2col,
            _im2col_reasons,
        ),
        Backend(
            "torch",
            "features-first / per-phase, chunked custom autograd; bounded memory (CPU default)",
            ("cpu", "cuda"),
            FLOAT_DTYPES,
            _load_torch,
        ),
        Backend(
            "triton",
            "fused features-first Triton kernels, forward and backward (CUDA default)",
            ("cpu", "cuda"),
            (torch.float32, torch.float16, torch.bfloat16),
            _load_triton,
            _triton_reasons,
            environment_reasons=_triton_environment,
        ),
    )
}


def backends(device: str | torch.device | None = None) -> dict[str, str | None]:
    """All backends and whether they can run on ``device`` (default: CUDA if present, else CPU).

    Returns:
        ``{name: None}`` for an available backend, ``{name: "reason; reason"}`` otherwise.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = torch.device(device).type
    out: dict[str, str | None] = {}
    for name, b in BACKENDS.items():
        reasons = b.not_supported_reasons(device_type=device_type)
        out[name] = "; ".join(reasons) if reasons else None
    return out


def _requested_name(backend: str | None) -> str:
    name = backend if backend not in (None, "auto") else os.environ.get("METASR_BACKEND", "auto")
    name = (name or "auto").strip().lower()
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from auto, {', '.join(BACKENDS)}")
    return name


def select_backend(
    backend: str | None, x: torch.Tensor, params: MLPParams, geom: Geometry
) -> Backend:
    """The backend that runs this call, or :class:`BackendUnavailableError` explaining why none."""
    name = _requested_name(backend)
    if name == "auto":
        candidates = ["triton", "torch"] if x.device.type == "cuda" else ["torch"]
    else:
        candidates = [name]
    for cand in candidates:
        if not BACKENDS[cand].not_supported_reasons(x, params, geom):
            return BACKENDS[cand]
    lines = [
        f"  {n}: {'; '.join(b.not_supported_reasons(x, params, geom)) or 'available'}"
        for n, b in BACKENDS.items()
    ]
    raise BackendUnavailableError(
        f"backend {name!r} cannot run meta_upscale on {x.device.type} {x.dtype} "
        f"{tuple(x.shape)} -> {geom.H}x{geom.W}:\n" + "\n".join(lines)
    )
