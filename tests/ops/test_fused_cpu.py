"""The torch backend's opt-in intervals order (``ops/meta_upscale/fused_cpu.py``, a C++/OpenMP
kernel compiled on first use under ``METASR_CPU_KERNELS=1``) against the spec (``naive``) in
float64 at awkward scales, with periodic longitude, a region, a reordered coordinate grid and
the official encoding, forward and gradients (to the input and every predictor parameter, through
the C++ backward); float32 against the backend's other orders; and the dispatch: chosen with or
without gradients when opted in and cheaper, never without the opt-in.

Every test that needs the compiled kernel is in this module, so it is built (or loaded from
torch's extensions cache) once per session: about 30-40 s the first time on a machine. Without
``g++`` the module skips; with one, a failed build fails. Outputs are NaN-poisoned
(``conftest.py``), so an output pixel the kernel skips fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

import metasr
from helpers import randomize_parameters, region_at_3_7, reordered_coordinate_grid
from metasr.geometry import UpscaleRequest, build_geometry
from metasr.ops.meta_upscale import fused_cpu
from metasr.ops.meta_upscale.params import MLPParams
from metasr.ops.meta_upscale.predictor import predictor_params
from metasr.ops.meta_upscale.tables import restore_order
from metasr.ops.meta_upscale.torch_chunked import TOLERANCES, meta_upscale_torch
from tests.ops.test_predictor import make as make_predictor

SCALES = [
    pytest.param((2.37, 3.13), id="2.37x3.13"),
    pytest.param((1.13, 3.91), id="1.13x3.91"),
    pytest.param(2.3, id="x2.3"),
    pytest.param(3.7, id="x3.7"),
    pytest.param(1.5, id="x1.5"),
    pytest.param(3, id="x3"),
]


@pytest.fixture(scope="module", autouse=True)
def kernel():
    """Opt in for the whole module and build the kernel once (a build failure fails)."""
    if shutil.which("g++") is None:
        pytest.skip("no g++ on the path: the fused CPU kernel cannot be compiled here")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(fused_cpu.ENV_VAR, "1")
        why = fused_cpu.unavailable_reason()
        if why is not None:
            pytest.fail(f"the fused CPU kernel did not build: {why}")
        yield


def pos2weight(cin: int = 3, cout: int = 2, hidden: int = 16, **kw) -> metasr.Pos2Weight:
    torch.manual_seed(0)
    return randomize_parameters(metasr.Pos2Weight(cin, cout, 3, hidden=hidden, **kw).double())


def intervals(x: torch.Tensor, phi, grad: bool = False, **call) -> torch.Tensor:
    """The intervals order forced, through the torch backend, in the request's order."""
    geom = build_geometry(x.shape[2], x.shape[3], pos_encoding=phi.pos_encoding, **call)
    with torch.set_grad_enabled(grad):
        y = meta_upscale_torch(x, predictor_params(phi, x.dtype), geom, order="intervals")
    return restore_order(y, geom)


def assert_grads_spec(x: torch.Tensor, phi, what: str, **call) -> None:
    """Gradients to ``x`` and every parameter of ``phi`` match the spec's for one upstream."""
    x = x.detach().requires_grad_(True)
    leaves = [x, *phi.parameters()]
    ref = metasr.meta_upscale(x, phi, backend="naive", **call)
    g = torch.randn_like(ref)
    want = torch.autograd.grad(ref, leaves, g)
    out = intervals(x, phi, grad=True, **call)
    assert out.grad_fn is not None
    got = torch.autograd.grad(out, leaves, g)
    names = ["x"] + [n for n, _ in phi.named_parameters()]
    for name, a, b in zip(names, got, want, strict=True):
        assert_spec(a, b, f"{what} d{name}: ")


def assert_spec(out: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    rtol, atol = TOLERANCES[torch.float64]
    assert out.shape == ref.shape and out.dtype == ref.dtype
    scale = max(1.0, ref.abs().max().item())
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol * scale, msg=lambda m: what + m)


@pytest.mark.parametrize("periodic_lon", [False, True], ids=["zero-pad", "periodic"])
@pytest.mark.parametrize("scale", SCALES)
def test_float64_matches_spec(scale, periodic_lon):
    phi = pos2weight()
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        ref = metasr.meta_upscale(x, phi, backend="naive", scale=scale, periodic_lon=periodic_lon)
    out = intervals(x, phi, scale=scale, periodic_lon=periodic_lon)
    assert_spec(out, ref, f"{scale} periodic={periodic_lon}: ")


@pytest.mark.parametrize("periodic_lon", [False, True], ids=["zero-pad", "periodic"])
@pytest.mark.parametrize("scale", [(2.37, 3.13), (1.13, 3.91), 2.3, 3.7])
def test_float64_gradients_match_spec(scale, periodic_lon):
    phi = pos2weight()
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    assert_grads_spec(
        x, phi, f"{scale} periodic={periodic_lon}", scale=scale, periodic_lon=periodic_lon
    )


def test_gradcheck_tiny():
    # Finite differences through the whole call (host tables in torch, C++ forward and backward)
    # in x and the four predictor tensors; a tiny case has no threshold within gradcheck's step
    # of an offset, where ReLU's kink would make finite differences disagree.
    phi = pos2weight(2, 2, hidden=4)
    ref = predictor_params(phi, torch.float64)
    geom = build_geometry(3, 4, scale=(2.37, 3.13))
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    tensors = [t.detach().clone().requires_grad_(True) for t in (ref.w1, ref.b1, ref.w2, ref.b2)]

    def f(x, w1, b1, w2, b2):
        params = MLPParams(w1, b1, w2, b2, ref.kernel_size, ref.in_channels, ref.out_channels)
        return meta_upscale_torch(x, params, geom, order="intervals")

    assert torch.autograd.gradcheck(f, (x.requires_grad_(True), *tensors))
    # No second derivative: asking for one is an error, not a silent zero.
    y = f(x, *tensors)
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward|differentiable"):
        gx.sum().backward()


def test_official_encoding_and_size_request():
    phi = pos2weight(pos_encoding="official")
    x = torch.randn(1, 3, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        ref = metasr.meta_upscale(x, phi, backend="naive", scale=2.7)
    assert_spec(intervals(x, phi, scale=2.7), ref, "official: ")
    assert_grads_spec(x, phi, "official", scale=2.7)
    phi = pos2weight()
    with torch.no_grad():
        ref = metasr.meta_upscale(x, phi, backend="naive", size=(17, 13))
    assert_spec(intervals(x, phi, size=(17, 13)), ref, "size: ")


@pytest.mark.parametrize("periodic_lon", [False, True], ids=["zero-pad", "periodic"])
def test_region_matches_spec(periodic_lon):
    phi = pos2weight()
    x = torch.randn(2, 3, 8, 7, dtype=torch.float64)
    region = region_at_3_7(periodic_lon)
    win = x[:, :, 1:6, region.in_cols[0] : region.in_cols[1]]
    with torch.no_grad():
        ref = metasr.meta_upscale(
            win, phi, backend="naive", scale=3.7, region=region, periodic_lon=periodic_lon
        )
    out = intervals(win, phi, scale=3.7, region=region, periodic_lon=periodic_lon)
    assert_spec(out, ref, f"region periodic={periodic_lon}: ")
    assert_grads_spec(
        win,
        phi,
        f"region periodic={periodic_lon}",
        scale=3.7,
        region=region,
        periodic_lon=periodic_lon,
    )


def test_coordinate_grid_reordered_target():
    phi = pos2weight()
    coords = reordered_coordinate_grid()
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    with torch.no_grad():
        ref = metasr.meta_upscale(x, phi, backend="naive", coords=coords, periodic_lon=True)
    assert_spec(intervals(x, phi, coords=coords, periodic_lon=True), ref, "coords: ")
    assert_grads_spec(x, phi, "coords", coords=coords, periodic_lon=True)


@pytest.mark.parametrize("scale", [(2.37, 3.13), (1.13, 3.91), 2.3])
def test_float32_matches_other_order(scale):
    phi = pos2weight(8, 3, hidden=32).float()
    x = torch.randn(2, 8, 13, 11)
    geom = build_geometry(13, 11, scale=scale)
    params = predictor_params(phi, torch.float32)
    with torch.no_grad():
        ref = meta_upscale_torch(x, params, geom, order="features_first")
        out = meta_upscale_torch(x, params, geom, order="intervals")
    rtol, atol = TOLERANCES[torch.float32]
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol * ref.abs().max().item())


# Large enough that the counted cost favours the kernel at 2.37×3.13 (tiny calls are dominated
# by its per-row-phase host work and stay with features-first).
DISPATCH = dict(cin=16, cout=3, hidden=64)
DISPATCH_SHAPE = (1, 16, 32, 32)


def _plan(x, phi):
    return metasr.plan(x, phi, UpscaleRequest(scale=(2.37, 3.13)))


def test_dispatch_takes_it_without_gradients():
    phi = pos2weight(**DISPATCH).float()
    x = torch.randn(DISPATCH_SHAPE)
    with torch.no_grad():
        p = _plan(x, phi)
        choice = p.evaluation_order()
        assert p.backend.name == "torch"
        assert choice.order == "intervals" and choice.intervals_reasons == ()
        y = metasr.meta_upscale(x, phi, scale=(2.37, 3.13))
        ref = metasr.meta_upscale(x.double(), phi.double(), scale=(2.37, 3.13), backend="naive")
        # Its memory estimate counts the output, the padded input and the tables.
        out_bytes = y.numel() * 4
        assert p.estimate_bytes() > out_bytes + 2 * x.numel() * 4
    rtol, atol = TOLERANCES[torch.float32]
    torch.testing.assert_close(y.double(), ref, rtol=rtol, atol=atol * ref.abs().max().item())
    # Under inference mode as well (metasr's inference path).
    with torch.inference_mode():
        assert _plan(x, phi).evaluation_order().order == "intervals"


def test_dispatch_takes_it_with_gradients():
    # A training step: phi's parameters and x require grad; the counted forward + backward
    # cost still favours the kernel, whose gradients match the spec's (float32 tolerance).
    phi = pos2weight(**DISPATCH).float()
    x = torch.randn(DISPATCH_SHAPE, requires_grad=True)
    p = _plan(x, phi)
    choice = p.evaluation_order()
    assert choice.order == "intervals" and choice.intervals_reasons == ()
    # Its memory estimate adds the backward's per-thread copies of the padded input's gradient.
    with torch.no_grad():
        inference = _plan(x, phi).estimate_bytes()
    assert p.estimate_bytes() > inference + torch.get_num_threads() * x.numel() * 4
    y = metasr.meta_upscale(x, phi, scale=(2.37, 3.13))
    assert y.grad_fn is not None
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, *phi.parameters()], g)
    phi64, x64 = pos2weight(**DISPATCH), x.detach().double().requires_grad_(True)
    ref = metasr.meta_upscale(x64, phi64, scale=(2.37, 3.13), backend="naive")
    want = torch.autograd.grad(ref, [x64, *phi64.parameters()], g.double())
    rtol, atol = TOLERANCES[torch.float32]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol * b.abs().max().item())


def test_dispatch_does_not_take_it_without_the_opt_in(monkeypatch):
    phi = pos2weight(**DISPATCH).float()
    x = torch.randn(DISPATCH_SHAPE)
    for value in (None, "0"):
        if value is None:
            monkeypatch.delenv(fused_cpu.ENV_VAR)
        else:
            monkeypatch.setenv(fused_cpu.ENV_VAR, value)
        with torch.no_grad():
            choice = _plan(x, phi).evaluation_order()
        assert choice.order == "features_first"
        assert fused_cpu.ENV_VAR in choice.intervals_reasons[0]


def test_dispatch_refuses_other_predictors_and_half():
    x = torch.randn(DISPATCH_SHAPE)
    phi = make_predictor("gelu3", 16, 3).float()
    with torch.no_grad():
        choice = _plan(x, phi).evaluation_order()
    assert choice.order != "intervals"
    assert any("Linear-ReLU-Linear" in r for r in choice.intervals_reasons)
    # float16 on CPU computes in float32, which the kernel runs.
    phi = pos2weight(**DISPATCH).half()
    with torch.no_grad():
        assert _plan(x.half(), phi).evaluation_order().order == "intervals"


def test_import_builds_nothing():
    # With the opt-in set, importing metasr (and planning a call the kernel would not take: at
    # this size its counted cost is above features-first's) neither compiles nor imports torch's
    # extension builder.
    code = (
        "import sys, torch, metasr\n"
        "from metasr.geometry import UpscaleRequest\n"
        "phi = metasr.Pos2Weight(4, 2, 3, hidden=8)\n"
        "metasr.plan(torch.randn(1, 4, 8, 8), phi, UpscaleRequest(scale=2.3)).evaluation_order()\n"
        "assert 'torch.utils.cpp_extension' not in sys.modules, 'builder imported'\n"
    )
    env = {**os.environ, fused_cpu.ENV_VAR: "1"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_build_failure_is_a_reason_and_a_warning(monkeypatch):
    # A failed build is reported once (its first line) and the dispatch keeps its usual order.
    def fail():
        raise RuntimeError("Error building extension 'metasr_intervals_cpu': boom\nmore lines")

    monkeypatch.setattr(fused_cpu, "_built", {})  # a fresh process's state
    monkeypatch.setattr(fused_cpu, "_build", fail)
    with pytest.warns(RuntimeWarning, match="building the CPU kernel failed: Error building"):
        why = fused_cpu.unavailable_reason()
    assert why.endswith("boom") and fused_cpu.unavailable_reason() == why
    phi = pos2weight(**DISPATCH).float()
    with torch.no_grad():
        choice = _plan(torch.randn(DISPATCH_SHAPE), phi).evaluation_order()
    assert choice.order == "features_first" and choice.intervals_reasons == (why,)
