"""Linear-ReLU-Linear restricted to one call's positions: fewer hidden units, the same function.

Features-first (``docs/design.md`` §3) convolves the LR features into ``(hid + 1)·Cout``
channels, one per hidden unit. But a call evaluates the predictor only at its own positions
``pos(i, j) = row_pos[i] + col_pos[j] + const_pos``, and over that set a hidden unit's
pre-activation ``z = w1·pos + b1`` has a known range (the first layer is separable, so
``min z = min_i w1·row_pos[i] + min_j w1·col_pos[j] + w1·const_pos + b1``, likewise ``max``):

* ``max z ≤ 0``: the unit is **off** at every position; ``ReLU(z) = 0`` and its gradient is 0,
  so it is dropped;
* ``min z > 0``: the unit is **on** everywhere; ``ReLU(z) = z`` is linear in the position, so all
  such units together contribute ``M·pos + W2_on·b1_on`` with ``M = W2_on·W1_on`` — at most
  ``P`` linear "units", one per position component that varies over the call (2 for the
  asymmetric encoding: ``Δv``, ``Δh``), the rest folded into the bias;
* otherwise the unit **switches** somewhere in the call and is kept as it is.

The rewrite is exact (:func:`restrict_to_domain`): a linear unit ``t`` is written as a ReLU unit
``ReLU(pos_t - lo_t)`` with ``lo_t`` below its smallest value, so the result is again a
Linear-ReLU-Linear :class:`.params.MLPParams` and every order runs it unchanged. Its tensors are
built differentiably from the original ones, so gradients reach every original parameter (zero
for the dropped units, as ``ReLU``'s own gradient is there).

Measured (``benchmarks/relu_intervals.py``): the default ``Pos2Weight(64, 3)`` at its seeded
initialisation keeps 104 of 256 units at 2.37×3.13 and 93 at 1.13×3.91; the bundled photo
model's predictor 90 and 91 — its features-first convolution shrinks by that factor.
"""

from __future__ import annotations

import numpy as np
import torch

from ...geometry import Geometry
from .params import MLPParams
from .tables import as_float, as_index

__all__ = ["restrict_to_domain", "unit_states"]


def unit_states(params: MLPParams, geom: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Which hidden units are on at every position of ``geom``, and which switch.

    Computed in float64 on the host from the separable first layer (``H + W`` rows, not
    ``H·W``).

    Returns:
        ``(on, switch)``: boolean ``(hid,)`` arrays; units in neither are off everywhere.
    """
    w1 = params.w1.detach().to("cpu", torch.float64).numpy()
    b1 = params.b1.detach().to("cpu", torch.float64).numpy()
    # The distinct rows of each axis only, and products summed by component rather than a
    # float64 matrix product: no BLAS kernel that the call would not run anyway (a first
    # double-precision GEMM alone adds megabytes of library code to the process).
    a = _project(_extremes(geom.row_pos), w1)  # (rows, hid)
    bc = _project(_extremes(geom.col_pos), w1)  # (cols, hid)
    c = _project(geom.const_pos[None], w1)[0] + b1
    zmin = a.min(0) + bc.min(0) + c
    zmax = a.max(0) + bc.max(0) + c
    on = zmin > 0
    off = zmax <= 0
    return on, ~on & ~off


def _extremes(pos: np.ndarray) -> np.ndarray:
    """Rows of ``pos (M, P)`` among which every linear function of a row takes its smallest
    and largest value over all rows: where at most one component varies (every encoding's
    row and column parts), the rows where it is smallest and largest; else the distinct rows.
    (All distinct rows cost ``H·hid·P`` host operations per call; these two rows halved the
    restriction's time at 1.13×3.91 on 128², 1 CPU thread, issue 27.)"""
    vary = np.flatnonzero(pos.max(0) > pos.min(0))
    if len(vary) > 1:
        return np.unique(pos, axis=0)
    t = vary[0] if len(vary) else 0
    return pos[[int(pos[:, t].argmin()), int(pos[:, t].argmax())]]


def _project(pos: np.ndarray, w1: np.ndarray) -> np.ndarray:
    """``pos @ w1.T`` for ``pos (M, P)``, ``w1 (hid, P)``, summed over the ``P`` components."""
    out = np.zeros((pos.shape[0], w1.shape[0]))
    for t in range(w1.shape[1]):
        out += np.multiply.outer(pos[:, t], w1[:, t])
    return out


def restrict_to_domain(params: MLPParams, geom: Geometry) -> MLPParams:
    """``params`` rewritten with only the hidden units that switch within ``geom`` (module
    docstring), or ``params`` itself when that would not shrink it.

    Args:
        params: Linear-ReLU-Linear tensors in the compute dtype.
        geom: the call's geometry (its positions are the domain).

    Returns:
        An :class:`MLPParams` equal to ``params`` at every position of ``geom`` (to rounding),
        differentiable in ``params``' tensors, with ``switching + varying components`` hidden
        units (at least 1).
    """
    on, switch = unit_states(params, geom)
    lo = geom.row_pos.min(0) + geom.col_pos.min(0) + geom.const_pos  # (P,) float64
    hi = geom.row_pos.max(0) + geom.col_pos.max(0) + geom.const_pos
    vary = np.flatnonzero(hi > lo) if on.any() else np.zeros(0, dtype=np.int64)
    hid = params.hidden
    if int(switch.sum()) + len(vary) >= hid:
        return params
    like = params.w1
    dev = like.device
    ki = as_index(np.flatnonzero(switch), dev)
    w1 = params.w1.index_select(0, ki)
    b1 = params.b1.index_select(0, ki)
    w2 = params.w2.index_select(1, ki)
    b2 = params.b2
    if len(ki) + len(vary) == 0:  # one unit that is off everywhere (contributes 0)
        w1 = torch.zeros_like(params.w1[:1])
        b1 = -torch.ones_like(params.b1[:1])
        w2 = torch.zeros_like(params.w2[:, :1])
    if on.any():
        oi = as_index(np.flatnonzero(on), dev)
        w2_on = params.w2.index_select(1, oi)  # (width, n_on)
        m = w2_on @ params.w1.index_select(0, oi)  # (width, P)
        # A varying component t becomes the unit ReLU(pos_t - s_t) with s_t = lo_t - 1: its
        # pre-activation is at least 1, so ReLU is the identity on the domain with a margin no
        # rounding crosses. A constant component is s_t = lo_t itself, all in the bias.
        s_np = lo.copy()
        s_np[vary] -= 1.0
        shift = as_float(s_np, like)
        b2 = b2 + w2_on @ params.b1.index_select(0, oi) + m @ shift
        if len(vary):
            vi = as_index(vary, dev)
            w1 = torch.cat([w1, as_float(np.eye(params.w1.shape[1])[vary], like)])
            b1 = torch.cat([b1, -shift.index_select(0, vi)])
            w2 = torch.cat([w2, m.index_select(1, vi)], dim=1)
    return MLPParams(w1, b1, w2, b2, params.kernel_size, params.in_channels, params.out_channels)
