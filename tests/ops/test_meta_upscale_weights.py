"""``meta_upscale_weights`` (given per-pixel weights) and ``weights_first`` (any predictor).

The spec is ``meta_upscale(x, phi, backend="naive")`` with ``weight = phi(positions)``, and for
the gradient with respect to the weights a plain einsum over gathered windows written here
(:func:`reference`), differentiated by autograd. Outputs start as NaN (``tests/conftest.py``),
and most cases run with one output row per block, so a skipped row or pixel fails.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import metasr
from helpers import randomize_parameters
from metasr.geometry import CoordinateGrid, Region, build_geometry

# metasr.ops re-exports a function named meta_upscale; the op package itself:
op = importlib.import_module("metasr.ops.meta_upscale")
wmod = importlib.import_module("metasr.ops.meta_upscale.weights")
meta_upscale_weights = wmod.meta_upscale_weights
weights_first = wmod.weights_first

SCALES = [
    pytest.param({"scale": 1.1}, id="x1.1"),
    pytest.param({"scale": 2.3}, id="x2.3"),
    pytest.param({"scale": 3.7}, id="x3.7"),
    pytest.param({"scale": (1.5, 4)}, id="1.5x4"),
    pytest.param({"scale": (3.9, 2)}, id="3.9x2"),
    pytest.param({"size": (37, 53)}, id="size37x53"),
]


@pytest.fixture
def one_row_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every block is one output row (the floor), so the block loop runs H times."""
    monkeypatch.setattr(wmod, "MAX_BLOCK_BYTES", 1)


def make_phi(cin: int, cout: int, k: int, seed: int = 0) -> metasr.Pos2Weight:
    torch.manual_seed(seed)
    return randomize_parameters(metasr.Pos2Weight(cin, cout, k, hidden=8).double())


def request_positions(geom) -> torch.Tensor:
    """``(H·W, P)`` float64 positions of the request's pixels, row-major, in its order."""
    pos = geom.positions().reshape(geom.H, geom.W, -1)
    if geom.row_order is not None:
        pos = pos[geom.row_order]
    if geom.col_order is not None:
        pos = pos[:, geom.col_order]
    return torch.as_tensor(np.ascontiguousarray(pos.reshape(geom.H * geom.W, -1)))


def to_hwkkco(flat: torch.Tensor, H: int, W: int, C: int, k: int, O: int) -> torch.Tensor:
    return flat.reshape(H, W, C, k, k, O).permute(0, 1, 3, 4, 2, 5).contiguous()


def reference(x: torch.Tensor, w6: torch.Tensor, geom, periodic: bool) -> torch.Tensor:
    """The contraction as one einsum: ``w6 (H, W, Cin, k, k, Cout)`` (flat order), request order."""
    k = w6.shape[3]
    p = k // 2
    if periodic and p:
        xp = torch.cat([x[..., x.shape[3] - p :], x, x[..., :p]], dim=3)  # needs p <= w
    else:
        xp = F.pad(x, [p, p])
    xp = F.pad(xp, [0, 0, p, p])
    rows = geom.row_idx if geom.row_order is None else geom.row_idx[geom.row_order]
    cols = geom.col_idx if geom.col_order is None else geom.col_idx[geom.col_order]
    win = xp.unfold(2, k, 1).unfold(3, k, 1)  # (N, C, h, w, ky, kx)
    g = win[:, :, torch.as_tensor(rows)[:, None], torch.as_tensor(cols)[None, :]]
    return torch.einsum("nchwyx,hwcyxo->nohw", g, w6)


def assert_close_to(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """``actual`` against a float64 ``expected`` with :data:`weights.TOLERANCES` of its dtype;
    ``atol`` relative to the reference's largest magnitude (at least 1)."""
    rtol, atol = wmod.TOLERANCES[actual.dtype]
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(
        actual.double(),
        expected.double(),
        rtol=rtol,
        atol=atol * scale,
        msg=lambda m: f"{actual.dtype} {what}: {m}",
    )


# --------------------------------------------------------------------------- meta_upscale_weights


@pytest.mark.parametrize("call", SCALES)
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("layout", ["flat", "hwkkco"])
@pytest.mark.parametrize("periodic", [False, True], ids=["zeros", "periodic"])
def test_matches_the_naive_spec_float64(call, k, layout, periodic, one_row_blocks):
    C, O = 3, 2
    phi = make_phi(C, O, k)
    torch.manual_seed(1)
    x = torch.randn(2, C, 5, 7, dtype=torch.float64, requires_grad=True)
    want = metasr.meta_upscale(x, phi, backend="naive", periodic_lon=periodic, **call)
    geom = build_geometry(5, 7, **call)
    H, W = geom.H, geom.W
    flat = phi(request_positions(geom)).detach()
    weight = flat if layout == "flat" else to_hwkkco(flat, H, W, C, k, O)
    weight.requires_grad_(True)
    kw = {"out_channels": O} if layout == "flat" else {}
    got = meta_upscale_weights(x, weight, layout=layout, periodic_lon=periodic, **kw, **call)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)

    dy = torch.randn_like(want)
    (dx_want,) = torch.autograd.grad(want, x, dy)
    dx, dw = torch.autograd.grad(got, (x, weight), dy)
    torch.testing.assert_close(dx, dx_want, rtol=1e-10, atol=1e-10)
    w6 = flat.view(H, W, C, k, k, O).clone().requires_grad_(True)
    (dw6,) = torch.autograd.grad(reference(x, w6, geom, periodic), w6, dy)
    dw_want = dw6.reshape(H * W, -1) if layout == "flat" else to_hwkkco(dw6, H, W, C, k, O)
    torch.testing.assert_close(dw, dw_want, rtol=1e-10, atol=1e-10)


def test_seed_size_721x1440_from_96x144():
    # The seed's 7.51 x 10 grid on one channel: geometry against the torch backend of
    # meta_upscale, gradients against the einsum reference (float64).
    phi = make_phi(1, 1, 3)
    torch.manual_seed(0)
    x = torch.randn(1, 1, 96, 144, dtype=torch.float64, requires_grad=True)
    call = {"size": (721, 1440), "periodic_lon": True}
    geom = build_geometry(96, 144, **call)
    with torch.no_grad():
        want = metasr.meta_upscale(x, phi, backend="torch", **call)
        flat = phi(request_positions(geom))
    weight = flat.clone().requires_grad_(True)
    got = meta_upscale_weights(x, weight, out_channels=1, **call)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    dy = torch.randn_like(got)
    dx, dw = torch.autograd.grad(got, (x, weight), dy)
    w6 = flat.view(721, 1440, 1, 3, 3, 1).requires_grad_(True)
    dx_want, dw_want = torch.autograd.grad(reference(x, w6, geom, True), (x, w6), dy)
    torch.testing.assert_close(dx, dx_want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dw, dw_want.reshape(dw.shape), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("budget_rows", [None, 1, 4], ids=["default", "1row", "4rows"])
def test_block_size_does_not_change_the_result(budget_rows, monkeypatch):
    C, O, k = 4, 3, 3
    torch.manual_seed(0)
    x = torch.randn(3, C, 6, 9, dtype=torch.float64, requires_grad=True)
    geom = build_geometry(6, 9, scale=(2.3, 1.7))
    weight = torch.randn(geom.H * geom.W, k * k * C * O, dtype=torch.float64, requires_grad=True)
    if budget_rows is not None:
        per_row = wmod._contraction_bytes_per_row(geom.W, 3, k * k * C, O, 8, cast_weights=False)
        monkeypatch.setattr(wmod, "MAX_BLOCK_BYTES", budget_rows * per_row)
    got = meta_upscale_weights(x, weight, scale=(2.3, 1.7), out_channels=O)
    w6 = weight.detach().view(geom.H, geom.W, C, k, k, O).requires_grad_(True)
    want = reference(x, w6, geom, False)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    dy = torch.randn_like(want)
    for g, r in zip(
        torch.autograd.grad(got, (x, weight), dy),
        torch.autograd.grad(want, (x, w6), dy),
        strict=True,
    ):
        torch.testing.assert_close(g.reshape(r.shape), r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layout", ["flat", "hwkkco"])
@pytest.mark.parametrize("periodic", [False, True], ids=["zeros", "periodic"])
def test_gradcheck(layout, periodic, one_row_blocks):
    C, O, k = 2, 2, 3
    torch.manual_seed(0)
    x = torch.randn(1, C, 3, 4, dtype=torch.float64, requires_grad=True)
    geom = build_geometry(3, 4, scale=(1.5, 1.3))
    shape = (geom.H * geom.W, k * k * C * O) if layout == "flat" else (geom.H, geom.W, k, k, C, O)
    weight = torch.randn(shape, dtype=torch.float64, requires_grad=True)

    def f(x, weight):
        return meta_upscale_weights(
            x, weight, scale=(1.5, 1.3), layout=layout, out_channels=O, periodic_lon=periodic
        )

    assert torch.autograd.gradcheck(f, (x, weight))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["flat", "hwkkco"])
def test_low_precision_against_float64(dtype, layout, one_row_blocks):
    C, O, k = 5, 3, 3
    torch.manual_seed(0)
    call = {"scale": (2.3, 3.7)}
    geom = build_geometry(6, 5, **call)
    H, W = geom.H, geom.W
    # Round the inputs to the dtype first, so only the computation's rounding is compared.
    x = torch.randn(2, C, 6, 5).to(dtype)
    flat = (torch.randn(H * W, k * k * C * O) * 0.3).to(dtype)
    weight = flat if layout == "flat" else to_hwkkco(flat, H, W, C, k, O)
    dy = torch.randn(2, O, H, W).to(dtype)
    x.requires_grad_(True)
    weight.requires_grad_(True)
    got = meta_upscale_weights(x, weight, layout=layout, out_channels=O, **call)
    assert got.dtype == dtype
    dx, dw = torch.autograd.grad(got, (x, weight), dy)

    x64 = x.detach().double().requires_grad_(True)
    w6 = flat.double().view(H, W, C, k, k, O).requires_grad_(True)
    want = reference(x64, w6, geom, False)
    dx_want, dw6 = torch.autograd.grad(want, (x64, w6), dy.double())
    dw_want = dw6.reshape(H * W, -1) if layout == "flat" else to_hwkkco(dw6, H, W, C, k, O)
    assert_close_to(got, want, "output")
    assert_close_to(dx, dx_want, "dx")
    assert_close_to(dw, dw_want, "dweight")


def test_non_contiguous_weight(one_row_blocks):
    # hwkkco as a permuted view of a flat leaf: blocks are copied, gradients reach the leaf.
    C, O, k = 3, 2, 3
    torch.manual_seed(0)
    x = torch.randn(2, C, 4, 5, dtype=torch.float64)
    geom = build_geometry(4, 5, scale=(1.7, 2.2))
    flat = torch.randn(geom.H * geom.W, k * k * C * O, dtype=torch.float64, requires_grad=True)
    w6 = flat.view(geom.H, geom.W, C, k, k, O).permute(0, 1, 3, 4, 2, 5)
    assert not w6.is_contiguous()
    got = meta_upscale_weights(x, w6, scale=(1.7, 2.2), layout="hwkkco")
    want = meta_upscale_weights(x, flat, scale=(1.7, 2.2), out_channels=O)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    dy = torch.randn_like(got)
    (d_got,) = torch.autograd.grad(got, flat, dy)
    (d_want,) = torch.autograd.grad(want, flat, dy)
    torch.testing.assert_close(d_got, d_want, rtol=1e-12, atol=1e-12)


def test_periodic_roll_equivariance(one_row_blocks):
    # At an integer r_h, rolling x by s columns (and the weights by r_h·s output columns) rolls
    # the output by r_h·s: the seam is like any other column.
    C, O, k, r_h, s = 3, 2, 3, 2, 3
    torch.manual_seed(0)
    x = torch.randn(2, C, 5, 7, dtype=torch.float64)
    geom = build_geometry(5, 7, scale=(1.7, r_h))
    weight = torch.randn(geom.H, geom.W, k, k, C, O, dtype=torch.float64)
    call = {"scale": (1.7, r_h), "layout": "hwkkco", "periodic_lon": True}
    y = meta_upscale_weights(x, weight, **call)
    y_rolled = meta_upscale_weights(x.roll(s, 3), weight.roll(r_h * s, 1), **call)
    torch.testing.assert_close(y_rolled, y.roll(r_h * s, 3), rtol=1e-12, atol=1e-12)
    # Without the wrap the seam reads zeros, so the same roll does not commute.
    call["periodic_lon"] = False
    y = meta_upscale_weights(x, weight, **call)
    y_rolled = meta_upscale_weights(x.roll(s, 3), weight.roll(r_h * s, 1), **call)
    assert not torch.allclose(y_rolled, y.roll(r_h * s, 3))


def test_coordinates_with_reordered_target_match_the_spec():
    phi = make_phi(2, 3, 3)
    coords = CoordinateGrid([50.0, 10.0, -30.0], [0.0, 90.0, 180.0, 270.0], [-30, -10, 10, 30, 50],
                            [-180 + 30.0 * i for i in range(12)])  # fmt: skip
    geom = build_geometry(3, 4, coords=coords, periodic_lon=True)
    assert geom.row_order is not None and geom.col_order is not None  # both axes reordered
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    want = metasr.meta_upscale(x, phi, backend="naive", coords=coords, periodic_lon=True)
    weight = phi(request_positions(geom)).detach()
    got = meta_upscale_weights(x, weight, coords=coords, periodic_lon=True, out_channels=3)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_region_matches_the_whole_image():
    C, O, k = 2, 3, 3
    torch.manual_seed(0)
    x = torch.randn(1, C, 6, 5, dtype=torch.float64)
    geom = build_geometry(6, 5, scale=2)
    weight = torch.randn(geom.H, geom.W, k, k, C, O, dtype=torch.float64)
    whole = meta_upscale_weights(x, weight, scale=2, layout="hwkkco", periodic_lon=True)
    region = Region((6, 5), (12, 10), in_rows=(1, 5), in_cols=(0, 5), out_rows=(4, 8),
                    out_cols=(0, 10))  # fmt: skip
    part = meta_upscale_weights(
        x[:, :, 1:5], weight[4:8], scale=2, region=region, layout="hwkkco", periodic_lon=True
    )
    torch.testing.assert_close(part, whole[:, :, 4:8])


def test_nan_in_one_weight_stays_in_its_pixel():
    # NaN is not looked for (a full pass over the weights); it must stay where it belongs.
    x = torch.randn(1, 2, 4, 4)
    geom = build_geometry(4, 4, scale=2)
    weight = torch.randn(geom.H * geom.W, 9 * 2 * 3)
    weight[5 * geom.W + 3, 1] = float("nan")  # c=0, ky=0, kx=0, o=1 (reads x[0, 0, 1, 0])
    y = meta_upscale_weights(x, weight, scale=2, out_channels=3)
    assert torch.isnan(y[0, 1, 5, 3]) and torch.isnan(y).sum() == 1


def test_exported_from_metasr():
    assert metasr.meta_upscale_weights is meta_upscale_weights
    assert importlib.import_module("metasr.ops").meta_upscale_weights is meta_upscale_weights
    assert op.meta_upscale is metasr.meta_upscale


# --------------------------------------------------------------------------- bad input


def _ok_args():
    x = torch.randn(1, 2, 4, 5)
    geom = build_geometry(4, 5, scale=2)
    return x, torch.randn(geom.H * geom.W, 9 * 2 * 3), geom


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda x, w: (x[0], w, {}), "4-D"),
        (lambda x, w: (x.long(), w, {}), "floating-point"),
        (lambda x, w: (x, w.double(), {}), "weight is torch.float64 but x is torch.float32"),
        (lambda x, w: (x, w.to("meta"), {}), "weight is on meta but x is on cpu"),
        (lambda x, w: (x, w, {"layout": "hwcko"}), "layout must be one of"),
        (lambda x, w: (x, w[:-1], {}), r"\(80, \.\.\.\) for the 8x10 output"),
        (lambda x, w: (x, w[None], {}), "layout='flat': weight must be"),
        (lambda x, w: (x, w, {"out_channels": None}), "give out_channels= or kernel_size="),
        (lambda x, w: (x, w[:, :-1], {}), "not a multiple of Cin=2"),
        (lambda x, w: (x, w[:, :48], {}), r"not k\*k\*Cin\*Cout for any integer k"),  # k²=8
        (lambda x, w: (x, w[:, :24], {}), "kernel_size must be odd, got k=2"),  # k²=4
        (lambda x, w: (x, w, {"kernel_size": 5}), "means kernel_size=3"),
        (lambda x, w: (x, w, {"kernel_size": 4, "out_channels": None}), "must be odd, got 4"),
        (lambda x, w: (x, w[:, :50], {"kernel_size": 3, "out_channels": None}), "any integer Cout"),
        (lambda x, w: (x, w, {"out_channels": 0}), "positive integer"),
        (lambda x, w: (x, w, {"scale": 0.5}), "scale"),
        (lambda x, w: (x, w, {"scale": float("nan")}), "scale"),
        (lambda x, w: (x, w, {"scale": None, "size": (3, 10)}), "size"),
        (lambda x, w: (x, w, {"size": (8, 10)}), "exactly one of scale"),
    ],
)
def test_bad_input_flat(change, match):
    with pytest.raises(ValueError, match=match):
        _call_flat(change)


def _call_flat(change) -> None:
    """``meta_upscale_weights`` on good flat arguments with ``change`` applied."""
    x, w, _ = _ok_args()
    x, w, kw = change(x, w)
    meta_upscale_weights(x, w, **{"scale": 2, "out_channels": 3, **kw})


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda x, w: (x.numpy(), w, {}), "x must be a torch.Tensor"),
        (lambda x, w: (x, w.numpy(), {}), "weight must be a torch.Tensor"),
        (lambda x, w: (x, w, {"layout": 1}), "layout must be a string"),
        (lambda x, w: (x, w, {"out_channels": 2.5}), "out_channels must be a positive integer"),
        (lambda x, w: (x, w, {"scale": "2"}), "scale must be a real number"),
        (lambda x, w: (x, w, {"periodic_lon": 1}), "periodic_lon must be True or False"),
    ],
)
def test_wrong_types_flat(change, match):
    with pytest.raises(TypeError, match=match):
        _call_flat(change)


@pytest.mark.parametrize(
    ("shape", "kw", "match"),
    [
        ((8, 10, 3, 3, 2), {}, r"\(H, W, k, k, Cin, Cout\) = \(8, 10, k, k, 2, Cout\)"),
        ((8, 9, 3, 3, 2, 3), {}, r"= \(8, 10, k, k, 2, Cout\)"),
        ((8, 10, 3, 3, 4, 3), {}, r"2-channel x"),
        ((8, 10, 3, 5, 2, 3), {}, "must be square, got 3x5"),
        ((8, 10, 2, 2, 2, 3), {}, "must be odd, got k=2"),
        ((8, 10, 3, 3, 2, 3), {"out_channels": 4}, "out_channels=4 was given but"),
        ((8, 10, 3, 3, 2, 3), {"kernel_size": 5}, "kernel_size=5 was given but"),
        ((8, 10, 3, 3, 2, 0), {}, "must not be empty"),
    ],
)
def test_bad_input_hwkkco(shape, kw, match):
    x = torch.randn(1, 2, 4, 5)
    with pytest.raises(ValueError, match=match):
        meta_upscale_weights(x, torch.randn(shape), scale=2, layout="hwkkco", **kw)


# --------------------------------------------------------------------------- weights_first


class DeepPredictor(nn.Module):
    """Linear-Tanh-Linear-Sigmoid: the last layer is not linear (no features-first identity)."""

    def __init__(self, cin: int, cout: int, k: int, hidden: int = 8) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = cin, cout, k
        self.pos_encoding, self.num_pos = "asymmetric", 4
        self.net = nn.Sequential(
            nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, k * k * cin * cout), nn.Sigmoid()
        )

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return self.net(pos) - 0.5


@pytest.mark.parametrize("call", [{"scale": 2.3}, {"scale": (1.5, 4)}, {"size": (19, 23)}])
@pytest.mark.parametrize("periodic", [False, True], ids=["zeros", "periodic"])
@pytest.mark.parametrize("blocks", ["one_row", "default"])
def test_weights_first_matches_predict_then_contract(call, periodic, blocks, monkeypatch):
    if blocks == "one_row":
        monkeypatch.setattr(wmod, "MAX_BLOCK_BYTES", 1)
    C, O, k = 3, 2, 3
    torch.manual_seed(0)
    phi = DeepPredictor(C, O, k).double()
    x = torch.randn(2, C, 5, 7, dtype=torch.float64, requires_grad=True)
    geom = build_geometry(5, 7, periodic_lon=periodic, **call)
    got = weights_first(x, phi, geom, k, C, O)
    # The naive formula: all weights at once, then the einsum.
    w6 = phi(torch.as_tensor(geom.positions())).view(geom.H, geom.W, C, k, k, O)
    want = reference(x, w6, geom, periodic)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    dy = torch.randn_like(want)
    params = [x, *phi.parameters()]
    for g, r in zip(
        torch.autograd.grad(got, params, dy), torch.autograd.grad(want, params, dy), strict=True
    ):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_weights_first_float32_and_inference(one_row_blocks):
    C, O, k = 4, 3, 5
    torch.manual_seed(0)
    phi = DeepPredictor(C, O, k)
    x = torch.randn(2, C, 6, 5, requires_grad=True)
    geom = build_geometry(6, 5, scale=(3.9, 2))
    got = weights_first(x, phi, geom, k, C, O)
    with torch.no_grad():
        assert torch.equal(weights_first(x, phi, geom, k, C, O), got.detach())
    phi64 = DeepPredictor(C, O, k).double()
    phi64.load_state_dict(phi.state_dict())
    x64 = x.detach().double().requires_grad_(True)
    w6 = phi64(torch.as_tensor(geom.positions())).view(geom.H, geom.W, C, k, k, O)
    want = reference(x64, w6, geom, False)
    assert_close_to(got, want, "output")
    dy = torch.randn_like(want)
    dx, dw = torch.autograd.grad(got, (x, phi.net[2].weight), dy.float())
    dx_want, dw_want = torch.autograd.grad(want, (x64, phi64.net[2].weight), dy)
    assert_close_to(dx, dx_want, "dx")
    assert_close_to(dw, dw_want, "d last-layer weight")


def test_weights_first_float32_predictor_with_bfloat16_features(one_row_blocks):
    # The predictor runs in its own dtype (positions in float32), the contraction in x's.
    C, O, k = 3, 2, 3
    torch.manual_seed(0)
    phi = DeepPredictor(C, O, k)
    x = torch.randn(1, C, 5, 4).bfloat16().requires_grad_(True)
    geom = build_geometry(5, 4, scale=(2.3, 1.5))
    got = weights_first(x, phi, geom, k, C, O)
    assert got.dtype == torch.bfloat16
    got.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and phi.net[0].weight.grad.dtype == torch.float32
    phi64 = DeepPredictor(C, O, k).double()
    phi64.load_state_dict(phi.state_dict())
    w6 = phi64(torch.as_tensor(geom.positions())).view(geom.H, geom.W, C, k, k, O)
    assert_close_to(got, reference(x.detach().double(), w6, geom, False), "output")


def test_weights_first_predictor_with_the_wrong_width():
    phi = DeepPredictor(3, 2, 3)
    geom = build_geometry(4, 4, scale=2)
    with pytest.raises(
        ValueError, match=r"returned \(\d+, 54\) for \d+ positions, expected \(\d+, 36\)"
    ):
        weights_first(torch.randn(1, 2, 4, 4), phi, geom, 3, 2, 2)


# --------------------------------------------------------------------------- memory bounds

# Peak RSS of one step in a fresh process under RLIMIT_DATA (never RLIMIT_AS: CUDA builds of
# torch reserve address space at import), measured as metasr bench does (VmHWM after reset).
_MEMORY_SCRIPT = """
import resource, sys, json
import torch
torch.set_num_threads(1)
import metasr
from metasr.bench import _reset_rss_peak, _rss_peak_bytes
from metasr.geometry import build_geometry
from metasr.ops.meta_upscale.weights import meta_upscale_weights, weights_first
from metasr.ops.memory import _status_kib

{setup}
# Warm up (autograd engine, thread pools, allocator) on a tiny call, outside the measurement.
_xw = torch.randn(1, C, 3, 3, requires_grad=True)
_w = torch.randn(36, k * k * C * O, requires_grad=True)
meta_upscale_weights(_xw, _w, scale=2, out_channels=O).sum().backward()
weights_first(_xw, lambda p: _w[: len(p)] * p[:, :1], build_geometry(3, 3, scale=2), k, C, O,
              params=[_w]).sum().backward()
del _xw, _w
_soft = _status_kib("VmData") + {headroom}
resource.setrlimit(resource.RLIMIT_DATA, (_soft, resource.RLIM_INFINITY))
_reset_rss_peak()
base = _rss_peak_bytes()
{step}
print(json.dumps({{"peak": _rss_peak_bytes() - base, "full": full}}))
"""


def _peak(setup: str, step: str, headroom: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = str(Path(metasr.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    code = _MEMORY_SCRIPT.format(
        setup=textwrap.dedent(setup), step=textwrap.dedent(step), headroom=headroom
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and RLIMIT_DATA")
def test_weights_first_memory_stays_far_below_the_full_weights():
    # 256x1024 output, 288 weights per pixel: the full weight tensor is 302 MB (float32); the
    # process may allocate only 120 MiB more than it holds, so the weights cannot all exist.
    setup = """
    C, O, k = 8, 4, 3
    torch.manual_seed(0)
    phi = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(),
                              torch.nn.Linear(16, k * k * C * O), torch.nn.Sigmoid())
    x = torch.randn(1, C, 32, 64, requires_grad=True)
    geom = build_geometry(32, 64, size=(256, 1024))
    dy = torch.randn(1, O, 256, 1024)
    full = geom.H * geom.W * k * k * C * O * 4
    """
    step = """
    y = weights_first(x, phi, geom, k, C, O)
    y.backward(dy)
    assert x.grad is not None and all(p.grad is not None for p in phi.parameters())
    """
    out = _peak(setup, step, headroom=120 << 20)
    assert out["full"] > 300e6
    assert out["peak"] < out["full"] / 4, out  # measured 36-38 MB


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and RLIMIT_DATA")
def test_meta_upscale_weights_does_not_unfold_at_output_resolution():
    # N=4, Cout=1: x unfolded at output resolution (N·k²·Cin·H·W floats, 151 MB) would be 4x the
    # weights. The process may allocate only 100 MiB beyond what it holds, so forward and
    # backward (weight gradient 38 MB included) must get by without it.
    setup = """
    N, C, O, k = 4, 8, 1, 3
    torch.manual_seed(0)
    x = torch.randn(N, C, 32, 64, requires_grad=True)
    geom = build_geometry(32, 64, size=(256, 512))
    weight = torch.randn(geom.H * geom.W, k * k * C * O, requires_grad=True)
    dy = torch.randn(N, O, 256, 512)
    full = N * k * k * C * geom.H * geom.W * 4  # the unfolded x
    """
    step = """
    y = meta_upscale_weights(x, weight, size=(256, 512), out_channels=O)
    y.backward(dy)
    assert x.grad is not None and weight.grad is not None
    """
    headroom = 100 << 20
    out = _peak(setup, step, headroom=headroom)
    assert out["full"] > headroom  # the unfolded x could not even be allocated
    # Measured 53-87 MB (the weight gradient, 25 MB blocks and the allocator's slack).
    assert out["peak"] < out["full"] * 3 / 4, out


# --------------------------------------------------------------------------- metasr bench


def test_bench_deep_predictor_variants(monkeypatch):
    from metasr import bench

    cfg = bench.BenchConfig(
        (2, 3, 6, 6), {"scale": (2.5, 3)}, 2, ("fwd", "fwdbwd"), "tiny deep", 3, 8, "deep"
    )
    monkeypatch.setitem(bench.CONFIGS, "tiny-deep", cfg)
    assert bench.CONFIGS["deep-phi"].predictor == "deep"
    variants = ("im2col", "weights_first", "precomputed_weights", "torch:per_phase")
    for backend in (*variants, "torch:features_first"):
        assert bench.is_known_variant(backend, ("im2col", "torch"))
        for mode in cfg.modes:
            spec = {"config": "tiny-deep", "mode": mode, "backend": backend, "dtype": "float32",
                    "device": "cpu", "min_runs": 1, "max_runs": 1, "min_time_s": 0.0,
                    "slow_s": 1e9}  # fmt: skip
            r = bench._worker(spec)
            if backend == "torch:features_first":  # needs a linear last layer: one line
                assert not r["ok"] and "linear" in r["error"], r
            else:
                assert r["ok"] and r["median_ms"] > 0, r
