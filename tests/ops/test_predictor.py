"""Weight predictors other than Linear-ReLU-Linear (issue 15): every path against the spec.

Predictors: a 3-layer GELU MLP and a Fourier-encoded MLP (both ``Pos2Weight`` options), a
hand-written module with ``head``/``body``, and one whose last layer is not linear. The spec
(``naive``) runs each of them as a whole (``phi(pos)`` per output pixel); the other paths are
compared with it in float64 (forward and the gradients of ``x`` and every parameter), float32
and float16/bfloat16 with each backend's ``TOLERANCES``.
"""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from torch import nn

import metasr
from helpers import randomize_parameters
from metasr.geometry import CoordinateGrid, Region, build_geometry

mu = importlib.import_module("metasr.ops.meta_upscale")
predictor = importlib.import_module("metasr.ops.meta_upscale.predictor")
torch_chunked = importlib.import_module("metasr.ops.meta_upscale.torch_chunked")
naive = importlib.import_module("metasr.ops.meta_upscale.naive")
im2col = importlib.import_module("metasr.ops.meta_upscale.im2col")
params_mod = importlib.import_module("metasr.ops.meta_upscale.params")
PredictorKind = predictor.PredictorKind

SCALES = [
    pytest.param({"scale": 1.1}, id="x1.1"),
    pytest.param({"scale": 2.3}, id="x2.3"),
    pytest.param({"scale": 3.7}, id="x3.7"),
    pytest.param({"scale": 3}, id="x3"),
    pytest.param({"scale": (1.5, 4)}, id="1.5x4"),
    pytest.param({"scale": (3.9, 2)}, id="3.9x2"),
    pytest.param({"size": (17, 31)}, id="size17x31"),
    pytest.param({"scale": (721 / 96, 10)}, id="seed721/96x10"),
]


def lr_width(call: dict) -> int:
    """LR width of the spec comparisons: narrower at the seed's ×10 columns (the loop spec's
    cost grows with the output; the irregular rows are what matters there)."""
    return 2 if call.get("scale") == (721 / 96, 10) else 6


TORCH_ORDERS = {
    "torch-auto": {},
    "torch-per_phase": {"order": "per_phase"},
    "torch-ff": {"order": "features_first"},
    "torch-wf": {"order": "weights_first"},
}
TOLERANCES = {
    "naive": naive.TOLERANCES,
    "im2col": im2col.TOLERANCES,
    **dict.fromkeys(["torch", *TORCH_ORDERS], torch_chunked.TOLERANCES),
}
LINEAR_HEAD_VARIANTS = ["im2col", *TORCH_ORDERS]


class HeadedPredictor(nn.Module):
    """A hand-written predictor with the documented ``head``/``body`` split: an encoding of
    its own (the position and its square), SiLU, LayerNorm (per row), then a linear head."""

    def __init__(self, cin: int, cout: int, k: int = 3, hidden: int = 8) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = cin, cout, k
        self.pos_encoding, self.num_pos = "asymmetric", 4
        self.body = nn.Sequential(
            _Square(), nn.Linear(8, hidden), nn.SiLU(), nn.LayerNorm(hidden), nn.Tanh()
        )
        self.head = nn.Linear(hidden, k * k * cin * cout)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(pos))


class _Square(nn.Module):
    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return torch.cat([pos, pos.square()], dim=-1)


class NonLinearLast(nn.Module):
    """A predictor whose last layer is not linear (``GENERAL``): Linear, Tanh, Linear, Tanh."""

    def __init__(self, cin: int, cout: int, k: int = 3, hidden: int = 8) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = cin, cout, k
        self.pos_encoding, self.num_pos = "asymmetric", 4
        self.net = nn.Sequential(
            nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, k * k * cin * cout), nn.Tanh()
        )

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return self.net(pos)


def make(kind: str, cin: int, cout: int, k: int = 3, hidden: int = 8, seed: int = 0) -> nn.Module:
    """A float64 predictor of ``kind`` with random (not default) parameters."""
    torch.manual_seed(seed)
    if kind == "gelu3":
        phi = metasr.Pos2Weight(cin, cout, k, hidden, hidden_layers=2, activation="gelu")
    elif kind == "fourier":
        phi = metasr.Pos2Weight(
            cin, cout, k, hidden, encoding="fourier", fourier_features=4, fourier_scale=0.5
        )
    elif kind == "headed":
        phi = HeadedPredictor(cin, cout, k, hidden)
    elif kind == "general":
        phi = NonLinearLast(cin, cout, k, hidden)
    else:
        raise AssertionError(kind)
    return randomize_parameters(phi.double())


LINEAR_HEAD_KINDS = ["gelu3", "fourier", "headed"]


def assert_matches(actual, expected, variant: str, what: str = "") -> None:
    """As ``tests/ops/test_meta_upscale.py``: ``atol`` scales with the reference's magnitude."""
    rtol, atol = TOLERANCES[variant][actual.dtype]
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(
        actual.double().cpu(),
        expected.double().cpu(),
        rtol=rtol,
        atol=atol * scale,
        msg=lambda m: f"{variant} {actual.dtype} {what}: {m}",
    )


def run(variant: str, x: torch.Tensor, phi: nn.Module, call: dict) -> torch.Tensor:
    """One backend through the public function, or the torch backend with an order forced."""
    if variant in TORCH_ORDERS:
        geom = build_geometry(x.shape[2], x.shape[3], pos_encoding=phi.pos_encoding, **call)
        params = predictor.predictor_params(phi, x.dtype)
        return torch_chunked.meta_upscale_torch(x, params, geom, **TORCH_ORDERS[variant])
    return mu.meta_upscale(x, phi, backend=variant, **call)


def grads(y: torch.Tensor, x: torch.Tensor, phi: nn.Module) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
    return list(torch.autograd.grad(y, [x, *phi.parameters()], dy))


def check_all(variants, x, phi, call, ref=None, x_ref=None, phi_ref=None) -> None:
    """Every variant's output and gradients against the spec (float64 unless given)."""
    x_ref = x if x_ref is None else x_ref
    phi_ref = phi if phi_ref is None else phi_ref
    ref = mu.meta_upscale(x_ref, phi_ref, backend="naive", **call) if ref is None else ref
    ref_grads = grads(ref, x_ref, phi_ref)
    names = ["x", *(n for n, _ in phi.named_parameters())]
    for variant in variants:
        out = run(variant, x, phi, call)
        assert out.shape == ref.shape and out.dtype == x.dtype
        assert_matches(out, ref, variant, "y")
        for name, g, g_ref in zip(names, grads(out, x, phi), ref_grads, strict=True):
            assert_matches(g, g_ref, variant, f"grad {name}")


# --------------------------------------------------------------------------- classification


def test_classification():
    assert predictor.classify_predictor(metasr.Pos2Weight(3, 2)) is PredictorKind.SEPARABLE
    for kind in LINEAR_HEAD_KINDS:
        assert predictor.classify_predictor(make(kind, 3, 2)) is PredictorKind.LINEAR_HEAD
    # relu with one hidden layer but an encoding in front is no longer separable
    fourier_relu = metasr.Pos2Weight(3, 2, encoding="fourier")
    assert predictor.classify_predictor(fourier_relu) is PredictorKind.LINEAR_HEAD
    assert predictor.classify_predictor(make("general", 3, 2)) is PredictorKind.GENERAL


def test_default_pos2weight_state_dict_and_init_unchanged():
    phi = metasr.Pos2Weight(3, 2, hidden=16)
    assert list(phi.state_dict()) == [
        "meta_block.0.weight",
        "meta_block.0.bias",
        "meta_block.2.weight",
        "meta_block.2.bias",
    ]
    assert [type(m) for m in phi.meta_block] == [nn.Linear, nn.ReLU, nn.Linear]
    assert phi.encoding is None and phi.head is phi.meta_block[2]
    # Same draws from the global RNG as the paper's module (the Fourier buffer has its own).
    torch.manual_seed(3)
    a = metasr.Pos2Weight(3, 2, hidden=16)
    torch.manual_seed(3)
    b = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 54))
    for p, q in zip(a.meta_block.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_options_build_the_documented_modules():
    phi = metasr.Pos2Weight(3, 2, hidden=16, hidden_layers=3, activation="silu")
    assert [type(m) for m in phi.meta_block] == [nn.Linear, nn.SiLU] * 3 + [nn.Linear]
    enc = metasr.Pos2Weight(3, 2, hidden=16, encoding="fourier", fourier_features=5)
    keys = list(enc.state_dict())
    assert keys[0] == "encoding.projection" and enc.encoding.projection.shape == (5, 4)
    assert enc.meta_block[0].in_features == 10
    # the projection is seeded: the same options give the same buffer, whatever the RNG state
    torch.manual_seed(123)
    again = metasr.Pos2Weight(3, 2, hidden=16, encoding="fourier", fourier_features=5)
    assert torch.equal(enc.encoding.projection, again.encoding.projection)
    # and it travels with the state_dict
    other = metasr.Pos2Weight(3, 2, hidden=16, encoding="fourier", fourier_features=5)
    with torch.no_grad():
        other.encoding.projection.mul_(2)
    other.load_state_dict(enc.state_dict())
    assert torch.equal(other.encoding.projection, enc.encoding.projection)
    pos = torch.rand(7, 4)
    torch.testing.assert_close(enc(pos), enc.head(enc.body(pos)))


class _PathSpy:
    """Records which strip-hidden class the features-first contraction was built with."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.used: list[str] = []
        for name in ("_SeparableHidden", "_BodyHidden"):
            cls = getattr(torch_chunked, name)
            spy = type(name, (cls,), {"__init__": self._init(cls, name)})
            monkeypatch.setattr(torch_chunked, name, spy)

    def _init(self, cls, name):
        used = self.used

        def __init__(obj, *args, **kwargs):
            used.append(name)
            cls.__init__(obj, *args, **kwargs)

        return __init__


def test_default_pos2weight_takes_the_separable_fast_path(monkeypatch):
    spy = _PathSpy(monkeypatch)
    chosen = []
    planning = importlib.import_module("metasr.ops.meta_upscale.planning")
    real = planning.select_backend

    def select(backend, x, params, geom, **kw):
        chosen.append(type(params).__name__)
        return real(backend, x, params, geom, **kw)

    monkeypatch.setattr(planning, "select_backend", select)
    x = torch.randn(1, 3, 5, 6)
    mu.meta_upscale(x, metasr.Pos2Weight(3, 2, hidden=8), scale=2.3, backend="torch")
    assert chosen == ["MLPParams"] and spy.used == ["_SeparableHidden"]
    mu.meta_upscale(x, make("gelu3", 3, 2).float(), scale=2.3, backend="torch")
    assert chosen[-1] == "LinearHeadParams" and spy.used[-1] == "_BodyHidden"


# --------------------------------------------------------------------------- against the spec


@pytest.mark.parametrize("call", SCALES)
@pytest.mark.parametrize("kind", LINEAR_HEAD_KINDS)
def test_float64_forward_and_grads_match_spec(kind, call):
    phi = make(kind, 3, 2)
    x = torch.randn(2, 3, 5, lr_width(call), dtype=torch.float64, requires_grad=True)
    check_all(LINEAR_HEAD_VARIANTS, x, phi, call)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("kind", LINEAR_HEAD_KINDS)
def test_kernel_sizes_channels_batch(kind, k):
    phi = make(kind, 4, 3, k=k, hidden=6)
    x = torch.randn(3, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    check_all(LINEAR_HEAD_VARIANTS, x, phi, {"scale": (2.5, 1.7)})


@pytest.mark.parametrize("variant", ["torch-per_phase", "torch-ff"])
@pytest.mark.parametrize("kind", LINEAR_HEAD_KINDS)
def test_gradcheck_float64(kind, variant):
    phi = make(kind, 1, 1, hidden=3)
    x = torch.randn(1, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    geom = build_geometry(3, 4, scale=(2.5, 1.5))
    base = predictor.predictor_params(phi, torch.float64)
    n_body = len(base.body.tensors)

    def f(x, *ts):
        # functional tensors, so gradcheck perturbs them as inputs
        p = params_mod.LinearHeadParams(
            base.body.with_tensors(ts[:n_body]), ts[n_body], ts[n_body + 1],
            base.kernel_size, base.in_channels, base.out_channels, base.body_width,
        )  # fmt: skip
        return torch_chunked.meta_upscale_torch(x, p, geom, **TORCH_ORDERS[variant])

    tensors = [
        t.detach().clone().requires_grad_(t.requires_grad) for t in (*base.body.tensors,)
    ] + [base.w2.detach().clone().requires_grad_(), base.b2.detach().clone().requires_grad_()]
    assert torch.autograd.gradcheck(f, (x, *tensors), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("call", [SCALES[1], SCALES[3], SCALES[5], SCALES[6]])
@pytest.mark.parametrize("kind", LINEAR_HEAD_KINDS)
def test_float32_matches_float64_spec(kind, call):
    phi64 = make(kind, 5, 3, hidden=16)
    x64 = torch.randn(2, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    phi32 = copy.deepcopy(phi64).float()
    x32 = x64.detach().float().requires_grad_()
    check_all(LINEAR_HEAD_VARIANTS, x32, phi32, call, x_ref=x64, phi_ref=phi64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", LINEAR_HEAD_KINDS)
def test_half_precision_matches_float64_spec(kind, dtype):
    # The spec runs in float64 on the same (already rounded) inputs and parameters. These
    # bodies are smooth (GELU, sin/cos, SiLU, LayerNorm, tanh), so unlike ReLU's first layer
    # every gradient is compared.
    phi = make(kind, 4, 3, hidden=16).to(dtype)
    x = torch.randn(2, 4, 6, 7).to(dtype).requires_grad_()
    phi64 = copy.deepcopy(phi).double()
    x64 = x.detach().double().requires_grad_()
    variants = ["naive", *LINEAR_HEAD_VARIANTS]
    check_all(variants, x, phi, {"scale": (2.3, 3.0)}, x_ref=x64, phi_ref=phi64)


def test_autocast_reaches_the_body_parameters():
    phi = make("gelu3", 4, 3).float()
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    ref = mu.meta_upscale(x, phi, scale=2.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mu.meta_upscale(x, phi, scale=2.5)
    assert y.dtype == torch.bfloat16
    assert_matches(y, ref.detach(), "torch", "autocast y")
    y.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in phi.parameters())


@pytest.mark.parametrize("call", [SCALES[1], SCALES[4], SCALES[7]])
@pytest.mark.parametrize("kind", LINEAR_HEAD_KINDS)
def test_periodic_lon_matches_spec(kind, call):
    phi = make(kind, 2, 3)
    x = torch.randn(2, 2, 4, lr_width(call), dtype=torch.float64, requires_grad=True)
    check_all(LINEAR_HEAD_VARIANTS, x, phi, {**call, "periodic_lon": True})


@pytest.mark.parametrize("r_h", [1, 3])
def test_periodic_rolling_the_input_rolls_the_output(r_h):
    phi = make("gelu3", 2, 3)
    x = torch.randn(1, 2, 4, 6, dtype=torch.float64)
    call = {"scale": (2.5, r_h), "backend": "torch", "periodic_lon": True}
    y = mu.meta_upscale(x, phi, **call)
    for s in (1, 5, -3):
        ys = mu.meta_upscale(torch.roll(x, s, dims=3), phi, **call)
        torch.testing.assert_close(ys, torch.roll(y, r_h * s, dims=3), rtol=1e-12, atol=1e-12)


def test_coordinates_match_spec():
    phi = make("fourier", 2, 3)
    coords = CoordinateGrid([50.0, 10.0, -30.0], [0.0, 90.0, 180.0, 270.0], [50, 30, 10, -10, -30],
                            [-180 + 30.0 * i for i in range(12)])  # fmt: skip
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    call = {"coords": coords, "periodic_lon": True}
    check_all(["im2col", "torch"], x, phi, call)


def test_region_matches_the_whole_image():
    phi = make("headed", 2, 3)
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64)
    whole = mu.meta_upscale(x, phi, scale=2.3, backend="naive")
    geom = build_geometry(6, 5, scale=2.3)
    # the LR rows that output rows 4..9 read, with the 3x3 window's neighbours
    rows = (max(0, int(geom.row_idx[4]) - 1), min(6, int(geom.row_idx[9]) + 2))
    region = Region((6, 5), (geom.H, geom.W), in_rows=rows, in_cols=(0, 5), out_rows=(4, 10),
                    out_cols=(0, geom.W))  # fmt: skip
    part = x[:, :, rows[0] : rows[1]]
    for backend in ("torch", "im2col"):
        got = mu.meta_upscale(part, phi, scale=2.3, region=region, backend=backend)
        torch.testing.assert_close(got, whole[:, :, 4:10], rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- other paths


class BlockPredictor(nn.Module):
    """The ``meta_block`` convention without ``head``/``body``: ``phi(p) = meta_block(p)``,
    here with a last layer without bias."""

    def __init__(self, cin: int, cout: int, k: int = 3, hidden: int = 8) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = cin, cout, k
        self.pos_encoding, self.num_pos = "asymmetric", 4
        self.meta_block = nn.Sequential(
            nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, k * k * cin * cout, bias=False)
        )

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return self.meta_block(pos)


def test_meta_block_convention_and_a_head_without_bias():
    torch.manual_seed(0)
    phi = BlockPredictor(3, 2).double()
    assert predictor.classify_predictor(phi) is PredictorKind.LINEAR_HEAD
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    for call in ({"scale": 2.3}, {"scale": (1.5, 4)}):
        check_all(LINEAR_HEAD_VARIANTS, x, phi, call)


def test_general_predictor_runs_in_the_spec_im2col_and_per_phase():
    phi = make("general", 3, 2)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    for call in ({"scale": 2.3}, {"scale": (1.5, 4)}):
        check_all(["im2col"], x, phi, call)
    # integer scales: per phase, through the public function (auto: torch)
    check_all(["torch-auto", "torch-per_phase", "torch"], x, phi, {"scale": 3})


def test_general_predictor_routes_to_grouped_then_weights_first(monkeypatch):
    # Many distinct offsets: the phase-grouped order is cheaper and taken; where it is not
    # preferred, weights-first (the torch backend's only call site of it) runs instead.
    calls = []

    def fake(x, params, geom):
        calls.append(type(params).__name__)
        return im2col.meta_upscale_im2col(x, params, geom)

    monkeypatch.setattr(torch_chunked, "_weights_first", fake)
    phi = make("general", 3, 2)
    x = torch.randn(1, 3, 5, 6, dtype=torch.float64)
    spec = mu.meta_upscale(x, phi, scale=2.3, backend="naive")
    torch.testing.assert_close(mu.meta_upscale(x, phi, scale=2.3, backend="torch"), spec)
    assert calls == []  # the grouped order ran
    monkeypatch.setattr(torch_chunked, "prefer_grouped", lambda *a, **k: False)
    y = mu.meta_upscale(x, phi, scale=2.3, backend="torch")
    assert calls == ["ModuleParams"]
    torch.testing.assert_close(y, spec)
    with pytest.raises(ValueError, match="linear"):
        run("torch-ff", x, phi, {"scale": 2.3})


@pytest.mark.parametrize("call", SCALES)
def test_general_predictor_weights_first_matches_spec(call):
    # Many distinct offsets: the torch backend runs weights_first (ops/meta_upscale/weights.py)
    # through the public function; float64 output and every gradient against the spec.
    phi = make("general", 3, 2)
    x = torch.randn(2, 3, 4, lr_width(call), dtype=torch.float64, requires_grad=True)
    check_all(["torch", "torch-wf"], x, phi, call)


def test_general_predictor_weights_first_float32_periodic_and_coords():
    phi = make("general", 3, 2)
    x = torch.randn(1, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    ref = mu.meta_upscale(x, phi, scale=(2.3, 3), backend="naive", periodic_lon=True)
    out = mu.meta_upscale(x, phi, scale=(2.3, 3), backend="torch", periodic_lon=True)
    assert_matches(out, ref, "torch", "periodic y")
    for a, b in zip(grads(out, x, phi), grads(ref, x, phi), strict=True):
        assert_matches(a, b, "torch", "periodic grad")
    x32, phi32 = x.detach().float().requires_grad_(), make("general", 3, 2).float()
    ref32 = mu.meta_upscale(x.detach(), make("general", 3, 2), scale=2.7, backend="naive")
    out32 = mu.meta_upscale(x32, phi32, scale=2.7, backend="torch")
    assert out32.dtype == torch.float32
    assert_matches(out32, ref32, "torch", "float32 y")
    coords = CoordinateGrid(
        [50.0, 10.0, -30.0, -50.0, -70.0],
        [60.0 * i for i in range(6)],
        [50, 30, 10, -10, -30, -50, -60],
        [-180 + 30.0 * i for i in range(12)],
    )
    ref_c = mu.meta_upscale(x, phi, coords=coords, backend="naive", periodic_lon=True)
    out_c = mu.meta_upscale(x, phi, coords=coords, backend="torch", periodic_lon=True)
    assert_matches(out_c, ref_c, "torch", "coords y")


def test_triton_refuses_other_predictors_with_a_reason():
    from metasr.ops.meta_upscale.dispatch import BACKENDS

    x = torch.randn(1, 3, 5, 6)
    geom = build_geometry(5, 6, scale=2.3)
    for kind in ("gelu3", "general"):
        params = predictor.predictor_params(make(kind, 3, 2).float(), torch.float32)
        reasons = BACKENDS["triton"].extra_reasons(x, params, geom)
        assert any("Linear-ReLU-Linear" in r for r in reasons)
        with pytest.raises(metasr.BackendUnavailableError, match="triton"):
            mu.meta_upscale(x, make(kind, 3, 2).float(), scale=2.3, backend="triton")


def test_torch_compile_refuses_other_predictors():
    phi = make("gelu3", 3, 2).float()

    def f(x):
        return mu.meta_upscale(x, phi, scale=2.3)

    with pytest.raises(Exception, match="Linear, ReLU, Linear"):
        torch.compile(f, backend="eager", fullgraph=True)(torch.randn(1, 3, 4, 4))


@pytest.mark.parametrize("kind", ["gelu3", "general"])
def test_torch_export(kind):
    phi = make(kind, 2, 3).float()

    class Up(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.phi = phi

        def forward(self, x):
            return mu.meta_upscale(x, self.phi, scale=2.3)

    x = torch.randn(2, 2, 3, 4)
    program = torch.export.export(Up(), (x,))
    want = mu.meta_upscale(x, phi, backend="naive", scale=2.3)
    torch.testing.assert_close(program.module()(x), want, rtol=1e-5, atol=1e-5)


def test_networks_pass_the_options_through():
    kw = {"hidden_layers": 2, "activation": "gelu", "encoding": "fourier", "fourier_features": 4}
    for name, extra in (
        ("meta_edsr", {"n_resblocks": 1, "n_feats": 8}),
        ("meta_rdn", {"G0": 8, "D": 1, "C": 1, "G": 4}),
        ("meta_swinir", {"embed_dim": 12, "depths": [1], "num_heads": [2], "num_feat": 8,
                         "img_size": 8, "window_size": 4}),
    ):  # fmt: skip
        model = metasr.create_model(name, in_channels=1, out_channels=1, hidden=8, **extra, **kw)
        p2w = model.pos2weight
        assert p2w.hidden_layers == 2 and p2w.activation == "gelu"
        assert p2w.encoding is not None and p2w.encoding.features == 4
        assert predictor.classify_predictor(p2w) is PredictorKind.LINEAR_HEAD
        y = model(torch.rand(1, 1, 8, 8), scale=2.3)
        assert y.shape == (1, 1, 18, 18)
        y.mean().backward()
        assert all(p.grad is not None for p in p2w.meta_block.parameters())
        with pytest.raises(ValueError, match="activation"):
            metasr.create_model(name, in_channels=1, out_channels=1, activation="swish", **extra)
    up = metasr.MetaUpsample(3, 2, hidden=8, hidden_layers=2)
    assert up(torch.randn(1, 3, 4, 4), scale=2.5).shape == (1, 2, 10, 10)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hidden_layers": 0}, "hidden_layers"),
        ({"activation": "swish"}, "activation"),
        ({"encoding": "polar"}, "encoding"),
        ({"encoding": "fourier", "fourier_features": 0}, "fourier_features"),
        ({"encoding": "fourier", "fourier_scale": -1.0}, "fourier_scale"),
        ({"fourier_scale": float("inf")}, "fourier_scale"),
        ({"kernel_size": 2}, "kernel_size"),
        ({"pos_encoding": "polar"}, "pos_encoding"),
    ],
)
def test_bad_pos2weight_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        metasr.Pos2Weight(3, 2, **kwargs)


def test_phi_lacking_attributes():
    phi = make("headed", 3, 2)
    del phi.num_pos
    with pytest.raises(ValueError, match="lacks the attribute.*num_pos"):
        mu.meta_upscale(torch.randn(1, 3, 4, 4, dtype=torch.float64), phi, scale=2)
    with pytest.raises(TypeError, match="nn.Module"):
        mu.meta_upscale(torch.randn(1, 3, 4, 4), lambda p: p, scale=2)


def test_phi_of_the_wrong_width():
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    phi = make("headed", 3, 2)
    phi.head = nn.Linear(8, 17).double()  # k·k·Cin·Cout = 54
    with pytest.raises(ValueError, match="54"):
        mu.meta_upscale(x, phi, scale=2)
    general = make("general", 3, 2)
    general.net[2] = nn.Linear(8, 50).double()
    with pytest.raises(ValueError, match=r"\(M, 54\).*\(2, 50\)"):
        mu.meta_upscale(x, general, scale=2)
    body_off = make("headed", 3, 2)
    body_off.body = nn.Sequential(_Square(), nn.Linear(8, 5)).double()  # the head takes 8
    with pytest.raises(ValueError, match="phi failed on positions of shape"):
        mu.meta_upscale(x, body_off, scale=2)


def test_phi_whose_forward_is_not_head_of_body():
    class Scaled(HeadedPredictor):
        def forward(self, pos):
            return 2 * super().forward(pos)

    phi = Scaled(3, 2).double()
    with pytest.raises(ValueError, match=r"head\(body\(p\)\)"):
        mu.meta_upscale(torch.randn(1, 3, 4, 4, dtype=torch.float64), phi, scale=2)


@pytest.mark.parametrize(
    "layer, match",
    [
        (nn.BatchNorm1d(8), "batch statistics"),
        (nn.BatchNorm1d(8, track_running_stats=False), "batch statistics"),
        (nn.Dropout(0.1), "random in training mode"),
    ],
)
def test_batch_dependent_body_is_refused(layer, match):
    phi = make("headed", 3, 2)
    phi.body.insert(2, layer.double())
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        mu.meta_upscale(x, phi, scale=2.3)
    if (
        isinstance(layer, nn.BatchNorm1d)
        and layer.track_running_stats
        or isinstance(layer, nn.Dropout)
    ):
        phi.eval()  # running statistics / no dropout: a per-position function again
        check_all(["torch"], x.requires_grad_(), phi, {"scale": 2.3})


def test_checkpoints_record_the_predictor_options(tmp_path):
    pytest.importorskip("safetensors")
    from metasr.checkpoints import load_checkpoint, save_checkpoint

    kw = {"in_channels": 1, "out_channels": 1, "n_resblocks": 1, "n_feats": 8, "hidden": 8}
    model = metasr.create_model("meta_edsr", activation="gelu", encoding="fourier", **kw)
    path = tmp_path / "m.safetensors"
    # activation changes no name or shape: without it the file would load as another function
    with pytest.raises(ValueError, match="activation"):
        save_checkpoint(path, model, "meta_edsr", {**kw, "encoding": "fourier"})
    save_checkpoint(path, model, "meta_edsr", {**kw, "activation": "gelu", "encoding": "fourier"})
    loaded = load_checkpoint(path).model
    x = torch.rand(1, 1, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, scale=2.3), model(x, scale=2.3))
