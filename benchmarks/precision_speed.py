"""Speed of the bundled photo model per CPU inference precision (issue 27), interleaved.

Variants: ``fp32``; ``bf16`` (:func:`metasr.precision.inference_precision`, bfloat16 autocast);
and each with the model and input in channels-last memory format. Every repetition runs every
variant once in turn on the same input, so a change in the machine's load hits them alike;
medians are printed with output MP/s and the ratio to ``fp32``. Usage::

    OMP_NUM_THREADS=2 python benchmarks/precision_speed.py --lq 176 --scales 4 3.7 --repeat 5
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

from metasr.checkpoints import load_model
from metasr.precision import cpu_has_native_bf16, inference_precision


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--lq", type=int, default=176, help="LR side in pixels")
    p.add_argument("--scales", nargs="+", type=float, default=[4.0, 3.7])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    model = load_model(args.model).model.eval()
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, args.lq, args.lq)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    variants = {
        "fp32": (model, x, "fp32"),
        "bf16": (model, x, "bf16"),
        "fp32 channels-last": (model_cl, x_cl, "fp32"),
        "bf16 channels-last": (model_cl, x_cl, "bf16"),
    }
    print(
        f"{args.model}, LR {args.lq}², {torch.get_num_threads()} threads, native bf16: "
        f"{cpu_has_native_bf16()}, median of {args.repeat} interleaved runs"
    )
    print("| scale | variant | median s | output MP/s | time vs fp32 |")
    print("|---|---|---|---|---|")
    for s in args.scales:
        runs: dict[str, list[float]] = {v: [] for v in variants}
        px = 0
        with torch.inference_mode():
            for net, inp, prec in variants.values():  # warm-up
                with inference_precision(prec):
                    px = net(inp, scale=s).shape[-2:].numel()
            for _ in range(args.repeat):
                for name, (net, inp, prec) in variants.items():
                    t0 = time.perf_counter()
                    with inference_precision(prec):
                        net(inp, scale=s)
                    runs[name].append(time.perf_counter() - t0)
        base = statistics.median(runs["fp32"])
        for name, ts in runs.items():
            med = statistics.median(ts)
            print(f"| ×{s:g} | {name} | {med:.3f} | {px / med / 1e6:.2f} | {med / base:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
