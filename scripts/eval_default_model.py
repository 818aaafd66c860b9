"""Y-PSNR of a model against bicubic on held-out scikit-image photographs.

Protocol: :mod:`metasr.evaluate` (Meta-SR / ArbSR, per axis): for scale ``(r_v, r_h)`` the LR
image has ``h = floor(H / r_v + 1e-6)`` rows; the HR reference is the top-left
``floor(h · r_v + 1e-6)`` rows of the photograph (likewise for columns), shrunk to ``h × w`` with
MATLAB-compatible bicubic and stored as 8 bits, as a real LR image would be. The model's output
and the bicubic baseline are rounded to 8 bits too, then compared with the reference on the
BT.601 Y channel after shaving ``ceil(r_v)`` rows and ``ceil(r_h)`` columns on each side.

Prints a Markdown table (model − bicubic in dB per scale, and both PSNRs). The photographs are
the validation split of ``tools/samples.py`` (``SKIMAGE_VAL``), never seen in training.

With ``--tta`` it also scores the model's test-time self-ensemble
(:func:`metasr.inference.self_ensemble`, ``tta=True``: the grid-exact ones of the 8 flips and
transposes), the mean over all 8 even where a flip moves the output grid (for comparison), and
times the plain and the ensembled call side by side (median of ``--repeat`` alternating runs
per image and scale, on the same LR).

Usage::

    python scripts/eval_default_model.py                      # bundled default model
    python scripts/eval_default_model.py --model my.safetensors --scales 2 3 4 1.5x4 3.5x2
    python scripts/eval_default_model.py --tta --repeat 5     # gain and cost of --tta
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from metasr.checkpoints import LoadedModel, load_model
from metasr.data.datasets import bicubic_pair
from metasr.data.scales import format_scale, parse_scale_spec
from metasr.evaluate import evaluate
from metasr.geometry import UpscaleRequest
from metasr.inference import DIHEDRAL, self_ensemble, tta_transforms, upscale_array
from metasr.io import read_raster
from metasr.metrics import quantize_8bit

# The held-out photo names belong to the repository's data tools (tools/, next to scripts/).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.samples import SKIMAGE_VAL  # noqa: E402

SCALES = ("2", "3", "4", "1.5x4", "3.5x2")


def load_photo(name: str) -> torch.Tensor:
    """A photograph from scikit-image's data folder as ``(3, H, W)`` float64 8-bit levels."""
    try:
        import skimage.data
    except ImportError:
        raise SystemExit(
            "the photographs come with scikit-image: pip install scikit-image"
        ) from None
    raster = read_raster(Path(skimage.data.__file__).parent / name)
    if raster.kind != "image" or raster.data.shape[0] != 3:
        raise SystemExit(f"{name} is not an RGB photograph")
    return quantize_8bit(torch.from_numpy(raster.data).double())


def model_upscaler(loaded: LoadedModel, tta: bool = False, precision: str = "fp32"):
    """The model as an evaluation callable, through :func:`metasr.inference.upscale_array`."""

    def fn(lq: torch.Tensor, scale: tuple[float, float], size: tuple[int, int]) -> torch.Tensor:
        sr = upscale_array(
            loaded, lq[0].float().numpy(), UpscaleRequest(scale=scale), tta=tta, precision=precision
        )
        return torch.from_numpy(sr).double()[None]

    return fn


def all_eight_upscaler(loaded: LoadedModel):
    """The mean over all 8 transforms, flips that move the output grid included."""
    plain = model_upscaler(loaded)

    def fn(lq: torch.Tensor, scale: tuple[float, float], size: tuple[int, int]) -> torch.Tensor:
        return self_ensemble(lambda x, s, z: plain(x, s, None), lq, scale, None, DIHEDRAL)

    return fn


def time_tta(
    loaded: LoadedModel, photos: list[torch.Tensor], scales: list, repeat: int
) -> dict[str, tuple[float, float, int]]:
    """Per scale: (plain seconds, TTA seconds, transforms used), summed over the photos.

    Each is the median of ``repeat`` runs; plain and TTA alternate on the same LR, so both see
    the same machine load.
    """
    out = {}
    for scale in scales:
        plain_s = tta_s = 0.0
        used = set()
        for hr in photos:
            lq, _ = bicubic_pair(hr, scale)
            x = quantize_8bit(lq).float().numpy()
            used.add(len(tta_transforms(True, x.shape[1], x.shape[2], scale)))
            runs: dict[bool, list[float]] = {False: [], True: []}
            # Warm-up: the first call of each input shape (a transposed one included) is slower.
            upscale_array(loaded, x, UpscaleRequest(scale=scale), tta=True)
            for _ in range(repeat):
                for tta in (False, True):
                    t0 = time.perf_counter()
                    upscale_array(loaded, x, UpscaleRequest(scale=scale), tta=tta)
                    runs[tta].append(time.perf_counter() - t0)
            plain_s += statistics.median(runs[False])
            tta_s += statistics.median(runs[True])
        out[format_scale(scale)] = (plain_s, tta_s, min(used))
    return out


def load_folder(folder: Path) -> tuple[list[torch.Tensor], list[str]]:
    """Every image file of ``folder`` (sorted) as ``(3, H, W)`` float64 8-bit levels, and names."""
    from metasr.data.files import list_files

    photos, names = [], []
    for path in list_files(folder):
        raster = read_raster(path)
        if raster.kind != "image" or raster.data.shape[0] != 3:
            raise SystemExit(f"{path} is not an RGB photograph")
        photos.append(quantize_8bit(torch.from_numpy(raster.data).double()))
        names.append(path.stem)
    if not photos:
        raise SystemExit(f"{folder}: no images")
    return photos, names


def score(fn, photos, scales, names, metric_names, bicubic=False) -> dict:
    """``{image: {scale label: {metric: value}}}`` (``bicubic_<metric>`` too with ``bicubic``)."""
    table = evaluate(fn, photos, scales, bicubic=bicubic, names=names, metric_names=metric_names)
    out: dict[str, dict[str, dict[str, float]]] = {name: {} for name in names}
    for r in table:
        out[r["image"]][r["scale"]] = {
            k: r[k] for k in (*metric_names, *(f"bicubic_{m}" for m in metric_names)) if k in r
        }
    return out


def mean_over(rows: dict, label: str, key: str) -> float:
    """Mean of ``key`` at scale ``label`` over the images of ``rows``."""
    return float(np.mean([rows[n][label][key] for n in rows]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="model name or checkpoint")
    parser.add_argument(
        "--images", nargs="+", default=list(SKIMAGE_VAL), help="file names in skimage/data"
    )
    parser.add_argument(
        "--data", type=Path, help="score the whole images of this folder instead of --images"
    )
    parser.add_argument(
        "--baseline", help="also score this model (name or checkpoint), e.g. the previous default"
    )
    parser.add_argument("--ssim", action="store_true", help="SSIM (Y) beside Y-PSNR")
    parser.add_argument("--scales", nargs="+", default=list(SCALES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "auto"),
        default="fp32",
        help="inference precision of the model (metasr.precision)",
    )
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    parser.add_argument(
        "--tta",
        action="store_true",
        help="also score (and with --repeat > 0 time) the test-time self-ensemble",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="timed runs for --tta (median); 0: score --tta without the timing and all-8 table",
    )
    args = parser.parse_args(argv)
    if args.repeat < 0:
        parser.error(f"--repeat must be >= 0, got {args.repeat}")

    loaded = load_model(args.model, device=args.device)
    if args.data is not None:
        photos, names = load_folder(args.data)
    else:
        photos, names = [load_photo(name) for name in args.images], list(args.images)
    scales = [parse_scale_spec(s) for s in args.scales]
    labels = [format_scale(s) for s in scales]
    metric_names = ("psnr", "ssim") if args.ssim else ("psnr",)
    model_rows = score(
        model_upscaler(loaded, precision=args.precision),
        photos,
        scales,
        names,
        metric_names,
        bicubic=True,
    )
    rows = {
        name: {s: (c["psnr"], c["bicubic_psnr"]) for s, c in cells.items()}
        for name, cells in model_rows.items()
    }

    print(f"model: {loaded.name} ({loaded.arch}); Y-PSNR, border ceil(r) per axis")
    print()
    print("| image | " + " | ".join(f"×{s}" for s in labels) + " |")
    print("|---" * (len(labels) + 1) + "|")
    for name, cells in rows.items():
        line = [f"{m:.2f} / {b:.2f} ({m - b:+.2f})" for m, b in cells.values()]
        print(f"| {name} (model / bicubic, Δ) | " + " | ".join(line) + " |")
    mean = [np.mean([rows[n][s][0] - rows[n][s][1] for n in rows]) for s in labels]
    print("| **mean Δ dB** | " + " | ".join(f"**{d:+.2f}**" for d in mean) + " |")
    payload: dict = {
        "model": loaded.name,
        "images": names,
        "psnr": rows,
        "mean_delta_db": dict(zip(labels, mean, strict=True)),
    }
    # The comparison table: one column per method, means over the images.
    methods: dict[str, dict] = {"bicubic": {}, "model": model_rows}
    for name, cells in model_rows.items():
        methods["bicubic"][name] = {
            s: {m: c[f"bicubic_{m}"] for m in metric_names} for s, c in cells.items()
        }
    if args.baseline:
        base = load_model(args.baseline, device=args.device)
        methods["baseline"] = score(model_upscaler(base), photos, scales, names, metric_names)
        payload["baseline"] = base.name
    if args.tta:
        methods["tta"] = score(
            model_upscaler(loaded, tta=True), photos, scales, names, metric_names
        )
    if args.ssim or args.baseline or args.tta:
        payload["methods"] = report_methods(methods, labels, metric_names, loaded, args)
    if args.tta and args.repeat > 0:
        payload["tta"] = report_tta(loaded, photos, scales, labels, args, rows, names, methods)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2)
    return 0


def report_methods(methods, labels, metric_names, loaded, args) -> dict:
    """Print and return the per-scale means of every method (bicubic, baseline, model, --tta)."""
    heads = {
        "bicubic": "bicubic",
        "baseline": f"{args.baseline} (baseline)",
        "model": loaded.name,
        "tta": f"{loaded.name} --tta",
    }
    keys = [k for k in heads if k in methods]
    unit = " / ".join({"psnr": "Y-PSNR dB", "ssim": "Y-SSIM"}[m] for m in metric_names)
    n_images = len(methods["model"])
    print()
    print(f"mean over {n_images} images: {unit}; Δ: Y-PSNR gain over bicubic")
    print()
    extra = ["Δ baseline", "Δ model", "model − baseline"] if "baseline" in methods else []
    print("| scale | " + " | ".join([heads[k] for k in keys] + extra) + " |")
    print("|---" * (1 + len(keys) + len(extra)) + "|")
    out: dict[str, dict[str, dict[str, float]]] = {k: {} for k in keys}
    for label in labels:
        cells = []
        for k in keys:
            vals = {m: mean_over(methods[k], label, m) for m in metric_names}
            out[k][label] = vals
            cells.append(
                " / ".join(
                    f"{vals[m]:.2f}" if m == "psnr" else f"{vals[m]:.4f}" for m in metric_names
                )
            )
        if extra:
            bic = out["bicubic"][label]["psnr"]
            d_base = out["baseline"][label]["psnr"] - bic
            d_model = out["model"][label]["psnr"] - bic
            cells += [f"{d_base:+.2f}", f"{d_model:+.2f}", f"**{d_model - d_base:+.2f}**"]
        print(f"| ×{label} | " + " | ".join(cells) + " |")
    return out


def report_tta(loaded, photos, scales, labels, args, rows, names, methods) -> dict:
    """Score the all-8 mean and time ``tta=True`` against the plain rows; print a table."""
    all8 = score(all_eight_upscaler(loaded), photos, scales, names, ("psnr",))
    psnr = {
        key: {n: {s: c["psnr"] for s, c in cells.items()} for n, cells in src.items()}
        for key, src in (("tta", methods["tta"]), ("all8", all8))
    }
    times = time_tta(loaded, photos, scales, args.repeat)
    torch_threads = torch.get_num_threads()
    print()
    print(
        f"self-ensemble: Y-PSNR gain over the plain model (mean over {len(photos)} photos); "
        f"time: median of {args.repeat} alternating runs, summed over the photos, "
        f"{torch_threads} torch threads"
    )
    print()
    print(
        "| scale | plain Δ vs bicubic | --tta Δ vs bicubic | gain of --tta | transforms "
        "| gain of all 8 | plain time | --tta time | time ratio |"
    )
    print("|---" * 9 + "|")
    out = {}
    for label in labels:
        plain = np.mean([rows[n][label][0] for n in rows])
        bic = np.mean([rows[n][label][1] for n in rows])
        tta = np.mean([psnr["tta"][n][label] for n in rows])
        all8 = np.mean([psnr["all8"][n][label] for n in rows])
        t_plain, t_tta, used = times[label]
        print(
            f"| ×{label} | {plain - bic:+.2f} dB | {tta - bic:+.2f} dB | **{tta - plain:+.2f} dB** "
            f"| {used if used == 8 else f'{used}–8'} | {all8 - plain:+.2f} dB "
            f"| {t_plain:.3f} s | {t_tta:.3f} s | {t_tta / t_plain:.1f}× |"
        )
        out[label] = {
            "plain_psnr": plain,
            "tta_psnr": tta,
            "all8_psnr": all8,
            "bicubic_psnr": bic,
            "plain_s": t_plain,
            "tta_s": t_tta,
            "per_image_tta_psnr": {n: psnr["tta"][n][label] for n in rows},
            "per_image_all8_psnr": {n: psnr["all8"][n][label] for n in rows},
        }
    return out


if __name__ == "__main__":
    sys.exit(main())
