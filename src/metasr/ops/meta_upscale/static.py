"""Meta-Upscale in plain tensor ops with the geometry baked in, for ``torch.export`` and ONNX.

An exported graph cannot call back into Python for the geometry or loop over LR rows, so this
form uses only convolution, gather (``index_select``), elementwise ops and a reduction, with the
index maps and position encodings as constants of the graph (the input size and the request are
fixed at export time):

* **per-phase** (few distinct offsets, e.g. integer and simple rational scales): the weights of
  the ``Dv·Dh`` distinct ``(Δv, Δh)`` pairs, one LR convolution with ``Dv·Dh·Cout`` channels, one
  gather (the ``torch`` backend's per-phase order, reused as is);
* **features-first, gathered** (any scale): ``Z = conv(x, [W2|b2])`` at LR resolution, gathered
  to the output grid and contracted with ``[ReLU(W1·pos + b1), 1]`` per output pixel. It holds
  ``N·Cout·(hidden+1)·H·W`` values, so it suits the moderate sizes one exports for; the eager
  ``torch`` backend avoids that tensor by working one LR row at a time. ``hidden`` is
  ``ReLU(W1·pos + b1)`` for Linear-ReLU-Linear and the body's features for any other predictor
  with a linear last layer (``params.features``);
* **weights-first, all at once** (a predictor whose last layer is not linear, at a scale with
  many distinct offsets): the ``im2col`` backend's plain ops (every pixel's weights, unfold,
  batched matmul), ``H·W·k²·Cin·Cout`` values.
"""

from __future__ import annotations

import torch

from ...geometry import Geometry
from .im2col import meta_upscale_im2col
from .params import LinearHeadParams, MLPParams, ModuleParams, PredictorParams, features_first_z
from .tables import as_float, as_index, phases
from .torch_chunked import _base_order, _per_phase

__all__ = ["meta_upscale_static"]


def meta_upscale_static(x: torch.Tensor, params: PredictorParams, geom: Geometry) -> torch.Tensor:
    """Meta-Upscale as one static graph of standard ops.

    Args:
        x: ``(N, Cin, h, w)``; ``h, w`` must be the geometry's (fixed at export).
        params: the predictor's tensors in ``x``'s dtype (any kind).
        geom: the output geometry (becomes constants of the graph).

    Returns:
        ``(N, Cout, H, W)``.
    """
    row_first, row_phase = phases(geom.row_off)
    col_first, col_phase = phases(geom.col_off)
    # The eager torch backend's choice without the phase-grouped order (a loop of custom
    # autograd calls, no static graph): per phase where it would take per phase.
    order = _base_order(params, geom, len(row_first), len(col_first))
    if order == "per_phase":
        return _per_phase(x, params, geom, row_first, row_phase, col_first, col_phase)
    if isinstance(params, ModuleParams):
        return meta_upscale_im2col(x, params, geom)
    return _features_first_gathered(x, params, geom)


def _features_first_gathered(
    x: torch.Tensor, params: MLPParams | LinearHeadParams, geom: Geometry
) -> torch.Tensor:
    """``y[n,o,i,j] = Σ_k [hid(i,j), 1][k] · Z[n, o, k, i', j']`` with ``Z`` gathered."""
    N, _, h, w = x.shape
    O, K = params.out_channels, params.hidden + 1
    z = features_first_z(x, params, geom.periodic_lon).contiguous()
    z = z.view(N, O * K, h * w)  # (N, O·K, h·w)
    lin = geom.row_idx[:, None] * w + geom.col_idx[None, :]  # (H, W) flat LR index
    zg = z.index_select(2, as_index(lin.reshape(-1), x.device))  # (N, O·K, H·W)
    hid = params.features(as_float(geom.positions(), x))  # (H·W, hid)
    hx = torch.cat([hid, hid.new_ones(hid.shape[0], 1)], dim=1)  # (H·W, K)
    y = (zg.view(N, O, K, -1) * hx.t()[None, None]).sum(2)  # (N, O, H·W)
    return y.view(N, O, geom.H, geom.W)
