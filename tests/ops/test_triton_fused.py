"""The ``triton`` backend against the spec.

Without a GPU the kernels run through the Triton interpreter (``tests/conftest.py`` sets
``TRITON_INTERPRET=1``), so the CPU matrix uses tiny shapes. Outputs and every buffer the kernels
fill (``y``, ``dZ``, the partial sums of the first-layer gradients) are NaN-poisoned first
(the ``poison_outputs`` fixture of ``tests/conftest.py``), so an element a kernel fails to write
shows up as NaN in ``y`` or in a gradient. Tolerances are the backend's ``TOLERANCES``. Tests
marked ``gpu`` repeat the matrix at realistic sizes on CUDA.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

import metasr  # noqa: E402
from metasr.geometry import build_geometry  # noqa: E402
from metasr.ops import memory  # noqa: E402
from metasr.ops.meta_upscale import triton_fused  # noqa: E402
from metasr.ops.meta_upscale.dispatch import select_backend  # noqa: E402
from metasr.ops.meta_upscale.params import MLPParams  # noqa: E402
from metasr.ops.meta_upscale.triton_fused import TOLERANCES  # noqa: E402

CUDA = torch.cuda.is_available()
if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no CUDA device and TRITON_INTERPRET is not set", allow_module_level=True)

#: Device of the CPU-matrix tests: the interpreter on CPU, else the real kernels.
DEV = torch.device("cuda" if CUDA else "cpu")


# ------------------------------------------------------------------------------------- helpers


def _problem(
    shape: tuple[int, int, int, int],
    out_channels: int,
    kernel_size: int,
    hidden: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device = DEV,
    seed: int = 0,
) -> tuple[torch.Tensor, metasr.Pos2Weight, metasr.Pos2Weight]:
    """Random ``x`` and MLP in ``dtype``, plus a float64 copy of the (rounded) MLP."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    phi = metasr.Pos2Weight(shape[1], out_channels, kernel_size, hidden)
    with torch.no_grad():
        for p in phi.parameters():  # random biases too (nn.Linear's are small)
            p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
    phi = phi.to(device=device, dtype=dtype)
    phi64 = metasr.Pos2Weight(shape[1], out_channels, kernel_size, hidden).to(device)
    phi64.load_state_dict(phi.state_dict())
    return x, phi, phi64.double()


def _forward_backward(
    x: torch.Tensor,
    phi: metasr.Pos2Weight,
    call: dict,
    backend: str,
    dy: torch.Tensor,
    grad_x: bool = True,
    grad_phi: bool = True,
) -> dict[str, torch.Tensor]:
    """``y`` and the gradients of ``<y, dy>`` that were asked for, by name."""
    x = x.detach().requires_grad_(grad_x)
    phi.requires_grad_(grad_phi)
    phi.zero_grad(set_to_none=True)
    y = metasr.meta_upscale(x, phi, backend=backend, **call)
    y.backward(dy.to(y.dtype))
    out = {"y": y.detach()}
    if grad_x:
        out["x"] = x.grad
    if grad_phi:
        out.update({name: p.grad for name, p in phi.meta_block.named_parameters()})
    return out


def _assert_close(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str
) -> None:
    """Per-dtype tolerance; ``atol`` scales with the reference's magnitude (gradients of the
    MLP sum over every output pixel, so their scale grows with the output size)."""
    rtol, atol = TOLERANCES[dtype]
    scale = max(1.0, expected.abs().max().item())
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
    assert not torch.isnan(actual).any(), f"{what}: NaN (an element was never written)"
    torch.testing.assert_close(
        actual.double(), expected.double(), rtol=rtol, atol=atol * scale, msg=lambda m: what + m
    )


def _check_against_spec(
    shape: tuple[int, int, int, int],
    out_channels: int,
    kernel_size: int,
    hidden: int,
    call: dict,
    dtype: torch.dtype = torch.float32,
    reference: str = "naive",
    device: torch.device = DEV,
    seed: int = 0,
) -> None:
    """Forward and all five gradients of ``triton`` in ``dtype`` vs ``reference`` in float64."""
    x, phi, phi64 = _problem(shape, out_channels, kernel_size, hidden, dtype, device, seed)
    geom = build_geometry(shape[2], shape[3], **call)
    gen = torch.Generator().manual_seed(seed + 1)
    dy = torch.randn((shape[0], out_channels, geom.H, geom.W), generator=gen, dtype=torch.float64)
    dy = dy.to(device)
    got = _forward_backward(x, phi, call, "triton", dy)
    ref = _forward_backward(x.double(), phi64, call, reference, dy)
    assert got["y"].shape == (shape[0], out_channels, geom.H, geom.W)
    for name in ref:
        _assert_close(got[name], ref[name], dtype, f"{name} {call} {dtype}")


# ------------------------------------------------------------------------ CPU (interpreter) matrix

# (x shape, Cout, k, hidden, call): integer, fractional, asymmetric, non-dividing sizes, odd
# sizes, hidden not a power of two, Cout not a power of two and above one block, k = 1 and 5,
# LR rows/columns that no output pixel maps to (r = 1.1, 1.2), scale 1, size=(H, W).
CASES = [
    ((2, 2, 4, 5), 3, 3, 8, {"scale": 2}),
    ((1, 3, 3, 4), 1, 1, 16, {"scale": 3}),
    ((1, 2, 5, 4), 3, 3, 12, {"scale": 2.5}),
    ((1, 2, 5, 3), 2, 3, 8, {"scale": (1.5, 3.0)}),
    ((1, 2, 7, 5), 3, 3, 8, {"scale": (2.3, 1.1)}),
    ((1, 1, 5, 6), 5, 5, 24, {"scale": (1.2, 1.7)}),
    ((2, 2, 3, 3), 3, 3, 8, {"scale": 1}),
    ((1, 2, 5, 6), 3, 3, 8, {"size": (11, 13)}),
]


@pytest.mark.parametrize("shape,cout,k,hidden,call", CASES, ids=[str(c[4]) for c in CASES])
def test_matches_spec_float32(shape, cout, k, hidden, call):
    _check_against_spec(shape, cout, k, hidden, call)


# Half precision runs the tensor-core forward: two LR-column blocks with a partial one, output
# rows longer than one 16-column chunk (r_h = 7), a padded hidden width, two Cout blocks of 16.
HALF_CASES = [
    ((2, 2, 4, 5), 3, 3, 16, {"scale": (2.5, 1.5)}),
    ((1, 2, 3, 3), 3, 3, 8, {"scale": (1.5, 7.0)}),
    ((1, 2, 4, 3), 20, 1, 12, {"scale": 2}),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "shape,cout,k,hidden,call", HALF_CASES, ids=[str(c[4]) for c in HALF_CASES]
)
def test_matches_spec_half(shape, cout, k, hidden, call, dtype):
    _check_against_spec(shape, cout, k, hidden, call, dtype=dtype)


def test_half_on_cuda_cores(monkeypatch):
    """Half precision with a hidden layer too wide for the tensor-core forward."""
    monkeypatch.setattr(triton_fused, "_DOT_MAX_HID", 0)
    _check_against_spec((1, 2, 4, 5), 3, 3, 16, {"scale": (2.5, 1.5)}, dtype=torch.float16)


def test_many_small_blocks(monkeypatch):
    """Shrunk blocks: several column blocks with a partial last one, several hid and Cout
    blocks, several row groups, so every cross-program reduction and tail mask is exercised."""
    monkeypatch.setattr(triton_fused, "_FWD_MAX_BLOCK_Q", 2)
    monkeypatch.setattr(triton_fused, "_DZ_BLOCK_Q", 2)
    monkeypatch.setattr(triton_fused, "_DZ_MAX_BLOCK_K", 8)
    monkeypatch.setattr(triton_fused, "_DPRE_BLOCK_J", 4)
    monkeypatch.setattr(triton_fused, "_DPRE_MAX_BLOCK_K", 8)
    monkeypatch.setattr(triton_fused, "_MAX_BLOCK_O", 2)
    monkeypatch.setattr(triton_fused, "_num_programs_target", lambda device: 64)
    _check_against_spec((2, 2, 5, 7), 3, 3, 20, {"scale": (2.5, 1.5)})


def test_matches_torch_backend_same_dtype():
    """Cross-check against the chunked PyTorch features-first backend, both in float32."""
    x, phi, _ = _problem((2, 3, 5, 4), 3, 3, 16)
    call = {"scale": (1.7, 2.4)}
    geom = build_geometry(5, 4, **call)
    dy = torch.randn((2, 3, geom.H, geom.W), generator=torch.Generator().manual_seed(3))
    got = _forward_backward(x, phi, call, "triton", dy.to(DEV))
    ref = _forward_backward(x, phi, call, "torch", dy.to(DEV))
    for name in ref:
        _assert_close(got[name], ref[name], torch.float32, name)


@pytest.mark.parametrize("grad_x,grad_phi", [(True, False), (False, True)])
def test_partial_gradients(grad_x, grad_phi):
    """Backward skips the kernels whose results are not needed; the others stay right."""
    x, phi, phi64 = _problem((1, 2, 4, 3), 3, 3, 8)
    call = {"scale": (2.5, 3.0)}
    dy = torch.randn((1, 3, 10, 9), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = _forward_backward(x, phi, call, "triton", dy, grad_x=grad_x, grad_phi=grad_phi)
    ref = _forward_backward(x.double(), phi64, call, "naive", dy, grad_x, grad_phi)
    assert got.keys() == ref.keys()
    for name in ref:
        _assert_close(got[name], ref[name], torch.float32, name)


def test_no_grad_forward():
    x, phi, phi64 = _problem((1, 2, 3, 4), 1, 3, 8)
    with torch.no_grad():
        y = metasr.meta_upscale(x, phi, scale=3.3, backend="triton")
        ref = metasr.meta_upscale(x.double(), phi64, scale=3.3, backend="naive")
    _assert_close(y, ref, torch.float32, "y")


def test_skipped_pixels_are_caught():
    """The NaN poisoning the matrix relies on is active: a grid whose last LR row claims no
    output rows leaves those rows unwritten, and they read as NaN."""
    assert torch.isnan(memory.empty_output((2,), torch.zeros(1))).all()
    x, phi, _ = _problem((1, 2, 3, 3), 1, 3, 8)
    geom = build_geometry(3, 3, scale=2)
    params = MLPParams.from_module(phi, torch.float32)
    maps = triton_fused._index_maps(geom, x.device)
    bad_row_ptr = maps.row_ptr.clone()
    bad_row_ptr[-1] = bad_row_ptr[-2]  # the last LR row's cell (output rows 4, 5) is dropped
    bad = triton_fused._IndexMaps(**{**maps.__dict__, "row_ptr": bad_row_ptr})
    hid, O = params.hidden, 1
    z = torch.randn(1, O * (hid + 1), 3, 3, device=DEV).contiguous(
        memory_format=torch.channels_last
    )
    ac = torch.randn(geom.H, hid, device=DEV)
    bc = torch.randn(maps.num_phases, hid, device=DEV)
    y = triton_fused._launch_fwd(z, ac, bc, bad, hid, O)
    assert torch.isnan(y[:, :, 4:]).all()
    assert not torch.isnan(y[:, :, :4]).any()


def test_dispatcher_offers_triton_here():
    assert metasr.backends(DEV)["triton"] is None


def test_import_metasr_does_not_import_triton():
    code = "import sys, metasr; sys.exit(1 if 'triton' in sys.modules else 0)"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0


# ---------------------------------------------------------------------------------- GPU matrix

GPU_CASES = [
    ((2, 64, 40, 36), 3, 3, 256, {"scale": 4}),
    ((2, 64, 37, 41), 3, 3, 256, {"scale": 2.5}),
    ((1, 64, 33, 29), 3, 3, 256, {"scale": (1.5, 3.5)}),
    ((1, 64, 31, 30), 3, 3, 256, {"scale": (3.9, 2.0)}),
    ((1, 32, 96, 144), 1, 3, 256, {"size": (721, 1440)}),
    ((2, 16, 19, 23), 64, 3, 256, {"scale": 2.3}),
    ((1, 16, 21, 17), 3, 5, 100, {"scale": (1.1, 7.5)}),
    ((1, 8, 13, 11), 3, 3, 512, {"scale": 2.7}),  # half precision on the CUDA-core forward
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,cout,k,hidden,call", GPU_CASES, ids=[str(c[4]) for c in GPU_CASES])
def test_gpu_matches_spec(shape, cout, k, hidden, call, dtype, no_tf32):
    """Realistic sizes on CUDA; the reference is the torch backend in float64 (exact order)."""
    _check_against_spec(
        shape, cout, k, hidden, call, dtype=dtype, reference="torch", device=torch.device("cuda")
    )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_backward_is_deterministic(dtype):
    """Two backward passes give bit-identical gradients (the kernels use no atomics)."""
    x, phi, _ = _problem((4, 64, 48, 40), 3, 3, 256, dtype, torch.device("cuda"))
    call = {"scale": (2.7, 3.3)}
    geom = build_geometry(48, 40, **call)
    dy = torch.randn((4, 3, geom.H, geom.W), device="cuda", dtype=dtype)
    old = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True  # the convolutions' own backward, not ours
    try:
        first = _forward_backward(x, phi, call, "triton", dy)
        second = _forward_backward(x, phi, call, "triton", dy)
    finally:
        torch.backends.cudnn.deterministic = old
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.mark.gpu
def test_gpu_auto_picks_triton():
    x, phi, _ = _problem((1, 8, 6, 6), 3, 3, 32, device=torch.device("cuda"))
    geom = build_geometry(6, 6, scale=2.5)
    params = MLPParams.from_module(phi, x.dtype)
    assert select_backend(None, x, params, geom).name == "triton"


def test_launch_grid_limits_are_reasons_not_crashes():
    # A batch that would overflow CUDA's third grid dimension makes `triton` unavailable with a
    # reason (so `auto` falls back to `torch`), instead of a launch error deep inside.
    from metasr.ops.meta_upscale.dispatch import BACKENDS

    phi = metasr.Pos2Weight(2, 64, hidden=256)
    params = MLPParams.from_module(phi, torch.float32)
    geom = build_geometry(3, 3, scale=2)
    small = torch.empty(4, 2, 3, 3)
    assert BACKENDS["triton"].not_supported_reasons(small, params, geom) == []
    huge = small[:1].expand(2000, 2, 3, 3)  # N=2000 x 16 Cout blocks x 4 hidden blocks
    reasons = BACKENDS["triton"].not_supported_reasons(huge, params, geom)
    assert len(reasons) == 1 and "grid limit" in reasons[0]
