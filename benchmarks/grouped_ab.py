"""The phase-grouped order against the dispatch without it, in one process, interleaved.

``without``: :func:`metasr.ops.meta_upscale.phase_grouped.prefer_grouped` patched to refuse, so
the torch backend picks per-phase / features-first as before issue 27 (today's code's choice);
``with``: the current dispatch. Each repetition runs every case under both, alternating, so a
loaded machine slows both alike; medians, ns per output pixel, and per-pixel ratios to ×4.
Usage::

    OMP_NUM_THREADS=2 python benchmarks/grouped_ab.py --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from unittest import mock

import torch

import metasr
from metasr.checkpoints import load_model
from metasr.ops.meta_upscale import torch_chunked

CASES = [
    ("op 1x64x128² ×4 fwd", "op", (1, 64, 128, 128), 4.0, False),
    ("op 1x64x128² ×2.3 fwd", "op", (1, 64, 128, 128), 2.3, False),
    ("op 1x64x128² ×3.7 fwd", "op", (1, 64, 128, 128), 3.7, False),
    ("op 1x64x128² ×4 step", "op", (1, 64, 128, 128), 4.0, True),
    ("op 1x64x128² ×3.7 step", "op", (1, 64, 128, 128), 3.7, True),
    ("op 16x64x48² ×3.7 step", "op", (16, 64, 48, 48), 3.7, True),
    ("model 200² ×2", "model", (1, 3, 200, 200), 2.0, False),
    ("model 200² ×4", "model", (1, 3, 200, 200), 4.0, False),
    ("model 200² ×2.3", "model", (1, 3, 200, 200), 2.3, False),
    ("model 200² ×3.7", "model", (1, 3, 200, 200), 3.7, False),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--only", nargs="+", help="run only the cases whose names are given")
    args = p.parse_args()
    cases = [c for c in CASES if not args.only or c[0] in args.only]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    torch.manual_seed(0)
    phi = metasr.Pos2Weight(64, 3, 3)
    model = load_model("default").model.eval()

    def run(kind, shape, scale, train) -> int:
        if kind == "model":
            with torch.inference_mode():
                y = model(torch.rand(shape), scale=scale)
            return y.shape[-2] * y.shape[-1]
        x = torch.randn(shape, requires_grad=train)
        phi.requires_grad_(train)
        with torch.set_grad_enabled(train):
            y = metasr.meta_upscale(x, phi, scale=scale)
            if train:
                y.backward(torch.ones_like(y))
                phi.zero_grad(set_to_none=True)
        return y.shape[0] * y.shape[-2] * y.shape[-1]

    off = mock.patch.object(torch_chunked, "prefer_grouped", lambda *a, **k: False)
    times: dict[tuple[str, str], list[float]] = {}
    px: dict[str, int] = {}
    for name, kind, shape, scale, train in cases:
        for variant in ("without", "with"):  # warm-up
            with off if variant == "without" else contextlib.nullcontext():
                px[name] = run(kind, shape, scale, train)
        for _ in range(args.repeat):
            for variant in ("without", "with"):
                with off if variant == "without" else contextlib.nullcontext():
                    t0 = time.perf_counter()
                    run(kind, shape, scale, train)
                    times.setdefault((name, variant), []).append(time.perf_counter() - t0)
        print(f"{name}: done", flush=True)
    print(f"{torch.get_num_threads()} threads, median of {args.repeat} interleaved runs")
    print("| case | without (today's choice) ms | with ms | speed-up | with: ns/px | vs ×4 |")
    print("|---|---|---|---|---|---|")
    for name, *_ in cases:
        a = statistics.median(times[(name, "without")]) * 1e3
        b = statistics.median(times[(name, "with")]) * 1e3
        ns = b * 1e6 / px[name]
        ref = name.split(" ×")[0] + " ×4 " + name.rsplit(" ", 1)[1]
        if name.startswith("model"):
            ref = name.split(" ×")[0] + " ×4"
        base = times.get((ref, "with"))
        rel = ""
        if base:
            rel = f"{ns / (statistics.median(base) * 1e9 / px[ref]):.2f}×"
        print(f"| {name} | {a:.0f} | {b:.0f} | {a / b:.2f}× | {ns:.0f} | {rel} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
