"""Small ready-made datasets: scikit-image's colour photos, or synthetic images.

``python -m tools.samples skimage datasets/skimage`` writes the colour photographs that
ship with scikit-image (a BasicSR dependency, so present with ``metasr[train]``) as PNGs into
``train/`` and ``val/`` (two held out), the data of ``options/train/MetaEDSR_tiny_default.yml``.

``python -m tools.samples synthetic datasets/tiny`` writes a handful of generated colour
images (smooth gradients, stripes and sharp-edged shapes: things a network can learn to sharpen
in a minute) for ``options/train/tiny_cpu.yml`` and the tests.

``python -m tools.samples debian-photos datasets/photos`` fetches Debian's wallpaper
packages with ``apt-get download``, keeps the photographs and writes DIV2K-style HR
sub-images to ``train/``, whole held-out photos to ``val/`` and ``manifest.json``, with
scikit-image's photos added (:mod:`tools.photos`).

These are tools of the repository (run from its root), not part of the ``metasr`` package.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["SKIMAGE_TRAIN", "SKIMAGE_VAL", "export_skimage_photos", "make_synthetic_images"]

#: scikit-image's bundled colour photographs (file names in ``skimage/data``), train split.
SKIMAGE_TRAIN = (
    "astronaut.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
)
#: Held out for validation (never seen in training).
SKIMAGE_VAL = ("chelsea.png", "coffee.png")


def export_skimage_photos(
    dest: str | os.PathLike,
    train: Sequence[str] = SKIMAGE_TRAIN,
    val: Sequence[str] = SKIMAGE_VAL,
) -> tuple[list[Path], list[Path]]:
    """Write scikit-image's colour photos as RGB PNGs to ``dest/train`` and ``dest/val``.

    The files are read from the installed package (no download).

    Returns:
        ``(train_files, val_files)`` written.
    """
    try:
        import skimage.data
    except ImportError:
        raise ImportError("scikit-image is needed: pip install scikit-image") from None
    from PIL import Image

    from metasr.io import atomic_write

    src = Path(skimage.data.__file__).parent
    out: tuple[list[Path], list[Path]] = ([], [])
    for split, names, written in (("train", train, out[0]), ("val", val, out[1])):
        folder = Path(dest) / split
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            path = src / name
            if not path.is_file():
                raise FileNotFoundError(f"scikit-image has no bundled {name} (looked in {src})")
            with Image.open(path) as im:
                target = folder / f"{Path(name).stem}.png"
                rgb = im.convert("RGB")
                atomic_write(target, lambda tmp, rgb=rgb: rgb.save(tmp))
            written.append(target)
    return out


def _synthetic(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """One ``(h, w, 3)`` uint8 image: gradient + oriented stripes + a few sharp shapes."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.empty((h, w, 3))
    for c in range(3):
        a, b, off = rng.uniform(-1, 1, 3)
        img[..., c] = 0.5 + 0.25 * (a * yy / h + b * xx / w) + 0.1 * off
    theta = rng.uniform(0, math.pi)
    period = rng.uniform(5.0, 14.0)
    stripes = np.sin(2 * math.pi * (yy * math.cos(theta) + xx * math.sin(theta)) / period)
    img += 0.15 * stripes[..., None] * rng.uniform(0.3, 1.0, 3)
    for _ in range(4):
        colour = rng.uniform(0, 1, 3)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        if rng.random() < 0.5:
            r = rng.uniform(4, min(h, w) / 3)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        else:
            hh, ww = rng.uniform(4, h / 2), rng.uniform(4, w / 2)
            mask = (abs(yy - cy) < hh / 2) & (abs(xx - cx) < ww / 2)
        img[mask] = 0.4 * img[mask] + 0.6 * colour
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def make_synthetic_images(
    dest: str | os.PathLike,
    n: int = 6,
    size: tuple[int, int] = (96, 96),
    seed: int = 0,
    prefix: str = "img",
) -> list[Path]:
    """Write ``n`` generated RGB PNGs of ``size`` ``(H, W)`` to folder ``dest`` (deterministic).

    Returns:
        the files written.
    """
    from PIL import Image

    from metasr.io import atomic_write

    rng = np.random.default_rng(seed)
    folder = Path(dest)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{prefix}{i:03d}.png"
        image = Image.fromarray(_synthetic(rng, *size))
        atomic_write(path, lambda tmp, image=image: image.save(tmp))
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.samples", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("kind", choices=["skimage", "synthetic", "debian-photos"])
    parser.add_argument("dest", help="output folder (train/ and val/ are created inside)")
    photos = parser.add_argument_group("debian-photos")
    photos.add_argument(
        "--extracted",
        metavar="DIR",
        help="reuse DIR/PKG folders made by dpkg -x instead of downloading",
    )
    photos.add_argument("--crop", type=int, default=480, help="sub-image side (default 480)")
    photos.add_argument("--step", type=int, default=240, help="sub-image stride (default 240)")
    photos.add_argument(
        "--val-fraction", type=float, default=0.2, help="share of photos held out (default 0.2)"
    )
    photos.add_argument("--contact-sheet", metavar="PNG", help="also write kept/dropped thumbnails")
    args = parser.parse_args(argv)
    if args.kind == "debian-photos":
        return _debian_photos(args)
    if args.kind == "skimage":
        tr, va = export_skimage_photos(args.dest)
    else:
        tr = make_synthetic_images(Path(args.dest) / "train", n=6, size=(96, 96), seed=0)
        va = make_synthetic_images(Path(args.dest) / "val", n=2, size=(60, 72), seed=1)
    print(f"wrote {len(tr)} training and {len(va)} validation images under {args.dest}")
    return 0


def _debian_photos(args: argparse.Namespace) -> int:
    from .photos import fetch_and_build

    try:
        records = fetch_and_build(
            args.dest,
            extracted=args.extracted,
            contact_sheet=args.contact_sheet,
            crop=args.crop,
            step=args.step,
            val_fraction=args.val_fraction,
            skimage_split=(SKIMAGE_TRAIN, SKIMAGE_VAL),
        )
    except (RuntimeError, ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    kept = [r for r in records if r.status == "kept"]
    n_train = sum(len(r.outputs) for r in kept if r.split == "train")
    n_val = sum(1 for r in kept if r.split == "val")
    print(
        f"{len(records)} files, {len(kept)} photos kept: {n_train} training sub-images and "
        f"{n_val} validation photos under {args.dest} (manifest.json lists every file)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
