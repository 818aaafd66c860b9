"""Measure how far tiled upscaling is from whole-image upscaling on photographs.

For each model, photograph crop and scale, the image is upscaled once whole and once in tiles
(``--tile``, default overlap unless ``--overlap``) through the same code path as
``metasr upscale`` (:func:`metasr.inference.upscale_array`). Reported: the largest absolute
difference in 0..1 units, and in 8-bit codes after both results are rounded as the CLI
rounds them. The acceptance bound is 1/255 (one code).

Usage::

    python scripts/measure_tiling.py                       # default model if present + randoms
    python scripts/measure_tiling.py --models default meta_rdn --tile 48
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import warnings

import numpy as np
import torch

from metasr.checkpoints import load_model
from metasr.data.scales import parse_scale_spec
from metasr.geometry import UpscaleRequest
from metasr.inference import upscale_array
from metasr.tiling import DEFAULT_OVERLAP
from metasr.weights import DEFAULT_CHECKPOINT

#: ``skimage.data`` photograph and the crop ``(top, left, height, width)`` taken from it.
CROPS = {"astronaut": (60, 140, 128, 160), "coffee": (100, 200, 128, 160)}
SCALES = ("3.5x2", "2.5", "1.37x2.9")


def photo(name: str) -> np.ndarray:
    import skimage.data

    top, left, h, w = CROPS[name]
    img = getattr(skimage.data, name)()[top : top + h, left : left + w]
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32) / 255


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_models = (["default"] if DEFAULT_CHECKPOINT.is_file() else []) + [
        "meta_edsr_tiny",
        "meta_edsr",
    ]
    parser.add_argument("--models", nargs="+", default=default_models)
    parser.add_argument("--images", nargs="+", default=list(CROPS), choices=list(CROPS))
    parser.add_argument("--scales", nargs="+", default=list(SCALES))
    parser.add_argument("--tile", type=int, default=48)
    parser.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP)
    args = parser.parse_args(argv)

    print(
        f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; tile {args.tile}, "
        f"overlap {args.overlap}"
    )
    print()
    print("| model | image | scale | max abs diff (0..1) | max diff (8-bit codes) |")
    print("|---|---|---|---|---|")
    worst = 0
    for spec in args.models:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # registry names: random weights, said below
            loaded = load_model(spec)
        label = spec if spec == "default" or "." in spec else f"{spec} (random init)"
        for name in args.images:
            x = photo(name)
            for s in args.scales:
                scale = parse_scale_spec(s)
                whole = upscale_array(loaded, x, UpscaleRequest(scale=scale))
                tiled = upscale_array(
                    loaded, x, UpscaleRequest(scale=scale), tile=args.tile, overlap=args.overlap
                )
                diff = float(np.abs(whole - tiled).max())
                codes = np.abs(
                    np.rint(np.clip(whole, 0, 1) * 255) - np.rint(np.clip(tiled, 0, 1) * 255)
                ).max()
                worst = max(worst, int(codes))
                print(f"| {label} | {name} | ×{s} | {diff:.2e} | {int(codes)} |")
    print()
    print(f"worst: {worst} code(s) of 255")
    return 0 if worst <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
