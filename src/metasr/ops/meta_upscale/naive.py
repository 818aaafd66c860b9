"""The spec: Meta-Upscale written as loops over output pixels. Tiny sizes only.

Every other backend is tested against this file. It follows ``docs/design.md`` §1 literally::

    W(i, j) = Linear2(ReLU(Linear1(pos(i, j))))          # (Cin·k·k·Cout,) per output pixel
    y[n, o, i, j] = Σ_{c,ky,kx} xpad[n, c, i'+ky, j'+kx] · W(i, j)[c, ky, kx, o]

``xpad`` is ``x`` zero-padded by ``k // 2``; with ``geom.periodic_lon`` its columns wrap instead
(``xpad[..., j'+kx]`` is ``x[..., (j' + kx - k//2) mod w]``) and only the rows are zero-padded.
"""

from __future__ import annotations

import torch

from ...geometry import Geometry
from .padding import pad_window
from .params import MLPParams, needs_grad
from .tables import positions_tensor

#: (rtol, atol) of the spec run in a compute dtype against the spec in float64 on the same
#: (rounded) inputs, for the output and the gradients; ``atol`` is relative to the reference's
#: largest magnitude (at least 1). Every backend keeps such a table; the tests read them. In
#: float16/bfloat16 the first layer's gradients are not covered: ReLU' of a pre-activation
#: within rounding of 0 is a discontinuity (``tests/ops/test_meta_upscale.py``).
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (5e-2, 5e-2),
}


def estimate_bytes(x: torch.Tensor, params: MLPParams, geom: Geometry) -> int:
    """Peak bytes of :func:`meta_upscale_naive`: per-pixel positions, hidden layer and weights,
    the per-pixel results and their two stackings (doubled when autograd records)."""
    n, C, O, k = x.shape[0], params.in_channels, params.out_channels, params.kernel_size
    hw = geom.H * geom.W
    elems = hw * (geom.num_pos + params.hidden + k * k * C * O) + 3 * n * O * hw
    if needs_grad(x, params):
        elems = 2 * elems
    return elems * x.element_size()


def meta_upscale_naive(x: torch.Tensor, params: MLPParams, geom: Geometry) -> torch.Tensor:
    """Reference Meta-Upscale.

    Args:
        x: ``(N, Cin, h, w)``.
        params: the MLP tensors, in ``x``'s dtype.
        geom: the output geometry.

    Returns:
        ``(N, Cout, H, W)``.
    """
    k, C, O = params.kernel_size, params.in_channels, params.out_channels
    weights = params.predict(positions_tensor(geom, x)).view(geom.H, geom.W, C, k, k, O)
    xpad = pad_window(x, k, geom.periodic_lon)  # zeros, or columns wrapped (j' + dx) mod w
    rows = []
    for i in range(geom.H):
        ii = int(geom.row_idx[i])
        cols = []
        for j in range(geom.W):
            jj = int(geom.col_idx[j])
            window = xpad[:, :, ii : ii + k, jj : jj + k]  # (N, C, k, k)
            cols.append(torch.einsum("ncyx,cyxo->no", window, weights[i, j]))
        rows.append(torch.stack(cols, dim=-1))  # (N, O, W)
    return torch.stack(rows, dim=-2)  # (N, O, H, W)
