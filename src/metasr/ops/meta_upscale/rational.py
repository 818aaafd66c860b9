"""Meta-Upscale at a fixed rational scale for any input size (dynamic-size export).

At a scale ``r = p/q`` (lowest terms) per axis, the ``exact`` geometry repeats every ``q`` LR
rows and ``p`` output rows: output row ``i = p·m + s`` (``0 ≤ s < p``) reads LR row
``i' = q·m + a_s`` with offset ``Δ_s``, where ``a_s = floor(s·q/p)`` and ``Δ_s = (s·q mod p)/p``
(:func:`metasr.geometry.axis_map`: ``i' = floor(i/r + 1e-6)``, anchored at row 0, not centred),
and ``H = floor(h·p/q)``. So the head is one fixed-weight computation valid for any ``h×w``:

1. pad the LR features by the window's halo ``k // 2`` (zeros, or wrapped columns with
   ``periodic_lon``, as :mod:`.padding`) and by ``q − 1`` more zero rows/columns at the
   bottom/right, so that ``ceil(h/q)`` whole periods fit;
2. one convolution with stride ``q`` and kernel ``q + k − 1`` whose ``p_v·p_h·Cout`` output
   channels are the ``p_v·p_h`` phase pairs: phase ``(s_v, s_h)``'s ``k×k`` predicted filter
   sits at ``(a_{s_v}, a_{s_h})`` in the kernel, zeros elsewhere;
3. depth-to-space: period ``(m_v, m_h)``'s channels become the ``p_v×p_h`` output block;
4. a crop to ``floor(h·p_v/q_v) × floor(w·p_h/q_h)``, computed from the input's shape.

Each output pixel is the same ``k×k`` window times the same predicted filter as in the per-phase
order of the eager backends (the filters are predicted at the first period's offsets, as there),
so the two agree to float rounding. Step 1's extra rows are only read by cropped outputs. The
same :func:`period_conv` applies the bicubic residual's period kernel
(:func:`metasr.archs.bicubic.bicubic_period_taps`).

The kernel is ``(q + k − 1)²/k²`` times larger than the useful taps (1.8× at ``q = 2``, 16× at
``q = 10``), so :func:`rational_scale` accepts denominators up to :data:`MAX_DENOMINATOR`.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...geometry import (
    MAX_OUTPUT_SIDE,
    UpscaleRequest,
    axis_map,
    parse_scale,
    resolve_output_size,
)

__all__ = [
    "MAX_DENOMINATOR",
    "head_period_weight",
    "period_conv",
    "rational_scale",
]

#: Largest denominator ``q`` of a scale ``p/q`` with a dynamic-size form: every scale with one
#: decimal (``2.3 = 23/10``), halves, thirds, quarters, ... .
MAX_DENOMINATOR = 10


@functools.lru_cache(maxsize=64)
def _axis_fraction(r: float, what: str) -> tuple[int, int]:
    """``(p, q)`` with ``r == p/q`` (to a few ulps), ``q ≤ MAX_DENOMINATOR``, checked against
    the geometry's output-size rule and LR map on inputs of every size up to ``2q`` plus a few
    large ones."""
    f = Fraction(r).limit_denominator(MAX_DENOMINATOR)
    p, q = f.numerator, f.denominator
    if not math.isclose(r, p / q, rel_tol=4e-16, abs_tol=0.0):
        raise ValueError(
            f"{what} {r!r} is not p/q with q <= {MAX_DENOMINATOR} to full precision (nearest: "
            f"{p}/{q} = {p / q!r}), so its pattern of LR rows and offsets does not repeat"
        )
    for n in [*range(1, 2 * q + 1), 997, 4096, 65537]:
        if n * r >= MAX_OUTPUT_SIDE:  # beyond what any request may ask for
            break
        n_out = resolve_output_size(n, 1, scale=(r, 1.0))[0]
        idx, off = axis_map(n_out, n, r)
        i = np.arange(n_out)
        if n_out != n * p // q or not (
            np.array_equal(idx, (i * q) // p)
            and np.allclose(off, ((i * q) % p) / p, rtol=0, atol=1e-9)
        ):
            raise ValueError(f"{what} {r!r}: the geometry does not repeat every {q} input rows")
    return p, q


def rational_scale(scale: object) -> tuple[tuple[int, int], tuple[int, int]]:
    """The ``((p_v, q_v), (p_h, q_h))`` of a scale (a number or ``(r_v, r_h)``).

    Raises:
        ValueError: a factor that is not ``p/q`` with ``q ≤`` :data:`MAX_DENOMINATOR` (exactly,
            to a few ulps: 4/3 as ``1.3333333333333333``, not ``1.333``), or a bad scale.
    """
    r_v, r_h = parse_scale(scale)
    return _axis_fraction(r_v, "vertical scale"), _axis_fraction(r_h, "horizontal scale")


def head_period_weight(
    phi: nn.Module, scale: tuple[float, float], arithmetic: str = "exact", periodic: bool = False
) -> torch.Tensor:
    """The head's period kernel at ``scale``, for :func:`period_conv`.

    Args:
        phi: the weight predictor (any, called on positions ``(M, P)``).
        scale: ``(r_v, r_h)``, each accepted by :func:`rational_scale`.
        arithmetic: the head's grid arithmetic; only ``"exact"`` repeats.
        periodic: the head's ``periodic_lon`` (does not change the weights; checked with the
            request like the op does).

    Returns:
        ``(p_v·p_h·Cout, Cin, q_v + k − 1, q_h + k − 1)`` in ``phi``'s dtype: channel
        ``(s_v·p_h + s_h)·Cout + o``.

    Raises:
        ValueError: the official arithmetic (its float32 grid does not repeat exactly), or a
            scale :func:`rational_scale` refuses.
    """
    if arithmetic != "exact":
        raise ValueError(
            "a head with arithmetic='official' has no dynamic-size form: its float32 grid does "
            "not repeat exactly; export it with a fixed input size"
        )
    (p_v, q_v), (p_h, q_h) = rational_scale(scale)
    k, C, O = phi.kernel_size, phi.in_channels, phi.out_channels
    # One period of the whole image's geometry: a q_v×q_h input gives exactly p_v×p_h outputs,
    # with the first period's offsets (those the per-phase order predicts at).
    request = UpscaleRequest(scale=scale, arithmetic=arithmetic, periodic_lon=periodic)
    geom = request.geometry(q_v, q_h, phi.pos_encoding)
    pos = geom.row_pos[:, None, :] + geom.col_pos[None, :, :] + geom.const_pos  # (p_v, p_h, P)
    ref = next(phi.parameters())
    with torch.no_grad():
        w = phi(torch.as_tensor(pos.reshape(p_v * p_h, -1), dtype=torch.float64).to(ref))
    w = w.view(p_v, p_h, C, k, k, O).permute(0, 1, 5, 2, 3, 4)  # (p_v, p_h, O, C, k, k)
    kernel = w.new_zeros(p_v, p_h, O, C, q_v + k - 1, q_h + k - 1)
    for sv, a_v in enumerate(geom.row_idx.tolist()):
        for sh, a_h in enumerate(geom.col_idx.tolist()):
            kernel[sv, sh, :, :, a_v : a_v + k, a_h : a_h + k] = w[sv, sh]
    return kernel.reshape(p_v * p_h * O, C, q_v + k - 1, q_h + k - 1)


def _wrap_columns(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x`` with ``n`` columns copied circularly onto each side (any width, also ``< n``:
    the index wraps more than once, as :func:`.padding.wrap_columns`; in a graph, a gather)."""
    if n == 0:
        return x
    w = x.shape[3]
    idx = torch.remainder(
        torch.arange(w + 2 * n, device=x.device) - n, torch.scalar_tensor(w, dtype=torch.long)
    )
    return x.index_select(3, idx)


def period_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    period: tuple[tuple[int, int], tuple[int, int]],
    halo: int,
    border: str = "zeros",
    periodic: bool = False,
) -> torch.Tensor:
    """Apply a period kernel to ``x`` of any size: pad, strided convolution, depth-to-space,
    crop (module docstring).

    Args:
        x: ``(N, C, h, w)``; ``h, w`` may be symbolic (``torch.export``).
        weight: ``(p_v·p_h·O, C, q_v + 2·halo, q_h + 2·halo)``, channel ``(s_v·p_h + s_h)·O + o``.
        period: ``((p_v, q_v), (p_h, q_h))``.
        halo: LR pixels a period's window reaches beyond its ``q`` rows on each side.
        border: ``"zeros"`` (the head's window) or ``"replicate"`` (the bicubic taps, clamped
            to the image as ATen clamps them).
        periodic: the columns wrap around the width (``periodic_lon``).

    Returns:
        ``(N, O, floor(h·p_v/q_v), floor(w·p_h/q_h))``.
    """
    (p_v, q_v), (p_h, q_h) = period
    N, _, h, w = x.shape
    O = weight.shape[0] // (p_v * p_h)
    if border not in ("zeros", "replicate"):
        raise ValueError(f"border must be 'zeros' or 'replicate', got {border!r}")
    mode = "constant" if border == "zeros" else border
    if periodic:
        # Columns wrap (longitude), rows take the border: as .padding and bicubic_upsample.
        x = F.pad(_wrap_columns(x, halo), [0, 0, halo, halo], mode=mode)
    else:
        x = F.pad(x, [halo] * 4, mode=mode)
    # Zeros up to whole periods: read only by outputs the crop removes.
    x = F.pad(x, [0, q_h - 1, 0, q_v - 1])
    y = F.conv2d(x, weight.to(x.dtype), stride=(q_v, q_h))  # (N, p_v·p_h·O, ceil(h/q_v), ...)
    Mv, Mh = y.shape[-2:]
    y = y.view(N, p_v, p_h, O, Mv, Mh).permute(0, 3, 4, 1, 5, 2)
    y = y.reshape(N, O, Mv * p_v, Mh * p_h)
    return y[:, :, : h * p_v // q_v, : w * p_h // q_h]
