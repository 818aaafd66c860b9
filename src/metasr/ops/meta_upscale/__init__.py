"""Meta-Upscale op: the public function. Backends live one per file beside this one."""

from __future__ import annotations

import torch
from torch import nn

from ...geometry import Arithmetic, CoordinateGrid, Region, UpscaleRequest
from ...validation import ArgumentTypeError
from . import planning
from .planning import UpscalePlan, plan
from .tables import restore_order

__all__ = ["UpscalePlan", "meta_upscale", "plan"]


def meta_upscale(
    x: torch.Tensor,
    phi: nn.Module,
    scale: float | tuple[float, float] | None = None,
    size: tuple[int, int] | None = None,
    backend: str | None = None,
    arithmetic: Arithmetic = "exact",
    region: Region | None = None,
    periodic_lon: bool = False,
    coords: CoordinateGrid | None = None,
    *,
    plan: UpscalePlan | None = None,
) -> torch.Tensor:
    """Meta-Upscale ``x`` by ``scale`` (or to ``size``) with the weight-prediction MLP ``phi``.

    Every output pixel ``(i, j)`` has an LR pixel ``(i', j')`` and offsets ``(Δv, Δh)``
    (:mod:`metasr.geometry`); ``phi`` maps its position encoding to a ``k×k×Cin×Cout`` filter that
    is applied to the LR window around ``(i', j')``. Equivalent plain PyTorch (the ``naive``
    backend)::

        pos = geometry.positions()                                  # (H·W, P), float64
        Wt = phi(pos.to(x.dtype)).view(H, W, Cin, k, k, Cout)
        xpad = F.pad(x, [k // 2] * 4)   # periodic_lon: columns wrapped, rows zero-padded
        y[:, :, i, j] = einsum("ncyx,cyxo->no", xpad[:, :, i':i'+k, j':j'+k], Wt[i, j])

    Under ``torch.compile`` the call is one graph node, the custom op ``metasr::meta_upscale``
    (:mod:`.custom_op`: same geometry, dispatch and backends, run inside the node); under
    ``torch.export`` (and the ONNX exporter) it is traced as standard ops with the geometry as
    constants (:mod:`.static`).

    Args:
        x: ``(N, Cin, h, w)`` floating-point features.
        phi: the weight predictor: a :class:`metasr.Pos2Weight`, or any ``nn.Module`` with
            ``in_channels``, ``out_channels``, ``kernel_size``, ``num_pos`` and
            ``pos_encoding`` mapping positions ``(M, num_pos)`` to ``(M, k·k·Cin·Cout)`` in the
            layout above. Its structure picks the evaluation path
            (:mod:`metasr.ops.meta_upscale.predictor`; ``docs/design.md``, "Which phi takes
            which path"): Linear-ReLU-Linear the separable fast path, a linear last layer
            (``phi.head``/``phi.body`` or ``meta_block[-1]``) features-first with its body per
            strip, anything else per phase (few distinct offsets) or weights-first. Layers
            that depend on the batch (BatchNorm, Dropout in training mode) are refused.
        scale: a number or ``(r_v, r_h)``, each finite and ≥ 1.
        size: ``(H, W)`` instead of ``scale``, with ``H ≥ h``, ``W ≥ w``.
        backend: ``None``/``"auto"`` or one of :func:`metasr.backends`; ``METASR_BACKEND``
            overrides ``auto``.
        arithmetic: ``"exact"`` geometry (default) or the official code's float32 grid.
        region: compute only this part of the whole image's output (tiled inference): ``x`` is
            then the features of the LR window ``region.in_rows × region.in_cols`` (so of size
            ``region.in_shape``), ``scale``/``size`` is the whole image's request, and the
            result is the ``region.out_rows × region.out_cols`` block of the whole output.
        periodic_lon: the LR window wraps along width (column ``(j' + dx) mod w``) instead of
            reading zero padding, for global longitude grids (rows keep zero padding). Every
            backend supports it; with a ``region``, the region's LR window must span the whole
            width (tile along rows only).
        coords: place the output by latitude/longitude instead of ``scale``/``size``
            (:class:`metasr.geometry.CoordinateGrid`; ``x``'s ``h×w`` is its source grid, the
            output its target grid, in the target's row and column order). Give it with
            ``periodic_lon=True`` for a global grid.
        plan: run this plan (:func:`metasr.ops.meta_upscale.plan`, made for ``x``'s shape,
            ``phi`` and a request) instead of the arguments above, which must then be left out.

    Returns:
        ``(N, Cout, H, W)`` (``region.out_shape`` with a region), in ``x``'s dtype (or the
        autocast dtype under ``torch.autocast``).

    Raises:
        ValueError: for any invalid input (shape, scale, size, dtype, device, encoding, a
            ``phi`` without the attributes, of the wrong output width or batch-dependent;
            under ``torch.compile``, a ``phi`` other than Linear-ReLU-Linear);
            :class:`metasr.BackendUnavailableError` (a ``ValueError``) when no backend can run.
    """
    if plan is None:
        request = UpscaleRequest(scale, size, coords, region, arithmetic, periodic_lon)
        plan = planning.plan(x, phi, request, backend)
    else:
        if not isinstance(plan, UpscalePlan):
            raise ArgumentTypeError(f"plan must be an UpscalePlan, got {type(plan).__name__}")
        given = (scale, size, coords, region, backend)
        if any(v is not None for v in given) or arithmetic != "exact" or periodic_lon:
            raise ValueError("give either plan=... or the request (scale, size, ...), not both")
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != tuple(plan.in_shape):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x is {shape} but the plan was made for {tuple(plan.in_shape)}")
    geom = plan.geometry
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(plan.dtype)
        if plan.mode == "compile":
            # torch.compile: one opaque graph node; the geometry is built inside it.
            from .custom_op import meta_upscale_custom_op

            return meta_upscale_custom_op(
                x, plan.params, plan.request, phi.pos_encoding, plan.backend_name
            )
        if plan.mode == "export":
            # torch.export / ONNX: standard ops with the geometry as constants (static.py).
            from .static import meta_upscale_static

            return restore_order(meta_upscale_static(x, plan.params, geom), geom)
        return restore_order(plan.backend.load()(x, plan.params, geom), geom)
