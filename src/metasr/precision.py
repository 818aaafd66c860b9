"""Inference precision of the networks: ``"fp32"``, ``"bf16"`` or ``"auto"`` (issue 27).

``"bf16"`` runs a network's forward under ``torch.autocast(dtype=torch.bfloat16)``: the
convolutions and matrix products of the body in bfloat16, everything autocast keeps in float32
(and the Meta-Upscale head, which on CPU computes in float32,
:mod:`metasr.ops.meta_upscale.torch_chunked`) as it is; the parameters stay float32, so the
same loaded model serves every precision. ``"auto"`` is bfloat16 only on a CPU with native
bfloat16 arithmetic (AVX512-BF16 or AMX-BF16; without them oneDNN emulates bfloat16 and it is
slower than float32) and float32 everywhere else; docs/benchmarks.md ("CPU inference
precision") has the measured speed and PSNR cost. On CUDA use ``--half`` (float16 weights).

``"auto"`` on the CPU also feeds the network its input in channels-last memory format where the
network's class says that is faster (:attr:`metasr.archs.base.MetaSRNet.channels_last_cpu`,
measured per network: ``benchmarks/channels_last.py``): PyTorch's CPU convolutions then run
channels-last (the same values up to float rounding). Only the input changes layout; the
loaded model's parameters are left as they are (the convolutions reorder their weights per call),
so the model stays usable and savable as loaded.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = [
    "FLOAT32",
    "PRECISIONS",
    "Precision",
    "cpu_has_native_bf16",
    "inference_precision",
    "plan_precision",
    "resolve_precision",
]

PRECISIONS = ("fp32", "bf16", "auto")

#: CPU flags (``/proc/cpuinfo``) of native bfloat16 arithmetic.
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (Linux ``/proc/cpuinfo`` flags; False
    where they cannot be read)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return any(f in flags for f in _BF16_FLAGS)
    except OSError:
        pass
    return False


def resolve_precision(precision: object, device: torch.device | str = "cpu") -> str:
    """``"fp32"`` or ``"bf16"``: what ``precision`` means on ``device``.

    Raises:
        TypeError: ``precision`` is not a string.
        ValueError: it is not one of :data:`PRECISIONS`, or ``"bf16"`` on a device other than
            the CPU.
    """
    if not isinstance(precision, str):
        raise TypeError(f"precision must be a string, got {type(precision).__name__}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device_type = torch.device(device).type
    if precision == "auto":
        return "bf16" if device_type == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision == "bf16" and device_type != "cpu":
        raise ValueError(
            f"precision 'bf16' is for CPU inference; on {device_type} load the model in "
            "float16 (--half) instead"
        )
    return precision


@dataclass(frozen=True)
class Precision:
    """A precision as one call runs it: resolved once for a model on a device
    (:func:`plan_precision`) and handed down.

    Attributes:
        compute: ``"fp32"`` or ``"bf16"`` (:func:`resolve_precision`).
        memory_format: the memory format of the network's input (:func:`plan_precision`).
    """

    compute: str
    memory_format: torch.memory_format

    def autocast(self) -> contextlib.AbstractContextManager:
        """The block's autocast: bfloat16 on the CPU for ``"bf16"``, none for ``"fp32"``."""
        if self.compute == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()


#: Plain float32: no autocast, the input contiguous.
FLOAT32 = Precision("fp32", torch.contiguous_format)


def plan_precision(
    precision: object, model: torch.nn.Module, device: torch.device | str = "cpu"
) -> Precision:
    """What ``precision`` (one of :data:`PRECISIONS`) means for ``model`` on ``device``: the
    compute precision (:func:`resolve_precision`) and the input's memory format.

    ``torch.channels_last`` for ``precision="auto"`` on the CPU when ``model`` declares
    ``channels_last_cpu`` (a network measured faster so), else ``torch.contiguous_format``.

    Raises:
        TypeError, ValueError: as :func:`resolve_precision`.
    """
    compute = resolve_precision(precision, device)
    channels_last = (
        precision == "auto"
        and torch.device(device).type == "cpu"
        and getattr(model, "channels_last_cpu", False) is True
    )
    return Precision(compute, torch.channels_last if channels_last else torch.contiguous_format)


@contextlib.contextmanager
def inference_precision(precision: str, device: torch.device | str = "cpu") -> Iterator[str]:
    """Run the block in ``precision`` (:func:`resolve_precision`); yields what it resolved to."""
    resolved = resolve_precision(precision, device)
    with Precision(resolved, torch.contiguous_format).autocast():
        yield resolved
