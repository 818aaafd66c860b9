"""ONNX at any input size (the period form) against ONNX at one input size and eager PyTorch.

For each scale: the bundled ``default`` model exported twice (``input_size=None`` and the
benchmark's size), both run by onnxruntime, and the network in PyTorch, side by side in one
process on one thread; medians of ``--repeats`` runs after one warm-up. Prints one CSV row per
(scale, runner) with the median seconds, the ratio to the fixed-size file and the largest
relative difference to PyTorch.

    OMP_NUM_THREADS=1 python benchmarks/onnx_dynamic.py --size 96x96 --scales 2,2.5,2.3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from metasr.checkpoints import load_model
from metasr.data.scales import parse_scale_list, parse_size_spec
from metasr.export import INPUT_NAME, OUTPUT_NAME, export_onnx


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    import onnxruntime

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="96x96", help="input HxW")
    ap.add_argument("--scales", default="2,2.5,2.3")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    h, w = parse_size_spec(args.size)
    net = load_model("default").model.eval()
    x = torch.rand(1, 3, h, w)
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    print("scale,runner,median_s,ratio_to_fixed,max_rel_diff")
    with tempfile.TemporaryDirectory() as tmp:
        for scale in parse_scale_list(args.scales):
            with torch.inference_mode():
                ref = net(x, scale=scale).numpy()
            runs = {}
            for name, size in (("onnx-fixed", (h, w)), ("onnx-dynamic", None)):
                path = export_onnx(net, Path(tmp) / f"{name}.onnx", size, scale=scale)
                sess = onnxruntime.InferenceSession(
                    str(path), opts, providers=["CPUExecutionProvider"]
                )
                feed = {INPUT_NAME: x.numpy()}
                runs[name] = lambda s=sess, f=feed: s.run([OUTPUT_NAME], f)[0]

            def eager(r=scale):
                with torch.inference_mode():
                    return net(x, scale=r).numpy()

            runs["pytorch"] = eager
            times = {k: _median_seconds(fn, args.repeats) for k, fn in runs.items()}
            for k, fn in runs.items():
                diff = float(np.abs(fn() - ref).max() / np.abs(ref).max())
                ratio = times[k] / times["onnx-fixed"]
                label = f"{scale[0]:g}x{scale[1]:g}"
                print(f"{label},{k},{times[k]:.4f},{ratio:.2f},{diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
