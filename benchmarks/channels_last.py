"""Channels-last inference per network of :func:`metasr.list_models` (issue 27), interleaved.

Variants per network (random weights from the registry, ``eval()``, ``inference_mode``):
``contiguous``; ``input`` (the input alone in channels-last memory format, the parameters as
loaded: PyTorch's CPU convolutions then run channels-last and reorder the weights per call);
``model+input`` (a channels-last copy of the model as well). Every repetition runs the three in
turn on the same input, so load hits them alike; medians, and the largest difference of the
outputs against ``contiguous`` relative to its largest magnitude. Usage::

    OMP_NUM_THREADS=2 python benchmarks/channels_last.py --repeat 5
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

import metasr
from metasr.checkpoints import load_model

#: LR side per network (the transformer and RDN are slow on a CPU at full width).
SIDES = {
    "meta_edsr": 96,
    "meta_edsr_tiny": 128,
    "meta_rdn": 48,
    "meta_swinir": 48,
    "default": 128,
    "t2m": 128,
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="registry names or bundled models (default: every registry name)",
    )
    p.add_argument("--scales", nargs="+", type=float, default=[4.0, 3.7])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    names = args.models or metasr.list_models()
    print(f"{torch.get_num_threads()} threads, medians of {args.repeat} interleaved runs")
    print(
        "| network | LR | scale | contiguous s | input channels-last | model+input | max rel diff |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in names:
        torch.manual_seed(0)
        model = load_model(name).model.eval()
        model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        side = SIDES.get(name, 64)
        cin = getattr(model, "in_channels", 3)
        x = torch.rand(1, cin, side, side)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        variants = {
            "contiguous": (model, x),
            "input": (model, x_cl),
            "model+input": (model_cl, x_cl),
        }
        for s in args.scales:
            runs: dict[str, list[float]] = {v: [] for v in variants}
            with torch.inference_mode():
                outs = {v: net(inp, scale=s) for v, (net, inp) in variants.items()}
                for _ in range(args.repeat):
                    for v, (net, inp) in variants.items():
                        t0 = time.perf_counter()
                        net(inp, scale=s)
                        runs[v].append(time.perf_counter() - t0)
            ref = outs["contiguous"]
            diff = max(float((o.float() - ref.float()).abs().max()) for o in outs.values()) / max(
                float(ref.abs().max()), 1e-12
            )
            base = statistics.median(runs["contiguous"])
            cells = [f"{base:.3f}"] + [
                f"{base / statistics.median(runs[v]):.2f}× faster" for v in ("input", "model+input")
            ]
            print(
                f"| {name} | {side}² | ×{s:g} | " + " | ".join(cells) + f" | {diff:.1e} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
