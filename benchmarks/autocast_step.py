"""Training-step time of a Meta-EDSR in bfloat16 autocast against float32, side by side.

What ``train: {autocast: bfloat16}`` (``MetaSRModel``) buys on this machine: one Adam step
(forward, L1 loss on the float32 output, backward, update) of the photo model's network
(Meta-EDSR 12 × 48, bicubic residual) on a batch of random LR patches, at a few scales and patch
sizes. For each case the two precisions alternate step by step (so a shared machine's load
falls on both alike); the table gives each one's median over ``--steps`` steps (after one
warm-up step each) and the ratio bfloat16 / float32.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/autocast_step.py [--steps 5] [--batch 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from metasr.archs import MetaEDSR

#: (LR patch side, (r_v, r_h)): symmetric, asymmetric, near-identity and the largest scale.
CASES = [(40, (2.5, 2.5)), (40, (3.7, 1.3)), (40, (1.1, 1.1)), (48, (4.0, 4.0)), (32, (2.0, 2.0))]


def step(
    net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, scale, amp
) -> float:
    """One training step; returns its wall time in seconds."""
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = net(x, scale=scale)
    loss = (out.float() - y).abs().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per precision")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    net = MetaEDSR(n_resblocks=12, n_feats=48, img_range=1.0, bicubic_residual=True)
    opt = torch.optim.Adam(net.parameters(), 1e-5)
    rows = []
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"{'LR patch':>8} {'scale':>10} {'float32 s':>10} {'bfloat16 s':>10} {'ratio':>6}")
    for p, (rv, rh) in CASES:
        x = torch.rand(args.batch, 3, p, p)
        y = torch.rand(args.batch, 3, int(p * rv + 1e-6), int(p * rh + 1e-6))
        times: dict[bool, list[float]] = {False: [], True: []}
        for amp in (False, True):  # warm-up
            step(net, opt, x, y, (rv, rh), amp)
        for _ in range(args.steps):
            for amp in (False, True):
                times[amp].append(step(net, opt, x, y, (rv, rh), amp))
        fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
        rows.append(dict(patch=p, scale=[rv, rh], float32_s=fp32, bfloat16_s=bf16))
        print(f"{p:>8} {f'{rv}x{rh}':>10} {fp32:>10.3f} {bf16:>10.3f} {bf16 / fp32:>6.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(threads=torch.get_num_threads(), batch=args.batch, rows=rows), fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
