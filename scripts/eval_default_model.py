"""Y-PSNR of a model against bicubic on held-out scikit-image photographs.

Protocol (Meta-SR / ArbSR, per axis): for scale ``(r_v, r_h)`` the LR image has
``h = floor(H / r_v)`` rows; the HR reference is the top-left ``floor(h · r_v)`` rows of the
photograph (likewise for columns), shrunk to ``h × w`` with MATLAB-compatible bicubic
(``metasr.data.resize.imresize``, kernel scale ``1/r``) and stored as 8 bits, as a real LR
image would be. The model's output and the bicubic baseline (MATLAB bicubic, kernel scale
``r``) are rounded to 8 bits too, then compared with the reference on the BT.601 Y channel
after shaving ``ceil(r_v)`` rows and ``ceil(r_h)`` columns on each side (``metasr.metrics``).

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

from metasr import hub
from metasr.cli.upscale import parse_scale_arg
from metasr.data.resize import imresize
from metasr.data.samples import SKIMAGE_VAL
from metasr.io import read_raster
from metasr.metrics import psnr

SCALES = ("2", "3", "4", "1.5x4", "3.5x2")


def load_photo(name: str) -> torch.Tensor:
    """A photograph from scikit-image's data folder as ``(3, H, W)`` float64 in 0..1."""
    try:
        import skimage.data
    except ImportError:
        raise SystemExit(
            "the photographs come with scikit-image: pip install scikit-image"
        ) from None
    raster = read_raster(Path(skimage.data.__file__).parent / name)
    if raster.kind != "image" or raster.data.shape[0] != 3:
        raise SystemExit(f"{name} is not an RGB photograph")
    return torch.from_numpy(raster.data).double()


def quantise(x: torch.Tensor) -> torch.Tensor:
    """To 8-bit levels, as when the image is saved."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def evaluate_pair(
    loaded: hub.LoadedModel, photo: torch.Tensor, r_v: float, r_h: float
) -> tuple[float, float]:
    """``(model PSNR, bicubic PSNR)`` in dB for one photograph at one scale."""
    H0, W0 = photo.shape[-2:]
    h, w = int(H0 // r_v), int(W0 // r_h)
    H, W = int(np.floor(h * r_v + 1e-6)), int(np.floor(w * r_h + 1e-6))
    hr = quantise(photo[:, :H, :W])
    lr = quantise(imresize(hr, scale=(1 / r_v, 1 / r_h), size=(h, w)))
    sr = hub.upscale_array(loaded, lr.float().numpy(), scale=(r_v, r_h))
    sr = quantise(torch.from_numpy(sr).double())
    bic = quantise(imresize(lr, scale=(r_v, r_h), size=(H, W)))
    return (
        float(psnr(sr, hr, scale=(r_v, r_h))[0]),
        float(psnr(bic, hr, scale=(r_v, r_h))[0]),
    )


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

    loaded = hub.load_model(args.model, device=args.device)
    photos = {name: load_photo(name) for name in args.images}
    scales = {s: parse_scale_arg(s) for s in args.scales}
    rows: dict[str, dict[str, tuple[float, float]]] = {}
    for name, photo in photos.items():
        rows[name] = {}
        for label, s in scales.items():
            r_v, r_h = s if isinstance(s, tuple) else (s, s)
            rows[name][label] = evaluate_pair(loaded, photo, r_v, r_h)

    print(f"model: {loaded.name} ({loaded.arch}); Y-PSNR, border ceil(r) per axis")
    print()
    print("| image | " + " | ".join(f"×{s}" for s in scales) + " |")
    print("|---" * (len(scales) + 1) + "|")
    for name, cells in rows.items():
        line = [f"{m:.2f} / {b:.2f} ({m - b:+.2f})" for m, b in cells.values()]
        print(f"| {name} (model / bicubic, Δ) | " + " | ".join(line) + " |")
    mean = [np.mean([rows[n][s][0] - rows[n][s][1] for n in rows]) for s in scales]
    print("| **mean Δ dB** | " + " | ".join(f"**{d:+.2f}**" for d in mean) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "model": loaded.name,
                    "psnr": rows,
                    "mean_delta_db": dict(zip(scales, mean, strict=False)),
                },
                fh,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
