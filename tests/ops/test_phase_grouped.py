"""The torch backend's phase-grouped order (``ops/meta_upscale/phase_grouped.py``, issue 27)
against the spec (``naive``) in float64: forward and the gradients of ``x`` and every predictor
parameter, at the awkward scales the other backend tests use, with periodic longitude, regions
(tiled inference) and coordinate geometry; gradcheck on a tiny input; and the dispatch's choice.
Outputs are NaN-poisoned (``conftest.py``), so an output pixel the order skips fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import metasr
from helpers import assert_matches_spec as check
from helpers import randomize_parameters, region_at_3_7, reordered_coordinate_grid
from metasr.geometry import build_geometry
from metasr.ops.meta_upscale.naive import TOLERANCES as NAIVE_TOL
from metasr.ops.meta_upscale.params import MLPParams
from metasr.ops.meta_upscale.phase_grouped import axis_classes, meta_upscale_grouped
from metasr.ops.meta_upscale.predictor import predictor_params
from metasr.ops.meta_upscale.tables import phases, restore_order
from metasr.ops.meta_upscale.torch_chunked import TOLERANCES, _auto_order, meta_upscale_torch
from tests.ops.test_predictor import make as make_predictor

SCALES = [
    pytest.param({"scale": 2}, id="x2"),
    pytest.param({"scale": 3}, id="x3"),
    pytest.param({"scale": 1.1}, id="x1.1"),
    pytest.param({"scale": 2.3}, id="x2.3"),
    pytest.param({"scale": 3.7}, id="x3.7"),
    pytest.param({"scale": (2.37, 3.13)}, id="2.37x3.13"),
    pytest.param({"scale": (1.13, 3.91)}, id="1.13x3.91"),
    pytest.param({"scale": (1.5, 4)}, id="1.5x4"),
    pytest.param({"scale": (3.9, 2)}, id="3.9x2"),
    pytest.param({"size": (17, 31)}, id="size17x31"),
    pytest.param({"scale": (721 / 96, 10)}, id="seed721/96x10"),
]


def pos2weight(cin: int = 3, cout: int = 2, k: int = 3, hidden: int = 16) -> metasr.Pos2Weight:
    torch.manual_seed(0)
    return randomize_parameters(metasr.Pos2Weight(cin, cout, k, hidden=hidden).double())


def grouped(x: torch.Tensor, phi, **call) -> torch.Tensor:
    """The grouped order forced, through the torch backend (as the dispatch runs it)."""
    geom = build_geometry(x.shape[2], x.shape[3], pos_encoding=phi.pos_encoding, **call)
    y = meta_upscale_torch(x, predictor_params(phi, x.dtype), geom, order="grouped")
    return restore_order(y, geom)


@pytest.mark.parametrize("periodic_lon", [False, True], ids=["zero-pad", "periodic"])
@pytest.mark.parametrize("call", SCALES)
def test_float64_forward_and_grads_match_spec(call, periodic_lon):
    phi = pos2weight()
    w = 2 if call.get("scale") == (721 / 96, 10) else 6
    x = torch.randn(2, 3, 5, w, dtype=torch.float64, requires_grad=True)
    ref = metasr.meta_upscale(x, phi, backend="naive", periodic_lon=periodic_lon, **call)
    out = grouped(x, phi, periodic_lon=periodic_lon, **call)
    check(out, ref, x, phi, f"{call} periodic={periodic_lon}: ")


@pytest.mark.parametrize("k", [1, 5])
def test_kernel_sizes(k):
    phi = pos2weight(4, 3, k=k)
    x = torch.randn(1, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    ref = metasr.meta_upscale(x, phi, backend="naive", scale=(2.3, 3.7))
    check(grouped(x, phi, scale=(2.3, 3.7)), ref, x, phi, f"k={k}: ")


@pytest.mark.parametrize("kind", ["gelu3", "fourier", "headed", "general"])
def test_general_predictors(kind):
    # The order needs only the predicted weights: any predictor runs through it.
    phi = make_predictor(kind, 3, 2)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    ref = metasr.meta_upscale(x, phi, backend="naive", scale=3.7)
    check(grouped(x, phi, scale=3.7), ref, x, phi, f"{kind}: ")


@pytest.mark.parametrize("periodic_lon", [False, True], ids=["zero-pad", "periodic"])
def test_region_matches_whole_image(periodic_lon):
    # Tiled inference: a block of output rows from its LR window equals that block of the
    # whole image's output (and its gradients those of the window).
    phi = pos2weight()
    x = torch.randn(1, 3, 8, 7, dtype=torch.float64)
    region = region_at_3_7(periodic_lon)
    cols, out_cols = region.in_cols, region.out_cols
    win = x[:, :, 1:6, cols[0] : cols[1]].clone().requires_grad_()
    whole = metasr.meta_upscale(x, phi, backend="naive", scale=3.7, periodic_lon=periodic_lon)
    part = grouped(win, phi, scale=3.7, region=region, periodic_lon=periodic_lon)
    rtol, atol = TOLERANCES[torch.float64]
    torch.testing.assert_close(
        part, whole[:, :, 8:18, out_cols[0] : out_cols[1]], rtol=rtol, atol=atol
    )
    ref = metasr.meta_upscale(
        win, phi, backend="naive", scale=3.7, region=region, periodic_lon=periodic_lon
    )
    check(part, ref, win, phi, f"region periodic={periodic_lon}: ")


def test_coordinate_geometry_reordered_target():
    phi = pos2weight()
    coords = reordered_coordinate_grid()
    x = torch.randn(1, 3, 7, 8, dtype=torch.float64, requires_grad=True)
    ref = metasr.meta_upscale(x, phi, backend="naive", coords=coords, periodic_lon=True)
    out = grouped(x, phi, coords=coords, periodic_lon=True)
    check(out, ref, x, phi, "coords: ")


def test_gradcheck_float64():
    phi = pos2weight(2, 2, hidden=4)
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    geom = build_geometry(3, 4, scale=(2.3, 1.7), pos_encoding="asymmetric")

    def f(x, *ps):
        mp = MLPParams(*ps, kernel_size=3, in_channels=2, out_channels=2)
        return meta_upscale_grouped(x, mp, geom)

    inputs = (x, *[p.detach().clone().requires_grad_() for p in phi.parameters()])
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


def test_float32_matches_float64_spec():
    phi = pos2weight(8, 3)
    x64 = torch.randn(2, 8, 9, 7, dtype=torch.float64)
    ref = metasr.meta_upscale(x64, phi, backend="naive", scale=(2.3, 3.7))
    out = grouped(x64.float(), phi.float(), scale=(2.3, 3.7))
    rtol, atol = TOLERANCES[torch.float32]
    assert NAIVE_TOL[torch.float32] == (rtol, atol)
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol * ref.abs().max().item())


def test_classes_of_a_rational_scale():
    # 3.7 = 37/10: the LR row i' mod 10 decides its phases, so 10 classes of runs of 3 or 4.
    geom = build_geometry(40, 40, scale=3.7, pos_encoding="asymmetric")
    first, phase = phases(geom.row_off)
    cl = axis_classes(geom.row_idx, phase)
    assert len(first) == 37 and cl.count == 10
    assert sorted(len(p) for p in cl.phase) == [3] * 3 + [4] * 7
    assert sorted(np.concatenate(cl.lr).tolist()) == list(range(40))
    for lr in cl.lr:
        assert len(set((lr % 10).tolist())) == 1


@pytest.mark.parametrize(
    ("shape", "scale", "order"),
    [
        ((1, 64, 128, 128), 4, "per_phase"),
        ((1, 64, 128, 128), 2, "per_phase"),
        ((1, 64, 128, 128), 3.7, "grouped"),
        ((1, 64, 128, 128), 2.3, "grouped"),
        ((16, 64, 48, 48), 3.7, "grouped"),
        # 237 × 314 pairs ≈ 0.6 per output pixel: predicting them costs more than Z.
        ((1, 64, 128, 128), (2.37, 3.13), "features_first"),
    ],
)
def test_dispatch_counts_cost(shape, scale, order):
    phi = metasr.Pos2Weight(64, 3, 3)
    params = MLPParams.from_module(phi, torch.float32)
    geom = build_geometry(shape[2], shape[3], scale=scale, pos_encoding="asymmetric")
    Dv, Dh = len(phases(geom.row_off)[0]), len(phases(geom.col_off)[0])
    assert _auto_order(params, geom, Dv, Dh, shape[0]) == order


def test_public_call_takes_the_grouped_order():
    # Through metasr.meta_upscale (auto dispatch) at a many-phase scale, float64, against the
    # features-first order (itself tested against the spec; the spec is too slow at this size).
    phi = pos2weight(16, 3, hidden=64)
    x = torch.randn(1, 16, 64, 64, dtype=torch.float64, requires_grad=True)
    geom = build_geometry(64, 64, scale=3.7, pos_encoding="asymmetric")
    params = MLPParams.from_module(phi, torch.float64)
    assert _auto_order(params, geom, 37, 37, 1) == "grouped"
    ref = meta_upscale_torch(x, params, geom, order="features_first")
    check(metasr.meta_upscale(x, phi, scale=3.7), ref, x, phi, "auto: ")
