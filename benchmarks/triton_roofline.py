"""Roofline of the ``triton`` backend on one CUDA device: is the contraction bandwidth-bound?

Measures, with CUDA events (median of ``--reps`` runs, L2 flushed before each run):

* the card's copy bandwidth (``dst.copy_(src)`` of a large buffer: bytes read + written / time);
* per config and dtype: the Z convolution alone (cuDNN), the forward contraction kernel alone
  (effective bandwidth = bytes of ``Z`` read + ``y`` written, as a fraction of the copy
  bandwidth), the backward kernels alone, the whole ``triton`` forward, and ``im2col``'s forward
  with the peak memory of both;

and checks the targets of the issue (H100/H200): on ``div2k-x4`` forward, ``triton`` ≥ 20×
faster than ``im2col`` and ≤ 1/50 of its peak memory; contraction ≥ 50 % of copy bandwidth;
whole op ≤ 2× the Z convolution alone. Prints a table and a PASS/FAIL line per target, writes
everything as JSON with ``--json``; ``--strict`` exits non-zero if a target is missed.

Usage::

    python benchmarks/triton_roofline.py [--configs div2k-x4,4k-x4] [--dtypes float32,bfloat16]
        [--reps 20] [--json OUT.json] [--strict]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch

import metasr
from metasr.bench import CONFIGS, machine_info
from metasr.geometry import build_geometry
from metasr.ops.memory import OutOfMemoryError
from metasr.ops.meta_upscale.params import MLPParams, features_first_z

#: Issue targets (on H100/H200).
MIN_SPEEDUP_VS_IM2COL = 20.0
MAX_MEMORY_FRACTION_OF_IM2COL = 1 / 50
MIN_FRACTION_OF_COPY_BANDWIDTH = 0.5
MAX_WHOLE_OVER_CONV = 2.0

#: Bytes written to evict the L2 cache (50 MiB on H100, 60 MiB on H200) before each timed run,
#: so that a Z of L2 size is not re-read from cache.
_FLUSH_BYTES = 256 << 20


def time_ms(fn: Callable[[], Any], reps: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn`` over ``reps`` CUDA-event-timed runs, L2 flushed each time."""
    flush = torch.empty(_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        flush.zero_()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_mib(fn: Callable[[], Any]) -> float:
    """Peak CUDA memory ``fn`` allocates beyond what is already allocated, in MiB."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def copy_bandwidth_gbs(reps: int, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth (read + write) in GB/s."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), reps)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def kernel_timings(
    x: torch.Tensor, params: MLPParams, geom: Any, reps: int, copy_gbs: float
) -> dict[str, float]:
    """The Z convolution and each contraction kernel alone (inputs prepared once)."""
    from metasr.ops.meta_upscale import triton_fused as tf

    hid, O = params.hidden, params.out_channels
    z = features_first_z(x, params)
    ac, bc, maps = tf._first_layer(params, geom, x.device)
    y = tf._launch_fwd(z, ac, bc, maps, hid, O)
    dy = torch.randn_like(y)
    out = {"conv_ms": time_ms(lambda: features_first_z(x, params), reps)}
    out["contraction_ms"] = time_ms(lambda: tf._launch_fwd(z, ac, bc, maps, hid, O), reps)
    moved = z.numel() * z.element_size() + y.numel() * y.element_size()
    out["contraction_gbs"] = moved / (out["contraction_ms"] * 1e-3) / 1e9
    out["contraction_fraction_of_copy"] = out["contraction_gbs"] / copy_gbs
    out["bwd_dz_ms"] = time_ms(lambda: tf._launch_dz(dy, ac, bc, maps, z, hid, O), reps)
    out["bwd_dpre_ms"] = time_ms(lambda: tf._launch_dpre(z, dy, ac, bc, maps, hid, O), reps)
    return out


def measure(config: str, dtype_name: str, reps: int, copy_gbs: float) -> dict[str, Any]:
    """All timings and memory figures of one (config, dtype)."""
    cfg = CONFIGS[config]
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    phi = metasr.Pos2Weight(cfg.x_shape[1], cfg.out_channels, cfg.kernel_size, cfg.hidden)
    phi = phi.to(device="cuda", dtype=dtype).requires_grad_(False)
    x = torch.randn(cfg.x_shape, device="cuda", dtype=dtype)
    geom = build_geometry(x.shape[2], x.shape[3], **cfg.call)
    params = MLPParams.from_module(phi, dtype)
    out: dict[str, Any] = {"config": config, "dtype": dtype_name, "H": geom.H, "W": geom.W}

    with torch.no_grad():
        out.update(kernel_timings(x, params, geom, reps, copy_gbs))

        def run(backend: str) -> Callable[[], Any]:
            return lambda: metasr.meta_upscale(x, phi, backend=backend, **cfg.call)

        out["triton_ms"] = time_ms(run("triton"), reps)
        out["triton_peak_mib"] = peak_mib(run("triton"))
        out["whole_over_conv"] = out["triton_ms"] / out["conv_ms"]
        try:
            out["im2col_peak_mib"] = peak_mib(run("im2col"))
            out["im2col_ms"] = time_ms(run("im2col"), max(3, reps // 4), warmup=1)
            out["speedup_vs_im2col"] = out["im2col_ms"] / out["triton_ms"]
            out["memory_fraction_of_im2col"] = out["triton_peak_mib"] / out["im2col_peak_mib"]
        except (metasr.BackendUnavailableError, OutOfMemoryError) as exc:
            out["im2col_error"] = str(exc).strip().splitlines()[-1][:200]
        torch.cuda.empty_cache()
    return out


def check_targets(rows: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """``(target, passed, measured)`` for every row a target applies to."""
    checks = []
    for r in rows:
        tag = f"{r['config']} {r['dtype']}"
        f = r["contraction_fraction_of_copy"]
        checks.append(
            (
                f"{tag}: contraction >= 50% of copy bandwidth",
                f >= MIN_FRACTION_OF_COPY_BANDWIDTH,
                f"{100 * f:.0f}%",
            )
        )
        q = r["whole_over_conv"]
        checks.append((f"{tag}: whole op <= 2x Z conv", q <= MAX_WHOLE_OVER_CONV, f"{q:.2f}x"))
        if r["config"] == "div2k-x4" and "speedup_vs_im2col" in r:
            s, m = r["speedup_vs_im2col"], r["memory_fraction_of_im2col"]
            checks.append(
                (f"{tag}: >= 20x faster than im2col", s >= MIN_SPEEDUP_VS_IM2COL, f"{s:.1f}x")
            )
            checks.append(
                (
                    f"{tag}: <= 1/50 of im2col peak memory",
                    m <= MAX_MEMORY_FRACTION_OF_IM2COL,
                    f"1/{1 / m:.0f}" if m > 0 else "0",
                )
            )
    return checks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="div2k-x4,4k-x4", help="names from metasr.bench.CONFIGS")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("triton_roofline: needs a CUDA device", file=sys.stderr)
        return 2
    configs = args.configs.split(",")
    for c in configs:
        if c not in CONFIGS:
            print(f"triton_roofline: unknown config {c!r} ({', '.join(CONFIGS)})", file=sys.stderr)
            return 2

    copy_gbs = copy_bandwidth_gbs(args.reps)
    rows = [measure(c, d, args.reps, copy_gbs) for c in configs for d in args.dtypes.split(",")]
    info = machine_info("cuda")
    print(
        f"triton roofline — {info.get('gpu')}, torch {info['torch']}, triton "
        f"{info.get('triton')}, commit {info['commit']}, {info['date']}"
    )
    print(f"copy bandwidth: {copy_gbs:.0f} GB/s")
    print(
        "| config | dtype | conv | contraction (GB/s, % copy) | bwd dZ | bwd dpre | triton fwd "
        "| im2col fwd | triton / im2col peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        im2col = f"{r['im2col_ms']:.3f} ms" if "im2col_ms" in r else r.get("im2col_error", "-")
        peaks = f"{r['triton_peak_mib']:.0f} / {r.get('im2col_peak_mib', float('nan')):.0f}"
        print(
            f"| {r['config']} | {r['dtype']} | {r['conv_ms']:.3f} ms | {r['contraction_ms']:.3f} "
            f"ms ({r['contraction_gbs']:.0f}, {100 * r['contraction_fraction_of_copy']:.0f}%) "
            f"| {r['bwd_dz_ms']:.3f} ms | {r['bwd_dpre_ms']:.3f} ms | {r['triton_ms']:.3f} ms "
            f"| {im2col} | {peaks} |"
        )
    checks = check_targets(rows)
    for name, ok, measured in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}  (measured {measured})")
    if args.json:
        report = {
            "machine": info,
            "copy_gbs": copy_gbs,
            "rows": rows,
            "targets": [{"target": n, "pass": ok, "measured": m} for n, ok, m in checks],
        }
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return 1 if args.strict and not all(ok for _, ok, _ in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
