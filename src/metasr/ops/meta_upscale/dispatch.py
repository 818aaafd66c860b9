"""Backend registry and the one place where a backend is chosen.

Each backend declares the devices and dtypes it supports and can say why it cannot run a given
call (:meth:`Backend.not_supported_reasons`). ``auto`` is ``triton`` on CUDA when it can run,
else ``torch``. ``backend=`` or the ``METASR_BACKEND`` environment variable override ``auto``; an
impossible request raises :class:`BackendUnavailableError` listing every backend and its reasons.

Every backend also estimates the peak memory of a call (``estimate_bytes(x, params, geom)`` in
its file, the output ``N·Cout·H·W`` included); a backend whose estimate exceeds the device's free
memory (:func:`metasr.ops.memory.available_memory_bytes`) cannot run the call, so an output that
cannot fit is refused before anything of its size is allocated.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ...geometry import Geometry
from ...validation import check_str
from ..memory import available_memory_bytes, gib
from .params import MLPParams, PredictorParams

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailableError",
    "backends",
    "check_backend_name",
    "select_backend",
]

Estimate = Callable[[torch.Tensor, PredictorParams, Geometry], int]

FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

#: The naive spec loops over output pixels in Python; beyond this it is unusably slow.
NAIVE_MAX_PIXELS = 1 << 16

#: Calls whose estimate is below this are not checked against free memory (no probe per call in
#: training loops; such a call cannot take a machine down).
MEMORY_CHECK_MIN_BYTES = 64 << 20


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
        load_estimate: returns its ``estimate_bytes(x, params, geom)``, the call's peak bytes.
        extra_reasons: call-specific reasons it cannot run (besides device, dtype and memory).
        environment_reasons: reasons that depend only on the installation and device type.
        memory_hint: appended to its out-of-memory reason.
    """

    name: str
    description: str
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    load: Callable[[], Callable[[torch.Tensor, PredictorParams, Geometry], torch.Tensor]]
    load_estimate: Callable[[], Estimate]
    extra_reasons: Callable[..., list[str]] = field(default=lambda *a, **k: [])
    environment_reasons: Callable[[str], list[str]] = field(default=lambda device_type: [])
    memory_hint: str = ""

    def estimate_bytes(self, x: torch.Tensor, params: PredictorParams, geom: Geometry) -> int:
        """Peak bytes of the call (output included); ``x`` may be a stand-in of its shape."""
        return int(self.load_estimate()(x, params, geom))

    def memory_reasons(
        self, x: torch.Tensor, params: PredictorParams, geom: Geometry, extra_bytes: int = 0
    ) -> list[str]:
        """Why the call cannot fit in ``x.device``'s free memory (empty list: it can).

        Args:
            extra_bytes: what the caller allocates alongside (a network's own output copies).
        """
        need = self.estimate_bytes(x, params, geom) + extra_bytes
        if need < MEMORY_CHECK_MIN_BYTES:
            return []
        free = available_memory_bytes(x.device)
        if free is None or need <= free:
            return []
        out = x.shape[0] * params.out_channels * geom.H * geom.W * x.element_size()
        return [
            f"would need about {gib(need)} (the output alone {gib(out)}) but {x.device.type} "
            f"has {gib(free)} free{self.memory_hint}"
        ]

    def not_supported_reasons(
        self,
        x: torch.Tensor | None = None,
        params: PredictorParams | None = None,
        geom: Geometry | None = None,
        device_type: str | None = None,
        dtype: torch.dtype | None = None,
        check_memory: bool = True,
        extra_bytes: int = 0,
    ) -> list[str]:
        """Why this backend cannot run the call (empty list: it can).

        Args:
            check_memory: also compare the call's estimate with the device's free memory.
            extra_bytes: added to the estimate (see :meth:`memory_reasons`).
        """
        if x is not None:
            device_type, dtype = x.device.type, x.dtype
        reasons = list(self.environment_reasons(device_type or "cpu"))
        if device_type is not None and device_type not in self.devices:
            reasons.append(f"runs on {'/'.join(self.devices)}, not {device_type}")
        if dtype is not None and dtype not in self.dtypes:
            reasons.append(f"does not support {dtype}")
        if not reasons and x is not None and params is not None and geom is not None:
            reasons.extend(self.extra_reasons(x, params, geom))
            if not reasons and check_memory:
                reasons.extend(self.memory_reasons(x, params, geom, extra_bytes))
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


def _naive_reasons(x: torch.Tensor, params: PredictorParams, geom: Geometry) -> list[str]:
    if geom.H * geom.W > NAIVE_MAX_PIXELS:
        return [
            f"is the loop spec for tiny outputs (≤ {NAIVE_MAX_PIXELS} pixels), "
            f"got {geom.H}x{geom.W}"
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


def _estimate_of(module: str) -> Callable[[], Estimate]:
    """Loader of ``estimate_bytes`` from the backend file ``module`` (imported on first use)."""

    def load() -> Estimate:
        return importlib.import_module(f"{__package__}.{module}").estimate_bytes

    return load


def _triton_reasons(x: torch.Tensor, params: PredictorParams, geom: Geometry) -> list[str]:
    if not isinstance(params, MLPParams):
        # The kernels fuse ReLU(A[i] + Bc[j] + c); any other body runs in the torch backend.
        return [
            "fuses only the Linear-ReLU-Linear predictor (metasr.Pos2Weight's default); this "
            "phi has another body or last layer: use backend='torch'"
        ]
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
            _estimate_of("naive"),
            _naive_reasons,
        ),
        Backend(
            "im2col",
            "published algorithm: all H·W weights + unfold + bmm (memory-hungry baseline)",
            ("cpu", "cuda"),
            FLOAT_DTYPES,
            _load_im2col,
            _estimate_of("im2col"),
            memory_hint="; use backend='torch' (features-first, bounded memory)",
        ),
        Backend(
            "torch",
            "features-first / per-phase, chunked custom autograd; bounded memory (CPU default)",
            ("cpu", "cuda"),
            FLOAT_DTYPES,
            _load_torch,
            _estimate_of("torch_chunked"),
        ),
        Backend(
            "triton",
            "fused features-first Triton kernels, forward and backward (CUDA default)",
            ("cpu", "cuda"),
            (torch.float32, torch.float16, torch.bfloat16),
            _load_triton,
            _estimate_of("triton_fused"),
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


def check_backend_name(backend: object) -> str:
    """``backend`` (``None``, ``"auto"`` or a registered name, any case) normalised.

    Raises:
        ValueError: for anything else.
    """
    if backend is None:
        return "auto"
    check_str("backend", backend)
    name = backend.strip().lower() or "auto"
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")
    return name


def _requested_name(backend: str | None) -> str:
    name = check_backend_name(backend)
    if name == "auto":
        env = os.environ.get("METASR_BACKEND", "auto")
        try:
            name = check_backend_name(env)
        except ValueError:
            raise ValueError(
                f"unknown backend {env!r} in METASR_BACKEND; "
                f"choose from auto, {', '.join(BACKENDS)}"
            ) from None
    return name


def select_backend(
    backend: str | None,
    x: torch.Tensor,
    params: PredictorParams,
    geom: Geometry,
    check_memory: bool = True,
    extra_bytes: int = 0,
) -> Backend:
    """The backend that runs this call, or :class:`BackendUnavailableError` explaining why none.

    Args:
        backend: ``None``/``"auto"`` or a backend name.
        x: ``(N, Cin, h, w)``; only its shape, dtype, device and ``requires_grad`` are read, so
            a stand-in such as ``x.new_empty(1).expand(shape)`` will do.
        check_memory: refuse backends whose estimate exceeds the device's free memory.
        extra_bytes: what the caller allocates alongside, added to every estimate.

    Raises:
        BackendUnavailableError: its first line names the requested backend(s) and their
            reasons (an out-of-memory reason carries the estimate in GiB); the following lines
            list every backend.
    """
    name = _requested_name(backend)
    if name == "auto":
        candidates = ["triton", "torch"] if x.device.type == "cuda" else ["torch"]
    else:
        candidates = [name]
    why: dict[str, list[str]] = {}
    for cand in candidates:
        why[cand] = BACKENDS[cand].not_supported_reasons(
            x, params, geom, check_memory=check_memory, extra_bytes=extra_bytes
        )
        if not why[cand]:
            return BACKENDS[cand]
    summary = "; ".join(f"{n} {'; '.join(r)}" for n, r in why.items())
    lines = []
    for n, b in BACKENDS.items():
        reasons = why.get(n)
        if reasons is None:
            reasons = b.not_supported_reasons(
                x, params, geom, check_memory=check_memory, extra_bytes=extra_bytes
            )
        lines.append(f"  {n}: {'; '.join(reasons) or 'available'}")
    raise BackendUnavailableError(
        f"backend {name!r} cannot run meta_upscale on {x.device.type} {x.dtype} "
        f"{tuple(x.shape)} -> {geom.H}x{geom.W}: {summary}\n" + "\n".join(lines)
    )
