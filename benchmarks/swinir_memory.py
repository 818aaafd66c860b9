"""Peak memory of ONE MetaSwinIR training step at the climate seed configuration, per backend.

The seed: a 1-channel 96×144 input upsampled to 721×1440 (×7.5104 × ×10) by a SwinIR encoder
(embed_dim 156, 6 RSTBs of depth 6, 6 heads, window 8, mlp_ratio 2) with a Meta-Upscale head.
One step = forward + L1 loss + backward (no optimizer). Each backend runs in a FRESH subprocess:

* CPU: peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) after the step minus the same
  figure after importing torch and building the model and batch (the baseline).
* CUDA: ``torch.cuda.max_memory_allocated`` during the step minus ``memory_allocated`` before.

Usage::

    python benchmarks/swinir_memory.py                       # CPU, im2col vs torch
    python benchmarks/swinir_memory.py --device cuda         # adds triton if available
    python benchmarks/swinir_memory.py --device cuda --find-max-embed-dim --budget-gib 24
    python benchmarks/swinir_memory.py --embed-dim 48 --depths 2 2 --json out.json   # quick look

A backend that the dispatcher refuses (its estimate exceeds free memory) is reported as "does not
fit" with the dispatcher's reason; a worker killed by the OS (out of memory) as "killed".
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_TAG = "RESULT "


# ------------------------------------------------------------------------------------------
# worker: one measurement, in its own process
# ------------------------------------------------------------------------------------------


def _maxrss_bytes() -> int:
    # Linux reports KiB, macOS bytes.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def _worker(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from metasr import BackendUnavailableError
    from metasr.archs import MetaSwinIR
    from metasr.ops.memory import OutOfMemoryError

    device = torch.device(cfg["device"])
    torch.manual_seed(0)
    if device.type == "cuda" and cfg.get("budget_gib"):
        # Emulate a smaller card: allocations beyond the budget fail like a real OOM.
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cfg["budget_gib"] * 2**30 / total))
    model = MetaSwinIR(
        img_size=tuple(cfg["input"]),
        in_chans=cfg["channels"],
        embed_dim=cfg["embed_dim"],
        depths=cfg["depths"],
        num_heads=cfg["num_heads"],
        window_size=cfg["window_size"],
        mlp_ratio=cfg["mlp_ratio"],
        use_checkpoint=cfg["use_checkpoint"],
        upsample={"backend": cfg["backend"]},
    ).to(device)
    model.train()
    x = torch.rand(cfg["batch"], cfg["channels"], *cfg["input"], device=device)
    target = torch.rand(cfg["batch"], cfg["channels"], *cfg["size"], device=device)
    n_params = sum(p.numel() for p in model.parameters())

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        baseline = _maxrss_bytes()

    out: dict[str, Any] = {"backend": cfg["backend"], "params": n_params}
    t0 = time.perf_counter()
    try:
        y = model(x, size=tuple(cfg["size"]))
        loss = F.l1_loss(y, target)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except BackendUnavailableError as exc:
        out.update(status="does not fit", reason=_reason(exc, cfg["backend"]))
        return out
    except OutOfMemoryError as exc:
        out.update(status="out of memory", reason=str(exc).splitlines()[0])
        return out
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        out["reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    else:
        peak = _maxrss_bytes()
    out.update(
        status="ok",
        baseline_bytes=baseline,
        peak_bytes=peak,
        step_bytes=peak - baseline,
        seconds=round(seconds, 2),
        loss=float(loss),
    )
    return out


def _reason(exc: Exception, backend: str) -> str:
    """The refused backend's own line of a BackendUnavailableError message."""
    lines = [ln.strip() for ln in str(exc).splitlines()]
    return next((ln for ln in lines if ln.startswith(f"{backend}:")), lines[0])


# ------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------


def run_fresh(cfg: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter and parse its result line."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"backend": cfg["backend"], "status": "timed out", "reason": f">{timeout}s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    if proc.returncode < 0:
        status, reason = "killed", f"signal {-proc.returncode} (likely out of memory)"
    else:
        status, reason = "error", (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"backend": cfg["backend"], "status": status, "reason": reason}


def _environment(device: str) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            env["cpu"] = next(
                ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")
            )
        with open("/proc/meminfo") as fh:
            for ln in fh:
                if ln.startswith(("MemTotal:", "MemAvailable:")):
                    key = "ram_total_gib" if ln.startswith("MemTotal") else "ram_available_gib"
                    env[key] = round(int(ln.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = props.name
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
        env["commit"] = sha + ("+dirty" if dirty else "")
    except OSError:
        pass
    return env


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:,.0f}"


def print_table(results: list[dict[str, Any]], device: str) -> None:
    what = "peak RSS - baseline RSS" if device == "cpu" else "max_allocated - allocated before"
    print(f"\nstep MiB = {what}; baseline = after building the model and batch")
    print(f"{'backend':<10} {'status':<14} {'step MiB':>10} {'baseline MiB':>13} {'s':>7}")
    for r in results:
        print(
            f"{r['backend']:<10} {r['status']:<14} {_mib(r.get('step_bytes')):>10} "
            f"{_mib(r.get('baseline_bytes')):>13} {r.get('seconds', '-'):>7}"
        )
        if r["status"] != "ok":
            print(f"    {r.get('reason', '')}")


def find_max_embed_dim(base: dict[str, Any], backend: str, hi: int) -> dict[str, Any]:
    """Largest embed_dim (a multiple of every head count) whose step fits the budget."""
    import math

    step = math.lcm(*base["num_heads"])
    lo_k, hi_k = 0, hi // step  # invariant: lo_k fits (0 = nothing known to fit)
    trials = []
    while lo_k < hi_k:
        mid = (lo_k + hi_k + 1) // 2
        r = run_fresh({**base, "backend": backend, "embed_dim": mid * step})
        trials.append({"embed_dim": mid * step, **r})
        peak = _mib(r.get("peak_bytes"))
        print(f"  {backend}: embed_dim {mid * step:4d} -> {r['status']} {peak} MiB", flush=True)
        if r["status"] == "ok":
            lo_k = mid
        else:
            hi_k = mid - 1
    return {"backend": backend, "max_embed_dim": lo_k * step, "trials": trials}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backends", nargs="+", default=None, help="default: im2col torch (+triton)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--input", type=int, nargs=2, default=[96, 144], metavar=("h", "w"))
    p.add_argument("--size", type=int, nargs=2, default=[721, 1440], metavar=("H", "W"))
    p.add_argument("--embed-dim", type=int, default=156)
    p.add_argument("--depths", type=int, nargs="+", default=[6] * 6)
    p.add_argument("--num-heads", type=int, nargs="+", default=None, help="default: 6 per RSTB")
    p.add_argument("--window-size", type=int, default=8)
    p.add_argument("--mlp-ratio", type=float, default=2.0)
    p.add_argument("--use-checkpoint", action="store_true", help="recompute Swin blocks")
    p.add_argument("--find-max-embed-dim", action="store_true", help="GPU only")
    p.add_argument("--budget-gib", type=float, default=24.0, help="card size to emulate (GPU)")
    p.add_argument("--max-embed-dim", type=int, default=768)
    p.add_argument("--timeout", type=float, default=3600.0, help="per worker, seconds")
    p.add_argument("--json", default=None, help="also write the JSON report here")
    args = p.parse_args(argv)

    if args.worker:
        print(RESULT_TAG + json.dumps(_worker(json.loads(args.worker))), flush=True)
        return 0

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device is available")
    elif args.find_max_embed_dim:
        p.error("--find-max-embed-dim needs --device cuda (CPU has no fixed card size)")
    backends = args.backends
    if backends is None:
        backends = ["im2col", "torch"]
        if args.device == "cuda":
            import importlib.util

            if importlib.util.find_spec("triton") is not None:
                backends.append("triton")
    num_heads = args.num_heads or [6] * len(args.depths)
    base = {
        "device": args.device,
        "batch": args.batch,
        "channels": args.channels,
        "input": args.input,
        "size": args.size,
        "embed_dim": args.embed_dim,
        "depths": args.depths,
        "num_heads": num_heads,
        "window_size": args.window_size,
        "mlp_ratio": args.mlp_ratio,
        "use_checkpoint": args.use_checkpoint,
    }
    report: dict[str, Any] = {"environment": _environment(args.device), "config": base}
    print(json.dumps(report["environment"]))
    print(
        f"MetaSwinIR step: batch {args.batch}, {args.channels}x{args.input[0]}x{args.input[1]}"
        f" -> {args.size[0]}x{args.size[1]}, embed_dim {args.embed_dim}, depths {args.depths},"
        f" heads {num_heads}, window {args.window_size}, mlp_ratio {args.mlp_ratio:g},"
        f" device {args.device}",
        flush=True,
    )

    if args.find_max_embed_dim:
        base["budget_gib"] = args.budget_gib
        print(f"largest embed_dim whose step fits {args.budget_gib:g} GiB:")
        report["find_max_embed_dim"] = [
            find_max_embed_dim(base, b, args.max_embed_dim) for b in backends
        ]
        for r in report["find_max_embed_dim"]:
            print(f"  {r['backend']:<8} max embed_dim {r['max_embed_dim']}")
    else:
        results = []
        for b in backends:
            print(f"running {b} ...", flush=True)
            results.append(run_fresh({**base, "backend": b}, timeout=args.timeout))
        report["results"] = results
        print_table(results, args.device)

    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
