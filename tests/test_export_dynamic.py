"""ONNX and torch.export with a dynamic input height and width (issue 25 item 8).

The bundled ``default`` model is exported once per scale (an integer, a rational and an
asymmetric one) and run by onnxruntime at three input sizes, whole periods of the scale and
not, against PyTorch; then the CLI round trip (export without ``--input-size``, ``upscale
--model x.onnx`` on two sizes) and the refusals.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import metasr
from metasr.checkpoints import load_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

from metasr.cli import main  # noqa: E402
from metasr.export import OnnxModel, export_onnx, export_program  # noqa: E402

#: scale: three input sizes (batch 2), none of them the traced example (11x13).
CASES = {
    "x2": ((2.0, 2.0), [(1, 1), (8, 6), (15, 9)]),
    "x2.5": ((2.5, 2.5), [(4, 6), (7, 9), (12, 5)]),
    "3.5x2": ((3.5, 2.0), [(2, 3), (6, 10), (9, 7)]),
}

#: Ops of the dynamic graphs: the period form (Pad, Conv, Reshape, Transpose, Slice) and the
#: shape arithmetic of the crop; the EDSR backbone.
DYNAMIC_OPS = {
    "Add", "Concat", "Conv", "Div", "Mul", "Pad", "Relu", "Reshape", "Shape", "Slice",
    "Squeeze", "Transpose", "Unsqueeze", "Constant", "Cast", "Sub", "Gather", "Mod", "Range",
}  # fmt: skip


@pytest.fixture(scope="module")
def default_net():
    return load_model("default").model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, default_net):
    folder = tmp_path_factory.mktemp("dynamic")
    return {
        name: export_onnx(default_net, folder / f"{name}.onnx", None, scale=scale)
        for name, (scale, _) in CASES.items()
    }


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnxruntime_matches_pytorch_at_three_sizes(exported, default_net, name):
    scale, sizes = CASES[name]
    model = OnnxModel(exported[name])
    assert model.dynamic and model.input_size is None
    torch.manual_seed(1)
    for h, w in sizes:
        x = torch.rand(2, 3, h, w)
        with torch.inference_mode():
            ref = default_net(x, scale=scale)
        y = model(x, scale=scale)
        H, W, _, _ = metasr.geometry.resolve_output_size(h, w, scale=scale)
        assert y.shape == ref.shape == (2, 3, H, W)
        assert _rel(y, ref) <= 1e-5, (h, w)


@pytest.mark.parametrize("name", sorted(CASES))
def test_dynamic_graph_has_symbolic_sizes_and_metadata(exported, name):
    proto = onnx.load(str(exported[name]))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[2], str) and isinstance(dims[3], str) and dims[1] == 3
    assert {n.op_type for n in proto.graph.node} <= DYNAMIC_OPS
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["metasr.input_size"] == meta["metasr.output_size"] == "dynamic"
    assert meta["metasr.request"] == {"x2": "scale 2x2", "x2.5": "scale 2.5x2.5"}.get(
        name, "scale 3.5x2"
    )


def test_dynamic_file_refuses_another_scale(exported):
    model = OnnxModel(exported["x2.5"])
    x = torch.rand(1, 3, 4, 6)
    with pytest.raises(ValueError, match="exported for any input size at scale 2.5x2.5"):
        model(x, scale=2)
    # A size that gives the same factors is the same request; one that does not is refused.
    assert model(x, size=(10, 15)).shape == (1, 3, 10, 15)
    with pytest.raises(ValueError, match="a 5x6 input -> 12x15"):
        model(torch.rand(1, 3, 5, 6), size=(12, 15))  # 12/5 = 2.4


def test_load_model_reports_a_dynamic_file(exported):
    loaded = load_model(exported["x2"])
    assert loaded.format == "onnx" and loaded.metadata["input_size"] == "dynamic"


def test_exact_quotient_scale_to_full_precision(tmp_path, default_net):
    # 4/3 is stored to full precision, so the file accepts the same float back.
    path = export_onnx(default_net, tmp_path / "t.onnx", None, scale=4 / 3)
    x = torch.rand(1, 3, 5, 7)
    with torch.inference_mode():
        ref = default_net(x, scale=4 / 3)
    assert _rel(OnnxModel(path)(x, scale=4 / 3), ref) <= 1e-5


def test_torch_export_program_refuses_a_dynamic_size(default_net, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"\.pt2\) program takes a fixed input size.*export_onnx"):
        export_program(default_net, None, scale=2)
    rc = main(["export", "--scale", "2", "-o", str(tmp_path / "m.pt2")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "give --input-size HxW, or write an .onnx file" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "m.pt2").exists()


def test_rdn_with_a_deeper_predictor_at_three_sizes(tmp_path):
    # MetaRDN (dense blocks) with a two-hidden-layer GELU predictor (not Linear-ReLU-Linear).
    torch.manual_seed(0)
    net = metasr.create_model(
        "meta_rdn", G0=8, D=1, C=2, G=4,
        upsample={"hidden": 8, "hidden_layers": 2, "activation": "gelu"},
    ).eval()  # fmt: skip
    model = OnnxModel(export_onnx(net, tmp_path / "rdn.onnx", None, scale=(1.5, 3.0)))
    for h, w in [(3, 4), (6, 5), (9, 10)]:
        x = torch.rand(1, 3, h, w)
        with torch.inference_mode():
            ref = net(x, scale=(1.5, 3.0))
        assert _rel(model(x, scale=(1.5, 3.0)), ref) <= 1e-5


def _png(path, h, w, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_cli_export_dynamic_then_upscale_two_sizes(tmp_path, capsys):
    out = tmp_path / "d.onnx"
    rc = main(["export", "--model", "default", "--scale", "1.5x2.5", "--input-size", "dynamic",
               "-o", str(out)])  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and "at any input size, scale 1.5x2.5" in lines[0]
    # The check ran at three sizes, two of them not whole periods.
    assert "at 8x6, 7x12, 7x9:" in lines[-1] and float(lines[-1].rsplit(" ", 1)[1]) <= 1e-5
    for i, (h, w) in enumerate([(13, 17), (20, 9)]):
        src = _png(tmp_path / f"in{i}.png", h, w, i)
        for model, name in ((str(out), "onnx"), ("default", "torch")):
            assert main(["upscale", str(src), "-o", str(tmp_path / f"{name}{i}.png"),
                         "--model", model, "--scale", "1.5x2.5", "--device", "cpu",
                         "-q"]) == 0  # fmt: skip
        a = np.asarray(Image.open(tmp_path / f"onnx{i}.png")).astype(int)
        b = np.asarray(Image.open(tmp_path / f"torch{i}.png")).astype(int)
        assert a.shape == (int(h * 1.5), int(w * 2.5), 3)
        assert np.abs(a - b).max() <= 1


def test_cli_export_without_input_size_is_dynamic_for_a_field_model(tmp_path, capsys):
    # t2m: periodic in longitude, a bicubic residual, normalisation statistics in the metadata.
    out = tmp_path / "t.onnx"
    assert main(["export", "--model", "t2m", "--scale", "2.5x2", "-o", str(out)]) == 0
    assert "at any input size" in capsys.readouterr().out
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(9, 14), (6, 5)]):
        np.save(tmp_path / f"f{i}.npy", (rng.random((h, w)) * 30 + 260).astype(np.float32))
        for model, name in ((str(out), "onnx"), ("t2m", "torch")):
            assert main(["upscale", str(tmp_path / f"f{i}.npy"), "-o",
                         str(tmp_path / f"{name}{i}.npy"), "--model", model, "--scale", "2.5x2",
                         "--device", "cpu", "-q"]) == 0  # fmt: skip
        a, b = np.load(tmp_path / f"onnx{i}.npy"), np.load(tmp_path / f"torch{i}.npy")
        assert a.shape == b.shape == (int(h * 2.5), 2 * w)
        assert np.abs(a - b).max() <= 1e-3  # kelvin, values near 275 K


def _error(argv, capsys) -> tuple[int, str]:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return rc, err


def test_cli_refuses_size_and_non_rational_scales_before_loading(tmp_path, capsys, monkeypatch):
    import metasr.checkpoints

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(metasr.checkpoints, "load_model", no_load)
    out = str(tmp_path / "m.onnx")
    rc, err = _error(["export", "--size", "40x40", "-o", out], capsys)
    assert rc == 2 and "--size needs --input-size HxW" in err
    rc, err = _error(["export", "--scale", "1.333", "-o", out], capsys)
    assert rc == 2 and "1.333 is not p/q with q <= 10" in err and "--input-size HxW" in err
    rc, err = _error(["export", "--scale", "2x2.05", "-o", out], capsys)
    assert rc == 2 and "horizontal scale 2.05" in err
    assert not (tmp_path / "m.onnx").exists()


def test_swinir_refuses_a_dynamic_size(tmp_path):
    torch.manual_seed(0)
    net = metasr.create_model(
        "meta_swinir", img_size=16, embed_dim=8, depths=(2,), num_heads=(2,), window_size=4,
        hidden=16,
    ).eval()  # fmt: skip
    with pytest.raises(ValueError, match=r"MetaSwinIR cannot be exported with a dynamic input "
                       r"size \(its window attention pads"):  # fmt: skip
        export_onnx(net, tmp_path / "s.onnx", None, scale=2)
    assert not (tmp_path / "s.onnx").exists()
    # A fixed size still exports (tests/test_export.py runs it).


def test_api_refusals(tmp_path, default_net):
    with pytest.raises(ValueError, match="a dynamic input size needs a scale"):
        export_onnx(default_net, tmp_path / "a.onnx", None, size=(40, 40))
    with pytest.raises(ValueError, match="head kernel of .* values in the dynamic-size form"):
        export_onnx(default_net, tmp_path / "b.onnx", None, scale=9.9)
    official = metasr.create_model("meta_edsr", n_resblocks=1, n_feats=8, hidden=8,
                                   upsample={"arithmetic": "official"}).eval()  # fmt: skip
    with pytest.raises(ValueError, match="arithmetic='official' has no dynamic-size form"):
        export_onnx(official, tmp_path / "c.onnx", None, scale=2)
    assert not list(tmp_path.iterdir())
