"""CPU inference precision (``metasr.precision``, ``metasr upscale --precision``; issue 27)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import TINY_MODELS
from metasr import list_models as metasr_models
from metasr import precision
from metasr.archs import create_model
from metasr.checkpoints import load_model
from metasr.cli import main
from metasr.geometry import UpscaleRequest
from metasr.inference import upscale_array, upscale_raster
from metasr.io import Raster


def test_resolve_precision():
    assert precision.resolve_precision("fp32") == "fp32"
    assert precision.resolve_precision("bf16") == "bf16"
    native = precision.cpu_has_native_bf16()
    assert precision.resolve_precision("auto") == ("bf16" if native else "fp32")
    assert precision.resolve_precision("auto", "cuda") == "fp32"
    with pytest.raises(ValueError, match="one of fp32, bf16, auto"):
        precision.resolve_precision("fp16")
    with pytest.raises(TypeError, match="string"):
        precision.resolve_precision(16)
    with pytest.raises(ValueError, match="--half"):
        precision.resolve_precision("bf16", "cuda")


def test_auto_follows_the_cpu_flags(monkeypatch):
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert precision.resolve_precision("auto", "cpu") == want


def test_bf16_runs_the_body_in_bfloat16_and_stays_close():
    loaded = load_model("default")
    rng = np.random.default_rng(0)
    data = rng.random((3, 20, 18)).astype(np.float32)
    ref = upscale_array(loaded, data, UpscaleRequest(scale=2.3))
    seen = []
    hook = loaded.model.register_forward_hook(
        lambda m, i, o: seen.append(torch.is_autocast_enabled("cpu"))
    )
    try:
        out = upscale_array(loaded, data, UpscaleRequest(scale=2.3), precision="bf16")
    finally:
        hook.remove()
    assert seen == [True]
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert not np.array_equal(out, ref)  # it did run in another precision
    assert np.abs(out - ref).max() < 0.05  # bfloat16 has 8 bits of mantissa
    assert not torch.is_autocast_enabled("cpu")  # restored after the call
    with pytest.raises(ValueError, match="precision"):
        upscale_array(loaded, data, UpscaleRequest(scale=2), precision="half")


def test_cli_precision(tmp_path):
    from PIL import Image

    src = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(1).random((12, 14, 3)) * 255).astype(np.uint8)).save(src)
    for p in ("fp32", "bf16", "auto"):
        dst = tmp_path / f"out_{p}.png"
        assert (
            main(["upscale", str(src), "-o", str(dst), "--scale", "2", "--precision", p, "-q"]) == 0
        )
        assert Image.open(dst).size == (28, 24)
    with pytest.raises(SystemExit) as exc:
        main(["upscale", str(src), "-o", str(tmp_path / "x.png"), "--precision", "fp8"])
    assert exc.value.code == 2


def test_python_api_precision():
    import metasr

    img = (np.random.default_rng(2).random((10, 12, 3)) * 255).astype(np.uint8)
    ref = metasr.upscale(img, scale=2)
    out = metasr.upscale(img, scale=2, precision="bf16")
    assert out.shape == ref.shape == (20, 24, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 8
    with pytest.raises(ValueError, match="precision"):
        metasr.upscale(img, scale=2, precision="int8")


@pytest.mark.parametrize("name", metasr_models())
@pytest.mark.parametrize("scale", [2, 3.7, (2.37, 3.13)])
def test_channels_last_input_matches_contiguous(name, scale):
    # Every network gives the same output (float rounding) for a channels-last input, and its
    # parameters keep their layout: the layout precision="auto" may feed it.
    torch.manual_seed(0)
    model = create_model(name, **TINY_MODELS[name]).eval()
    x = torch.rand(2, 3, 13, 11)
    with torch.inference_mode():
        ref = model(x, scale=scale)
        out = model(x.contiguous(memory_format=torch.channels_last), scale=scale)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    assert all(p.is_contiguous() for p in model.parameters())


def test_plan_precision_memory_format():
    edsr = create_model("meta_edsr", **TINY_MODELS["meta_edsr"])
    swin = create_model("meta_swinir", **TINY_MODELS["meta_swinir"])
    cl, plain = torch.channels_last, torch.contiguous_format
    # Measured (docs/benchmarks.md): EDSR and RDN faster channels-last, SwinIR not.
    assert edsr.channels_last_cpu and not swin.channels_last_cpu
    assert create_model("meta_rdn", **TINY_MODELS["meta_rdn"]).channels_last_cpu
    assert precision.plan_precision("auto", edsr).memory_format is cl
    assert precision.plan_precision("auto", edsr, "cuda").memory_format is plain
    assert precision.plan_precision("fp32", edsr).memory_format is plain
    assert precision.plan_precision("bf16", edsr).memory_format is plain
    assert precision.plan_precision("auto", swin).memory_format is plain
    with pytest.raises(ValueError, match="precision"):
        precision.plan_precision("fp16", edsr)


def test_auto_feeds_the_network_channels_last(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)  # auto = fp32 here
    loaded = load_model("default")
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    data = np.random.default_rng(3).random((3, 17, 15)).astype(np.float32)
    ref = upscale_array(loaded, data, UpscaleRequest(scale=3.7))
    seen = []
    hook = loaded.model.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    try:
        out = upscale_array(loaded, data, UpscaleRequest(scale=3.7), precision="auto")
        upscale_array(loaded, data, UpscaleRequest(scale=3.7), precision="fp32")
    finally:
        hook.remove()
    assert seen == [True, False]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    for k, v in loaded.model.state_dict().items():  # the loaded model is left as it was
        assert v.is_contiguous() and torch.equal(v, before[k]), k


def test_plan_precision():
    edsr = create_model("meta_edsr", **TINY_MODELS["meta_edsr"])
    cl, plain = torch.channels_last, torch.contiguous_format
    bf16 = precision.plan_precision("bf16", edsr)
    assert (bf16.compute, bf16.memory_format) == ("bf16", plain)
    with bf16.autocast():
        assert torch.is_autocast_enabled("cpu")
    with precision.FLOAT32.autocast():
        assert not torch.is_autocast_enabled("cpu")
    assert precision.plan_precision("auto", edsr).memory_format is cl
    with pytest.raises(ValueError, match="precision"):
        precision.plan_precision("bf16", edsr, "cuda")


def test_a_call_resolves_its_precision_once(monkeypatch):
    # upscale_raster plans the precision at its door and hands it down (it was resolved there,
    # again for the input's memory format and again for the autocast).
    resolve = precision.resolve_precision
    calls = []
    monkeypatch.setattr(precision, "resolve_precision", lambda *a: calls.append(a) or resolve(*a))
    loaded = load_model("default")
    data = np.random.default_rng(4).random((3, 9, 8)).astype(np.float32)
    raster = Raster(data, "field", np.dtype(np.float32))
    out = upscale_raster(loaded, raster, UpscaleRequest(scale=2), tta=2, precision="auto")
    assert out.shape == (18, 16) and len(calls) == 1
