"""Memory helpers shared by the ops and their callers: free-memory probe, OOM error, buffers."""

from __future__ import annotations

import torch

try:
    import resource
except ImportError:  # not on Windows
    resource = None

__all__ = ["OutOfMemoryError", "available_memory_bytes", "empty_output", "gib"]

#: The exception an allocation raises when a device is out of memory. ``torch.OutOfMemoryError``
#: exists only in newer torch; ``torch.cuda.OutOfMemoryError`` (the same class there) in every
#: version the package supports.
OutOfMemoryError: type[RuntimeError] = getattr(
    torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError
)


def gib(n: float) -> str:
    """``n`` bytes as ``"12.3 GiB"`` (the unit of every memory message)."""
    return f"{n / 2**30:.1f} GiB"


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def _status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmData``), in bytes."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _host_available_bytes() -> int | None:
    """What this process can still allocate on the host: the least of ``MemAvailable``, the
    room left under a cgroup v2 memory limit (containers, Slurm) and under ``RLIMIT_DATA``.
    """
    candidates: list[int] = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
                    break
    except OSError:
        pass
    limit = _read_int("/sys/fs/cgroup/memory.max")
    used = _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        candidates.append(max(limit - used, 0))
    # RLIMIT_DATA bounds the private writable mappings (VmData), where tensors live.
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA) if resource else (-1, -1)
    if resource and soft != resource.RLIM_INFINITY:
        data = _status_kib("VmData")
        if data is not None:
            candidates.append(max(soft - data, 0))
    return min(candidates) if candidates else None


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory on ``device``, or None when it cannot be told.

    CUDA: the driver's free memory plus what PyTorch's caching allocator holds unused (it hands
    that out again first). CPU: the least of ``MemAvailable``, the cgroup limit's headroom and
    ``RLIMIT_DATA``'s headroom.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(cached, 0))
    if device.type == "cpu":
        return _host_available_bytes()
    return None


def empty_output(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised buffer in ``like``'s dtype and device that a kernel fills completely.

    Every buffer the backends' kernels write goes through this one function, so that the test
    suite can replace it with a NaN-filled allocation (``tests/conftest.py``): an element a
    kernel fails to write then shows up as NaN. Callers look it up on this module at call time
    (``memory.empty_output(...)``) for that reason.
    """
    return torch.empty(shape, dtype=like.dtype, device=like.device)
