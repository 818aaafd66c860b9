"""A side-by-side crop of one held-out photo: LR (nearest), bicubic, models, HR.

The LR is the evaluation protocol's (:func:`metasr.data.bicubic_pair`: MATLAB bicubic per axis,
8-bit), made from the *whole* photo, and every model upscales the whole LR (so no panel shows a
border effect of cropping first); then the same HR-grid window is cut from each output. Each
panel is labelled with its method and, for the window, its Y-PSNR (border-free: the window lies
inside the image). Needs Pillow.

Usage::

    python scripts/make_comparison_figure.py \\
        --image datasets/photos/val/scikit-image-skimage-data-chelsea.png --scale 4 \\
        --box 120 150 128 128 --models default-v1 default \\
        -o docs/figures/photo_comparison_x4.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from metasr.checkpoints import load_model
from metasr.data.datasets import bicubic_pair
from metasr.data.resize import imresize
from metasr.data.scales import format_scale, parse_scale_spec
from metasr.geometry import UpscaleRequest
from metasr.inference import upscale_array
from metasr.io import read_raster
from metasr.metrics import psnr, quantize_8bit


def panels(
    hr: torch.Tensor,
    scale: tuple[float, float],
    models: list[str],
    box: tuple[int, int, int, int],
    labels: list[str] | None = None,
) -> list[tuple[str, torch.Tensor]]:
    """``(label, (3, h, w) crop in 0..1)`` for LR-nearest, bicubic, each model and HR.

    Args:
        hr: ``(3, H, W)`` photo in 0..1 (8-bit levels).
        scale: ``(r_v, r_h)``.
        models: model names or checkpoint paths, in panel order.
        box: ``(top, left, height, width)`` of the window on the HR grid.
        labels: one caption per model (default: the names as given).
    """
    lq, hr = bicubic_pair(hr, scale)
    lq = quantize_8bit(lq)
    top, left, h, w = box
    H, W = hr.shape[-2:]
    if top < 0 or left < 0 or top + h > H or left + w > W:
        raise SystemExit(f"box {box} does not fit the {H}x{W} output grid")

    def crop(x: torch.Tensor) -> torch.Tensor:
        return x[..., top : top + h, left : left + w]

    # Nearest neighbour: output pixel i takes LR pixel floor((i + 0.5) / r), the centre rule.
    rows = ((torch.arange(H) + 0.5) / scale[0]).floor().long().clamp(max=lq.shape[-2] - 1)
    cols = ((torch.arange(W) + 0.5) / scale[1]).floor().long().clamp(max=lq.shape[-1] - 1)
    out = [("LR (nearest)", crop(lq[:, rows][:, :, cols]))]
    bic = quantize_8bit(imresize(lq[None], scale=scale, size=(H, W))[0].clamp(0, 1))
    out.append(("bicubic", crop(bic)))
    for name, label in zip(models, labels or models, strict=True):
        loaded = load_model(name)
        sr = upscale_array(loaded, lq.float().numpy(), UpscaleRequest(scale=scale))
        out.append((label, crop(quantize_8bit(torch.from_numpy(sr).double().clamp(0, 1)))))
    out.append(("HR", crop(hr)))
    return out


def render(items: list[tuple[str, torch.Tensor]], ref: torch.Tensor, zoom: int):
    """One row of panels (a PIL image), each ``zoom``× (nearest), its label and Y-PSNR under it."""
    from PIL import Image, ImageDraw

    h, w = ref.shape[-2:]
    pad, text_h = 4, 28
    canvas = Image.new(
        "RGB", (len(items) * (w * zoom + pad) + pad, h * zoom + text_h + 2 * pad), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for i, (label, img) in enumerate(items):
        arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        tile = Image.fromarray(arr).resize((w * zoom, h * zoom), Image.NEAREST)
        x = pad + i * (w * zoom + pad)
        canvas.paste(tile, (x, pad))
        caption = label
        if label != "HR":
            score = float(psnr(img, ref, crop_border=0, y_channel=True)[0])
            caption += f"\n{score:.2f} dB"
        draw.text((x, h * zoom + pad + 1), caption, fill="black")
    return canvas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, required=True, help="held-out HR photo")
    parser.add_argument("--scale", default="4")
    parser.add_argument(
        "--box", type=int, nargs=4, default=(120, 150, 128, 128), metavar=("TOP", "LEFT", "H", "W")
    )
    parser.add_argument("--models", nargs="+", default=["default-v1", "default"])
    parser.add_argument("--labels", nargs="+", help="captions of the model panels")
    parser.add_argument("--zoom", type=int, default=2, help="nearest-neighbour display zoom")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    raster = read_raster(args.image)
    if raster.kind != "image" or raster.data.shape[0] != 3:
        raise SystemExit(f"{args.image} is not an RGB photograph")
    hr = quantize_8bit(torch.from_numpy(raster.data).double())
    scale = parse_scale_spec(args.scale)
    if args.labels is not None and len(args.labels) != len(args.models):
        parser.error(f"--labels needs {len(args.models)} captions, got {len(args.labels)}")
    items = panels(hr, scale, args.models, tuple(args.box), args.labels)
    image = render(items, items[-1][1], args.zoom)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.output, optimize=True)
    print(
        f"wrote {args.output} ({args.output.stat().st_size // 1024} KiB): {args.image.name} "
        f"×{format_scale(scale)}, box {tuple(args.box)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
