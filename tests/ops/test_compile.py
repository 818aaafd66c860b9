"""torch.compile of the Meta-Upscale op and the networks: one graph, no breaks, same numbers.

``fullgraph=True`` turns any graph break into an error, so each test also asserts that the
op (the ``metasr::meta_upscale`` custom op) and the networks trace as one graph. Most tests use
the ``aot_eager`` backend (Dynamo + AOTAutograd with the op's fake kernel and registered
autograd, no code generation) to stay fast on CPU; one runs Inductor on the bundled model.
"""

from __future__ import annotations

import pytest
import torch

import metasr
from helpers import registered_networks
from metasr import MetaUpsample
from metasr.ops.meta_upscale.params import MLPParams

TINY: dict[str, dict] = {
    "meta_rdn": dict(G0=8, D=2, C=2, G=4, hidden=16),
    "meta_edsr": dict(n_resblocks=1, n_feats=8, hidden=16, bicubic_residual=True),
    "meta_swinir": dict(
        img_size=16,
        embed_dim=8,
        depths=(2,),
        num_heads=(2,),
        window_size=4,
        hidden=16,
        drop_path_rate=0.0,
    ),
}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_custom_op_passes_opcheck():
    """Schema, fake kernel, autograd registration and AOT dispatch agree with the real kernel."""
    import metasr.ops.meta_upscale.custom_op  # noqa: F401  (registers metasr::meta_upscale)
    from metasr.geometry import UpscaleRequest

    torch.manual_seed(0)
    up = MetaUpsample(3, 2, hidden=8)
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    p = MLPParams.from_module(up.phi, torch.float32)
    request = UpscaleRequest(scale=(2.5, 3.0)).to_flat()
    args = (x, p.w1, p.b1, p.w2, p.b2, 3, 2, 10, 15, *request, "asymmetric", "torch")
    torch.library.opcheck(torch.ops.metasr.meta_upscale.default, args)


@pytest.mark.parametrize("scale", [2, (2.5, 3.0)])
def test_meta_upsample_compiles_without_graph_breaks(scale):
    torch.manual_seed(0)
    up = MetaUpsample(4, 3, hidden=16)
    compiled = torch.compile(up, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 4, 5, 6, requires_grad=True)
    y, y_ref = compiled(x, scale=scale), up(x, scale=scale)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *up.parameters()], g)
    grads_ref = torch.autograd.grad(y_ref, [x, *up.parameters()], g)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", registered_networks(TINY))
def test_networks_compile_for_inference_and_training(name):
    torch.manual_seed(0)
    model = metasr.create_model(name, **TINY[name])
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.rand(1, 3, 8, 8) * model.input_range
    with torch.inference_mode():
        for scale in (2, (3.5, 2.0)):
            torch.testing.assert_close(
                compiled(x, scale=scale), model(x, scale=scale), rtol=1e-4, atol=1e-4
            )
    # One training step's gradients, compiled and eager.
    loss = compiled(x, size=(13, 11)).square().mean()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    loss_ref = model(x, size=(13, 11)).square().mean()
    grads_ref = torch.autograd.grad(loss_ref, params)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_explain_reports_one_graph_and_no_breaks():
    torch.manual_seed(0)
    model = metasr.create_model("meta_edsr", **TINY["meta_edsr"])
    with torch.inference_mode():
        explanation = torch._dynamo.explain(model)(torch.rand(1, 3, 6, 7), scale=(1.5, 2.5))
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1


def test_inductor_bundled_model_recompiles_once_per_scale():
    """The default photo model under Inductor and inference_mode: eager numbers; a repeated
    scale reuses its graph (one compile per distinct scale)."""
    from torch._dynamo.utils import counters

    from metasr.checkpoints import load_model

    model = load_model("default").model
    compiled = torch.compile(model, fullgraph=True)
    x = torch.rand(1, 3, 10, 9)
    counters.clear()
    with torch.inference_mode():
        for scale in (2, (3.5, 2.0), 2, (3.5, 2.0)):
            torch.testing.assert_close(
                compiled(x, scale=scale), model(x, scale=scale), rtol=1e-4, atol=1e-4
            )
    assert counters["stats"]["unique_graphs"] == 2


def test_compiled_call_still_rejects_bad_requests():
    up = MetaUpsample(2, 1, hidden=8, pos_encoding="official")
    compiled = torch.compile(up, backend="aot_eager", fullgraph=True)
    with pytest.raises(ValueError, match="official"):
        compiled(torch.randn(1, 2, 4, 4), scale=(2.0, 3.0))


def test_changing_input_sizes_share_a_dynamic_graph():
    """After the first change of input size Dynamo marks it dynamic: the op's fake kernel takes
    symbolic output sizes, so further sizes reuse that graph (at most 2 graphs per request)."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    up = MetaUpsample(4, 3, hidden=16)
    compiled = torch.compile(up, backend="aot_eager", fullgraph=True)
    for request in ({"scale": 2.5}, {"size": None}):
        counters.clear()
        for h, w in [(5, 6), (7, 8), (9, 5), (6, 11)]:
            x = torch.randn(1, 4, h, w)
            req = request if "scale" in request else {"size": (2 * h + 1, 3 * w)}
            torch.testing.assert_close(compiled(x, **req), up(x, **req))
        assert counters["stats"]["unique_graphs"] <= 2


def test_inductor_training_step_on_the_features_first_path():
    # Inductor checks the strides the fake kernels promise. The features-first order returns
    # dx channels-last; before the backward op restored x's layout, this step failed with
    # "expected ... stride" (found by `metasr bench --backends compiled:torch`, seed-t2m).
    torch.manual_seed(0)
    up = MetaUpsample(4, 2, hidden=8, backend="torch")
    x = torch.randn(1, 4, 5, 7, requires_grad=True)
    compiled = torch.compile(up, fullgraph=True)
    y, y_ref = compiled(x, size=(23, 31)), up(x, size=(23, 31))
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, [x], g)
    (dx_ref,) = torch.autograd.grad(y_ref, [x], g)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-5, atol=1e-5)
