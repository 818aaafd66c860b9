"""Pick the bundled photo model's backbone by measurement (issue 13, part 2).

Two measurements, each over the candidate networks of :data:`CANDIDATES` (all with a bicubic
residual, inputs in ``[0, 1]``, the asymmetric Meta-Upscale head):

``speed``
    Inference speed at ×4 (output megapixels per second) and the size of the safetensors file
    each would ship as. The candidates are timed *interleaved* (one run of each, then the next
    round), so on a shared machine they see the same load; the table gives each one's median and
    its ratio to the first candidate.
``train NAME``
    A short training of one candidate on ``datasets/photos/train`` for a budget of *process CPU
    seconds* (``time.process_time``: with one thread that is the CPU the run actually got, so
    runs sharing a loaded machine stay comparable), with the data settings of the photo option
    file, Adam and a cosine decay over the budget, then Y-PSNR against bicubic on crops of the
    validation photos (:func:`metasr.evaluate.evaluate`). Short runs only rank candidates
    roughly: a larger network is further from convergence after a few minutes.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/photo_candidates.py speed --json speed.json
    OMP_NUM_THREADS=1 python benchmarks/photo_candidates.py train edsr_12x48 --cpu-seconds 300 \\
        --json edsr_12x48.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from metasr.archs import create_model
from metasr.checkpoints import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
OPTION_FILE = ROOT / "options/train/MetaEDSR_photo_default.yml"

#: name → (registry name, constructor arguments). The first is the previous default's network.
CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "edsr_6x32": ("meta_edsr", {"n_resblocks": 6, "n_feats": 32}),
    "edsr_12x48": ("meta_edsr", {"n_resblocks": 12, "n_feats": 48}),
    "edsr_16x64": ("meta_edsr", {"n_resblocks": 16, "n_feats": 64}),
    "rdn_4x4x32": ("meta_rdn", {"G0": 32, "D": 4, "C": 4, "G": 32}),
    "swinir_light": (
        "meta_swinir",
        {
            "embed_dim": 48,
            "depths": [4, 4],
            "num_heads": [4, 4],
            "window_size": 8,
            "mlp_ratio": 2.0,
            "num_feat": 48,
            "drop_path_rate": 0.0,
        },
    ),
}
COMMON = {"img_range": 1.0, "bicubic_residual": True}


def build(name: str) -> torch.nn.Module:
    """The candidate ``name`` with freshly initialised weights."""
    arch, kwargs = CANDIDATES[name]
    return create_model(arch, **COMMON, **kwargs)


def file_mib(name: str) -> float:
    """Size of the safetensors file the candidate would ship as (MiB)."""
    arch, kwargs = CANDIDATES[name]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.safetensors"
        save_checkpoint(path, build(name), arch, {**COMMON, **kwargs})
        return path.stat().st_size / 2**20


def load_named(name: str) -> tuple[torch.nn.Module, float]:
    """A candidate (fresh weights) or a trained model (bundled name or file), and its MiB."""
    if name in CANDIDATES:
        return build(name).eval(), file_mib(name)
    from metasr.checkpoints import load_model
    from metasr.weights import BUNDLED, bundled_checkpoint

    path = bundled_checkpoint(name) if name in BUNDLED else Path(name)
    if not path.is_file():
        raise SystemExit(f"{name}: not a candidate ({', '.join(CANDIDATES)}) nor a model file")
    return load_model(name).model.eval(), path.stat().st_size / 2**20


def cmd_speed(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved inference timings at ×``args.scale`` on an LR of ``args.lq`` pixels square."""
    torch.manual_seed(0)
    names = args.names or list(CANDIDATES)
    built = {n: load_named(n) for n in names}
    models = {n: m for n, (m, _) in built.items()}
    x = torch.rand(1, 3, args.lq, args.lq)
    runs: dict[str, list[float]] = {n: [] for n in names}
    out_px = 0
    with torch.inference_mode():
        for n in names:  # warm-up: the first call of a shape is slower
            out_px = models[n](x, scale=args.scale).shape[-2:].numel()
        for _ in range(args.repeat):
            for n in names:
                t0 = time.perf_counter()
                models[n](x, scale=args.scale)
                runs[n].append(time.perf_counter() - t0)
    base = statistics.median(runs[names[0]])
    rows = {}
    for n in names:
        med = statistics.median(runs[n])
        rows[n] = {
            "params": sum(p.numel() for p in models[n].parameters()),
            "file_mib": built[n][1],
            "median_s": med,
            "out_mp_per_s": out_px / med / 1e6,
            "time_ratio": med / base,
        }
    print(
        f"×{args.scale}, LR {args.lq}x{args.lq} → {out_px / 1e6:.3f} MP, "
        f"{torch.get_num_threads()} threads, median of {args.repeat} interleaved runs"
    )
    print("| candidate | parameters | file | output MP/s | time vs first |")
    print("|---|---|---|---|---|")
    for n, r in rows.items():
        print(
            f"| {n} | {r['params'] / 1e6:.2f} M | {r['file_mib']:.2f} MiB "
            f"| {r['out_mp_per_s']:.2f} | {r['time_ratio']:.2f}× |"
        )
    return {"scale": args.scale, "lq": args.lq, "out_px": out_px, "rows": rows}


def val_crops(folder: Path, side: int) -> tuple[list[torch.Tensor], list[str]]:
    """Centre crops (at most ``side`` square) of the validation photos, 8-bit levels in 0..1."""
    from metasr.io import read_raster
    from metasr.metrics import quantize_8bit

    images, names = [], []
    for path in sorted(folder.glob("*.png")):
        img = torch.from_numpy(read_raster(path).data).double()
        _, h, w = img.shape
        t, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
        images.append(quantize_8bit(img[:, t : t + side, left : left + side]))
        names.append(path.stem)
    return images, names


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    """Train one candidate for ``args.cpu_seconds`` of process CPU time, then score it."""
    import yaml

    from metasr.data.datasets import ArbitraryScaleDataset
    from metasr.evaluate import evaluate

    torch.manual_seed(0)
    with open(args.opt) as fh:
        opt = yaml.safe_load(fh)
    data_opt = dict(opt["datasets"]["train"])
    data_opt["dataroot_gt"] = str(ROOT / data_opt["dataroot_gt"])
    dataset = ArbitraryScaleDataset(data_opt)
    batch = int(data_opt["batch_size_per_gpu"])
    lr0 = float(opt["train"]["optim_g"]["lr"])
    eta_min = float(opt["train"]["scheduler"].get("eta_min", 0.0))
    net = build(args.name).train()
    optim = torch.optim.Adam(net.parameters(), lr=lr0, betas=(0.9, 0.99))
    import random

    rng = random.Random(0)
    t0, it, losses = time.process_time(), 0, []
    while (used := time.process_time() - t0) < args.cpu_seconds:
        # Cosine over the CPU budget, so every candidate ends at the same point of its schedule.
        for group in optim.param_groups:
            group["lr"] = eta_min + (lr0 - eta_min) * 0.5 * (
                1 + math.cos(math.pi * used / args.cpu_seconds)
            )
        spec = dataset.draw_spec(rng)
        items = [dataset.sample(rng.randrange(len(dataset)), spec, rng) for _ in range(batch)]
        lq = torch.stack([d["lq"] for d in items])
        gt = torch.stack([d["gt"] for d in items])
        loss = torch.nn.functional.l1_loss(net(lq, scale=spec.scale), gt)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
        it += 1
    train_s = time.process_time() - t0
    net.eval()
    images, names = val_crops(Path(args.val), args.crop)
    scales = ["2", "3", "4", "1.5x4", "3.5x2"]
    table = evaluate(
        lambda lq, s, size: net(lq.float(), scale=s).double(),
        images,
        scales,
        bicubic=True,
        names=names,
        metric_names=("psnr",),
    )
    gain = {
        s: statistics.mean(r["psnr"] - r["bicubic_psnr"] for r in table if r["scale"] == s)
        for s in scales
    }
    print(
        f"{args.name}: {it} iterations in {train_s:.0f} CPU-s ({train_s / it:.2f} s/it), "
        f"last-100 loss {statistics.mean(losses[-100:]):.4f}; gain over bicubic: "
        + ", ".join(f"×{s} {g:+.2f}" for s, g in gain.items())
        + f"; mean {statistics.mean(gain.values()):+.2f} dB"
    )
    return {
        "name": args.name,
        "iterations": it,
        "cpu_seconds": train_s,
        "wall_seconds": None,
        "gain_db": gain,
        "mean_gain_db": statistics.mean(gain.values()),
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("speed", help="interleaved inference speed and file size")
    p.add_argument(
        "names",
        nargs="*",
        help=f"candidates (default all: {', '.join(CANDIDATES)}) or trained models "
        "(bundled names such as default, default-v1, or checkpoint files)",
    )
    p.add_argument("--scale", type=float, default=4.0)
    p.add_argument("--lq", type=int, default=176, help="LR side (176 → 704² ≈ 0.5 MP at ×4)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json")
    p = sub.add_parser("train", help="a CPU-time-budgeted training run, then val crops")
    p.add_argument("name", choices=list(CANDIDATES))
    p.add_argument("--cpu-seconds", type=float, default=300.0)
    p.add_argument("--opt", type=Path, default=OPTION_FILE)
    p.add_argument("--val", default=str(ROOT / "datasets/photos/val"))
    p.add_argument("--crop", type=int, default=256, help="centre crop side of each val photo")
    p.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t_wall = time.perf_counter()
    result = cmd_speed(args) if args.cmd == "speed" else cmd_train(args)
    if args.cmd == "train":
        result["wall_seconds"] = time.perf_counter() - t_wall
    result["torch"] = torch.__version__
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
