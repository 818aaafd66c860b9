"""Training and evaluation data as float32 tensors, through the one file reader of :mod:`metasr.io`.

:func:`read_sample` gives ``(C, H, W)`` float32 tensors: images in 0..1 with the requested channel
count (:func:`read_image`), ``.npy`` arrays with their values (:func:`read_array`);
:func:`list_files` lists a dataset folder and :func:`data_kind` names a file's kind;
:func:`write_image` writes a tensor (atomically, by :func:`metasr.io.write_raster`). ``metasr
upscale`` reads the same files with :func:`metasr.io.read_raster`, so training, evaluation and
inference see the same pixels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..io import ARRAY_SUFFIXES, IMAGE_SUFFIXES, SUFFIXES, Raster, read_raster, write_raster

__all__ = ["data_kind", "list_files", "read_array", "read_image", "read_sample", "write_image"]

#: What a data file holds: an image (read as 0..1) or an array (values as they are).
DataKind = Literal["image", "array"]


def data_kind(path: str | os.PathLike) -> DataKind:
    """``"array"`` for ``.npy`` files, ``"image"`` otherwise."""
    return "array" if Path(path).suffix.lower() in ARRAY_SUFFIXES else "image"


def list_files(root: str | os.PathLike, what: str = "dataset") -> list[Path]:
    """Sorted image and ``.npy`` files directly in folder ``root`` (a single file is allowed).

    Hidden files (names starting with a dot, such as temporary files left by a killed run)
    are skipped.

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
            if not p.name.startswith(".") and p.is_file() and p.suffix.lower() in SUFFIXES
        )
    if not files or files[0].suffix.lower() not in SUFFIXES:
        raise ValueError(
            f"{what} path {path} holds no image ({', '.join(IMAGE_SUFFIXES)}) or .npy file"
        )
    if len({data_kind(p) for p in files}) > 1:
        raise ValueError(f"{what} path {path} mixes images and .npy arrays; use one kind")
    return files


#: ITU-R 601 luma weights, the weights of Pillow's ``convert("L")``, in 1/65536 units: Pillow
#: computes ``(R·19595 + G·38470 + B·7471 + 32768) >> 16`` on 8-bit samples.
_LUMA_16 = (19595, 38470, 7471)


def _luma(raster: Raster) -> np.ndarray:
    """``(1, H, W)`` luma of an RGB image raster, equal to Pillow's ``"L"`` for 8-bit files."""
    rgb = raster.data
    if raster.dtype == np.uint8:
        # Integer arithmetic on the codes, so 8-bit training data stays what it always was.
        codes = np.rint(rgb * 255.0).astype(np.int64)
        weighted = sum(w * codes[c] for c, w in enumerate(_LUMA_16))
        return ((weighted + 32768) >> 16).astype(np.float32)[None] / np.float32(255.0)
    weights = np.array(_LUMA_16, dtype=np.float64) / 65536.0
    return np.tensordot(weights, rgb.astype(np.float64), axes=1).astype(np.float32)[None]


def read_image(path: str | os.PathLike, channels: int | None = 3) -> torch.Tensor:
    """Read an image as float32 ``(C, H, W)`` in 0..1 (bit depth and EXIF rotation honoured).

    Args:
        path: image file (any image format of :data:`SUFFIXES`).
        channels: 3 (RGB; gray is replicated), 1 (gray; RGB becomes ITU-R 601 luma, as
            Pillow's ``"L"``), or None (the file's colour channels). Alpha is always dropped.

    Raises:
        ValueError: unreadable file, a floating-point TIFF (a field: store it as ``.npy``), or a
            channel count that cannot be converted.
    """
    if channels not in (1, 3, None):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    raster = read_raster(path)
    if raster.kind != "image":
        raise ValueError(f"{path}: holds floating-point samples, not an image; store it as .npy")
    data = raster.data
    have = data.shape[0]
    if channels is not None and have != channels:
        if channels == 3 and have == 1:
            data = np.repeat(data, 3, axis=0)
        elif channels == 1 and have == 3:
            data = _luma(raster)
        else:
            raise ValueError(f"{path}: cannot make {channels} channel(s) of a {have}-channel image")
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))


def read_array(path: str | os.PathLike) -> torch.Tensor:
    """Read a ``.npy`` array ``(H, W)`` or ``(C, H, W)`` as float32 ``(C, H, W)``.

    Raises:
        ValueError: unreadable, not numeric, not 2-D/3-D, or holding NaN/infinite values.
    """
    if data_kind(path) != "array":
        raise ValueError(f"{path}: not a .npy array file")
    raster = read_raster(path)
    return torch.from_numpy(np.ascontiguousarray(raster.data, dtype=np.float32))


def read_sample(path: str | os.PathLike, channels: int | None = 3) -> torch.Tensor:
    """:func:`read_array` for ``.npy`` files, :func:`read_image` otherwise."""
    if data_kind(path) == "array":
        return read_array(path)
    return read_image(path, channels)


def write_image(path: str | os.PathLike, img: torch.Tensor) -> None:
    """Write a ``(C, H, W)`` image in 0..1 (C = 1 or 3) as 8 bits, atomically.

    Parent folders are created. ``.npy`` paths store the float32 values ``(C, H, W)`` instead.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = img.detach().float().cpu().numpy()
    if data.ndim != 3:
        raise ValueError(f"{path}: expected an image (C, H, W), got shape {tuple(data.shape)}")
    if data_kind(path) == "array":
        raster = Raster(data=data, kind="field", dtype=np.dtype(np.float32))
    else:
        raster = Raster(data=data, kind="image", dtype=np.dtype(np.uint8))
    write_raster(path, raster)
