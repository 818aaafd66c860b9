"""Eager vs ``torch.compile`` vs onnxruntime for whole networks, side by side in one run.

Cases (by name, ``--cases``):

* ``photo-x2``, ``photo-3.5x2``: the bundled photo model (``load_model("default")``, MetaEDSR
  6×32 with bicubic residual) on a 1×3×128×128 input, inference (``torch.inference_mode``):
  eager PyTorch, ``torch.compile`` (Inductor) and the ``metasr export`` ONNX file in onnxruntime
  (CPU execution provider). Only on CPU runs onnxruntime.
* ``field-size``: a 1-channel MetaEDSR (16×64, random weights) 96×144 → 240×360 (size request,
  many phases), same three.
* ``train-x2.5``: one training step (forward, L1 loss, backward) of the photo model on a batch
  of 8×3×32×32 at ×2.5, eager vs compiled.

Times are medians over ``--repeat`` runs after warm-ups; compile and export times are reported
separately (first call, including tracing and code generation). Usage::

    python benchmarks/compile_onnx.py                         # CPU, all cases
    python benchmarks/compile_onnx.py --device cuda --cases photo-x2,train-x2.5
    python benchmarks/compile_onnx.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import metasr
from metasr.bench import machine_info
from metasr.checkpoints import load_model

CASES = ("photo-x2", "photo-3.5x2", "field-size", "train-x2.5")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median_ms(fn: Callable[[], object], device: str, repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _first_call_s(fn: Callable[[], object], device: str) -> float:
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def _inference_case(name: str, device: str, repeat: int) -> dict:
    if name.startswith("photo"):
        net = load_model("default").model
        x = torch.rand(1, 3, 128, 128)
        request = {"scale": 2} if name == "photo-x2" else {"scale": (3.5, 2.0)}
    else:
        torch.manual_seed(0)
        net = metasr.create_model(
            "meta_edsr", in_channels=1, out_channels=1, img_range=1.0, n_resblocks=16,
            n_feats=64, bicubic_residual=True,
        )  # fmt: skip
        x = torch.rand(1, 1, 96, 144)
        request = {"size": (240, 360)}
    net = net.eval().to(device)
    xd = x.to(device)
    row: dict = {"case": name, "input": list(x.shape), "request": str(request)}
    with torch.inference_mode():
        row["eager_ms"] = _median_ms(lambda: net(xd, **request), device, repeat)
        torch._dynamo.reset()
        compiled = torch.compile(net, fullgraph=True)
        row["compile_s"] = _first_call_s(lambda: compiled(xd, **request), device)
        row["compiled_ms"] = _median_ms(lambda: compiled(xd, **request), device, repeat)
    if device == "cpu":
        from metasr.export import OnnxModel, export_onnx

        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            path = export_onnx(net, Path(tmp) / "m.onnx", tuple(x.shape[-2:]), **request)
            row["export_s"] = time.perf_counter() - t
            onnx_model = OnnxModel(path)
            row["onnxruntime_ms"] = _median_ms(lambda: onnx_model(x, **request), device, repeat)
    return row


def _train_case(device: str, repeat: int) -> dict:
    net = load_model("default").model.train().to(device)
    x = torch.rand(8, 3, 32, 32, device=device)
    target = torch.rand(8, 3, 80, 80, device=device)

    def step(model: torch.nn.Module) -> None:
        loss = (model(x, scale=2.5) - target).abs().mean()
        loss.backward()

    row: dict = {"case": "train-x2.5", "input": list(x.shape), "request": "{'scale': 2.5}"}
    row["eager_ms"] = _median_ms(lambda: step(net), device, repeat)
    torch._dynamo.reset()
    compiled = torch.compile(net, fullgraph=True)
    row["compile_s"] = _first_call_s(lambda: step(compiled), device)
    row["compiled_ms"] = _median_ms(lambda: step(compiled), device, repeat)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    rows = []
    for name in args.cases.split(","):
        if name not in CASES:
            raise SystemExit(f"unknown case {name!r}; choose from {', '.join(CASES)}")
        if name == "train-x2.5":
            rows.append(_train_case(args.device, args.repeat))
        else:
            rows.append(_inference_case(name, args.device, args.repeat))
        print(json.dumps(rows[-1]), flush=True)
    report = {"machine": machine_info(args.device), "repeat": args.repeat, "results": rows}
    print(json.dumps(report["machine"]))
    print("| case | eager | compiled | onnxruntime | compile (first call) | ONNX export |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ort = f"{r['onnxruntime_ms']:.1f} ms" if "onnxruntime_ms" in r else "—"
        exp = f"{r['export_s']:.1f} s" if "export_s" in r else "—"
        print(
            f"| `{r['case']}` | {r['eager_ms']:.1f} ms | {r['compiled_ms']:.1f} ms | {ort} | "
            f"{r['compile_s']:.1f} s | {exp} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
