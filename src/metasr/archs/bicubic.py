"""The bicubic global residual of the networks, for a whole image or a region of it.

A network with ``bicubic_residual`` adds the bicubic upsampling of its input to its output
(PyTorch's ``align_corners=False`` bicubic, Keys' A = −0.75). Output row ``i`` samples the
input at ``s = (i + 0.5) / r − 0.5`` with the *request's* ratio ``r``: the scale when a scale
was asked for, ``H / h`` when a size was. That is where the Meta-Upscale head and MATLAB's
``imresize`` (which makes the LR images) put row ``i`` too. ``F.interpolate(x, size=(H, W))``
would use ``h / H`` instead, which differs when ``H = floor(h·r)`` is not ``h·r``: the term then
drifts across the image, by up to ``(h·r − H) / r`` LR pixels at the far edge (half an HR pixel
at the bottom of a 1280-row photo at r = 1.5), and the network would have to undo a shift that
depends on where it is, which a convolutional network cannot.

On a :class:`metasr.geometry.Region` (tiled inference) the term must be the *whole image's*
upsampling restricted to the region's outputs: ``F.interpolate`` on the region's window would
sample on the window's own grid and clamp its taps at the window's edges instead of the
image's. :func:`bicubic_upsample` computes the whole image's term from the window alone, as
two small interpolation matrices, which needs the window to hold the taps: up to
:data:`BICUBIC_CONTEXT` LR pixels on each side of the LR pixels the region's outputs belong to.

With ``periodic_lon`` the columns are a circle (longitude): the taps left of column 0 and right
of column ``w − 1`` wrap around instead of clamping, which equals the same upsampling of the input
circularly padded along the width, cropped. A wrapped tap can be anywhere in the row, so a
periodic region must span the whole width (tiled inference then cuts rows only).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import Region

__all__ = [
    "BICUBIC_CONTEXT",
    "bicubic_period_kernel",
    "bicubic_upsample",
    "check_bicubic_region",
]

#: LR pixels of context a region needs on each side of the LR pixels its outputs belong to for
#: the bicubic taps: output ``i`` samples ``s = (i + 0.5)/r − 0.5``, which lies in
#: ``[i' − 0.5, i' + 1)`` for ``i' = floor(i / r)``, and the taps are
#: ``floor(s) − 1 … floor(s) + 2``: two rows above ``i'`` and two below suffice; the third is
#: margin for ``floor(i/r + 1e-6)`` guarded products.
BICUBIC_CONTEXT = 3


def _bicubic_matrix(
    out_lo: int,
    out_hi: int,
    n_in: int,
    n_out: int,
    periodic: bool = False,
    ratio: float | None = None,
) -> tuple[np.ndarray, int]:
    """Rows ``[out_lo, out_hi)`` of PyTorch's bicubic interpolation matrix along one axis.

    Matches ATen's ``upsample_bicubic2d`` (``align_corners=False``) with the scale ``ratio``:
    output ``i`` samples ``(i + 0.5)/ratio − 0.5`` (``ratio`` None: ``n_out/n_in``, which is
    ``F.interpolate(size=...)``) with Keys' cubic convolution (A = −0.75) and taps clamped to
    ``[0, n_in)``, as ATen computes them; with ``periodic`` the taps wrap modulo ``n_in``
    instead (and the matrix spans all ``n_in`` inputs).

    Returns:
        ``(m, lo)``: ``m`` ``(out_hi − out_lo, hi − lo)`` float64 over the input rows
        ``[lo, hi)`` the taps use.
    """
    a = -0.75
    step = n_in / n_out if ratio is None else 1.0 / ratio
    src = (np.arange(out_lo, out_hi) + 0.5) * step - 0.5
    base = np.floor(src)
    t = src - base
    # Weights of the taps base−1 … base+2, written as ATen writes them.
    x1, x2, x3 = t + 1.0, 1.0 - t, 2.0 - t
    weights = np.stack(
        [
            ((a * x1 - 5 * a) * x1 + 8 * a) * x1 - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * x2 - (a + 3)) * x2 * x2 + 1,
            ((a * x3 - 5 * a) * x3 + 8 * a) * x3 - 4 * a,
        ],
        axis=1,
    )
    taps = base.astype(np.int64)[:, None] + np.arange(-1, 3)
    if periodic:
        taps = np.mod(taps, n_in)
        lo, hi = 0, n_in
    else:
        taps = np.clip(taps, 0, n_in - 1)
        lo, hi = int(taps.min()), int(taps.max()) + 1
    m = np.zeros((len(src), hi - lo))
    rows = np.repeat(np.arange(len(src))[:, None], 4, axis=1)
    # Clamped taps add up on the edge pixel; wrapped ones on a pixel hit twice when n_in < 4.
    np.add.at(m, (rows, taps - lo), weights)
    return m, lo


def _window_matrix(
    axis: str,
    out: tuple[int, int],
    win: tuple[int, int],
    n_in: int,
    n_out: int,
    periodic: bool = False,
    ratio: float | None = None,
) -> np.ndarray:
    """:func:`_bicubic_matrix` over the window ``win = [lo, hi)``: ``(out_hi − out_lo, hi − lo)``.

    Raises:
        ValueError: if a tap falls outside the window.
    """
    m, lo = _bicubic_matrix(out[0], out[1], n_in, n_out, periodic, ratio)
    hi = lo + m.shape[1]
    if lo < win[0] or hi > win[1]:
        raise ValueError(
            f"the bicubic residual of output {axis} [{out[0]}, {out[1]}) reads LR {axis} "
            f"[{lo}, {hi}), outside the region's input window [{win[0]}, {win[1]}): the overlap "
            f"is too small (give each region {BICUBIC_CONTEXT} LR pixels of context)"
        )
    full = np.zeros((m.shape[0], win[1] - win[0]))
    full[:, lo - win[0] : hi - win[0]] = m
    return full


def _region_matrices(
    region: Region, periodic_lon: bool = False, scale: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column matrices ``(H_t, h_t)``, ``(W_t, w_t)`` of the region's bicubic term
    (``scale``: the request's ``(r_v, r_h)``; None: the sizes' ratios)."""
    r_v, r_h = (None, None) if scale is None else scale
    (h, w), (H, W) = region.image_size, region.output_size
    if periodic_lon and (region.in_cols != (0, w) or region.out_cols != (0, W)):
        raise ValueError(
            f"a periodic-longitude bicubic residual needs regions spanning the whole width "
            f"(input columns (0, {w}), output columns (0, {W})), got input columns "
            f"{region.in_cols} and output columns {region.out_cols}: tile rows only"
        )
    mv = _window_matrix("rows", region.out_rows, region.in_rows, h, H, ratio=r_v)
    mh = _window_matrix("columns", region.out_cols, region.in_cols, w, W, periodic_lon, r_h)
    return mv, mh


def check_bicubic_region(
    region: Region, periodic_lon: bool = False, scale: tuple[float, float] | None = None
) -> None:
    """Raise the ``ValueError`` of :func:`bicubic_upsample` if ``region``'s window lacks a tap
    (or, with ``periodic_lon``, does not span the whole width)."""
    _region_matrices(region, periodic_lon, scale)


def bicubic_upsample(
    x: torch.Tensor,
    size: tuple[int, int] | None = None,
    region: Region | None = None,
    periodic_lon: bool = False,
    scale: tuple[float, float] | None = None,
) -> torch.Tensor:
    """PyTorch's bicubic upsampling (``align_corners=False``) to ``size``, or a region of it.

    Args:
        x: ``(N, C, h, w)``: the whole image, or with ``region`` its LR window
            ``region.in_rows × region.in_cols``.
        size: ``(H, W)``, the output size; give exactly one of ``size`` and ``region``.
        region: the whole image's upsampling to ``region.output_size`` restricted to
            ``region.out_rows × region.out_cols``, computed from the window ``x``.
        periodic_lon: wrap the column taps around the width (longitude) instead of clamping
            them; a region must then span the whole width.
        scale: ``(r_v, r_h)``: output row ``i`` samples ``(i + 0.5)/r_v − 0.5`` (columns
            likewise), where the Meta-Upscale head puts it for that scale (see the module
            docstring). None: the sizes' ratios ``H/h``, ``W/w``, as ``F.interpolate(size=...)``.

    Returns:
        ``(N, C, H, W)``, or ``(N, C, *region.out_shape)``, in ``x``'s dtype.

    Raises:
        ValueError: if ``x`` is not the region's window, or the window lacks a bicubic tap.
    """
    if (size is None) == (region is None):
        raise ValueError("give exactly one of size=(H, W) or region=...")
    if region is None:
        h, w = x.shape[-2:]
        H, W = (int(n) for n in size)
        if not periodic_lon:
            if scale is None or (H == h * scale[0] and W == w * scale[1]):
                # The sizes' ratio is the scale: the plain call (an ONNX Resize when exported).
                return F.interpolate(x, size=(H, W), mode="bicubic", align_corners=False)
            # ATen's kernel takes the output size and the scales apart (F.interpolate takes one
            # or the other): exactly the size asked for, sampled at the scale's positions.
            return torch.ops.aten.upsample_bicubic2d(
                x, [H, W], False, float(scale[0]), float(scale[1])
            )
        # The whole image is the region covering everything; the matrices wrap the columns.
        region = Region((h, w), (H, W), (0, h), (0, w), (0, H), (0, W))
    if tuple(x.shape[-2:]) != region.in_shape:
        raise ValueError(
            f"the input is {tuple(x.shape[-2:])} but the region's input window is {region.in_shape}"
        )
    mv, mh = _region_matrices(region, periodic_lon, scale)
    # Half precision would round the interpolation weights; compute in float32 at least.
    dtype = x.dtype if x.dtype == torch.float64 else torch.float32
    mv_t = torch.as_tensor(mv, dtype=dtype, device=x.device)
    mh_t = torch.as_tensor(mh, dtype=dtype, device=x.device)
    # Separable: rows (H_t, h_t) @ x (N, C, h_t, w_t) @ columns (w_t, W_t).
    return (mv_t @ x.to(dtype) @ mh_t.T).to(x.dtype)


def bicubic_period_kernel(
    period: tuple[tuple[int, int], tuple[int, int]],
    channels: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The bicubic upsampling at a rational scale as a period kernel (dynamic-size export).

    At ``r = p/q`` output row ``i = p·m + s`` samples ``q·m + (s + 0.5)/r − 0.5``: its four taps
    and their weights depend on ``s`` only, and lie in rows ``q·m − 2 … q·m + q + 1``. So the
    upsampling of any ``h×w`` input is :func:`metasr.ops.meta_upscale.rational.period_conv`
    with this kernel, ``halo=2`` and replicated borders (ATen clamps the taps to the image),
    or wrapped columns with ``periodic_lon`` (as :func:`bicubic_upsample` wraps them).

    Args:
        period: ``((p_v, q_v), (p_h, q_h))``.
        channels: ``C``; each channel is upsampled on its own.
        dtype: of the kernel (the weights are computed in float64).

    Returns:
        ``(p_v·p_h·C, C, q_v + 4, q_h + 4)``, channel ``(s_v·p_h + s_h)·C + c``.
    """
    taps = []
    for p, q in period:
        # Outputs of the third period (m = 2): no tap is clamped there, and its taps start at
        # LR row 2q − 2, the kernel's first row.
        m, lo = _bicubic_matrix(2 * p, 3 * p, 4 * q + 4, 4 * p, ratio=p / q)
        full = np.zeros((p, q + 4))
        full[:, lo - (2 * q - 2) : lo - (2 * q - 2) + m.shape[1]] = m
        taps.append(full)
    kv, kh = taps
    (p_v, q_v), (p_h, q_h) = period
    k2 = torch.as_tensor(kv[:, None, :, None] * kh[None, :, None, :])  # (p_v, p_h, Kv, Kh)
    eye = torch.eye(channels, dtype=torch.float64)
    kernel = k2[:, :, None, None] * eye[None, None, :, :, None, None]  # (p_v, p_h, C, C, Kv, Kh)
    return kernel.reshape(p_v * p_h * channels, channels, q_v + 4, q_h + 4).to(dtype)
