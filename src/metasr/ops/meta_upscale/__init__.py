"""Meta-Upscale op: the public function. Backends live one per file beside this one."""

from __future__ import annotations

import torch
from torch import nn

from ...geometry import Arithmetic, CoordinateGrid, Region, build_geometry
from ._dispatch import select_backend
from ._tracing import tracing_mode
from .params import MLPParams
from .predictor import PredictorKind, check_predictor, predictor_params
from .tables import restore_order

__all__ = ["meta_upscale"]


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active for ``device_type``, or None when autocast is off."""
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except TypeError:  # torch < 2.4 has no per-device query
        if device_type == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
        if device_type == "cpu" and torch.is_autocast_cpu_enabled():
            return torch.get_autocast_cpu_dtype()
    return None


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

    Returns:
        ``(N, Cout, H, W)`` (``region.out_shape`` with a region), in ``x``'s dtype (or the
        autocast dtype under ``torch.autocast``).

    Raises:
        ValueError: for any invalid input (shape, scale, size, dtype, device, encoding, a
            ``phi`` without the attributes, of the wrong output width or batch-dependent;
            under ``torch.compile``, a ``phi`` other than Linear-ReLU-Linear);
            :class:`metasr.BackendUnavailableError` (a ``ValueError``) when no backend can run.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, h, w), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"x must not be empty, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    mode = tracing_mode()
    # Validates phi (attributes, sizes, device, batch-dependent layers) and picks its path.
    kind = check_predictor(phi, x, probe=mode is None)
    if not isinstance(periodic_lon, bool):
        raise ValueError(f"periodic_lon must be a bool, got {periodic_lon!r}")
    if coords is not None and (scale is not None or size is not None):
        raise ValueError("give either coords=... or scale=/size=, not both")
    if mode == "compile":
        if kind is not PredictorKind.SEPARABLE:
            raise ValueError(
                "under torch.compile, meta_upscale supports only phi = Linear, ReLU, Linear "
                f"(metasr.Pos2Weight's default); this phi is {kind.value} "
                f"({type(phi).__name__}): call it outside the compiled region "
                "(torch.compiler.disable) or eagerly"
            )
        # torch.compile: one opaque graph node; the geometry is built inside it (custom_op.py).
        from .custom_op import meta_upscale_custom_op

        dtype = _autocast_dtype(x.device.type) or x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            return meta_upscale_custom_op(
                x.to(dtype),
                MLPParams.from_module(phi, dtype),
                scale,
                size,
                phi.pos_encoding,
                arithmetic,
                region,
                backend,
                periodic_lon,
                coords,
            )
    geom = build_geometry(
        x.shape[2],
        x.shape[3],
        scale=scale,
        size=size,
        pos_encoding=phi.pos_encoding,
        arithmetic=arithmetic,
        region=region,
        periodic_lon=periodic_lon,
        coords=coords,
    )
    dtype = _autocast_dtype(x.device.type) or x.dtype
    # Autocast is handled here once: everything runs in `dtype`, with autocast off inside, so
    # each backend sees one consistent dtype (the casts below are differentiable).
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(dtype)
        params = predictor_params(phi, dtype, kind)
        if mode == "export":
            # torch.export / ONNX: standard ops with the geometry as constants (static.py).
            from .static import meta_upscale_static

            return restore_order(meta_upscale_static(x, params, geom), geom)
        chosen = select_backend(backend, x, params, geom)
        return restore_order(chosen.load()(x, params, geom), geom)
