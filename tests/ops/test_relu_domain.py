"""Linear-ReLU-Linear restricted to a call's positions (``ops/meta_upscale/relu_domain.py``,
issue 27): the unit classification against brute force, the rewritten predictor equal to the
original at every position, and the torch backend (which now runs the restricted predictor in
every order) against the spec in float64, forward and the gradients of ``x`` and every predictor
parameter, at awkward scales, with periodic longitude, regions and a coordinate grid.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import metasr
from helpers import assert_matches_spec as check
from helpers import randomize_parameters, reordered_coordinate_grid
from metasr.geometry import Region, build_geometry
from metasr.ops.meta_upscale.params import MLPParams
from metasr.ops.meta_upscale.phase_grouped import pair_weights
from metasr.ops.meta_upscale.relu_domain import restrict_to_domain, unit_states
from metasr.ops.meta_upscale.tables import phases, restore_order
from metasr.ops.meta_upscale.torch_chunked import TOLERANCES, _auto_order, meta_upscale_torch

SCALES = [
    pytest.param({"scale": 3}, id="x3"),
    pytest.param({"scale": 2.3}, id="x2.3"),
    pytest.param({"scale": (2.37, 3.13)}, id="2.37x3.13"),
    pytest.param({"scale": (1.13, 3.91)}, id="1.13x3.91"),
    pytest.param({"scale": (3.9, 2)}, id="3.9x2"),
    pytest.param({"size": (17, 31)}, id="size17x31"),
]


def mixed_phi(cin: int = 3, cout: int = 2, hidden: int = 24) -> metasr.Pos2Weight:
    """Random float64 predictor with units that are off everywhere (bias -9), on everywhere
    (bias +9) and that switch (random), so the restriction both drops and merges units."""
    torch.manual_seed(0)
    phi = randomize_parameters(metasr.Pos2Weight(cin, cout, 3, hidden=hidden).double())
    with torch.no_grad():
        phi.meta_block[0].bias[:6] = -9.0
        phi.meta_block[0].bias[6:12] = 9.0
    return phi


def restricted(phi, geom) -> MLPParams:
    return restrict_to_domain(MLPParams.from_module(phi, torch.float64), geom)


@pytest.mark.parametrize("call", SCALES)
def test_units_classified_as_brute_force(call):
    phi = mixed_phi()
    geom = build_geometry(5, 6, pos_encoding="asymmetric", **call)
    on, switch = unit_states(MLPParams.from_module(phi, torch.float64), geom)
    lin = phi.meta_block[0]
    z = lin(torch.as_tensor(geom.positions())).detach().numpy()  # (H·W, hid)
    np.testing.assert_array_equal(on, (z > 0).all(0))
    np.testing.assert_array_equal(switch, (z > 0).any(0) & ~(z > 0).all(0))
    assert on[6:12].all() and not (on | switch)[:6].any()


@pytest.mark.parametrize("call", SCALES)
def test_restricted_predictor_equals_original_at_every_position(call):
    phi = mixed_phi()
    geom = build_geometry(5, 6, pos_encoding="asymmetric", **call)
    _, switch = unit_states(MLPParams.from_module(phi, torch.float64), geom)
    r = restricted(phi, geom)
    assert r.hidden == int(switch.sum()) + 2  # switching units, then Δv and Δh
    pos = torch.as_tensor(geom.positions())
    torch.testing.assert_close(r.predict(pos), phi(pos), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("encoding", ["asymmetric", "official"])
def test_all_on_all_off_and_nothing_to_drop(encoding):
    torch.manual_seed(3)
    phi = randomize_parameters(metasr.Pos2Weight(2, 2, 3, hidden=8, pos_encoding=encoding))
    phi = phi.double()
    geom = build_geometry(4, 5, scale=2.3, pos_encoding=encoding)
    pos = torch.as_tensor(geom.positions())
    with torch.no_grad():
        phi.meta_block[0].bias.fill_(-50.0)  # every unit off: one dummy unit, output b2
    r = restricted(phi, geom)
    assert r.hidden == 1
    torch.testing.assert_close(r.predict(pos), phi(pos), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        phi.meta_block[0].bias.fill_(50.0)  # every unit on: the two varying components only
    r = restricted(phi, geom)
    assert r.hidden == 2
    torch.testing.assert_close(r.predict(pos), phi(pos), rtol=1e-12, atol=1e-12)
    # Nothing to gain (every unit switches): the parameters themselves come back.
    p = MLPParams.from_module(phi, torch.float64)
    with torch.no_grad():
        phi.meta_block[0].weight.zero_()
        phi.meta_block[0].weight[:, 1 if encoding == "asymmetric" else 2] = 1.0
        phi.meta_block[0].bias.copy_(-torch.linspace(0.05, 0.9, 8, dtype=torch.float64))
    p = MLPParams.from_module(phi, torch.float64)
    assert restrict_to_domain(p, geom) is p


def run(x, phi, order, **call):
    geom = build_geometry(x.shape[2], x.shape[3], pos_encoding=phi.pos_encoding, **call)
    y = meta_upscale_torch(x, MLPParams.from_module(phi, x.dtype), geom, order=order)
    return restore_order(y, geom)


@pytest.mark.parametrize("order", ["features_first", "per_phase", "grouped"])
@pytest.mark.parametrize("periodic_lon", [False, True], ids=["zero-pad", "periodic"])
@pytest.mark.parametrize("call", SCALES)
def test_float64_forward_and_grads_match_spec(call, periodic_lon, order):
    phi = mixed_phi()
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    geom = build_geometry(5, 6, pos_encoding="asymmetric", periodic_lon=periodic_lon, **call)
    assert restricted(phi, geom).hidden < phi.hidden
    ref = metasr.meta_upscale(x, phi, backend="naive", periodic_lon=periodic_lon, **call)
    out = run(x, phi, order, periodic_lon=periodic_lon, **call)
    check(out, ref, x, phi, f"{order} {call} periodic={periodic_lon}: ")


def test_region_and_coordinates_match_spec():
    phi = mixed_phi()
    h, w = 8, 7
    region = Region((h, w), (29, 25), (1, 6), (1, 6), (8, 18), (8, 18))
    win = torch.randn(1, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    ref = metasr.meta_upscale(win, phi, backend="naive", scale=3.7, region=region)
    check(run(win, phi, "features_first", scale=3.7, region=region), ref, win, phi, "region: ")
    coords = reordered_coordinate_grid()
    x = torch.randn(1, 3, 7, 8, dtype=torch.float64, requires_grad=True)
    ref = metasr.meta_upscale(x, phi, backend="naive", coords=coords, periodic_lon=True)
    out = run(x, phi, "features_first", coords=coords, periodic_lon=True)
    check(out, ref, x, phi, "coords: ")


def test_float32_public_call_matches_float64_spec():
    phi = mixed_phi(8, 3)
    x = torch.randn(1, 8, 9, 7, dtype=torch.float64)
    ref = metasr.meta_upscale(x, phi, backend="naive", scale=(2.37, 3.13))
    out = metasr.meta_upscale(x.float(), phi.float(), scale=(2.37, 3.13), backend="torch")
    rtol, atol = TOLERANCES[torch.float32]
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol * ref.abs().max().item())


def test_pair_weights_unchanged():
    # The per-phase and grouped orders predict the pairs with the restricted predictor.
    phi = mixed_phi()
    geom = build_geometry(6, 6, scale=2.3, pos_encoding="asymmetric")
    rf, cf = phases(geom.row_off)[0], phases(geom.col_off)[0]
    like = torch.zeros((), dtype=torch.float64)
    a = pair_weights(restricted(phi, geom), geom, rf, cf, like)
    b = pair_weights(MLPParams.from_module(phi, torch.float64), geom, rf, cf, like)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_dispatch_sees_the_restricted_predictor():
    # The default predictor at its seeded initialisation keeps 104 of 256 units at 2.37×3.13
    # on 128² (benchmarks/relu_intervals.py); features-first stays the cheapest order there.
    torch.manual_seed(0)
    phi = metasr.Pos2Weight(64, 3, 3)
    geom = build_geometry(128, 128, scale=(2.37, 3.13), pos_encoding="asymmetric")
    r = restrict_to_domain(MLPParams.from_module(phi, torch.float32), geom)
    assert r.hidden == 104
    Dv, Dh = len(phases(geom.row_off)[0]), len(phases(geom.col_off)[0])
    assert _auto_order(r, geom, Dv, Dh, 1) == "features_first"
