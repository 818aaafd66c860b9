"""Benchmark runner for the Meta-Upscale backends (``metasr bench``).

Every measurement runs in a fresh subprocess, so the peak memory of one backend cannot hide in
another's allocator cache: on CPU it is the peak RSS (``ru_maxrss``) minus the RSS after the
inputs were built and one step on a tiny input (so lazy imports and torch's first-call set-up are
not counted; op configs at a plain scale, not compiled variants); on CUDA
``max_memory_allocated`` minus the memory allocated before the call. Time is the median of
several runs after a warm-up (CUDA: events). Backends of one config run one after another in the
same invocation, so the ratios in the table are side by side.
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["CONFIGS", "BenchConfig", "run_benchmarks"]


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark problem.

    Attributes:
        x_shape: ``(N, Cin, h, w)`` of the LR features.
        call: ``{"scale": ...}`` or ``{"size": (H, W)}``.
        out_channels: ``Cout``.
        modes: ``"fwd"`` (inference, no autograd) and/or ``"fwdbwd"`` (forward + backward to the
            input and all MLP parameters).
        predictor: ``"pos2weight"`` (:class:`metasr.Pos2Weight`, Linear-ReLU-Linear),
            ``"gelu3"`` (``Pos2Weight(hidden_layers=2, activation="gelu")``: three linear layers,
            the last one linear, so the torch backend runs it features-first with its body per
            strip) or ``"deep"`` (:func:`deep_predictor`: three linear layers and a non-linear
            last layer, ``hidden`` wide, so only the weights-first paths apply).
        model: a bundled model's name (``"default"``): time the whole network on an RGB
            ``x_shape`` input instead of the op (``fwd``: inference; ``fwdbwd``: a training
            step's forward and backward); backends are set on its heads.
    """

    x_shape: tuple[int, int, int, int]
    call: dict[str, Any]
    out_channels: int
    modes: tuple[str, ...]
    description: str
    kernel_size: int = 3
    hidden: int = 256
    predictor: str = "pos2weight"
    model: str | None = None


CONFIGS: dict[str, BenchConfig] = {
    "div2k-x4": BenchConfig(
        (1, 64, 128, 128), {"scale": 4}, 3, ("fwd",), "RDN-width features of a DIV2K crop, x4"
    ),
    "seed-t2m": BenchConfig(
        (1, 156, 96, 144),
        {"size": (721, 1440)},
        1,
        ("fwd", "fwdbwd"),
        "the seed's SwinIR head: 96x144 -> 721x1440 (7.51 x 10), 1 channel",
    ),
    "train-b16": BenchConfig(
        (16, 64, 48, 48), {"scale": (2.5, 3.5)}, 3, ("fwdbwd",), "training batch, asymmetric"
    ),
    "4k-x4": BenchConfig(
        (1, 64, 540, 960), {"scale": 4}, 3, ("fwd",), "x4 to 2160x3840 (GPU-sized)"
    ),
    "deep-phi": BenchConfig(
        (4, 32, 48, 48),
        {"scale": (2.5, 3.5)},
        3,
        ("fwd", "fwdbwd"),
        "3-layer predictor (Linear-ReLU-Linear-ReLU-Linear-Tanh, hidden 64), batch 4, 2.5x3.5",
        hidden=64,
        predictor="deep",
    ),
    "gelu3-phi": BenchConfig(
        (4, 32, 48, 48),
        {"scale": (2.5, 3.5)},
        3,
        ("fwd", "fwdbwd"),
        "3-layer predictor with a linear last layer (Pos2Weight(hidden_layers=2, "
        "activation='gelu'), hidden 64), batch 4, 2.5x3.5",
        hidden=64,
        predictor="gelu3",
    ),
}

# Many-phase scales (issue 27): 2.3 and 3.7 have 23 and 37 distinct offsets per axis, 2.37×3.13
# and 1.13×3.91 hundreds; ×4 beside them for the cost per output pixel.
for _s, _call in (
    ("x4", {"scale": 4}),
    ("x2.3", {"scale": 2.3}),
    ("x3.7", {"scale": 3.7}),
    ("2.37x3.13", {"scale": (2.37, 3.13)}),
    ("1.13x3.91", {"scale": (1.13, 3.91)}),
):
    CONFIGS[f"phases-{_s}"] = BenchConfig(
        (1, 64, 128, 128), _call, 3, ("fwd", "fwdbwd"), f"1x64x128² → 3 channels, {_s}"
    )
for _s, _call in (
    ("x4", {"scale": 4}),
    ("x2.3", {"scale": 2.3}),
    ("x3.7", {"scale": 3.7}),
    ("2.37x3.13", {"scale": (2.37, 3.13)}),
    ("1.13x3.91", {"scale": (1.13, 3.91)}),
):
    CONFIGS[f"batch16-{_s}"] = BenchConfig(
        (16, 64, 48, 48), _call, 3, ("fwd", "fwdbwd"), f"training batch 16x64x48², {_s}"
    )
for _s, _call in (
    ("x2", {"scale": 2}),
    ("x4", {"scale": 4}),
    ("x2.3", {"scale": 2.3}),
    ("x3.7", {"scale": 3.7}),
    ("2.37x3.13", {"scale": (2.37, 3.13)}),
    ("1.13x3.91", {"scale": (1.13, 3.91)}),
):
    # The bundled models (whole network: inference, and a training step's forward + backward).
    for _model, _shape, _what in (
        ("default", (1, 3, 200, 200), "the bundled photo model on a 200² RGB input"),
        ("t2m", (1, 1, 96, 144), "the bundled 2 m temperature model on a 96x144 field"),
    ):
        if _model == "t2m" and _s == "x2":
            continue
        CONFIGS[f"model-{_model}-{_s}"] = BenchConfig(
            _shape, _call, _shape[1], ("fwd", "fwdbwd"), f"{_what}, {_s}", model=_model
        )

#: Benchmark-only variants for any predictor (:mod:`metasr.ops.meta_upscale.weights`):
#: ``weights_first`` predicts, contracts and frees the weights block by block;
#: ``precomputed_weights`` predicts all ``H·W`` weights first, then contracts them with
#: :func:`metasr.meta_upscale_weights` (no unfold, but the whole weight tensor). With a ``deep``
#: predictor ``im2col`` runs the published algorithm on it (all weights, unfold, bmm).
WEIGHTS_VARIANTS = ("weights_first", "precomputed_weights")


def deep_predictor(in_channels: int, out_channels: int, kernel_size: int, hidden: int):
    """A 3-layer weight predictor whose last layer is not linear (benchmarks only).

    ``Linear(4, hidden), ReLU, Linear(hidden, hidden), ReLU, Linear(hidden, k·k·Cin·Cout), Tanh``
    with the attributes of :class:`metasr.Pos2Weight` (``in_channels``, ``out_channels``,
    ``kernel_size``, ``num_pos``, ``pos_encoding``), asymmetric position encoding.
    """
    from torch import nn

    class DeepPredictor(nn.Sequential):
        pos_encoding = "asymmetric"
        num_pos = 4

    k = kernel_size
    phi = DeepPredictor(
        nn.Linear(4, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, k * k * in_channels * out_channels),
        nn.Tanh(),
    )
    phi.in_channels, phi.out_channels, phi.kernel_size = in_channels, out_channels, k
    return phi


@dataclass(frozen=True)
class _ModuleParams:
    """A predictor module seen as what :func:`.im2col.meta_upscale_im2col` reads of its
    ``params`` (``predict`` and the three sizes), so the baseline runs any predictor unchanged."""

    module: Any
    kernel_size: int
    in_channels: int
    out_channels: int

    def predict(self, pos):
        return self.module(pos)


#: Benchmark-only variants of the torch backend with its evaluation order forced.
TORCH_ORDERS = {
    "torch:features_first": "features_first",
    "torch:per_phase": "per_phase",
    "torch:grouped": "grouped",
}

#: Prefix of a benchmark-only variant that runs a backend through ``torch.compile`` (the
#: ``metasr::meta_upscale`` custom op): ``compiled:torch`` next to ``torch`` gives compiled vs
#: eager in one run. The warm-up run holds the compilation.
COMPILED_PREFIX = "compiled:"


def is_known_variant(name: str, backends: Iterable[str]) -> bool:
    """Whether ``name`` is a backend, a :data:`TORCH_ORDERS` or :data:`WEIGHTS_VARIANTS`
    variant, or ``compiled:<backend>``."""
    known = set(backends)
    if name.startswith(COMPILED_PREFIX):
        return name[len(COMPILED_PREFIX) :] in known
    return name in known or name in TORCH_ORDERS or name in WEIGHTS_VARIANTS


@dataclass
class Result:
    config: str
    mode: str
    backend: str
    dtype: str
    device: str
    ok: bool
    median_ms: float | None = None
    runs: int = 0
    peak_mib: float | None = None
    error: str | None = None


# --------------------------------------------------------------------------- worker side


def _rss_peak_bytes() -> int:
    """Peak resident set size of this process since the last :func:`_reset_rss_peak`."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _reset_rss_peak() -> None:
    """Restart the peak-RSS high-water mark at the current RSS (Linux ``clear_refs`` 5).

    Without it the peak of a measurement is hidden whenever importing torch and friends had
    briefly needed more memory than the measured step (seen: a 680 MiB import peak against a
    560 MiB im2col step, reported as 0). Where it is unsupported the import peak stays in.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one (config, mode, backend, dtype, device) in this process; return a Result."""
    import torch

    import metasr
    from metasr.geometry import build_geometry
    from metasr.ops.memory import OutOfMemoryError
    from metasr.ops.meta_upscale.im2col import meta_upscale_im2col
    from metasr.ops.meta_upscale.predictor import predictor_params
    from metasr.ops.meta_upscale.tables import positions_tensor
    from metasr.ops.meta_upscale.torch_chunked import meta_upscale_torch
    from metasr.ops.meta_upscale.weights import weights_first

    cfg = CONFIGS[spec["config"]]
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    mode, backend = spec["mode"], spec["backend"]
    res = Result(spec["config"], mode, backend, spec["dtype"], spec["device"], ok=False)
    torch.manual_seed(0)
    C, O, k = cfg.x_shape[1], cfg.out_channels, cfg.kernel_size
    deep = cfg.predictor == "deep"
    if deep:
        phi = deep_predictor(C, O, k, cfg.hidden)
    elif cfg.predictor == "gelu3":
        phi = metasr.Pos2Weight(C, O, k, cfg.hidden, hidden_layers=2, activation="gelu")
    else:
        phi = metasr.Pos2Weight(C, O, k, cfg.hidden)
    phi = phi.to(device=device, dtype=dtype)
    if deep and TORCH_ORDERS.get(backend) == "features_first":
        res.error = f"{backend}: needs a predictor whose last layer is linear"
        return asdict(res)
    x = torch.randn(cfg.x_shape, device=device, dtype=dtype)
    train = mode == "fwdbwd"
    if cfg.model is not None:
        return _model_worker(cfg, spec, res, x, train)
    x.requires_grad_(train)
    phi.requires_grad_(train)
    geom = build_geometry(x.shape[2], x.shape[3], **cfg.call)
    dy = torch.randn(cfg.x_shape[0], cfg.out_channels, geom.H, geom.W, device=device, dtype=dtype)

    def eager_op(inp: torch.Tensor) -> torch.Tensor:
        return metasr.meta_upscale(inp, phi, backend=op_backend, **cfg.call)

    op_backend = backend.removeprefix(COMPILED_PREFIX)
    op = (
        torch.compile(eager_op, fullgraph=True) if backend.startswith(COMPILED_PREFIX) else eager_op
    )

    def step_on(x: torch.Tensor, geom: Any, dy: torch.Tensor) -> None:
        """One forward (and backward) of the measured op on ``x`` (B, C, h, w)."""
        with torch.set_grad_enabled(train):
            if backend in TORCH_ORDERS:
                params = predictor_params(phi, dtype)
                y = meta_upscale_torch(x, params, geom, order=TORCH_ORDERS[backend])
            elif backend == "weights_first":
                y = weights_first(x, phi, geom, k, C, O)
            elif backend == "precomputed_weights":
                weight = phi(positions_tensor(geom, x))
                y = metasr.meta_upscale_weights(x, weight, **cfg.call, out_channels=O)
            elif backend == "im2col" and deep:
                y = meta_upscale_im2col(x, _ModuleParams(phi, k, C, O), geom)
            else:
                y = op(x)
            if train:
                y.backward(dy)
                x.grad = None
                phi.zero_grad(set_to_none=True)

    def step() -> None:
        step_on(x, geom, dy)

    def warm_up_small() -> None:
        """One step on a 1×C×6×6 input at the config's scale before the peak is reset, so that
        lazily imported modules and torch's first-call set-up (thread pools, kernel caches:
        ~16 MiB on CPU) are not counted as the measured step's memory. Compiled variants are
        not warmed this way (another shape would compile a second graph)."""
        if backend.startswith(COMPILED_PREFIX) or set(cfg.call) - {"scale"}:
            return
        small = torch.randn(1, C, 6, 6, device=device, dtype=dtype).requires_grad_(train)
        small_geom = build_geometry(6, 6, **cfg.call)
        small_dy = torch.randn(1, O, small_geom.H, small_geom.W, device=device, dtype=dtype)
        step_on(small, small_geom, small_dy)

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        try:
            warm_up_small()
        except Exception:  # noqa: BLE001 - the measured step below reports its own error
            pass
        _reset_rss_peak()
        base = _rss_peak_bytes()
    try:
        t0 = time.perf_counter()
        step()  # warm-up (and the only run when it is slow)
        if cuda:
            torch.cuda.synchronize()
        first = time.perf_counter() - t0
    except metasr.BackendUnavailableError as exc:
        # keep only this backend's line of the dispatcher's explanation
        reason = [ln for ln in str(exc).splitlines() if ln.strip().startswith(backend + ":")]
        res.error = reason[0].strip() if reason else str(exc).splitlines()[0]
        return asdict(res)
    except (OutOfMemoryError, MemoryError, RuntimeError, ValueError) as exc:
        # ValueError: e.g. a backend that refuses this config's predictor
        res.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return asdict(res)
    times = [first]
    if first < spec["slow_s"]:
        times = []
        deadline = time.perf_counter() + spec["min_time_s"]
        while len(times) < spec["max_runs"] and (
            len(times) < spec["min_runs"] or time.perf_counter() < deadline
        ):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(True)
                start.record()
                step()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss_peak_bytes() - base
    res.ok = True
    res.median_ms = statistics.median(times) * 1e3
    res.runs = len(times)
    res.peak_mib = max(peak, 0) / 2**20
    return asdict(res)


def _model_worker(
    cfg: BenchConfig, spec: dict[str, Any], res: Result, x: Any, train: bool
) -> dict[str, Any]:
    """Time the bundled network ``cfg.model`` on ``x`` (backend set on its heads)."""
    import torch

    from metasr.checkpoints import load_model, set_backend

    backend = spec["backend"]
    model = load_model(cfg.model, device=spec["device"], dtype=x.dtype).model
    try:
        set_backend(model, backend)
    except ValueError as exc:
        res.error = f"{backend}: {exc}"
        return asdict(res)
    model.train(train)
    model.requires_grad_(train)

    def step() -> None:
        with torch.set_grad_enabled(train), torch.inference_mode(not train):
            y = model(x, **cfg.call)
            if train:
                y.square().mean().backward()
                model.zero_grad(set_to_none=True)

    _reset_rss_peak()
    base = _rss_peak_bytes()
    step()  # warm-up
    times = []
    deadline = time.perf_counter() + spec["min_time_s"]
    while len(times) < spec["max_runs"] and (
        len(times) < spec["min_runs"] or time.perf_counter() < deadline
    ):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    res.ok = True
    res.median_ms = statistics.median(times) * 1e3
    res.runs = len(times)
    res.peak_mib = max(_rss_peak_bytes() - base, 0) / 2**20
    return asdict(res)


# --------------------------------------------------------------------------- driver side


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "device": device,
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


def run_benchmarks(
    configs: list[str],
    backends: list[str],
    device: str = "cpu",
    dtypes: tuple[str, ...] = ("float32",),
    modes: tuple[str, ...] | None = None,
    timeout_s: float = 900.0,
    min_runs: int = 3,
    max_runs: int = 15,
    min_time_s: float = 2.0,
    slow_s: float = 5.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every (config, mode, dtype, backend) in a fresh subprocess; return results + machine."""
    results: list[dict[str, Any]] = []
    for name in configs:
        cfg = CONFIGS[name]
        for mode in cfg.modes:
            if modes and mode not in modes:
                continue
            for dtype in dtypes:
                for backend in backends:
                    spec = {
                        "config": name,
                        "mode": mode,
                        "backend": backend,
                        "dtype": dtype,
                        "device": device,
                        "min_runs": min_runs,
                        "max_runs": max_runs,
                        "min_time_s": min_time_s,
                        "slow_s": slow_s,
                    }
                    if progress:
                        print(f"  {name} {mode} {dtype} {backend} ...", file=sys.stderr, flush=True)
                    results.append(_spawn(spec, timeout_s))
    return {"machine": machine_info(device), "results": results}


def _spawn(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "metasr.bench", "--worker", json.dumps(spec)]
    fail = asdict(
        Result(spec["config"], spec["mode"], spec["backend"], spec["dtype"], spec["device"], False)
    )
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        fail["error"] = f"timed out after {timeout_s:.0f} s"
        return fail
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        killed = out.returncode in (-9, 137)
        fail["error"] = "killed (out of memory?)" if killed else f"crashed: {tail[:200]}"
        return fail
    return json.loads(lines[-1])


def format_table(report: dict[str, Any], baseline: str = "im2col") -> str:
    """Markdown table with time and peak memory, and ratios to ``baseline`` from the same run."""
    rows = report["results"]
    base = {
        (r["config"], r["mode"], r["dtype"]): r
        for r in rows
        if r["backend"] == baseline and r["ok"]
    }
    out = [
        "| config | mode | dtype | backend | median time | peak memory | speed-up vs "
        f"{baseline} | memory vs {baseline} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = base.get((r["config"], r["mode"], r["dtype"]))
        if not r["ok"]:
            out.append(
                f"| {r['config']} | {r['mode']} | {r['dtype']} | {r['backend']} | — | — | "
                f"{r['error']} | |"
            )
            continue
        speed = mem = ""
        if b is not None and r is not b:
            speed = f"{b['median_ms'] / r['median_ms']:.1f}×"
            mem = _fmt_memory_ratio(r["peak_mib"], b["peak_mib"])
        out.append(
            f"| {r['config']} | {r['mode']} | {r['dtype']} | {r['backend']} | "
            f"{_fmt_ms(r['median_ms'])} (n={r['runs']}) | {r['peak_mib']:.0f} MiB | "
            f"{speed} | {mem} |"
        )
    return "\n".join(out)


def _fmt_memory_ratio(peak_mib: float, base_mib: float) -> str:
    """``1/N`` when ``peak_mib`` is N times smaller than the baseline's, ``N×`` when larger."""
    if peak_mib <= 0 or base_mib <= 0:
        return ""
    if peak_mib <= base_mib:
        return f"1/{base_mib / peak_mib:.0f}"
    return f"{peak_mib / base_mib:.1f}×"


def _fmt_ms(ms: float) -> str:
    return f"{ms / 1e3:.2f} s" if ms >= 1000 else f"{ms:.1f} ms"


def write_csv(report: dict[str, Any], path: str | Path) -> None:
    import csv
    import io

    from .io import atomic_write_text

    keys = ["config", "mode", "backend", "dtype", "device", "ok", "median_ms", "runs", "peak_mib"]
    buffer = io.StringIO(newline="")
    w = csv.DictWriter(buffer, fieldnames=[*keys, "error"])
    w.writeheader()
    for r in report["results"]:
        w.writerow({k: r.get(k) for k in [*keys, "error"]})
    atomic_write_text(path, buffer.getvalue())


def plot(report: dict[str, Any], path: str | Path) -> None:
    """Bar charts of time and peak memory per config and backend (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ValueError("--plot needs matplotlib: pip install matplotlib") from exc
    rows = [r for r in report["results"] if r["ok"]]
    labels = sorted({f"{r['config']}\n{r['mode']} {r['dtype']}" for r in rows})
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(backends), 1)
    for ax, key, title in ((axes[0], "median_ms", "time (ms)"), (axes[1], "peak_mib", "peak MiB")):
        for k, b in enumerate(backends):
            vals = []
            for lab in labels:
                match = [
                    r[key]
                    for r in rows
                    if r["backend"] == b and f"{r['config']}\n{r['mode']} {r['dtype']}" == lab
                ]
                vals.append(match[0] if match else 0)
            ax.bar([i + k * width for i in range(len(labels))], vals, width, label=b)
        ax.set_yscale("log")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, fontsize=8)
        ax.set_title(title)
    axes[0].legend()
    m = report["machine"]
    fig.suptitle(f"metasr bench — {m.get('gpu') or m.get('cpu', '')} — {m['date']} {m['commit']}")
    fig.tight_layout()
    from .io import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))


if __name__ == "__main__":  # worker entry: python -m metasr.bench --worker '{json}'
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(json.loads(sys.argv[2]))), flush=True)
    else:
        print("use `metasr bench`", file=sys.stderr)
        sys.exit(2)
