"""Meta-Upscale as a ``torch.library`` custom op, the form ``torch.compile`` sees.

The op's geometry is host-side float64 NumPy (:mod:`metasr.geometry`) and the backends read it
on the host, which Dynamo cannot trace (it would turn the arrays into tensors inside the graph
and guard on them). Under ``torch.compile`` the public function therefore calls one opaque graph
node, ``metasr::meta_upscale``, whose arguments are the tensors (``x`` and the four MLP
parameters) and the request as a list of ints and one of floats
(:meth:`~metasr.geometry.UpscaleRequest.to_flat`); the node's implementation builds the
geometry (memoised: it depends only on the shapes and the request), picks a backend and runs
it, exactly as the eager path does. A fake (meta) kernel gives the output shape for tracing,
and a registered autograd formula makes the node differentiable (its backward is a second
node, ``metasr::meta_upscale_backward``, that recomputes the forward under autograd and
returns the gradients of the five tensors, so every backend's own backward is used).

Recompiles: Dynamo specialises on the request's floats (the scale), so a compiled model
holds one graph per distinct scale (and per input shape unless shapes are dynamic); a ``size=``
request with dynamic shapes shares one graph. Beyond ``torch._dynamo.config.recompile_limit``
(8 by default) graphs, Dynamo runs the frame eagerly, so the count is bounded either way; see
``docs/usage.md``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ...geometry import UpscaleRequest
from .dispatch import select_backend
from .params import MLPParams
from .tables import restore_order

__all__ = ["meta_upscale_custom_op"]


def _run(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    kernel_size: int,
    out_channels: int,
    request_ints: list[int],
    request_floats: list[float],
    pos_encoding: str,
    backend: str,
) -> torch.Tensor:
    """Build the geometry (memoised by :meth:`UpscaleRequest.geometry`), choose a backend and
    run it: the eager path's last steps."""
    request = UpscaleRequest.from_flat(request_ints, request_floats)
    geom = request.geometry(x.shape[2], x.shape[3], pos_encoding)
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
    request_ints: list[int],
    request_floats: list[float],
    pos_encoding: str,
    backend: str,
) -> torch.Tensor:
    """``(N, Cin, h, w)`` → ``(N, Cout, out_height, out_width)``.

    See :func:`meta_upscale_custom_op`; ``out_height``/``out_width`` give the fake kernel the
    output size without the geometry.
    """
    y = _run(
        x, w1, b1, w2, b2, kernel_size, out_channels, request_ints, request_floats,
        pos_encoding, backend,
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
    request_ints: list[int],
    request_floats: list[float],
    pos_encoding: str,
    backend: str,
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
            *leaves, kernel_size, out_channels, request_ints, request_floats, pos_encoding,
            backend,
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
    k, o, _, _, *request_and_names = scalars
    ctx.scalars = (k, o, *request_and_names)


def _backward(ctx, grad):
    x, w1, b1, w2, b2 = ctx.saved_tensors
    needs = [bool(n) for n in ctx.needs_input_grad[:5]]
    grads = _meta_upscale_backward_op(grad.contiguous(), x, w1, b1, w2, b2, needs, *ctx.scalars)
    return (*[g if n else None for g, n in zip(grads, needs, strict=True)], *([None] * 8))


_meta_upscale_op.register_autograd(_backward, setup_context=_setup_context)


def meta_upscale_custom_op(
    x: torch.Tensor,
    params: MLPParams,
    request: UpscaleRequest,
    pos_encoding: str,
    backend: str | None,
) -> torch.Tensor:
    """Run Meta-Upscale through ``metasr::meta_upscale`` (one graph node for ``torch.compile``).

    Args:
        x: ``(N, Cin, h, w)``, already in the compute dtype.
        params: the MLP tensors, in ``x``'s dtype.
        request: the call's request (passed flat, :meth:`UpscaleRequest.to_flat`).
        pos_encoding: ``phi.pos_encoding``.
        backend: as :func:`metasr.meta_upscale`.

    Returns:
        ``(N, Cout, H, W)`` (``region.out_shape`` with a region).
    """
    H, W = request.out_shape(x.shape[2], x.shape[3])
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
        *request.to_flat(),
        pos_encoding,
        backend or "auto",
    )
