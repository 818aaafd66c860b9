"""ONNX and torch.export of the networks at a fixed request; the exported files in use.

Exports take a few seconds each, so each (model, request) is exported once per module.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import metasr
from metasr.checkpoints import load_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

from metasr.cli import main  # noqa: E402
from metasr.export import OnnxModel, export_onnx, export_program  # noqa: E402

#: Standard ONNX ops the exported graphs may use (the static Meta-Upscale form and the nets).
STANDARD_OPS = {
    "Add", "Cast", "Concat", "Constant", "Conv", "Div", "Expand", "Gather", "Gemm", "MatMul",
    "Mul", "ReduceSum", "Relu", "Reshape", "Resize", "Shape", "Slice", "Sub", "Transpose",
    "Unsqueeze", "Squeeze", "Where",
    # the SwinIR backbone: attention, LayerNorm, GELU, window padding
    "Erf", "LayerNormalization", "LeakyRelu", "Pad", "Softmax",
    # the bicubic residual at a scale whose output size is rounded down (h·r not whole):
    # ATen's upsample_bicubic2d with explicit scales, which the exporter writes as gathers
    "GatherND",
}  # fmt: skip


def _field_model() -> torch.nn.Module:
    """A 1-channel field model (random weights; the exported numbers are what is compared)."""
    torch.manual_seed(0)
    return metasr.create_model(
        "meta_edsr", in_channels=1, out_channels=1, img_range=1.0, n_resblocks=1, n_feats=8,
        hidden=16, bicubic_residual=True,
    ).eval()  # fmt: skip


def _swinir_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return metasr.create_model(
        "meta_swinir", img_size=16, embed_dim=8, depths=(2,), num_heads=(2,), window_size=4,
        hidden=16,
    ).eval()  # fmt: skip


CASES = {
    # name: (model factory, input size, scale, size)
    "photo-x2": (lambda: load_model("default").model, (12, 10), 2, None),
    "photo-3.5x2": (lambda: load_model("default").model, (12, 10), (3.5, 2.0), None),
    "field-x3": (_field_model, (9, 14), 3, None),
    # 9x14 -> 22x37: 2.44 x 2.64, many phases: the gathered features-first form.
    "field-size": (_field_model, (9, 14), None, (22, 37)),
    # window attention with padding to the window size (10x9 is not a multiple of 4)
    "swinir-2.5x1.5": (_swinir_model, (10, 9), (2.5, 1.5), None),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    out = {}
    for name, (factory, input_size, scale, size) in CASES.items():
        net = factory().eval()
        path = export_onnx(net, folder / f"{name}.onnx", input_size, scale=scale, size=size)
        out[name] = (net, path)
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnxruntime_matches_pytorch(exported, name):
    net, path = exported[name]
    _, (h, w), scale, size = CASES[name]
    torch.manual_seed(1)
    x = torch.rand(3, net.in_channels, h, w) * net.input_range  # another batch than exported
    with torch.inference_mode():
        ref = net(x, scale=scale, size=size)
    y = OnnxModel(path)(x, scale=scale, size=size)
    assert y.shape == ref.shape
    assert _rel(y, ref) <= 1e-4


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_graph_is_standard_ops_with_metadata(exported, name):
    _, path = exported[name]
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert ops <= STANDARD_OPS, ops - STANDARD_OPS
    assert {n.domain for n in proto.graph.node} <= {""}
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["metasr.input_size"] == "{}x{}".format(*CASES[name][1])


def test_onnx_model_refuses_another_request(exported):
    _, path = exported["photo-3.5x2"]
    model = OnnxModel(path)
    x = torch.rand(1, 3, 12, 10)
    with pytest.raises(ValueError, match="exported for a 12x10 input and scale 3.5x2"):
        model(x, scale=2)
    with pytest.raises(ValueError, match="exported for"):
        model(torch.rand(1, 3, 12, 11), scale=(3.5, 2.0))
    with pytest.raises(ValueError, match="regions"):
        model(x, scale=(3.5, 2.0), region=object())
    # The same request as a size: r_v = 42/12 = 3.5, r_h = 20/10 = 2.
    assert model(x, size=(42, 20)).shape == (1, 3, 42, 20)


def test_torch_export_program_is_plain_aten(exported):
    net, _ = exported["photo-3.5x2"]
    program = export_program(net, (12, 10), scale=(3.5, 2.0))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("metasr" in t for t in targets)
    x = torch.rand(2, 3, 12, 10)
    with torch.inference_mode():
        ref = net(x, scale=(3.5, 2.0))
        y = program.module()(x)
    assert _rel(y, ref) <= 1e-5


def test_load_model_and_cli_upscale_run_an_onnx_file(exported, tmp_path, capsys):
    net, path = exported["field-size"]
    loaded = load_model(path)
    assert loaded.format == "onnx" and loaded.in_channels == 1
    field = np.random.default_rng(0).random((9, 14)).astype(np.float32)
    np.save(tmp_path / "f.npy", field)
    assert main(["upscale", str(tmp_path / "f.npy"), "-o", str(tmp_path / "o.npy"),
                 "--model", str(path), "--size", "22x37", "--quiet"]) == 0  # fmt: skip
    with torch.inference_mode():
        ref = net(torch.from_numpy(field)[None, None], size=(22, 37))[0, 0].numpy()
    out = np.load(tmp_path / "o.npy")
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()
    capsys.readouterr()
    rc = main(["upscale", str(tmp_path / "f.npy"), "-o", str(tmp_path / "p.npy"),
               "--model", str(path), "--scale", "2", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc != 0 and "exported for a 9x14 input and size 22x37" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_export_writes_and_checks(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    rc = main(["export", "--model", "default", "--input-size", "8x6", "--scale", "1.5x2.5",
               "-o", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0 and out.is_file()
    diff = float(printed.strip().splitlines()[-1].rsplit(" ", 1)[1])
    assert diff <= 1e-4
    rc = main(["export", "--scale", "2", "--input-size", "8x6", "-o", str(tmp_path / "m.txt")])
    assert rc != 0 and "must end in .onnx or .pt2" in capsys.readouterr().err


def test_import_metasr_needs_no_onnx():
    code = (
        "import sys, metasr, metasr.export, metasr.checkpoints, metasr.cli\n"
        "bad = [m for m in ('onnx', 'onnxruntime', 'onnxscript') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
