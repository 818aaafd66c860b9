"""Many-phase scales, old code against new in one run (issue 27): the op alone and the bundled
photo model, interleaved.

Each round starts one worker per source tree (``--src`` given twice or more: the ``src``
folders of two checkouts), alternating, so a change in the machine's load hits every tree
alike; a worker times every case ``--reps`` times after one warm-up call and prints JSON. The
driver reports medians over all rounds, per-output-pixel ratios to ×4, and the ratios between
the trees. Usage (2 threads)::

    OMP_NUM_THREADS=2 python benchmarks/many_phase.py --src ../base/src --src src \\
        --rounds 3 --reps 2 --json /work/runs/many_phase.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: (name, x shape, scale, mode): the op with a default Pos2Weight, 64 → 3 channels; the cases
#: issue 27 states its targets on.
_SINGLE, _BATCH = ("1x64x128²", (1, 64, 128, 128)), ("16x64x48²", (16, 64, 48, 48))
OP_CASES = [
    (f"op {name} {s}", shape, s, mode)
    for (name, shape), s, mode in [
        *((_SINGLE, s, "fwd") for s in ("4", "2.3", "3.7", "2.37x3.13", "1.13x3.91")),
        *((_SINGLE, s, "fwdbwd") for s in ("4", "2.37x3.13")),
        (_BATCH, "4", "fwdbwd"),
        (_BATCH, "3.7", "fwdbwd"),
    ]
]
#: ``--quick``: the cases the old code is slowest at besides ×4, for a loaded machine.
QUICK_OP_CASES = [
    (f"op {name} {s}", shape, s, mode)
    for (name, shape), s, mode in [
        *((_SINGLE, s, "fwd") for s in ("4", "2.3", "3.7")),
        (_BATCH, "3.7", "fwdbwd"),
    ]
]
QUICK_MODEL_SCALES = ("4", "3.7")
#: The bundled photo model on a 200² RGB input, inference.
MODEL_SCALES = ("2", "4", "2.3", "3.7")


def _scale(s: str) -> float | tuple[float, float]:
    parts = [float(p) for p in s.split("x")]
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def worker(reps: int, quick: bool = False) -> dict[str, Any]:
    """Time every case in this process (the metasr on ``sys.path``)."""
    import torch

    import metasr
    from metasr.checkpoints import load_model

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    out: dict[str, Any] = {}

    def timed(fn) -> list[float]:
        fn()  # warm-up
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return ts

    torch.manual_seed(0)
    phi = metasr.Pos2Weight(64, 3, 3)
    for name, shape, s, mode in QUICK_OP_CASES if quick else OP_CASES:
        x = torch.randn(shape, requires_grad=mode == "fwdbwd")
        phi.requires_grad_(mode == "fwdbwd")

        def step(x=x, s=s, mode=mode) -> int:
            with torch.set_grad_enabled(mode == "fwdbwd"):
                y = metasr.meta_upscale(x, phi, scale=_scale(s))
                if mode == "fwdbwd":
                    y.backward(torch.ones_like(y))
                    x.grad = None
                    phi.zero_grad(set_to_none=True)
            return y.shape[-2] * y.shape[-1]

        px = step()
        out[f"{name} {mode}"] = {"times": timed(step), "out_px": px * shape[0]}
    model = load_model("default").model.eval()
    img = torch.rand(1, 3, 200, 200)
    for s in QUICK_MODEL_SCALES if quick else MODEL_SCALES:

        def infer(s=s) -> int:
            with torch.inference_mode():
                y = model(img, scale=_scale(s))
            return y.shape[-2] * y.shape[-1]

        px = infer()
        out[f"model default 200² {s}"] = {"times": timed(infer), "out_px": px}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", action="append", help="a checkout's src folder (give two or more)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="only the QUICK_* cases")
    p.add_argument("--json", default=None, help="write every time here (appended per round)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.reps, args.quick)))
        return 0
    if not args.src or len(args.src) < 2:
        p.error("give --src at least twice (old tree, new tree)")
    runs: dict[str, dict[str, list[float]]] = {s: {} for s in args.src}
    px: dict[str, int] = {}
    for r in range(args.rounds):
        for src in args.src:
            env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()))
            cmd = [sys.executable, __file__, "--worker", "--reps", str(args.reps)]
            cmd += ["--quick"] if args.quick else []
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            got = json.loads(res.stdout.strip().splitlines()[-1])
            for case, v in got.items():
                runs[src].setdefault(case, []).extend(v["times"])
                px[case] = v["out_px"]
            print(f"round {r + 1}/{args.rounds} {src} done", file=sys.stderr, flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"runs": runs, "out_px": px}, indent=1))
    report(runs, px, args.src)
    return 0


def report(runs: dict[str, dict[str, list[float]]], px: dict[str, int], srcs: list[str]) -> None:
    """Print medians (ms), ns per output pixel, ratio to ×4 and new/old time ratios."""
    old, new = srcs[0], srcs[-1]
    print("| case | old ms | new ms | old/new | new ns/px | new per px vs ×4 |")
    print("|---|---|---|---|---|---|")
    for case in runs[new]:
        mo = statistics.median(runs[old][case]) * 1e3
        mn = statistics.median(runs[new][case]) * 1e3
        ns = mn * 1e6 / px[case]
        if case.startswith("op "):
            parts = case.split(" ")
            x4 = " ".join(parts[:2] + ["4", parts[3]])
        else:
            x4 = case.rsplit(" ", 1)[0] + " 4"
        base = statistics.median(runs[new][x4]) * 1e9 / px[x4] if x4 in runs[new] else None
        rel = f"{ns / base:.2f}×" if base else ""
        print(f"| {case} | {mo:.0f} | {mn:.0f} | {mo / mn:.2f}× | {ns:.1f} | {rel} |")


if __name__ == "__main__":
    sys.exit(main())
