"""The published algorithm: predict every output pixel's weights, unfold, batched matmul.

This is what the official Meta-SR code and the seed's re-implementation do. It materialises
``H·W·k²·Cin·Cout`` predicted weights and ``N·H·W·k²·Cin`` gathered features, which is why it
hits the memory wall; it is kept as the baseline of the benchmarks and refuses to start when its
estimate exceeds the device's free memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...geometry import Geometry
from .padding import pad_window
from .params import MLPParams, needs_grad
from .tables import lr_linear_index, positions_tensor

#: (rtol, atol) against the float64 spec, as :data:`.naive.TOLERANCES` (float32 on CUDA: with
#: TF32 off).
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (5e-2, 5e-2),
}


def estimate_bytes(x: torch.Tensor, params: MLPParams, geom: Geometry) -> int:
    """Peak bytes of :func:`meta_upscale_im2col` (a slight over-estimate).

    Args:
        x: ``(N, Cin, h, w)`` (only its shape, dtype and ``requires_grad`` are read).
    """
    n, C, O, k = x.shape[0], params.in_channels, params.out_channels, params.kernel_size
    hw = geom.H * geom.W
    kc = k * k * C
    elems = hw * (geom.num_pos + params.hidden + kc * O)  # positions, hidden, predicted weights
    elems += n * kc * (hw + x.shape[2] * x.shape[3])  # unfolded and gathered columns
    elems += 2 * n * O * hw  # output and its permuted copy
    if needs_grad(x, params):
        # autograd keeps the hidden layer, weights and columns and builds their gradients
        elems = 2 * elems
    return elems * x.element_size() + 16 * hw  # + the int64 gather index, host and device


def meta_upscale_im2col(x: torch.Tensor, params: MLPParams, geom: Geometry) -> torch.Tensor:
    """im2col Meta-Upscale.

    Args:
        x: ``(N, Cin, h, w)``.

    Returns:
        ``(N, Cout, H, W)``.
    """
    N = x.shape[0]
    k, C, O = params.kernel_size, params.in_channels, params.out_channels
    weights = params.predict(positions_tensor(geom, x)).view(geom.H * geom.W, C * k * k, O)
    if geom.periodic_lon:
        cols = F.unfold(pad_window(x, k, True), k)  # (N, C·k·k, h·w), columns wrapped
    else:
        cols = F.unfold(x, k, padding=k // 2)  # (N, C·k·k, h·w), LR resolution
    # Pixel-major at LR resolution first, so the gather yields a contiguous (H·W, N, C·k·k):
    # CPU bmm with a permuted (batch-stride-1) operand is ~1000x slower than with a
    # contiguous one, and the official code also feeds matmul contiguous operands.
    cols = cols.permute(2, 0, 1).contiguous()  # (h·w, N, C·k·k)
    cols = cols.index_select(0, lr_linear_index(geom, x.device))  # (H·W, N, C·k·k)
    y = torch.bmm(cols, weights)  # (H·W, N, O)
    return y.permute(1, 2, 0).reshape(N, O, geom.H, geom.W)
