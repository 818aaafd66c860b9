"""Image and array I/O for training and evaluation data (Pillow/imageio loaded on first use).

Everything is returned as a float32 ``(C, H, W)`` tensor:

* images (PNG, JPEG, BMP, TIFF, WebP) scaled to 0..1 (8-bit ``/255``, 16-bit ``/65535``), with
  gray or RGBA converted to the requested channel count (alpha dropped);
* ``.npy`` arrays (``H×W`` or ``C×H×W``, gridded data such as climate fields) with their values
  unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch

__all__ = [
    "ARRAY_SUFFIXES",
    "IMAGE_SUFFIXES",
    "data_kind",
    "list_files",
    "read_array",
    "read_image",
    "read_sample",
    "write_image",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
ARRAY_SUFFIXES = (".npy",)

DataKind = Literal["image", "array"]


def list_files(root: str | os.PathLike, what: str = "dataset") -> list[Path]:
    """Sorted image and ``.npy`` files directly in folder ``root`` (a single file is allowed).

    Raises:
        FileNotFoundError: ``root`` does not exist (the message names the option ``what``).
        ValueError: it holds no supported file, or mixes images with arrays.
    """
    path = Path(os.path.expanduser(str(root)))
    if not path.exists():
        raise FileNotFoundError(f"{what} path does not exist: {path}")
    if path.is_file():
        files = [path]
    else:
        files = sorted(
            p
            for p in path.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + ARRAY_SUFFIXES
        )
    if not files or files[0].suffix.lower() not in IMAGE_SUFFIXES + ARRAY_SUFFIXES:
        raise ValueError(
            f"{what} path {path} holds no image ({', '.join(IMAGE_SUFFIXES)}) or .npy file"
        )
    kinds = {data_kind(p) for p in files}
    if len(kinds) > 1:
        raise ValueError(f"{what} path {path} mixes images and .npy arrays; use one kind")
    return files


def data_kind(path: str | os.PathLike) -> DataKind:
    """``"array"`` for ``.npy`` files, ``"image"`` otherwise."""
    return "array" if Path(path).suffix.lower() in ARRAY_SUFFIXES else "image"


def read_image(path: str | os.PathLike, channels: int | None = 3) -> torch.Tensor:
    """Read an image as float32 ``(C, H, W)`` in 0..1.

    Args:
        path: image file.
        channels: 3 (RGB; gray is replicated), 1 (luma, ITU-R 601 as Pillow's ``"L"``), or None
            (keep the file's channels, alpha dropped).
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency of the train extra
        raise ImportError("reading images needs Pillow: pip install pillow") from None
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32) / 65535.0
                arr = arr[None]
            else:
                if channels == 3:
                    im = im.convert("RGB")
                elif channels == 1:
                    im = im.convert("L")
                elif im.mode not in ("L", "RGB"):
                    im = im.convert("RGB" if "A" in im.mode or im.mode == "P" else "L")
                arr = np.asarray(im, dtype=np.float32) / 255.0
                arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if channels == 3 and t.shape[0] == 1:
        t = t.expand(3, -1, -1).contiguous()
    elif channels == 1 and t.shape[0] != 1:
        t = t.mean(0, keepdim=True)
    return t


def read_array(path: str | os.PathLike) -> torch.Tensor:
    """Read a ``.npy`` array ``(H, W)`` or ``(C, H, W)`` as float32 ``(C, H, W)``."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read array {path}: {exc}") from None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(
            f"{path}: expected a numeric array (H, W) or (C, H, W), got {arr.dtype} {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: array holds NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def read_sample(path: str | os.PathLike, channels: int | None = 3) -> torch.Tensor:
    """:func:`read_array` for ``.npy`` files, :func:`read_image` otherwise."""
    if data_kind(path) == "array":
        return read_array(path)
    return read_image(path, channels)


def write_image(path: str | os.PathLike, img: torch.Tensor) -> None:
    """Write a ``(C, H, W)`` image in 0..1 (C = 1 or 3) as 8-bit; parent folders are created.

    ``.npy`` paths store the float values instead.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = img.detach().float().cpu()
    if path.suffix.lower() in ARRAY_SUFFIXES:
        np.save(path, data.numpy())
        return
    from PIL import Image

    arr = (data.clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    Image.fromarray(arr).save(path)
