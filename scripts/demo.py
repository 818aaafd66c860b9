"""Upscale the bundled sample photo at an asymmetric scale and write a comparison image.

Writes into the output folder (created if needed):

* ``input.png``: the sample (160×200);
* ``bicubic.png``: MATLAB-style bicubic upscaling, the usual baseline;
* ``metasr.png``: the model's result;
* ``comparison.png``: bicubic and model side by side, with an enlarged crop of each below.

Usage::

    python scripts/demo.py                       # default model, scale 3.5x2, into demo_out/
    python scripts/demo.py --scale 2.5 --out /tmp/demo --model my.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from metasr.assets import SAMPLE_IMAGE
from metasr.checkpoints import load_model
from metasr.data.resize import imresize
from metasr.data.scales import parse_scale_spec
from metasr.inference import upscale_raster
from metasr.io import read_raster, write_raster

#: Size of the enlarged crop (output pixels), its magnification in the comparison image, and
#: its centre as fractions of the height and width (the rim of the cat's eye in the sample).
ZOOM_CROP = 72
ZOOM = 3
ZOOM_CENTRE = (0.42, 0.3)


def _to_uint8(chw: np.ndarray) -> np.ndarray:
    """``(3, H, W)`` floats in 0..1 → ``(H, W, 3)`` uint8."""
    return np.rint(np.clip(chw, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)


def comparison(bicubic: np.ndarray, model: np.ndarray, label: str):
    """Side-by-side image: ``bicubic | model`` on top, the same enlarged crop of each below.

    Args:
        bicubic, model: ``(H, W, 3)`` uint8.
        label: the model's caption.

    Returns:
        A ``PIL.Image``.
    """
    from PIL import Image, ImageDraw, ImageFont

    H, W = bicubic.shape[:2]
    c = min(ZOOM_CROP, H, W)
    top = min(max(int(ZOOM_CENTRE[0] * H) - c // 2, 0), H - c)
    left = min(max(int(ZOOM_CENTRE[1] * W) - c // 2, 0), W - c)
    gap, caption = 8, 18
    zoom = c * ZOOM
    width = 2 * max(W, zoom) + gap
    height = caption + H + gap + zoom
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for k, (img, text) in enumerate(((bicubic, "bicubic"), (model, label))):
        x0 = k * (max(W, zoom) + gap)
        draw.text((x0 + 2, 2), text, fill="black", font=font)
        canvas.paste(Image.fromarray(img), (x0, caption))
        crop = Image.fromarray(img[top : top + c, left : left + c])
        # Nearest-neighbour enlargement shows the pixels as they are.
        canvas.paste(crop.resize((zoom, zoom), Image.NEAREST), (x0, caption + H + gap))
        draw.rectangle(
            (x0 + left, caption + top, x0 + left + c - 1, caption + top + c - 1), outline="red"
        )
    return canvas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument("--scale", default="3.5x2", help="VERTICALxHORIZONTAL or one factor")
    parser.add_argument("--model", default="default", help="model name or checkpoint")
    parser.add_argument("--input", default=str(SAMPLE_IMAGE), help="image to upscale")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    r_v, r_h = parse_scale_spec(args.scale)
    try:
        loaded = load_model(args.model, device=args.device)
    except (FileNotFoundError, ValueError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    raster = read_raster(args.input)
    if raster.kind != "image" or raster.data.shape[0] != 3:
        print("demo: the input must be an RGB image", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = upscale_raster(loaded, raster, scale=(r_v, r_h))
    H, W = result.shape
    lr = torch.from_numpy(raster.data).double()
    bicubic = imresize(lr, scale=(r_v, r_h), size=(H, W)).numpy()

    write_raster(out / "input.png", raster)
    write_raster(out / "bicubic.png", raster.with_data(bicubic))
    write_raster(out / "metasr.png", result)
    label = f"metasr ({loaded.name}), x{r_v:g} vertical, x{r_h:g} horizontal"
    image = comparison(_to_uint8(bicubic), _to_uint8(result.data), label)
    image.save(out / "comparison.png")
    h, w = raster.shape
    print(f"{args.input}: {h}x{w} -> {H}x{W} (x{r_v:g} vertical, x{r_h:g} horizontal)")
    for name in ("input.png", "bicubic.png", "metasr.png", "comparison.png"):
        print(f"  wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
