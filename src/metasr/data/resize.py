"""MATLAB-compatible bicubic resize with a separate scale factor per axis.

This is MATLAB's ``imresize(I, scale, 'bicubic')`` (the function every SR benchmark uses to make
LR images, and that BasicSR's ``basicsr.utils.matlab_functions.imresize`` re-implements for one
shared scale) generalised to a vertical and a horizontal factor. Per axis:

* output pixel ``x`` (1-based) maps to input coordinate ``u = x / s + 0.5 · (1 − 1/s)``;
* the Keys cubic kernel (``a = −0.5``) is evaluated at ``u − j`` for the ``ceil(4/s) + 2``
  nearest input pixels ``j``; when shrinking (``s < 1``) with antialiasing the kernel is
  stretched to ``s · cubic(s · t)`` (width ``4/s``), as MATLAB does;
* weights are normalised to sum to one and out-of-range indices are mirrored (MATLAB's
  ``symmetric`` boundary: ``… 2 1 | 1 2 3 … n | n n−1 …``).

Why not a package: ``bicubic-pytorch`` agrees with BasicSR to float32 precision, but its public
function takes one scale for both axes (per-axis only as an output *size*, which changes the
kernel scale to ``out/in`` instead of the nominal ``1/r``) and always computes in float32. Here
the kernel scale and the output size are given separately, in float64 where the input is, which
the gridded (climate) data and the asymmetric protocol need. ``tests/data/test_datasets.py``
checks this function against BasicSR's ``imresize`` and its per-axis weights.

Each axis is applied as a dense ``(out, in)`` matrix; the matrices are cached per geometry, so a
training loop that revisits the same crop sizes and scales builds each one once.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch

from ..validation import ArgumentTypeError

__all__ = ["imresize", "resize_matrix"]

#: Guards ``ceil`` against products such as ``255 · (1/3) = 85.00000000000001``.
_EPS = 1e-9


def _cubic(t: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with ``a = −0.5`` (MATLAB's ``cubic``)."""
    at = np.abs(t)
    at2 = at * at
    at3 = at2 * at
    near = (1.5 * at3 - 2.5 * at2 + 1.0) * (at <= 1)
    far = (-0.5 * at3 + 2.5 * at2 - 4.0 * at + 2.0) * ((at > 1) & (at <= 2))
    return near + far


@functools.lru_cache(maxsize=512)
def _resize_matrix_cached(n_in: int, n_out: int, scale: float, antialias: bool) -> np.ndarray:
    x = np.arange(1, n_out + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    shrink = scale < 1.0 and antialias
    width = 4.0 / scale if shrink else 4.0
    left = np.floor(u - width / 2.0)
    taps = math.ceil(width) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # (n_out, taps), 1-based
    dist = u[:, None] - idx
    weights = scale * _cubic(dist * scale) if shrink else _cubic(dist)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # Mirror out-of-range taps (symmetric boundary) with a period of 2·n_in, which also covers
    # kernels wider than the input (BasicSR copies only one reflection and breaks there).
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in - 1, -1, -1)])
    src = mirror[np.mod(idx.astype(np.int64) - 1, 2 * n_in)]
    mat = np.zeros((n_out, n_in), dtype=np.float64)
    np.add.at(mat, (np.repeat(np.arange(n_out), taps), src.ravel()), weights.ravel())
    mat.setflags(write=False)
    return mat


def _output_length(n_in: int, scale: float) -> int:
    return max(1, math.ceil(n_in * scale - _EPS))


def resize_matrix(
    n_in: int, n_out: int | None = None, scale: float | None = None, antialias: bool = True
) -> np.ndarray:
    """The ``(n_out, n_in)`` float64 matrix that resizes one axis (``y = M @ x``).

    Args:
        n_in: input length (≥ 1).
        n_out: output length; default ``ceil(n_in · scale)`` (MATLAB's rule).
        scale: kernel scale ``out/in`` (``< 1`` shrinks); default ``n_out / n_in``.
        antialias: widen the kernel when shrinking (MATLAB's default).

    Returns:
        A read-only ``(n_out, n_in)`` float64 array whose rows sum to one.
    """
    if n_in < 1:
        raise ValueError(f"cannot resize an axis of length {n_in}")
    if scale is None and n_out is None:
        raise ValueError("give n_out or scale (or both)")
    if scale is None:
        scale = n_out / n_in
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"resize scale must be finite and > 0, got {scale}")
    if n_out is None:
        n_out = _output_length(n_in, scale)
    if n_out < 1:
        raise ValueError(f"resize output length must be >= 1, got {n_out}")
    return _resize_matrix_cached(int(n_in), int(n_out), scale, bool(antialias))


def _pair(value: object, what: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), float(value)
    if isinstance(value, Sequence) and len(value) == 2:
        return value[0], value[1]  # type: ignore[return-value]
    raise ArgumentTypeError(
        f"{what} must be a number or a pair (vertical, horizontal), got {value!r}"
    )


def imresize(
    x: torch.Tensor | np.ndarray,
    scale: float | tuple[float | None, float | None] | None = None,
    size: tuple[int | None, int | None] | None = None,
    antialias: bool = True,
) -> torch.Tensor | np.ndarray:
    """Resize the last two axes of ``x`` with MATLAB's bicubic ``imresize``, per axis.

    Give ``scale`` (kernel scale ``out/in``; e.g. ``(1/r_v, 1/r_h)`` to make an LR image),
    ``size`` (``(H_out, W_out)``), or both: then ``scale`` sets the kernel mapping and ``size``
    the number of output pixels, which is how an HR crop of ``floor(p·r)`` rows is shrunk to
    exactly ``p`` rows with the nominal factor ``1/r``. Missing sizes follow MATLAB
    (``ceil(in · scale)``); missing scales are ``out/in``. An axis with scale 1 and unchanged
    length is copied.

    Args:
        x: ``(..., H, W)`` tensor or array. Floating inputs keep their dtype (float64 stays
            float64); integer inputs are computed in float32 and rounded and clipped back to
            their dtype, as MATLAB does for ``uint8``.
        scale: a number or ``(s_v, s_h)`` (an entry may be None when ``size`` gives it).
        size: ``(H_out, W_out)`` (an entry may be None when ``scale`` gives it).
        antialias: widen the kernel when shrinking (MATLAB's default: True).

    Returns:
        ``(..., H_out, W_out)``, same type (tensor or array), device and dtype as ``x``.
    """
    if scale is None and size is None:
        raise ValueError("give scale=..., size=(H, W), or both")
    scales = _pair(scale, "scale") or (None, None)
    sizes = _pair(size, "size") or (None, None)
    is_numpy = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(x)) if is_numpy else x
    if t.dim() < 2:
        raise ValueError(f"imresize needs at least 2 dimensions (H, W), got shape {tuple(t.shape)}")
    in_dtype = t.dtype
    work = t if t.is_floating_point() else t.to(torch.float32)
    if work.dtype in (torch.float16, torch.bfloat16):
        work = work.float()
    for axis, s, n in ((-2, scales[0], sizes[0]), (-1, scales[1], sizes[1])):
        if s is None and n is None:
            raise ValueError("each axis needs a scale or an output size")
        n_in = work.shape[axis]
        n_out = None if n is None else int(n)
        if (s is None or float(s) == 1.0) and (n_out is None or n_out == n_in):
            continue  # scale 1 at the same length: the cubic kernel is the identity
        mat = resize_matrix(n_in, n_out, s, antialias)
        m = torch.tensor(mat, device=work.device, dtype=work.dtype)  # copy: the cache is read-only
        if axis == -2:
            work = torch.matmul(m, work)
        else:
            work = torch.matmul(work, m.T)
    if not in_dtype.is_floating_point:
        info = torch.iinfo(in_dtype)
        work = work.round().clamp(info.min, info.max)
    out = work.to(in_dtype)
    return out.numpy() if is_numpy else out
