"""ONNX files that are not (quite) metasr exports: one line each, never a wrong-size output.

Issue 22 items 8 and 17 (each test here failed before the fix). The graphs are built by hand
with ``onnx.helper`` (milliseconds), not exported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metasr.cli import main

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

GOOD_META = {
    "metasr.request": "scale 2x2",
    "metasr.input_size": "8x8",
    "metasr.output_size": "16x16",
    "metasr.in_channels": "1",
    "metasr.value_range": "1.0",
    "metasr.name": "hand-made",
}

#: A dynamic input size with a request by output size (which would change with the input).
DYNAMIC_SIZE_REQUEST = {
    "metasr.input_size": "dynamic",
    "metasr.output_size": "dynamic",
    "metasr.request": "size 16x16",
}


def _onnx_file(
    path: Path,
    meta: dict[str, str] | None = None,
    op: str = "resize",
    output_name: str = "sr",
) -> Path:
    """A graph ``lr (N,1,8,8) -> output_name``: ``resize`` (×2 nearest, a correct file),
    ``identity`` (8x8: claims more than it gives), ``scalar`` (ReduceSum to a scalar),
    ``flat`` (rank 2)."""
    inp = helper.make_tensor_value_info("lr", TensorProto.FLOAT, ["N", 1, 8, 8])
    inits = []
    if op == "resize":
        scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
        inits.append(scales)
        node = helper.make_node("Resize", ["lr", "", "scales"], [output_name], mode="nearest")
        shape = ["N", 1, 16, 16]
    elif op == "identity":
        node = helper.make_node("Identity", ["lr"], [output_name])
        shape = ["N", 1, 8, 8]
    elif op == "scalar":
        node = helper.make_node("ReduceSum", ["lr"], [output_name], keepdims=0)
        shape = []
    else:
        node = helper.make_node("Flatten", ["lr"], [output_name])
        shape = ["N", 64]
    out = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, shape)
    graph = helper.make_graph([node], "g", [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    for key, value in (GOOD_META if meta is None else meta).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def _load(path: Path):
    from metasr.export import OnnxModel

    return OnnxModel(path)


def test_a_correct_hand_made_file_runs(tmp_path):
    m = _load(_onnx_file(tmp_path / "ok.onnx"))
    y = m(torch.ones(2, 1, 8, 8), scale=2)
    assert tuple(y.shape) == (2, 1, 16, 16)


def test_output_smaller_than_the_metadata_claim_is_refused(tmp_path, capsys):
    path = _onnx_file(tmp_path / "liar.onnx", op="identity")
    m = _load(path)
    with pytest.raises(ValueError, match="returned"):
        m(torch.ones(1, 1, 8, 8), scale=2)
    from PIL import Image

    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    code = main(["upscale", str(tmp_path / "in.png"), "--model", str(path), "--scale", "2",
                 "-o", str(out), "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "returned" in err and err.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize(
    "meta, op, output_name, fragment",
    [
        ({"metasr.request": "scale 2x2"}, "resize", "sr", "metasr.input_size"),
        (dict(GOOD_META), "scalar", "sr", "not (N, C, H, W)"),
        (dict(GOOD_META), "flat", "sr", "not (N, C, H, W)"),
        (dict(GOOD_META), "resize", "out", "expected"),
        (GOOD_META | {"metasr.input_size": "axb"}, "resize", "sr", "input_size"),
        (GOOD_META | {"metasr.input_size": "dynamic"}, "resize", "sr", "'dynamic' and a scale"),
        (GOOD_META | DYNAMIC_SIZE_REQUEST, "resize", "sr", "'dynamic' and a scale"),
        (GOOD_META | {"metasr.output_size": "0x-3"}, "resize", "sr", "output_size"),
        (GOOD_META | {"metasr.output_size": "99999999x99999999"}, "resize", "sr", "output_size"),
        (GOOD_META | {"metasr.request": "zoom 2"}, "resize", "sr", "request"),
        (GOOD_META | {"metasr.request": "scale"}, "resize", "sr", "request"),
        (GOOD_META | {"metasr.request": "scale nanxnan"}, "resize", "sr", "request"),
        (GOOD_META | {"metasr.request": "size 17x17"}, "resize", "sr", "request"),
        (GOOD_META | {"metasr.value_range": "nan"}, "resize", "sr", "value_range"),
        (GOOD_META | {"metasr.value_range": "0"}, "resize", "sr", "value_range"),
        (GOOD_META | {"metasr.in_channels": "many"}, "resize", "sr", "many"),
    ],
)
def test_not_quite_metasr_files_are_one_line(tmp_path, capsys, meta, op, output_name, fragment):
    path = _onnx_file(tmp_path / "odd.onnx", meta, op, output_name)
    with pytest.raises(ValueError, match="not a usable `metasr export` file") as info:
        _load(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    from PIL import Image

    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / "in.png")
    code = main(["upscale", str(tmp_path / "in.png"), "--model", str(path), "--scale", "2",
                 "-o", str(tmp_path / "o.png"), "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and err.count("\n") == 1


def test_a_runtime_failure_in_onnxruntime_is_one_line(tmp_path, monkeypatch):
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    m = _load(_onnx_file(tmp_path / "ok.onnx"))

    class Failing:
        def run(self, *a, **k):
            raise RuntimeException("Failed to allocate memory for requested buffer of size 1e12")

    monkeypatch.setattr(m, "session", Failing())
    with pytest.raises(ValueError, match="onnxruntime failed: Failed to allocate"):
        m(torch.ones(1, 1, 8, 8), scale=2)
