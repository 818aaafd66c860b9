"""Upscale the bundled sample photo at an asymmetric scale and write a comparison image.

Writes into the output folder (created if needed):

* ``input.png``: the sample (160×200);
* ``bicubic.png``: MATLAB-style bicubic upscaling, the usual baseline;
* ``metasr.png``: the model's result;
* ``comparison.png``: bicubic and model side by side, with an enlarged crop of each below.

Usage (``make demo`` runs the first)::

    metasr demo                                  # default model, scale 3.5x2, into demo_out/
    metasr demo --scale 2.5 --out /tmp/demo --model my.safetensors

Part of the package (not a script), so that ``pip install metasr`` gets it; it needs only
metasr's core dependencies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .assets import SAMPLE_IMAGE
from .checkpoints import load_model
from .data.resize import imresize
from .data.scales import parse_scale_spec
from .geometry import UpscaleRequest
from .inference import upscale_raster
from .io import atomic_write, read_raster, write_raster

__all__ = ["comparison", "run"]

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


def run(
    out: str | Path = "demo_out",
    scale: str = "3.5x2",
    model: str = "default",
    image: str | Path = SAMPLE_IMAGE,
    device: str = "cpu",
) -> list[Path]:
    """Upscale ``image`` by ``scale`` with ``model`` and write the four demo files into ``out``
    (created if needed).

    Returns:
        The written files: ``input.png``, ``bicubic.png``, ``metasr.png``, ``comparison.png``.

    Raises:
        ValueError: a bad scale, model or image (not RGB).
        FileNotFoundError: a missing model or image file.
    """
    r_v, r_h = parse_scale_spec(scale)
    loaded = load_model(model, device=device)
    raster = read_raster(image)
    if raster.kind != "image" or raster.data.shape[0] != 3:
        raise ValueError(f"{image}: the demo takes an RGB image")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    result = upscale_raster(loaded, raster, UpscaleRequest(scale=(r_v, r_h)))
    H, W = result.shape
    lr = torch.from_numpy(raster.data).double()
    bicubic = imresize(lr, scale=(r_v, r_h), size=(H, W)).numpy()
    files = [folder / n for n in ("input.png", "bicubic.png", "metasr.png", "comparison.png")]
    write_raster(files[0], raster)
    write_raster(files[1], raster.with_data(bicubic))
    write_raster(files[2], result)
    label = f"metasr ({loaded.name}), x{r_v:g} vertical, x{r_h:g} horizontal"
    picture = comparison(_to_uint8(bicubic), _to_uint8(result.data), label)
    atomic_write(files[3], lambda tmp: picture.save(tmp, format="PNG"))
    h, w = raster.shape
    print(f"{image}: {h}x{w} -> {H}x{W} (x{r_v:g} vertical, x{r_h:g} horizontal)")
    for f in files:
        print(f"  wrote {f}")
    return files
