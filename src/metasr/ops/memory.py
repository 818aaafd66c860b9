"""Memory helpers shared by the ops and their callers: free-memory probe, OOM error, buffers."""

from __future__ import annotations

import torch

__all__ = ["OutOfMemoryError", "available_memory_bytes", "empty_output"]

#: The exception an allocation raises when a device is out of memory. ``torch.OutOfMemoryError``
#: exists only in newer torch; ``torch.cuda.OutOfMemoryError`` (the same class there) in every
#: version the package supports.
OutOfMemoryError: type[RuntimeError] = getattr(
    torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError
)


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (CUDA: ``mem_get_info``; CPU: ``MemAvailable``), or None."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def empty_output(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised buffer in ``like``'s dtype and device that a kernel fills completely.

    Every buffer the backends' kernels write goes through this one function, so that the test
    suite can replace it with a NaN-filled allocation (``tests/conftest.py``): an element a
    kernel fails to write then shows up as NaN. Callers look it up on this module at call time
    (``memory.empty_output(...)``) for that reason.
    """
    return torch.empty(shape, dtype=like.dtype, device=like.device)
