"""Meta-Upscale as a ``torch.library`` custom op, the form ``torch.compile`` sees.

The op's geometry is host-side float64 NumPy (:mod:`metasr.geometry`) and the backends read it
on the host, which Dynamo cannot trace (it would turn the arrays into tensors inside the graph
and guard on them). Under ``torch.compile`` the public function therefore calls one opaque graph
node, ``metasr::meta_upscale``, whose arguments are the tensors (``x`` and the four MLP
parameters) and the request as plain scalars; the node's implementation builds the geometry
(cached: it depends only on the shapes and the request), picks a backend and runs it, exactly as
the eager path does. A fake (meta) kernel gives the output shape for tracing, and a registered
autograd formula makes the node differentiable (its backward is a second node,
``metasr::meta_upscale_backward``, that recomputes the forward under autograd and returns the
gradients of the five tensors, so every backend's own backward is used).

Recompiles: Dynamo specialises on the scale (a float argument of the op), so a compiled model
holds one graph per distinct scale (and per input shape unless shapes are dynamic); a ``size=``
request with dynamic shapes shares one graph. Beyond ``torch._dynamo.config.recompile_limit``
(8 by default) graphs, Dynamo runs the frame eagerly, so the count is bounded either way; see
``docs/usage.md``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Iterator

import torch

from ...geometry import (
    Arithmetic,
    CoordinateGrid,
    Geometry,
    Region,
    build_geometry,
    parse_scale,
)
from ._dispatch import select_backend
from .params import MLPParams
from .tables import restore_order

__all__ = ["cached_geometry", "meta_upscale_custom_op", "request_output_size"]

#: Geometries kept by :func:`cached_geometry` (one per input shape × request).
GEOMETRY_CACHE_SIZE = 64


@functools.lru_cache(maxsize=GEOMETRY_CACHE_SIZE)
def cached_geometry(
    h: int,
    w: int,
    scale: tuple[float, float] | None,
    size: tuple[int, int] | None,
    pos_encoding: str,
    arithmetic: Arithmetic,
    region: Region | None,
    periodic_lon: bool = False,
    coords: CoordinateGrid | None = None,
) -> Geometry:
    """:func:`metasr.geometry.build_geometry`, memoised on its (hashable) arguments.

    The returned arrays are shared between calls; backends only read them.
    """
    return build_geometry(
        h,
        w,
        scale=scale,
        size=size,
        pos_encoding=pos_encoding,
        arithmetic=arithmetic,
        region=region,
        periodic_lon=periodic_lon,
        coords=coords,
    )


def request_output_size(
    h: int,
    w: int,
    scale: tuple[float, float] | None,
    size: tuple[int, int] | None,
    arithmetic: Arithmetic,
    region: Region | None,
    coords: CoordinateGrid | None = None,
) -> tuple[int, int]:
    """``(H, W)`` of a call, in plain Python arithmetic (traceable, symbolic sizes allowed).

    Mirrors :func:`~metasr.geometry.build_geometry`'s sizing; the checks that need the index
    maps (a region's window, the ``official`` encoding's equal scales) run in the op itself.
    """
    if region is not None:
        return region.out_shape
    if coords is not None:
        return coords.out_shape
    if size is not None:
        return size
    r_v, r_h = scale
    if arithmetic == "official":
        return int(h * r_v), int(w * r_h)
    # Same formula as geometry.resolve_output_size: floor(h·r + 1e-6).
    return int(h * r_v + 1e-6), int(w * r_h + 1e-6)


def _region_list(region: Region | None) -> list[int] | None:
    if region is None:
        return None
    return [
        *region.image_size,
        *region.output_size,
        *region.in_rows,
        *region.in_cols,
        *region.out_rows,
        *region.out_cols,
    ]


def _region_from_list(values: list[int] | None) -> Region | None:
    if values is None:
        return None
    v = [int(a) for a in values]
    return Region(
        (v[0], v[1]), (v[2], v[3]), (v[4], v[5]), (v[6], v[7]), (v[8], v[9]), (v[10], v[11])
    )


def _coords_list(coords: CoordinateGrid | None) -> list[float] | None:
    """``coords`` as one list of floats (a custom op's arguments are tensors and scalars):
    ``[wrap_lon, h, w, H, W, *src_lat, *src_lon, *dst_lat, *dst_lon]``."""
    if coords is None:
        return None
    (h, w), (H, W) = coords.in_shape, coords.out_shape
    return [
        float(coords.wrap_lon), h, w, H, W,
        *coords.src_lat, *coords.src_lon, *coords.dst_lat, *coords.dst_lon,
    ]  # fmt: skip


def _coords_from_list(values: list[float] | None) -> CoordinateGrid | None:
    if values is None:
        return None
    wrap, h, w, H, W = (int(v) for v in values[:5])
    cuts = list(itertools.accumulate([5, h, w, H, W]))
    parts = [tuple(values[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    return CoordinateGrid(*parts, wrap_lon=bool(wrap))


def _run(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    kernel_size: int,
    out_channels: int,
    scale: list[float] | None,
    size: list[int] | None,
    pos_encoding: str,
    arithmetic: str,
    region: list[int] | None,
    backend: str,
    periodic_lon: bool,
    coords: list[float] | None,
) -> torch.Tensor:
    """Build the (cached) geometry, choose a backend and run it: the eager path's last steps."""
    geom = cached_geometry(
        x.shape[2],
        x.shape[3],
        None if scale is None else (float(scale[0]), float(scale[1])),
        None if size is None else (int(size[0]), int(size[1])),
        pos_encoding,
        arithmetic,
        _region_from_list(region),
        periodic_lon,
        _coords_from_list(coords),
    )
    params = MLPParams(w1, b1, w2, b2, kernel_size, x.shape[1], out_channels)
    chosen = select_backend(backend or None, x, params, geom)
    return restore_order(chosen.load()(x, params, geom), geom)


@torch.library.custom_op("metasr::meta_upscale", mutates_args=())
def _meta_upscale_op(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    kernel_size: int,
    out_channels: int,
    out_height: int,
    out_width: int,
    scale: list[float] | None,
    size: list[int] | None,
    pos_encoding: str,
    arithmetic: str,
    region: list[int] | None,
    backend: str,
    periodic_lon: bool = False,
    coords: list[float] | None = None,
) -> torch.Tensor:
    """``(N, Cin, h, w)`` → ``(N, Cout, out_height, out_width)``.

    See :func:`meta_upscale_custom_op`; ``out_height``/``out_width`` give the fake kernel the
    output size without the geometry.
    """
    y = _run(
        x, w1, b1, w2, b2, kernel_size, out_channels, scale, size, pos_encoding, arithmetic,
        region, backend, periodic_lon, coords,
    )  # fmt: skip
    if tuple(y.shape[2:]) != (out_height, out_width):
        raise ValueError(
            f"meta_upscale: traced output size {out_height}x{out_width} differs from the "
            f"geometry's {y.shape[2]}x{y.shape[3]}"
        )
    # The fake kernel promises a contiguous output (new_empty); keep that promise.
    return y.contiguous()


@_meta_upscale_op.register_fake
def _meta_upscale_fake(
    x, w1, b1, w2, b2, kernel_size, out_channels, out_height, out_width, *rest
) -> torch.Tensor:
    return x.new_empty((x.shape[0], out_channels, out_height, out_width))


@contextlib.contextmanager
def _autograd_inside_op() -> Iterator[None]:
    """Re-enable autograd inside a custom op's body.

    ``torch.library`` runs a kernel below the autograd dispatch keys (they are excluded in the
    thread-local dispatch state), so tensors made there would record no graph even under
    ``enable_grad``. The backward kernel recomputes the forward with autograd to reuse each
    backend's backward, so it lifts that exclusion for its own duration and restores it after.
    """
    keys = (
        torch._C.DispatchKey.AutogradFunctionality,
        torch._C.DispatchKey.AutogradOther,
        torch._C.DispatchKey.AutogradNestedTensor,
    )
    lifted = [k for k in keys if torch._C._dispatch_tls_is_dispatch_key_excluded(k)]
    for k in lifted:
        torch._C._dispatch_tls_set_dispatch_key_excluded(k, False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for k in lifted:
            torch._C._dispatch_tls_set_dispatch_key_excluded(k, True)


@torch.library.custom_op("metasr::meta_upscale_backward", mutates_args=())
def _meta_upscale_backward_op(
    grad: torch.Tensor,
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    needs_grad: list[bool],
    kernel_size: int,
    out_channels: int,
    scale: list[float] | None,
    size: list[int] | None,
    pos_encoding: str,
    arithmetic: str,
    region: list[int] | None,
    backend: str,
    periodic_lon: bool,
    coords: list[float] | None,
) -> list[torch.Tensor]:
    """Gradients of ``(x, w1, b1, w2, b2)`` (zeros where ``needs_grad`` is False).

    Recomputes the forward with autograd on, so each backend's own backward (the ``torch``
    backend's custom ``autograd.Function``, Triton's kernels) computes them; the price is one
    extra forward per backward, in exchange for saving nothing between the two.
    """
    inputs = (x, w1, b1, w2, b2)
    with _autograd_inside_op():
        leaves = [t.detach().requires_grad_(n) for t, n in zip(inputs, needs_grad, strict=True)]
        y = _run(
            *leaves, kernel_size, out_channels, scale, size, pos_encoding, arithmetic, region,
            backend, periodic_lon, coords,
        )  # fmt: skip
        wanted = [t for t in leaves if t.requires_grad]
        grads = iter(torch.autograd.grad(y, wanted, grad) if wanted else ())
    return [
        _laid_out_like(next(grads), t) if n else torch.zeros_like(t)
        for t, n in zip(inputs, needs_grad, strict=True)
    ]


def _laid_out_like(g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``g`` with ``t``'s strides, as the fake kernel (``empty_like(t)``) promises.

    The backends may return a gradient in another memory layout (the features-first path gives
    ``dx`` channels-last); compiled code trusts the fake kernel's strides, so a mismatch fails
    there (seen: a compiled training step at 96x144 -> 721x1440).
    """
    return g if g.stride() == t.stride() else torch.empty_like(t).copy_(g)


@_meta_upscale_backward_op.register_fake
def _meta_upscale_backward_fake(grad, x, w1, b1, w2, b2, *rest) -> list[torch.Tensor]:
    return [torch.empty_like(t) for t in (x, w1, b1, w2, b2)]


def _setup_context(ctx, inputs, output) -> None:
    x, w1, b1, w2, b2, *scalars = inputs
    ctx.save_for_backward(x, w1, b1, w2, b2)
    k, o, _, _, scale, size, pos_encoding, arithmetic, region, backend, *last = scalars
    ctx.scalars = (k, o, scale, size, pos_encoding, arithmetic, region, backend, *last)


def _backward(ctx, grad):
    x, w1, b1, w2, b2 = ctx.saved_tensors
    needs = [bool(n) for n in ctx.needs_input_grad[:5]]
    grads = _meta_upscale_backward_op(grad.contiguous(), x, w1, b1, w2, b2, needs, *ctx.scalars)
    return (*[g if n else None for g, n in zip(grads, needs, strict=True)], *([None] * 12))


_meta_upscale_op.register_autograd(_backward, setup_context=_setup_context)


def meta_upscale_custom_op(
    x: torch.Tensor,
    params: MLPParams,
    scale: object,
    size: tuple[int, int] | None,
    pos_encoding: str,
    arithmetic: Arithmetic,
    region: Region | None,
    backend: str | None,
    periodic_lon: bool = False,
    coords: CoordinateGrid | None = None,
) -> torch.Tensor:
    """Run Meta-Upscale through ``metasr::meta_upscale`` (one graph node for ``torch.compile``).

    Args:
        x: ``(N, Cin, h, w)``, already in the compute dtype.
        params: the MLP tensors, in ``x``'s dtype.
        scale, size, arithmetic, region, backend, periodic_lon, coords: as
            :func:`metasr.meta_upscale` (validated).
        pos_encoding: ``phi.pos_encoding``.

    Returns:
        ``(N, Cout, H, W)`` (``region.out_shape`` with a region).
    """
    scale_pair = None if scale is None else parse_scale(scale)
    size_pair = None if size is None else (size[0], size[1])
    H, W = request_output_size(
        x.shape[2], x.shape[3], scale_pair, size_pair, arithmetic, region, coords
    )
    return _meta_upscale_op(
        x,
        params.w1,
        params.b1,
        params.w2,
        params.b2,
        params.kernel_size,
        params.out_channels,
        H,
        W,
        None if scale_pair is None else list(scale_pair),
        None if size_pair is None else list(size_pair),
        pos_encoding,
        arithmetic,
        _region_list(region),
        backend or "auto",
        periodic_lon,
        _coords_list(coords),
    )
