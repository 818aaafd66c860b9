"""``metasr.upscale``: one call from an image (path, PIL image, numpy array or tensor) to its
upscaled counterpart of the same kind, with the checks of ``metasr upscale``.

:func:`run_checked` is the one sequence both the command line and :func:`upscale` run for a
raster: the tile choice (``tile="auto"``), the memory check, the model, and the refusal of a
result with NaN or infinite values. Models are loaded once per ``(model, device, backend,
dtype)`` and kept (:func:`cached_model`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoints import LoadedModel
from .geometry import UpscaleRequest
from .io import Raster

__all__ = ["AUTO_TILES", "auto_tile", "cached_model", "run_checked", "upscale"]

#: Tile sizes ``tile="auto"`` tries, largest first, when a whole input would not fit.
AUTO_TILES = (1024, 512, 256, 128, 64)

#: With a progress bar, ``tile="auto"`` cuts outputs of at least this many pixels into
#: :data:`PROGRESS_TILE` tiles even when they would fit whole, so that the bar moves: about
#: 2 s of work on a 2-core CPU (the bundled model gives ~1 output megapixel per second).
PROGRESS_PIXELS = 2_000_000
PROGRESS_TILE = 512


@functools.lru_cache(maxsize=4)
def cached_model(spec: str, device: str, backend: str | None, dtype: torch.dtype) -> LoadedModel:
    """:func:`metasr.checkpoints.load_model`, kept for the next call with the same arguments."""
    from .checkpoints import load_model

    return load_model(spec, device=device, dtype=dtype, backend=backend)


def auto_tile(
    loaded: LoadedModel,
    in_shape: tuple[int, int, int],
    request: UpscaleRequest,
    overlap: int | None,
    tta: bool | int = False,
    progress: bool = False,
) -> int:
    """The tile size for ``tile="auto"``: 0 (whole) when the whole input fits in free memory
    (:func:`metasr.inference.check_upscale_memory`), else the largest of :data:`AUTO_TILES`
    that fits. With ``progress``, an output of at least :data:`PROGRESS_PIXELS` that fits whole
    is cut into :data:`PROGRESS_TILE` tiles all the same, so that the bar over the tiles has
    something to count.

    Raises:
        ValueError: not even the smallest tile fits (the whole input's refusal, which says
            why), or a bad request.
    """
    from .inference import check_upscale_memory

    _, h, w = in_shape
    try:
        est = check_upscale_memory(loaded, in_shape, request, 0, overlap, tta)
    except ValueError as whole:
        if loaded.format == "onnx":
            raise
        for t in AUTO_TILES:
            if t >= max(h, w):
                continue
            try:
                check_upscale_memory(loaded, in_shape, request, t, overlap, tta)
                return t
            except ValueError:
                continue
        raise whole from None
    if progress and est is not None and max(h, w) > PROGRESS_TILE:  # est: not ONNX
        H, W = est.output_size
        if H * W >= PROGRESS_PIXELS:
            return PROGRESS_TILE
    return 0


def run_checked(
    loaded: LoadedModel,
    raster: Raster,
    request: UpscaleRequest,
    tile: int | str = "auto",
    overlap: int | None = None,
    normalize: str = "none",
    progress: bool = False,
    tta: bool | int = False,
    check_finite: bool = True,
    precision: str = "fp32",
) -> tuple[Raster, int]:
    """Upscale one raster as ``metasr upscale`` does: tile choice, memory check, model, check of
    the result.

    Args:
        request: the :class:`~metasr.geometry.UpscaleRequest` (``scale`` or ``size``), made
            once by the caller and handed down to the network as it is.
        tile: ``"auto"`` (:func:`auto_tile`), 0 (whole) or a tile size in input pixels.
        overlap: input pixels of context around a tile (default: the model's
            :func:`metasr.tiling.default_overlap`).
        normalize, progress, tta: as :func:`metasr.inference.upscale_raster`;
            with ``progress`` and ``tile="auto"`` a large output (:data:`PROGRESS_PIXELS`) is
            run in tiles (:func:`auto_tile`).
        check_finite: refuse a result with NaN or infinite values
            (:func:`metasr.io.check_finite_result`).
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (:mod:`metasr.precision`).

    Returns:
        The result and the tile size used (0: whole).

    Raises:
        ValueError: a bad argument, an input that does not fit in memory even in tiles, or a
            result with NaN or infinite values.
    """
    from .inference import check_upscale_memory, upscale_raster
    from .io import check_finite_result

    # None stays None down to the tiling, which plans with the model's default_overlap.
    if overlap is not None and (
        isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or overlap < 0
    ):
        raise ValueError(f"overlap must be an integer >= 0, got {overlap!r}")
    shape = raster.data.shape
    if tile == "auto":
        tile = auto_tile(loaded, shape, request, overlap, tta, progress)
    elif isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 0:
        raise ValueError(f"tile must be 'auto' or an integer >= 0, got {tile!r}")
    else:
        check_upscale_memory(loaded, shape, request, tile, overlap, tta)
    result = upscale_raster(
        loaded,
        raster,
        request,
        tile=int(tile),
        overlap=None if overlap is None else int(overlap),
        normalize=normalize,
        progress=progress,
        tta=tta,
        precision=precision,
    )
    if check_finite:
        check_finite_result(raster, result)
    return result, int(tile)


def _request(scale: object, size: object) -> UpscaleRequest:
    """``scale`` or ``size`` as one request; strings in the CLI's grammar (``"3.5x2"``,
    ``"721x1440"``) are read as the CLI reads them (:func:`metasr.data.scales.parse_request`)."""
    from .data.scales import parse_request

    if scale is None and size is None:
        raise ValueError("give scale=... or size=(H, W)")
    if scale is not None and size is not None:
        raise ValueError("give scale=... or size=(H, W), not both")
    return parse_request(scale, size)


#: numpy sample types read as image codes (0..max); floating-point arrays are values.
_CODES = (np.dtype(np.uint8), np.dtype(np.uint16))


def _from_array(a: np.ndarray, what: str) -> tuple[Raster, bool]:
    """An ``(H, W)`` or ``(H, W, C)`` array as a raster; and whether it was 2-D.

    uint8/uint16: image codes (2 or 4 channels: the last is alpha, as in image files).
    Floating point: values (0..1 for an image model; a field model's physical values).
    """
    from .io import _image

    if a.ndim not in (2, 3) or 0 in a.shape:
        raise ValueError(f"{what}: expected an array (H, W) or (H, W, C), got shape {a.shape}")
    if a.dtype in _CODES:
        c = 1 if a.ndim == 2 else a.shape[2]
        return _image(a, alpha_last=c in (2, 4), path=what), a.ndim == 2
    if a.dtype.kind != "f":
        raise TypeError(
            f"{what}: expected uint8, uint16 or floating-point samples, got dtype {a.dtype}"
        )
    data = a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)
    return Raster(data=np.ascontiguousarray(data), kind="field", dtype=a.dtype), a.ndim == 2


def _to_array(r: Raster, flat: bool) -> np.ndarray:
    """The inverse of :func:`_from_array`."""
    from .io import _quantise

    if r.kind == "image":
        out = _quantise(r.data, r.dtype)
        if r.alpha is not None:
            out = np.concatenate([out, _quantise(r.alpha, r.dtype)[None]], 0)
    else:
        out = r.data.astype(r.dtype)
    return out[0] if flat else np.ascontiguousarray(np.moveaxis(out, 0, -1))


def upscale(
    image: Any,
    scale: object = None,
    size: object = None,
    model: str | os.PathLike | LoadedModel = "default",
    *,
    device: str | torch.device = "auto",
    backend: str | None = None,
    tile: int | str = "auto",
    overlap: int | None = None,
    tta: bool | int = False,
    normalize: str = "none",
    max_pixels: int | None = None,
    progress: bool = False,
    precision: str = "fp32",
) -> Any:
    """Upscale one image by ``scale`` (a number, ``(r_v, r_h)`` or ``"3.5x2"``) or to ``size``
    (``(H, W)`` or ``"721x1440"``) with a model (default: the bundled photo model).

    What comes in and what goes out:

    * a path (``str`` or ``os.PathLike``): read as ``metasr upscale`` reads it; nothing is
      written. Returns a ``PIL.Image`` for 8-bit images and 16-bit gray ones, and a numpy array
      (as for an array input below) for 16-bit colour images and for fields (``.npy``, float
      TIFF), which Pillow cannot hold.
    * a ``PIL.Image``: returns a ``PIL.Image`` of the same mode family (``L``, ``LA``, ``RGB``,
      ``RGBA``, ``I;16``; palette and CMYK images come back RGB(A)); ICC profile and EXIF
      (orientation applied and reset) in ``info``.
    * a numpy array ``(H, W)`` or ``(H, W, C)``: returns the same layout and dtype.
      uint8/uint16 are image codes (2 or 4 channels: the last is alpha, upscaled bicubic);
      floating-point arrays are values: 0..1 for an image model (not clamped on the way out),
      physical values for a field model (normalised by its statistics, as netCDF input).
    * a ``torch.Tensor`` ``(C, H, W)`` or ``(N, C, H, W)``, floating point (values, as a float
      array) or uint8 (codes): returns a tensor of the same layout, dtype and device.

    Args:
        image: see above.
        scale, size: the request (exactly one); a scale ≥ 1 per axis.
        model: ``"default"``, ``"default-v1"``, ``"t2m"``, a checkpoint or ``.onnx`` path, a
            registry name, or a :class:`~metasr.checkpoints.LoadedModel`. Loaded models are
            kept between calls (:func:`cached_model`).
        device: ``"auto"`` (CUDA when present, else the CPU), ``"cpu"``, ``"cuda[:N]"``.
        backend: Meta-Upscale backend for every head (default: the model's).
        tile: ``"auto"``: whole when it fits in free memory, else tiles
            (:func:`auto_tile`); 0: whole; N: tiles of N input pixels.
        overlap: input pixels of context around a tile (default: the model's receptive field,
            :func:`metasr.tiling.default_overlap`).
        tta: test-time self-ensemble (``True`` or 2, 4, 8 transforms).
        normalize: ``"minmax"`` maps a float input's range to 0..1 for an image model.
        max_pixels: refuse inputs larger than this (default :data:`metasr.io.MAX_PIXELS`).
        progress: a progress bar over the tiles.
        precision: ``"fp32"``, ``"bf16"`` (CPU bfloat16 autocast) or ``"auto"``
            (:mod:`metasr.precision`).

    Raises:
        TypeError: an input of another type, or an array of another dtype.
        ValueError: everything ``metasr upscale`` refuses: a bad request, model, tile or
            overlap, an input over the pixel cap, one that does not fit in memory even in
            tiles, a result with NaN or infinite values.
    """
    from .checkpoints import resolve_device
    from .io import MAX_PIXELS, raster_from_pillow, raster_to_pillow, read_raster

    request = _request(scale, size)
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        if isinstance(device, str) and device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dev = resolve_device(device)
        loaded = cached_model(str(model), str(dev), backend, torch.float32)
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")

    from .checkpoints import checkpoint_stats

    # Float arrays and tensors hold 0..1 image values for an image model, which takes
    # 0..value_range (files' fields, as in the CLI, reach the model unchanged).
    gain = loaded.value_range if checkpoint_stats(loaded) is None else 1.0

    def run(raster: Raster, values: bool = False) -> Raster:
        h, w = raster.shape
        if h * w > limit:
            raise ValueError(f"input of {h}x{w} pixels is over the limit of {limit:,}")
        g = gain if values and raster.kind == "field" and normalize == "none" else 1.0
        if g != 1.0:
            raster = raster.with_data(raster.data * g)
        out, _ = run_checked(
            loaded, raster, request, tile, overlap, normalize, progress, tta, True, precision
        )
        return out if g == 1.0 else out.with_data(out.data / g, out.alpha)

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        result = run(read_raster(path, max_pixels=limit))
        if result.kind == "image" and (result.dtype == np.uint8 or result.data.shape[0] == 1):
            if result.alpha is None or result.dtype == np.uint8:
                return raster_to_pillow(result)
        return _to_array(result, result.squeeze)
    if type(image).__module__.startswith("PIL.") and hasattr(image, "getbands"):
        return raster_to_pillow(run(raster_from_pillow(image, "PIL image")))
    if isinstance(image, np.ndarray):
        raster, flat = _from_array(image, "array")
        return _to_array(run(raster, values=True), flat)
    if isinstance(image, torch.Tensor):
        return _upscale_tensor(image, run)
    raise TypeError(
        "image must be a path, a PIL image, a numpy array or a torch tensor, got "
        f"{type(image).__name__}"
    )


def _upscale_tensor(x: torch.Tensor, run: Any) -> torch.Tensor:
    """``(C, H, W)`` or ``(N, C, H, W)`` through ``run`` image by image, as the same kind."""
    if x.dim() not in (3, 4) or 0 in x.shape:
        raise ValueError(f"a tensor must be (C, H, W) or (N, C, H, W), got {tuple(x.shape)}")
    if not (x.dtype.is_floating_point or x.dtype == torch.uint8):
        raise TypeError(f"a tensor must be floating point or uint8, got {x.dtype}")
    batch = x if x.dim() == 4 else x[None]
    outs = []
    for item in batch:
        a = item.detach().cpu().numpy()
        if x.dtype == torch.uint8:
            raster = Raster(data=a.astype(np.float32) / 255, kind="image", dtype=np.dtype(np.uint8))
            r = run(raster)
            from .io import _quantise

            outs.append(torch.from_numpy(_quantise(r.data, r.dtype)))
        else:
            raster = Raster(data=a.astype(np.float64 if a.dtype == np.float64 else np.float32),
                            kind="field", dtype=a.dtype)  # fmt: skip
            outs.append(torch.from_numpy(np.ascontiguousarray(run(raster, True).data)))
    y = torch.stack(outs).to(device=x.device, dtype=x.dtype)
    return y if x.dim() == 4 else y[0]
