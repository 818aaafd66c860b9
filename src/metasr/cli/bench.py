"""``metasr bench``: time and peak memory of the Meta-Upscale backends, side by side."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from . import CLIError
from ._outputs import check_output_file, check_outputs


def register(sub: argparse._SubParsersAction) -> None:
    from ..bench import CONFIGS

    p = sub.add_parser(
        "bench",
        help="benchmark the Meta-Upscale backends (time, peak memory)",
        description="Each measurement runs in a fresh subprocess; ratios are to the baseline "
        "backend of the same run. Configs: "
        + "; ".join(f"{k}: {v.description}" for k, v in CONFIGS.items()),
    )
    p.add_argument(
        "--config",
        default="div2k-x4,seed-t2m,train-b16",
        help="comma-separated config names, or 'all' (default: div2k-x4,seed-t2m,train-b16)",
    )
    p.add_argument(
        "--backends",
        default=None,
        help="comma-separated backends (default: im2col,torch,torch:features_first "
        "and triton on CUDA, plus weights_first,precomputed_weights for a deep-predictor "
        "config); compiled:NAME runs NAME through torch.compile",
    )
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when present, else cpu; default), cpu or cuda"
    )
    p.add_argument("--dtype", default="float32", help="comma-separated: float32,bfloat16,float16")
    p.add_argument("--mode", default=None, help="only this mode: fwd or fwdbwd")
    p.add_argument(
        "--baseline",
        default=None,
        help="backend the ratios refer to (default: im2col when measured, else the first backend)",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    p.add_argument("--json", default=None, help="write the full report (with machine) here")
    p.add_argument("--csv", default=None, help="write results as CSV here")
    p.add_argument("--plot", default=None, help="write a PNG bar chart here (needs matplotlib)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import (
        CONFIGS,
        TORCH_ORDERS,
        WEIGHTS_VARIANTS,
        format_table,
        is_known_variant,
        plot,
        run_benchmarks,
        write_csv,
    )
    from ..ops.meta_upscale.dispatch import BACKENDS

    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    configs = list(CONFIGS) if args.config == "all" else args.config.split(",")
    for c in configs:
        if c not in CONFIGS:
            raise CLIError(f"unknown config {c!r}; choose from {', '.join(CONFIGS)} or 'all'")
    if args.backends:
        backends = args.backends.split(",")
    else:
        backends = ["im2col", "torch", "torch:features_first"]
        if args.device.startswith("cuda"):
            backends.append("triton")
        if any(CONFIGS[c].predictor != "pos2weight" for c in configs):
            backends.extend(WEIGHTS_VARIANTS)
    for b in backends:
        if not is_known_variant(b, BACKENDS):
            raise CLIError(
                f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}, "
                f"{', '.join(TORCH_ORDERS)}, {', '.join(WEIGHTS_VARIANTS)}, or compiled:NAME"
            )
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CLIError("--device cuda but no CUDA device is available")
    elif args.device != "cpu":
        raise CLIError(f"--device must be cpu or cuda, got {args.device!r}")
    dtypes = tuple(args.dtype.split(","))
    for d in dtypes:
        if d not in ("float32", "float16", "bfloat16", "float64"):
            raise CLIError(f"unknown dtype {d!r}")
    if args.mode not in (None, "fwd", "fwdbwd"):
        raise CLIError(f"--mode must be fwd or fwdbwd, got {args.mode!r}")
    # Checked before the (long) benchmark runs, so a typo costs nothing.
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise CLIError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    if args.baseline is None:
        args.baseline = "im2col" if "im2col" in backends else backends[0]
    if args.baseline not in backends:
        raise CLIError(
            f"--baseline {args.baseline!r} is not among the measured backends "
            f"({', '.join(backends)})"
        )
    outputs = {"--json": args.json, "--csv": args.csv, "--plot": args.plot}
    for flag, dest in outputs.items():
        if dest:
            check_output_file(Path(dest), flag)
    check_outputs(outputs, [])  # two options naming one file
    from ..io import atomic_write_text

    report = run_benchmarks(
        configs,
        backends,
        device=args.device,
        dtypes=dtypes,
        modes=(args.mode,) if args.mode else None,
        timeout_s=args.timeout,
    )
    m = report["machine"]
    print(
        f"metasr bench — {m.get('gpu') or m.get('cpu', '?')} ({m['device']}, "
        f"{m['cpu_threads']} threads), torch {m['torch']}, commit {m['commit']}, {m['date']}"
    )
    print(format_table(report, baseline=args.baseline))
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2))
    if args.csv:
        write_csv(report, args.csv)
    if args.plot:
        plot(report, args.plot)
    return 0
