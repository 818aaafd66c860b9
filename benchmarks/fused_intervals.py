"""The fused CPU kernel of the intervals order of Meta-Upscale (issue 27): checks and timings.

The kernel and its host-side tables are the ``torch`` backend's opt-in "intervals" order,
:mod:`metasr.ops.meta_upscale.fused_cpu` (``METASR_CPU_KERNELS=1``; this script times its
forward; the order and its algebra are described there and in ``docs/design.md`` §3). This
script compiles it into a fresh, empty extensions folder (so the compile time it reports is a
real build), checks it against the spec (``backend="naive"``) in float64 on small inputs (exit 1
if it fails) and against the torch backend's other orders in float32 on 1×64×128², and times, in
one process with interleaved rounds (medians; wall and process CPU time), ×4 by
``metasr.meta_upscale`` (its per-phase order) and 2.37×3.13 and 1.13×3.91 by the torch backend
without this order and by the kernel (everything from the geometry on included, the host-side
tables also reported alone, and the kernel without its four-pixel blocking, "1 pixel at a
time").

Usage::

    OMP_NUM_THREADS=2 python benchmarks/fused_intervals.py --repeat 7
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import metasr
from metasr.geometry import Geometry, build_geometry
from metasr.ops.meta_upscale import fused_cpu
from metasr.ops.meta_upscale.params import MLPParams
from metasr.ops.meta_upscale.relu_domain import restrict_to_domain


def build_extension():
    """Compile the package's kernel into a fresh, empty extensions folder (a real compile, timed
    by the caller; the package itself builds into torch's extensions cache once)."""
    os.environ["TORCH_EXTENSIONS_DIR"] = tempfile.mkdtemp(prefix="metasr_fused_intervals_")
    os.environ[fused_cpu.ENV_VAR] = "1"
    return fused_cpu.load_extension()


def tables(x: torch.Tensor, params: MLPParams, geom: Geometry) -> dict:
    """Everything the kernel reads, built on the host (the "tables" part of the timing): the
    restriction, then :func:`metasr.ops.meta_upscale.fused_cpu.kernel_tables`."""
    return fused_cpu.kernel_tables(x, restrict_to_domain(params, geom), geom)


def torch_backend(x, phi, scale, intervals: bool) -> torch.Tensor:
    """``metasr.meta_upscale(..., backend="torch")`` with the intervals order allowed (the
    opt-in set) or not (the order the backend takes otherwise)."""
    os.environ[fused_cpu.ENV_VAR] = "1" if intervals else "0"
    return metasr.meta_upscale(x, phi, scale=scale, backend="torch")


def fused(ext, x, phi, scale, threads: int, blocked: bool = True) -> torch.Tensor:
    """The whole call: geometry, tables, kernel."""
    h, w = x.shape[-2:]
    geom = build_geometry(h, w, scale=scale)
    p = MLPParams.from_module(phi, x.dtype)
    t = tables(x, p, geom)
    y = torch.empty(x.shape[0], p.out_channels, geom.H, geom.W, dtype=x.dtype)
    return fused_cpu.run_kernel(ext, t, y, p.kernel_size, blocked)


def check(ext, threads: int) -> bool:
    """Float64 against the spec (small), float32 against the torch backend (1×64×128²)."""
    ok = True
    torch.manual_seed(1)
    phi64 = metasr.Pos2Weight(8, 3, 3).double()
    for sc in [(2.37, 3.13), (1.13, 3.91)]:
        for n, h, w in ((1, 13, 11), (2, 13, 11), (2, 24, 20)):
            x = torch.randn(n, 8, h, w, dtype=torch.float64)
            with torch.no_grad():
                ref = metasr.meta_upscale(x, phi64, scale=sc, backend="naive")
                for blocked in (False, True):
                    y = fused(ext, x, phi64, sc, threads, blocked)
                    err = (y - ref).abs().max().item()
                    ok &= err < 1e-10
                    print(
                        f"check float64 {n}x8x{h}x{w} {sc[0]}x{sc[1]} blocked={blocked}: max abs "
                        f"diff vs naive {err:.2e} (|ref| max {ref.abs().max():.2f})"
                    )
    torch.manual_seed(0)
    phi = metasr.Pos2Weight(64, 3, 3)
    x = torch.randn(1, 64, 128, 128)
    for sc in [(2.37, 3.13), (1.13, 3.91)]:
        with torch.no_grad():
            ref = torch_backend(x, phi, sc, intervals=False)
            y = fused(ext, x, phi, sc, threads)
        t = tables(x, MLPParams.from_module(phi, torch.float32), build_geometry(128, 128, scale=sc))
        print(
            f"check float32 1x64x128² {sc[0]}x{sc[1]}: max abs diff vs torch backend "
            f"{(y - ref).abs().max().item():.2e} (|ref| max {ref.abs().max():.2f}); "
            f"row phases {t['init'].shape[0] // 2}, restricted hidden {t['w2r'].shape[0]}, "
            f"switches {int(t['events'])}"
        )
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-time", action="store_true", help="compile and check only")
    args = ap.parse_args()
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    torch.set_num_threads(threads)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"commit {commit}, torch {torch.__version__}, {threads} threads")
    t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    ext = build_extension()
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"compile: {time.perf_counter() - t0:.1f} s wall, "
        f"{c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime:.1f} s CPU of the compiler"
    )
    shutil.rmtree(os.environ["TORCH_EXTENSIONS_DIR"], ignore_errors=True)  # loaded already
    if not check(ext, threads):
        print("FAILED: float64 check")
        return 1
    if args.no_time:
        return 0
    torch.manual_seed(0)
    phi = metasr.Pos2Weight(64, 3, 3)
    x = torch.randn(1, 64, 128, 128)
    scales = [(2.37, 3.13), (1.13, 3.91)]
    px = {4.0: 512 * 512}
    for s in scales:
        g = build_geometry(128, 128, scale=s)
        px[s] = g.H * g.W

    def run(case):
        v, s = case
        with torch.no_grad():
            if v == "fused":
                return torch_backend(x, phi, s, intervals=True)
            if v == "fused-simple":
                return fused(ext, x, phi, s, threads, blocked=False)
            if v == "tables":
                h, w = x.shape[-2:]
                return tables(x, MLPParams.from_module(phi, x.dtype), build_geometry(h, w, scale=s))
            return torch_backend(x, phi, s, intervals=False)

    cases = [("torch", 4.0)]
    cases += [(v, s) for s in scales for v in ("torch", "fused", "fused-simple", "tables")]
    wall: dict = {}
    cpu: dict = {}
    for c in cases:  # warm-up
        run(c)
    for _ in range(args.repeat):
        for c in cases:
            t0, c0 = time.perf_counter(), time.process_time()
            run(c)
            wall.setdefault(c, []).append(time.perf_counter() - t0)
            cpu.setdefault(c, []).append(time.process_time() - c0)
    print(f"{threads} threads, medians of {args.repeat} interleaved rounds, 1x64x128², k=3, 64→3")
    print("| case | ms | ns per output px | vs ×4 per px | CPU ms | CPU vs ×4 per px |")
    print("|---|---|---|---|---|---|")
    ref = statistics.median(wall[("torch", 4.0)]) / px[4.0]
    cref = statistics.median(cpu[("torch", 4.0)]) / px[4.0]
    for v, s in cases:
        t = statistics.median(wall[(v, s)])
        c = statistics.median(cpu[(v, s)])
        name = {"torch": "torch backend", "fused": "torch backend, intervals order"}.get(v, v)
        if v == "fused-simple":
            name = "fused kernel, 1 pixel at a time (all)"
        if v == "tables":
            name = "fused: host tables alone"
        sc = "×4" if s == 4.0 else f"{s[0]}×{s[1]}"
        print(
            f"| {sc} {name} | {t * 1e3:.1f} | {t * 1e9 / px[s]:.0f} | {t / px[s] / ref:.2f}× | "
            f"{c * 1e3:.1f} | {c / px[s] / cref:.2f}× |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
