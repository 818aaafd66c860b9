"""Periodic longitude in the Meta-Upscale op: every backend against the spec, the roll test.

With ``periodic_lon=True`` the LR window wraps along width (column ``(j' + dx) mod w``) and
keeps zero padding along rows. The spec is the ``naive`` backend; every other backend, the
export form and the ``torch.compile`` custom op are compared with it, forward and gradients.
Triton runs under the interpreter on CPU (``tests/conftest.py``), so its shapes stay tiny.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import metasr
from helpers import randomize_parameters
from metasr.geometry import Region, build_geometry
from metasr.ops.meta_upscale import im2col, torch_chunked
from metasr.ops.meta_upscale.im2col import meta_upscale_im2col
from metasr.ops.meta_upscale.naive import meta_upscale_naive
from metasr.ops.meta_upscale.params import MLPParams
from metasr.ops.meta_upscale.static import meta_upscale_static
from metasr.ops.meta_upscale.torch_chunked import meta_upscale_torch

HAS_TRITON = importlib.util.find_spec("triton") is not None and (
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
)

SCALES = [
    pytest.param({"scale": 2}, id="x2"),
    pytest.param({"scale": 3}, id="x3"),
    pytest.param({"scale": 2.3}, id="x2.3"),
    pytest.param({"scale": (1.5, 4)}, id="1.5x4"),
    pytest.param({"scale": (3.9, 2)}, id="3.9x2"),
    pytest.param({"size": (13, 17)}, id="size13x17"),
    pytest.param({"scale": (721 / 96, 10)}, id="721/96x10"),
]

#: Backend variants, each a function ``(x, params, geom) -> y`` and its TOLERANCES table.
VARIANTS = {
    "im2col": (meta_upscale_im2col, im2col.TOLERANCES),
    "torch-per_phase": (
        lambda x, p, g: meta_upscale_torch(x, p, g, order="per_phase"),
        torch_chunked.TOLERANCES,
    ),
    "torch-ff": (
        lambda x, p, g: meta_upscale_torch(x, p, g, order="features_first"),
        torch_chunked.TOLERANCES,
    ),
    "static": (meta_upscale_static, torch_chunked.TOLERANCES),
}


def make_phi(cin: int, cout: int, k: int = 3, hidden: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    return randomize_parameters(metasr.Pos2Weight(cin, cout, k, hidden=hidden).double())


def assert_close(actual, expected, tolerances, what: str) -> None:
    rtol, atol = tolerances[actual.dtype]
    scale = max(1.0, expected.abs().max().item())
    assert not torch.isnan(actual).any(), f"{what}: NaN (an element was never written)"
    torch.testing.assert_close(
        actual.double(), expected.double(), rtol=rtol, atol=atol * scale, msg=lambda m: what + m
    )


def forward_backward(fn, x, params, geom, dy):
    """``y`` and the gradients of ``<y, dy>`` for ``x`` and the four MLP tensors."""
    x = x.detach().requires_grad_()
    ps = [t.detach().requires_grad_() for t in (params.w1, params.b1, params.w2, params.b2)]
    mp = MLPParams(*ps, params.kernel_size, params.in_channels, params.out_channels)
    y = fn(x, mp, geom)
    grads = torch.autograd.grad(y, [x, *ps], dy.to(y.dtype))
    return [y.detach(), *grads]


def problem(shape, cout, k, call, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    phi = make_phi(shape[1], cout, k=k, seed=seed)
    geom = build_geometry(shape[2], shape[3], periodic_lon=True, **call)
    dy = torch.randn((shape[0], cout, geom.H, geom.W), generator=gen, dtype=torch.float64)
    return x.to(dtype), MLPParams.from_module(phi, dtype), geom, dy


NAMES = ["y", "x", "w1", "b1", "w2", "b2"]


@pytest.mark.parametrize("call", SCALES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_float64_matches_spec(variant, call):
    x, params, geom, dy = problem((2, 3, 5, 6), 2, 3, call)
    fn, tol = VARIANTS[variant]
    want = forward_backward(meta_upscale_naive, x, params, geom, dy)
    got = forward_backward(fn, x, params, geom, dy)
    for name, g, r in zip(NAMES, got, want, strict=True):
        assert_close(g, r, tol, f"{variant} {name}")


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kernel_sizes_narrow_inputs(variant, k):
    # w = 2 < k // 2 + 1 at k = 5: the window wraps more than once around the seam.
    x, params, geom, dy = problem((1, 2, 4, 2), 3, k, {"scale": (2.5, 3)})
    fn, tol = VARIANTS[variant]
    want = forward_backward(meta_upscale_naive, x, params, geom, dy)
    got = forward_backward(fn, x, params, geom, dy)
    for name, g, r in zip(NAMES, got, want, strict=True):
        assert_close(g, r, tol, f"{variant} k={k} {name}")


@pytest.mark.parametrize("call", [SCALES[1], SCALES[2], SCALES[4]])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_float32_matches_float64_spec(variant, call):
    x, params, geom, dy = problem((2, 3, 5, 6), 2, 3, call)
    fn, tol = VARIANTS[variant]
    want = forward_backward(meta_upscale_naive, x, params, geom, dy)
    got = forward_backward(fn, x.float(), params.to(torch.float32), geom, dy)
    for name, g, r in zip(NAMES, got, want, strict=True):
        assert g.dtype == torch.float32
        assert_close(g, r, tol, f"{variant} {name}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_half_precision_matches_float64_spec(variant, dtype):
    x, params, geom, dy = problem((2, 3, 5, 6), 2, 3, {"scale": (2.3, 3)}, dtype=dtype)
    fn, tol = VARIANTS[variant]
    # the spec in float64 on the same rounded inputs and parameters
    want = forward_backward(meta_upscale_naive, x.double(), params.to(torch.float64), geom, dy)
    got = forward_backward(fn, x, params, geom, dy)
    # w1/b1 skipped: ReLU' at a pre-activation within rounding of 0 (ops/test_meta_upscale.py).
    for name, g, r in zip(NAMES, got, want, strict=True):
        if name not in ("w1", "b1"):
            assert_close(g, r, tol, f"{variant} {dtype} {name}")


@pytest.mark.parametrize("variant", ["naive", "im2col", "torch-per_phase", "torch-ff"])
def test_gradcheck_float64(variant):
    fn = meta_upscale_naive if variant == "naive" else VARIANTS[variant][0]
    x, params, geom, _ = problem((1, 2, 3, 4), 2, 3, {"scale": (2.5, 1.5)})
    x.requires_grad_()
    ps = [t.detach().requires_grad_() for t in (params.w1, params.b1, params.w2, params.b2)]

    def f(x, *ps):
        return fn(x, MLPParams(*ps, 3, 2, 2), geom)

    assert torch.autograd.gradcheck(f, (x, *ps), eps=1e-6, atol=1e-7)


def _all_backends() -> list:
    out = ["naive", "im2col", "torch"]
    mark = pytest.mark.skipif(not HAS_TRITON, reason="needs triton (CUDA or TRITON_INTERPRET)")
    return [*out, pytest.param("triton", marks=mark)]


@pytest.mark.parametrize("r_h", [1, 2, 3])
@pytest.mark.parametrize("backend", _all_backends())
def test_rolling_the_input_rolls_the_output(backend, r_h):
    # Rolling the LR input by s columns rolls the output by exactly r_h·s columns.
    dtype = torch.float64 if backend != "triton" else torch.float32
    phi = make_phi(2, 3).to(dtype)
    x = torch.randn(1, 2, 4, 6, dtype=dtype)
    call = {"scale": (2.5, r_h), "backend": backend, "periodic_lon": True}
    y = metasr.meta_upscale(x, phi, **call)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for s in (1, 2, 5, -3):
        ys = metasr.meta_upscale(torch.roll(x, s, dims=3), phi, **call)
        torch.testing.assert_close(ys, torch.roll(y, r_h * s, dims=3), rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", _all_backends())
def test_periodic_differs_only_at_the_seam(backend):
    dtype = torch.float64 if backend != "triton" else torch.float32
    k, r_h, w = 3, 3, 6
    phi = make_phi(2, 3, k=k).to(dtype)
    x = torch.randn(1, 2, 4, w, dtype=dtype)
    kw = {"scale": (2, r_h), "backend": backend}
    zero = metasr.meta_upscale(x, phi, **kw)
    wrap = metasr.meta_upscale(x, phi, periodic_lon=True, **kw)
    # Output columns of LR columns 0 and w-1 read across the seam; the others never do.
    seam = (torch.arange(zero.shape[3]) // r_h == 0) | (torch.arange(zero.shape[3]) // r_h == w - 1)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(wrap[..., ~seam], zero[..., ~seam], rtol=tol, atol=tol)
    assert (wrap[..., seam] - zero[..., seam]).abs().amax(dim=(0, 1, 2)).min() > 1e-6


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton (CUDA or TRITON_INTERPRET)")
@pytest.mark.parametrize(
    "call", [{"scale": 2}, {"scale": (1.5, 3.0)}, {"scale": (2.3, 1.7)}, {"size": (9, 11)}]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_matches_spec(call, dtype):
    from metasr.ops.meta_upscale import triton_fused

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x, params, geom, dy = problem((1, 2, 4, 5), 3, 3, call, dtype=dtype)
    x, dy = x.to(dev), dy.to(dev)
    params = MLPParams(*(t.to(dev) for t in (params.w1, params.b1, params.w2, params.b2)), 3, 2, 3)
    want = forward_backward(meta_upscale_naive, x.double(), params.to(torch.float64), geom, dy)
    got = forward_backward(triton_fused.meta_upscale_triton, x, params, geom, dy)
    for name, g, r in zip(NAMES, got, want, strict=True):
        if dtype != torch.float32 and name in ("w1", "b1"):
            continue  # ReLU' near 0 in half precision, as above
        assert g.dtype == dtype
        assert_close(g, r, triton_fused.TOLERANCES, f"triton {dtype} {name}")


def test_public_function_and_module_pass_the_flag():
    phi = make_phi(2, 3)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64)
    geom = build_geometry(4, 5, scale=2.5, periodic_lon=True)
    want = meta_upscale_naive(x, MLPParams.from_module(phi, x.dtype), geom)
    got = metasr.meta_upscale(x, phi, scale=2.5, periodic_lon=True)
    torch.testing.assert_close(got, want)
    up = metasr.MetaUpsample(2, 3, hidden=8, periodic_lon=True).double()
    up.phi.load_state_dict(phi.state_dict())
    torch.testing.assert_close(up(x, scale=2.5), want)
    assert "periodic_lon=True" in repr(up)


def test_rows_tiles_with_the_whole_width_match_the_whole_image():
    phi = make_phi(2, 3)
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64)
    whole = metasr.meta_upscale(x, phi, scale=2, periodic_lon=True)
    region = Region((6, 5), (12, 10), in_rows=(1, 5), in_cols=(0, 5), out_rows=(4, 8),
                    out_cols=(0, 10))  # fmt: skip
    part = metasr.meta_upscale(x[:, :, 1:5], phi, scale=2, region=region, periodic_lon=True)
    torch.testing.assert_close(part, whole[:, :, 4:8])


def test_region_narrower_than_the_width_is_refused():
    phi = make_phi(2, 3)
    x = torch.randn(1, 2, 6, 3, dtype=torch.float64)
    region = Region((6, 5), (12, 10), in_rows=(0, 6), in_cols=(0, 3), out_rows=(0, 12),
                    out_cols=(0, 4))  # fmt: skip
    with pytest.raises(ValueError, match="periodic_lon needs the whole width"):
        metasr.meta_upscale(x, phi, scale=2, region=region, periodic_lon=True)
    metasr.meta_upscale(x, phi, scale=2, region=region)  # fine without the wrap


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_bad_flag_is_a_type_error(bad):
    phi = make_phi(2, 3)
    with pytest.raises(TypeError, match="periodic_lon must be True or False"):
        metasr.meta_upscale(torch.randn(1, 2, 3, 3, dtype=torch.float64), phi, scale=2,
                            periodic_lon=bad)  # fmt: skip
    with pytest.raises(TypeError, match="periodic_lon must be True or False"):
        metasr.MetaUpsample(2, 3, periodic_lon=bad)


def test_export_and_compile_forms_wrap():
    from metasr.geometry import UpscaleRequest
    from metasr.ops.meta_upscale.custom_op import meta_upscale_custom_op

    phi = make_phi(2, 3)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    geom = build_geometry(4, 5, scale=(2, 2.5), periodic_lon=True)
    params = MLPParams.from_module(phi, x.dtype)
    want = meta_upscale_naive(x, params, geom)
    request = UpscaleRequest(scale=(2, 2.5), periodic_lon=True)
    got = meta_upscale_custom_op(x, params, request, "asymmetric", "torch")
    torch.testing.assert_close(got, want)
    dy = torch.randn_like(want)
    torch.testing.assert_close(
        torch.autograd.grad(got, x, dy)[0], torch.autograd.grad(want, x, dy)[0]
    )
    compiled = torch.compile(
        lambda t: metasr.meta_upscale(t, phi, scale=(2, 2.5), periodic_lon=True),
        backend="eager",
        fullgraph=True,
    )
    torch.testing.assert_close(compiled(x), want)


def test_custom_op_with_the_flag_passes_opcheck():
    import metasr.ops.meta_upscale.custom_op  # noqa: F401  (registers metasr::meta_upscale)
    from metasr.geometry import UpscaleRequest

    phi = make_phi(3, 2).float()
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    p = MLPParams.from_module(phi, torch.float32)
    request = UpscaleRequest(scale=(2.5, 3.0), periodic_lon=True).to_flat()
    args = (x, p.w1, p.b1, p.w2, p.b2, 3, 2, 10, 15, *request, "asymmetric", "torch")
    torch.library.opcheck(torch.ops.metasr.meta_upscale.default, args)


def test_torch_export_wraps_and_reorders():
    from metasr.geometry import CoordinateGrid

    phi = make_phi(2, 3).float()
    lat = [60.0, 0.0, -60.0]
    coords = CoordinateGrid(lat, [45.0 * i for i in range(8)], [60, 30, 0, -30, -60],
                            [-180 + 15.0 * i for i in range(24)])  # fmt: skip

    class Up(torch.nn.Module):
        def __init__(self, **call):
            super().__init__()
            self.phi, self.call = phi, call

        def forward(self, x):
            return metasr.meta_upscale(x, self.phi, periodic_lon=True, **self.call)

    x = torch.randn(2, 2, 3, 8)
    for call in ({"scale": (2, 3)}, {"scale": 2.5}, {"coords": coords}):
        module = Up(**call)
        program = torch.export.export(module, (x,))
        want = metasr.meta_upscale(x, phi, backend="naive", periodic_lon=True, **call)
        torch.testing.assert_close(program.module()(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton (CUDA or TRITON_INTERPRET)")
def test_triton_with_coordinates_from_the_dateline():
    from metasr.geometry import CoordinateGrid

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    phi = make_phi(2, 3).float().to(dev)
    coords = CoordinateGrid([50.0, 10.0, -30.0], [0.0, 90.0, 180.0, 270.0], [50, 30, 10, -10, -30],
                            [-180 + 30.0 * i for i in range(12)])  # fmt: skip
    x = torch.randn(1, 2, 3, 4, device=dev, requires_grad=True)
    kw = {"coords": coords, "periodic_lon": True}
    got = metasr.meta_upscale(x, phi, backend="triton", **kw)
    want = metasr.meta_upscale(x, phi, backend="naive", **kw)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    dy = torch.randn_like(want)
    torch.testing.assert_close(
        torch.autograd.grad(got, x, dy)[0], torch.autograd.grad(want, x, dy)[0],
        rtol=1e-4, atol=1e-5,
    )  # fmt: skip


def test_compiled_training_step_with_coordinates():
    from metasr.geometry import CoordinateGrid, UpscaleRequest

    phi = make_phi(2, 3).float()
    coords = CoordinateGrid([50.0, 10.0, -30.0], [0.0, 90.0, 180.0, 270.0], [50, 30, 10, -10, -30],
                            [-180 + 30.0 * i for i in range(12)])  # fmt: skip
    x = torch.randn(1, 2, 3, 4, requires_grad=True)
    kw = {"coords": coords, "periodic_lon": True}
    compiled = torch.compile(lambda t: metasr.meta_upscale(t, phi, **kw), backend="aot_eager",
                             fullgraph=True)  # fmt: skip
    got, want = compiled(x), metasr.meta_upscale(x, phi, backend="naive", **kw)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    dy = torch.randn_like(want)
    params = [x, *phi.parameters()]
    for g, r in zip(torch.autograd.grad(got, params, dy), torch.autograd.grad(want, params, dy),
                    strict=True):  # fmt: skip
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
    p = MLPParams.from_module(phi, torch.float32)
    request = UpscaleRequest(coords=coords, periodic_lon=True).to_flat()
    args = (x, p.w1, p.b1, p.w2, p.b2, 3, 3, 5, 12, *request, "asymmetric", "torch")
    torch.library.opcheck(torch.ops.metasr.meta_upscale.default, args)
