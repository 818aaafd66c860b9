"""Y-PSNR of a model against bicubic on held-out scikit-image photographs.

Protocol: :mod:`metasr.evaluate` (Meta-SR / ArbSR, per axis): for scale ``(r_v, r_h)`` the LR
image has ``h = floor(H / r_v + 1e-6)`` rows; the HR reference is the top-left
``floor(h · r_v + 1e-6)`` rows of the photograph (likewise for columns), shrunk to ``h × w`` with
MATLAB-compatible bicubic and stored as 8 bits, as a real LR image would be. The model's output
and the bicubic baseline are rounded to 8 bits too, then compared with the reference on the
BT.601 Y channel after shaving ``ceil(r_v)`` rows and ``ceil(r_h)`` columns on each side.

Prints a Markdown table (model − bicubic in dB per scale, and both PSNRs). The photographs are
the validation split of ``metasr.data.samples`` (``SKIMAGE_VAL``), never seen in training.

Usage::

    python scripts/eval_default_model.py                      # bundled default model
    python scripts/eval_default_model.py --model my.safetensors --scales 2 3 4 1.5x4 3.5x2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from metasr.checkpoints import LoadedModel, load_model
from metasr.data.samples import SKIMAGE_VAL
from metasr.data.scales import format_scale, parse_scale_spec
from metasr.evaluate import evaluate
from metasr.inference import upscale_array
from metasr.io import read_raster
from metasr.metrics import quantize_8bit

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


def model_upscaler(loaded: LoadedModel):
    """The model as an evaluation callable, through :func:`metasr.inference.upscale_array`."""

    def fn(lq: torch.Tensor, scale: tuple[float, float], size: tuple[int, int]) -> torch.Tensor:
        sr = upscale_array(loaded, lq[0].float().numpy(), scale=scale)
        return torch.from_numpy(sr).double()[None]

    return fn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="model name or checkpoint")
    parser.add_argument(
        "--images", nargs="+", default=list(SKIMAGE_VAL), help="file names in skimage/data"
    )
    parser.add_argument("--scales", nargs="+", default=list(SCALES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)

    loaded = load_model(args.model, device=args.device)
    photos = [load_photo(name) for name in args.images]
    scales = [parse_scale_spec(s) for s in args.scales]
    labels = [format_scale(s) for s in scales]
    table = evaluate(
        model_upscaler(loaded),
        photos,
        scales,
        bicubic=True,
        names=args.images,
        metric_names=("psnr",),
    )
    rows: dict[str, dict[str, tuple[float, float]]] = {name: {} for name in args.images}
    for r in table:
        rows[r["image"]][r["scale"]] = (r["psnr"], r["bicubic_psnr"])

    print(f"model: {loaded.name} ({loaded.arch}); Y-PSNR, border ceil(r) per axis")
    print()
    print("| image | " + " | ".join(f"×{s}" for s in labels) + " |")
    print("|---" * (len(labels) + 1) + "|")
    for name, cells in rows.items():
        line = [f"{m:.2f} / {b:.2f} ({m - b:+.2f})" for m, b in cells.values()]
        print(f"| {name} (model / bicubic, Δ) | " + " | ".join(line) + " |")
    mean = [np.mean([rows[n][s][0] - rows[n][s][1] for n in rows]) for s in labels]
    print("| **mean Δ dB** | " + " | ".join(f"**{d:+.2f}**" for d in mean) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "model": loaded.name,
                    "psnr": rows,
                    "mean_delta_db": dict(zip(labels, mean, strict=True)),
                },
                fh,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
