"""Reading and writing images and arrays: the one reader of ``metasr upscale``, training and eval.

Everything is converted to one in-memory form, :class:`Raster`: channels first, float, with
the file's sample type remembered so the result can be written back at the same bit depth.

* **Images** (PNG, JPEG, BMP, TIFF, WebP; 8 or 16 bits per sample; gray, gray+alpha, RGB,
  RGBA) are scaled to 0..1 (``value / (2**bits - 1)``); alpha is kept apart from the colour
  channels, and the EXIF orientation of camera pictures is applied. 32-bit integer images are
  refused (they have no defined white level). On writing, values are clamped to 0..1 and
  rounded to the original bit depth (BMP, JPEG and WebP hold 8 bits).
* **Fields** (``.npy`` arrays ``(H, W)`` or ``(C, H, W)``, and floating-point TIFFs) keep their
  values unchanged and are written back in their own dtype (integer arrays are rounded and
  clipped to their dtype's range).

Libraries are imported only when a format needs them: Pillow (PNG, JPEG, BMP, WebP), pypng (16-bit
PNG, which Pillow silently reduces to 8 bits for colour images) and tifffile (TIFF). Every read
or format error is raised as a ``ValueError`` naming the file, and every write goes to a
temporary file in the destination folder that is renamed over the target only when complete,
so an interrupted run never leaves a half-written output.

Every reader checks the image's size in the file's header against one pixel limit,
:data:`MAX_PIXELS` (``max_pixels=`` of :func:`read_raster`), before decoding anything, so a small
file declaring a huge image (a decompression bomb) is refused at once. Files holding several
images (multi-page TIFF, animated PNG/WebP) are refused rather than reduced to their first one.

Training and evaluation data read the same files through :mod:`metasr.data.files` (float32
``(C, H, W)`` tensors made from a :class:`Raster`).

Nothing here imports torch: the netCDF baseline path (:mod:`metasr.climate.io`) writes with
:func:`atomic_write` and checks its results with :func:`check_fits_dtype` without loading it.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from .validation import check_int

__all__ = [
    "ARRAY_SUFFIXES",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "SUFFIXES",
    "Raster",
    "atomic_write",
    "atomic_write_text",
    "check_fits_dtype",
    "check_finite_result",
    "check_writable",
    "format_of",
    "is_temporary_name",
    "missing_reason",
    "read_raster",
    "raster_from_pillow",
    "raster_to_pillow",
    "write_raster",
]

#: File suffix → format name, for every format this module reads and writes.
SUFFIXES: dict[str, str] = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".bmp": "bmp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".webp": "webp",
    ".npy": "npy",
}
IMAGE_SUFFIXES = tuple(s for s, f in SUFFIXES.items() if f != "npy")
ARRAY_SUFFIXES = tuple(s for s, f in SUFFIXES.items() if f == "npy")

#: What a data file holds: ``"image"`` (values in 0..1) or ``"array"`` (values as stored).

#: Formats that can hold each image sample type.
_FORMATS_FOR_DTYPE = {
    np.dtype(np.uint8): ("png", "jpeg", "bmp", "tiff", "webp"),
    np.dtype(np.uint16): ("png", "tiff"),
}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: Largest image a reader accepts, in pixels (height × width), checked on the file's header
#: before decoding; arrays and multi-sample TIFFs may also hold at most ``4 × MAX_PIXELS``
#: samples in all. The default is Pillow's own decompression-bomb limit (2 × 89,478,485, about
#: 13,377²), now applied to every reader (16-bit PNG, TIFF and ``.npy`` too). Change it here for
#: a whole program, per call with ``read_raster(..., max_pixels=N)``, or with
#: ``metasr upscale --max-pixels N``.
MAX_PIXELS = 178_956_970

#: Names of our temporary files: ``.STEM.XXXXXXXX.SUFFIX`` (8 hex digits).
_TEMPORARY_NAME = re.compile(r"\..*\.[0-9a-f]{8}\.[A-Za-z]+", re.DOTALL)


@dataclass
class Raster:
    """The samples of one file, channels first.

    Attributes:
        data: ``(C, H, W)``. Images: float32 in 0..1 (``C`` = 1 gray, 3 RGB, or any count for
            multi-sample TIFFs), without alpha. Fields: the stored values, float dtype kept
            (integer arrays as float64).
        kind: ``"image"`` (values in 0..1, rounded back to ``dtype`` on writing) or ``"field"``
            (values as stored).
        dtype: sample type of the file (``uint8``/``uint16`` for images).
        alpha: ``(H, W)`` float32 in 0..1, or None.
        squeeze: a field that was stored 2-D ``(H, W)``; written back 2-D.
        planar: a TIFF stored samples-first (``SYX``); written back the same way.
        icc_profile: the image's ICC colour profile (JPEG, PNG, WebP, TIFF), written back
            where the output format holds one (not BMP, not 16-bit PNG).
        exif: the image's EXIF block with its orientation reset to 1 (the reader has already
            turned the pixels upright), written back to JPEG, PNG and WebP.
    """

    data: np.ndarray
    kind: Literal["image", "field"]
    dtype: np.dtype
    alpha: np.ndarray | None = None
    squeeze: bool = False
    planar: bool = False
    icc_profile: bytes | None = None
    exif: bytes | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.data.shape[1], self.data.shape[2]

    def with_data(self, data: np.ndarray, alpha: np.ndarray | None = None) -> Raster:
        """The same kind of raster holding new ``data`` ``(C, H', W')`` (and ``alpha``)."""
        return replace(self, data=data, alpha=alpha)


def format_of(path: str | os.PathLike) -> str:
    """Format name of ``path`` from its suffix, or ``ValueError`` listing the supported ones."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        supported = ", ".join(sorted(SUFFIXES))
        raise ValueError(
            f"{path}: unsupported format {suffix or '(no suffix)'!r}; supported: {supported}"
        )
    return SUFFIXES[suffix]


def _require(module: str, package: str, purpose: str):
    """Import a core image dependency or raise one line saying what to install
    (:func:`metasr._extras.require`; a ``ValueError``)."""
    from ._extras import require

    return require(module, None, purpose)


# --------------------------------------------------------------------------------------------
# reading


def read_raster(path: str | os.PathLike, *, max_pixels: int | None = None) -> Raster:
    """Read an image or array file into a :class:`Raster`.

    Args:
        path: image or ``.npy`` file.
        max_pixels: largest accepted height × width (default :data:`MAX_PIXELS`), checked on
            the header before anything is decoded; at most ``4 × max_pixels`` samples in all.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unsupported suffix, unreadable or corrupt file, an image larger than the
            pixel limit, several pages or frames, unsupported layout or sample type, or a
            missing optional library (the message says which to install).
    """
    path = Path(path)
    fmt = format_of(path)
    limit = MAX_PIXELS if max_pixels is None else check_int("max_pixels", max_pixels, minimum=1)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file")
    try:
        if fmt == "npy":
            return _read_npy(path, limit)
        if fmt == "tiff":
            return _read_tiff(path, limit)
        if fmt == "png":
            width, height, bits, frames = _png_header(path)
            _check_size(path, height, width, 1, limit)
            if frames > 1:
                raise ValueError(_several_images(path, "an animated PNG", frames, "frames"))
            if bits == 16:
                return _read_png16(path)
        return _read_pillow(path, limit)
    except FileNotFoundError:
        raise
    except Exception as exc:  # corrupt files surface as many library-specific errors
        if isinstance(exc, ValueError) and str(exc).startswith(str(path)):
            raise  # ours, already naming the file
        raise ValueError(f"{path}: cannot read as {fmt.upper()}: {exc}") from exc


def _check_size(path: Path, height: int, width: int, channels: int, limit: int) -> None:
    """Refuse a header declaring more than ``limit`` pixels (or ``4 × limit`` samples)."""
    pixels = height * width
    if pixels > limit or pixels * channels > 4 * limit:
        size = f"{height}x{width}" + (f"x{channels}" if channels > 1 else "")
        raise ValueError(
            f"{path}: image of {size} is larger than the limit of {limit:,} pixels "
            f"(raise it with --max-pixels or metasr.io.MAX_PIXELS if the file is trusted)"
        )


def _several_images(path: Path, what: str, count: int, unit: str) -> str:
    return (
        f"{path}: {what} with {count} {unit}; only single images are supported "
        f"(extract the {unit} into separate files first)"
    )


def _image(samples: np.ndarray, alpha_last: bool, path: Path) -> Raster:
    """``(H, W)`` or ``(H, W, C)`` uint8/uint16 samples → image :class:`Raster`."""
    dtype = samples.dtype
    if dtype not in _FORMATS_FOR_DTYPE:
        raise ValueError(
            f"{path}: unsupported image sample type {dtype}; images must hold unsigned 8- or "
            "16-bit samples (store other values as .npy)"
        )
    if samples.ndim == 2:
        samples = samples[:, :, None]
    if samples.ndim != 3 or samples.shape[0] < 1 or samples.shape[1] < 1:
        raise ValueError(f"{path}: unsupported image shape {samples.shape}")
    unit = samples.astype(np.float32) / np.float32(np.iinfo(dtype).max)
    alpha = None
    if alpha_last:
        unit, alpha = unit[:, :, :-1], np.ascontiguousarray(unit[:, :, -1])
    data = np.ascontiguousarray(unit.transpose(2, 0, 1))
    return Raster(data=data, kind="image", dtype=dtype, alpha=alpha)


def _read_pillow(path: Path, limit: int) -> Raster:
    Image = _require("PIL.Image", "Pillow", f"reading {path.suffix} files")

    # Pillow has its own bomb guard (a warning above MAX_IMAGE_PIXELS, an error above twice
    # that), checked inside Image.open. Align it with ours so that the one limit decides: files
    # within our limit open silently, and ours refuses the rest with its own message.
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit
    try:
        im_file = Image.open(path)
    except Image.DecompressionBombError:  # a limit lowered since: Pillow refused first
        raise ValueError(
            f"{path}: image is larger than the limit of {limit:,} pixels "
            "(raise it with --max-pixels or metasr.io.MAX_PIXELS if the file is trusted)"
        ) from None
    with im_file as im:
        width, height = im.size  # from the header: nothing is decoded before load()
        _check_size(path, height, width, len(im.getbands()), limit)
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            what = {"WEBP": "an animated WebP", "PNG": "an animated PNG"}.get(
                im.format, f"a {im.format} file"
            )
            raise ValueError(_several_images(path, what, frames, "frames"))
        im.load()
        return raster_from_pillow(im, str(path))


def raster_from_pillow(im, name: str = "image") -> Raster:
    """A ``PIL.Image`` as an image :class:`Raster` (what :func:`read_raster` gives for its file).

    Palette, bilevel, CMYK, YCbCr, LAB and HSV images become gray or RGB(A); 16-bit gray stays
    16-bit; the EXIF orientation is applied to the pixels and the ICC profile and EXIF kept
    (:class:`Raster`).

    Raises:
        ValueError: a mode without a white level (32-bit ``I``/``F``) or another unsupported
            mode; ``name`` starts the message.
    """
    from PIL import ImageOps

    path = name  # for the messages
    icc = im.info.get("icc_profile") or None
    # Cameras store rotation in EXIF: apply it to the pixels now (the EXIF written back
    # says "upright", so no viewer turns the result a second time).
    im = ImageOps.exif_transpose(im)
    exif = _upright_exif(im)
    mode = im.mode
    if mode == "P":
        mode = "RGBA" if "transparency" in im.info else "RGB"
    elif mode == "PA":
        mode = "RGBA"
    elif mode == "1":
        mode = "L"
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        mode = "RGB"
    elif mode in ("I;16", "I;16B", "I;16L"):
        raster = _image(np.asarray(im, dtype=np.uint16), False, path)
        return replace(raster, icc_profile=icc, exif=exif)
    elif mode in ("I", "F"):
        # 32-bit samples have no white level to divide by (65535 is only right for 16-bit).
        raise ValueError(
            f"{path}: unsupported image mode {im.mode!r} (32-bit samples); "
            "store 8- or 16-bit images, or the values as .npy"
        )
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        raise ValueError(f"{path}: unsupported image mode {im.mode!r}")
    if mode != im.mode:
        im = im.convert(mode)
    raster = _image(np.asarray(im), alpha_last=mode in ("LA", "RGBA"), path=path)
    return replace(raster, icc_profile=icc, exif=exif)


#: EXIF tag of the orientation (1: upright).
_ORIENTATION = 0x0112


def _upright_exif(im) -> bytes | None:
    """``im``'s EXIF block with the orientation set to 1, or ``None`` when it has none."""
    exif = im.getexif()
    if not len(exif):
        return None
    if _ORIENTATION in exif:
        exif[_ORIENTATION] = 1
    return exif.tobytes()


def _png_header(path: Path) -> tuple[int, int, int, int]:
    """``(width, height, bit depth, frames)`` from a PNG's chunks before its image data.

    Read by hand because pypng (16-bit files; Pillow reduces 16-bit colour PNGs to 8 bits
    silently) decodes everything before the size could be checked, and ignores the ``acTL``
    chunk that makes a PNG an animation.
    """
    with open(path, "rb") as fh:
        head = fh.read(33)
        if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
            raise ValueError(f"{path}: not a PNG file")
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        frames = 1
        while True:  # chunk: 4-byte length, 4-byte type, data, 4-byte CRC
            chunk = fh.read(8)
            if len(chunk) < 8 or chunk[4:8] == b"IDAT":
                break
            length = int.from_bytes(chunk[:4], "big")
            if chunk[4:8] == b"acTL":
                frames = int.from_bytes(fh.read(4), "big")
                length -= 4
            fh.seek(length + 4, os.SEEK_CUR)
    return width, height, head[24], frames


def _read_png16(path: Path) -> Raster:
    png = _require("png", "pypng", "reading 16-bit PNG")
    reader = png.Reader(filename=str(path))
    width, height, rows, info = reader.asDirect()
    planes = info["planes"]
    samples = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    samples = samples.reshape(height, width, planes)
    return _image(samples, alpha_last=bool(info["alpha"]), path=path)


def _read_tiff(path: Path, limit: int) -> Raster:
    tifffile = _require("tifffile", "tifffile", "reading TIFF")
    with tifffile.TiffFile(path) as tif:
        pages = len(tif.pages)
        if pages > 1:
            raise ValueError(_several_images(path, "a multi-page TIFF", pages, "pages"))
        series = tif.series[0]
        page = tif.pages[0]
        axes = series.axes
        # The header's shape, checked before asarray() decodes the samples.
        dims = dict(zip(axes, series.shape, strict=True))
        samples = int(np.prod(series.shape, dtype=np.int64))
        height, width = dims.get("Y", 1), dims.get("X", 1)
        _check_size(path, height, width, samples // max(height * width, 1), limit)
        arr = series.asarray()
        icc_tag = page.tags.get(34675)  # InterColorProfile
        icc = bytes(icc_tag.value) if icc_tag is not None else None
        photometric = int(page.photometric)
        extrasamples = tuple(int(e) for e in page.extrasamples)
    planar = axes == "SYX"
    if axes == "YX":
        arr = arr[:, :, None]
    elif planar:
        arr = np.moveaxis(arr, 0, -1)
    elif axes != "YXS":
        raise ValueError(
            f"{path}: unsupported TIFF layout {axes!r} (one page, YX, YXS or SYX expected)"
        )
    if np.issubdtype(arr.dtype, np.floating):
        data = np.ascontiguousarray(np.moveaxis(arr, -1, 0))
        return Raster(data=data, kind="field", dtype=arr.dtype, squeeze=axes == "YX", planar=planar)
    # 0 = min-is-white, 1 = min-is-black, 2 = RGB; 1 = associated, 2 = unassociated alpha.
    if photometric not in (1, 2):
        raise ValueError(
            f"{path}: unsupported TIFF photometric interpretation {photometric} "
            "(gray or RGB expected)"
        )
    alpha_last = bool(extrasamples) and extrasamples[-1] in (1, 2)
    raster = _image(arr, alpha_last=alpha_last, path=path)
    raster.planar = planar
    raster.icc_profile = icc
    return raster


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` from an ``.npy`` header, without reading the data."""
    fmt = np.lib.format
    with open(path, "rb") as fh:
        if fh.read(4) == b"PK\x03\x04":  # np.savez writes zip archives, whatever the name
            raise ValueError(f"{path}: an .npz archive, not an .npy array (save it with np.save)")
        fh.seek(0)
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(fh)
        else:  # 3.0 (UTF-8 field names) has no public header reader: map the file instead
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            shape, dtype = arr.shape, arr.dtype
            del arr
    return tuple(shape), np.dtype(dtype)


def _read_npy(path: Path, limit: int) -> Raster:
    shape, dtype = _npy_header(path)  # checked before any data is read
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"{path}: expected an array of shape (H, W) or (C, H, W), got {shape}")
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise ValueError(f"{path}: unsupported array dtype {dtype} (float or integer expected)")
    _check_size(path, shape[-2], shape[-1], shape[0] if len(shape) == 3 else 1, limit)
    # allow_pickle=False: an .npy of Python objects is refused rather than executed.
    arr = np.load(path, allow_pickle=False)
    squeeze = arr.ndim == 2
    data = arr[None] if squeeze else arr
    if not np.issubdtype(arr.dtype, np.floating):
        data = data.astype(np.float64)
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: the array contains NaN or infinite values")
    return Raster(data=np.ascontiguousarray(data), kind="field", dtype=arr.dtype, squeeze=squeeze)


# --------------------------------------------------------------------------------------------
# writing


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    ``write`` may replace the temporary file by a folder of the same name (a Zarr store): it
    then replaces ``path`` the same way.

    The temporary name (see :func:`is_temporary_name`) keeps the suffix (some writers pick the
    format from it), starts with a dot and is shortened to fit the folder's name length limit.
    On any error, including a ``SIGINT``/``SIGTERM`` turned into an exception, the temporary
    file is removed and ``path`` is left as it was; an ``OSError`` then names ``path``, not the
    temporary file. The result has the permissions a plain ``open(path, "w")`` would give.

    Raises:
        FileNotFoundError: the destination folder does not exist.
        OSError: the write or the rename failed (disk full, permissions, ...).
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder {folder} does not exist")
    try:
        tmp = _create_temporary(folder, path)
    except OSError as exc:
        raise _naming(exc, path) from exc
    try:
        write(tmp)
        _replace(tmp, path)
    except BaseException as exc:
        _remove(tmp)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from exc
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_write` (JSON, CSV reports)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _replace(tmp: Path, path: Path) -> None:
    """``os.replace``, also for a folder (a Zarr store) written in place of the temporary file:
    an existing ``path`` is moved aside first and removed once ``tmp`` has its name."""
    if not tmp.is_dir() or not (path.exists() or path.is_symlink()):
        os.replace(tmp, path)
        return
    aside = _create_temporary(path.parent, path)  # a fresh name that is ours
    aside.unlink()
    os.replace(path, aside)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(aside, path)  # put the old output back
        raise
    _remove(aside)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` with ``path`` as its file name (a user never asked for the temporary file)."""
    if exc.errno is None:
        return exc  # a library's own OSError("...") without an errno: its text is all there is
    return OSError(exc.errno, exc.strerror, str(path))  # picks the subclass (PermissionError, ...)


def is_temporary_name(name: str) -> bool:
    """Whether a file name is one of :func:`atomic_write`'s temporary files.

    Folder and glob expansion skip these (and every hidden file): a run killed with
    ``SIGKILL`` cannot remove its temporary file, and a later run must not read it as an input.
    """
    return _TEMPORARY_NAME.fullmatch(name) is not None


def _temporary_name(path: Path, token: str, name_max: int) -> str:
    """``.STEM.TOKEN.SUFFIX``, the stem cut (at a UTF-8 boundary) to fit ``name_max`` bytes."""
    stem, suffix = os.fsencode(path.stem), os.fsencode(path.suffix)
    room = max(name_max - len(suffix) - len(token) - 2, 0)
    if len(stem) > room:
        cut = room
        while cut > 0 and stem[cut] & 0xC0 == 0x80:  # do not split a multi-byte character
            cut -= 1
        stem = stem[:cut]
    return os.fsdecode(b"." + stem + b"." + token.encode() + suffix)


def _create_temporary(folder: Path, path: Path) -> Path:
    """Create a new empty file beside ``path`` with the mode ``open()`` would give it.

    Why not ``tempfile.mkstemp``: it creates the file 0600, and restoring the usual mode would
    mean reading the process umask, which can only be done by changing it (racy with threads).
    ``os.open`` with mode 0666 lets the kernel apply the umask; ``O_EXCL`` makes the name ours.
    """
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    for _ in range(100):
        tmp = folder / _temporary_name(path, secrets.token_hex(4), name_max)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"cannot create a temporary file in {folder}")


def check_writable(raster: Raster, path: str | os.PathLike) -> str:
    """Format of ``path`` after checking it can hold ``raster``; ``ValueError`` otherwise."""
    fmt = format_of(path)
    if raster.kind == "field":
        if fmt not in ("npy", "tiff"):
            raise ValueError(f"{path}: an array can only be written as .npy (or .tif)")
        if fmt == "tiff" and not np.issubdtype(raster.dtype, np.floating):
            raise ValueError(f"{path}: an integer array can only be written as .npy")
        return fmt
    if fmt == "npy":
        raise ValueError(f"{path}: an image is written as an image file, not .npy")
    if fmt not in _FORMATS_FOR_DTYPE[raster.dtype]:
        bits = 8 * raster.dtype.itemsize
        raise ValueError(f"{path}: {fmt.upper()} cannot store {bits}-bit samples; use .png or .tif")
    if fmt in ("jpeg", "bmp") and raster.alpha is not None:
        raise ValueError(
            f"{path}: {fmt.upper()} cannot store the alpha channel; use .png, .webp or .tif"
        )
    if fmt in ("jpeg", "bmp", "webp") and raster.data.shape[0] not in (1, 3):
        raise ValueError(
            f"{path}: {fmt.upper()} stores gray or RGB, not {raster.data.shape[0]} channels"
        )
    return fmt


def check_fits_dtype(values: np.ndarray, dtype: np.dtype | type) -> None:
    """Refuse finite ``values`` (computed in a wider type) that a float ``dtype`` cannot hold.

    The cast would turn them into infinity without a word (3e38 K through a model, stored as
    float32). NaN and infinity already in ``values`` are not counted: the caller checks those.

    Raises:
        ValueError: the largest magnitude and the range of ``dtype``.
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f" or values.size == 0:
        return
    top = float(np.finfo(dtype).max)
    finite = np.abs(values[np.isfinite(values)])
    largest = float(finite.max()) if finite.size else 0.0
    if largest > top:
        raise ValueError(
            f"the result reaches {largest:.3g}, beyond the range of {dtype} "
            f"(±{top:.3g}); nothing written"
        )


def check_finite_result(source: Raster, result: Raster) -> None:
    """Refuse a result holding NaN or infinity (in its stored dtype) that ``source`` did not.

    A model with NaN weights, or values beyond float32's range inside the network, give such
    results; writing them would give an all-black image or an array of NaN without a word.

    Raises:
        ValueError: the message counts the bad values (without a file name: the caller knows
            which input it was).
    """
    if not np.isfinite(source.data).all() or (
        source.alpha is not None and not np.isfinite(source.alpha).all()
    ):
        return  # NaN in, NaN out: the input's own (a float TIFF may mark missing data so)
    values = [result.data] if result.alpha is None else [result.data, result.alpha]
    bad = sum(int(np.size(v) - np.isfinite(v).sum()) for v in values)
    if bad:
        total = sum(np.size(v) for v in values)
        raise ValueError(
            f"the result holds {bad:,} NaN or infinite values of {total:,} (the input has "
            "none); nothing written"
        )
    if result.kind == "field":
        check_fits_dtype(result.data, result.dtype)


def _quantise(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """0..1 floats → ``dtype`` samples: clamp, scale by the maximum code value, round."""
    top = np.iinfo(dtype).max
    return np.rint(np.clip(values, 0.0, 1.0) * top).astype(dtype)


def _saturate(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Floats → integer ``dtype``: rounded, values beyond its range set to its min/max.

    Clipping to ``float(info.max)`` is not enough: for 64-bit types that bound rounds up to
    2**63 (2**64), which no longer fits and wraps to the minimum when cast.
    """
    info = np.iinfo(dtype)
    rounded = np.rint(values.astype(np.float64, copy=False))
    high = rounded >= float(info.max)  # float(max) is max itself, or the power of 2 above it
    low = rounded <= float(info.min)  # min is 0 or -(power of 2): exact as a float
    out = np.where(high | low, 0.0, rounded).astype(dtype)
    out[high] = info.max
    out[low] = info.min
    return out


def _field_values(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Field values back to the stored dtype (integers: rounded and saturated to their range)."""
    if np.issubdtype(dtype, np.integer):
        return _saturate(data, dtype)
    return data.astype(dtype)


def write_raster(path: str | os.PathLike, raster: Raster, quality: int | None = None) -> None:
    """Write ``raster`` to ``path`` (format from the suffix), atomically.

    An image's ICC profile and EXIF (:class:`Raster`) go with it where the format holds them:
    both in JPEG, PNG (8-bit) and WebP, the profile in TIFF.

    Args:
        quality: JPEG and WebP quality, 1..100. JPEG defaults to 95; WebP is lossless unless a
            quality is given (a super-resolution result should not pick up compression
            artefacts by default). Other formats are lossless and refuse a quality.

    Raises:
        ValueError: the format cannot hold the raster (16 bits in JPEG, alpha in JPEG, an image
            as ``.npy``, NaN as integer samples, ...) or a needed library is missing.
        FileNotFoundError: the destination folder does not exist.
    """
    fmt = check_writable(raster, path)
    if quality is not None:
        if not 1 <= check_int("quality", quality) <= 100:
            raise ValueError(f"quality must be 1..100, got {quality}")
        if fmt not in ("jpeg", "webp"):
            raise ValueError(f"{path}: quality is for JPEG and WebP; {fmt.upper()} is lossless")
    if (raster.kind == "image" or np.issubdtype(raster.dtype, np.integer)) and np.isnan(
        raster.data
    ).any():
        # NaN has no integer sample: the cast would give arbitrary values (0 on most machines).
        raise ValueError(f"{path}: cannot store NaN as {raster.dtype} samples")
    if raster.kind == "field":
        values = _field_values(raster.data, raster.dtype)  # (C, H, W)
        if fmt == "npy":
            out = values[0] if raster.squeeze else values

            def write(tmp: Path) -> None:
                with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy"
                    np.save(fh, out, allow_pickle=False)

        else:
            tifffile = _require("tifffile", "tifffile", "writing TIFF")
            out = (
                values[0]
                if raster.squeeze
                else values
                if raster.planar
                else values.transpose(1, 2, 0)
            )
            kw = {"photometric": "minisblack"}
            if not raster.squeeze:
                kw["planarconfig"] = "separate" if raster.planar else "contig"

            def write(tmp: Path) -> None:
                tifffile.imwrite(tmp, out, compression="zlib", **kw)

        atomic_write(path, write)
        return

    samples = _quantise(raster.data, raster.dtype).transpose(1, 2, 0)  # (H, W, C)
    if raster.alpha is not None:
        samples = np.concatenate([samples, _quantise(raster.alpha, raster.dtype)[:, :, None]], -1)
    samples = np.ascontiguousarray(samples)
    channels = samples.shape[2]
    has_alpha = raster.alpha is not None
    if fmt == "tiff":
        tifffile = _require("tifffile", "tifffile", "writing TIFF")
        colour = channels - has_alpha == 3
        kw = {
            "photometric": "rgb" if colour else "minisblack",
            "extrasamples": ["unassalpha"] if has_alpha else None,
        }
        if raster.planar:
            samples, kw["planarconfig"] = (
                np.ascontiguousarray(samples.transpose(2, 0, 1)),
                "separate",
            )
        elif channels == 1:
            samples = samples[:, :, 0]
        if raster.icc_profile:
            kw["iccprofile"] = raster.icc_profile
        atomic_write(path, lambda tmp: tifffile.imwrite(tmp, samples, compression="zlib", **kw))
    elif fmt == "png" and raster.dtype == np.uint16:
        png = _require("png", "pypng", "writing 16-bit PNG")
        if channels not in (1, 2, 3, 4):
            raise ValueError(f"{path}: PNG stores 1 to 4 samples per pixel, not {channels}")
        h, w = samples.shape[:2]
        writer = png.Writer(w, h, greyscale=channels - has_alpha == 1, alpha=has_alpha, bitdepth=16)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                writer.write(fh, samples.reshape(h, w * channels))

        atomic_write(path, write)
    else:
        if channels not in (1, 2, 3, 4):
            raise ValueError(
                f"{path}: {fmt.upper()} stores 1 to 4 samples per pixel, not {channels}"
            )
        im = _pillow(samples, f"writing {Path(path).suffix} files")
        options = {
            "png": {"optimize": False},
            "bmp": {},
            "jpeg": {"quality": 95 if quality is None else int(quality)},
            # Lossless by default: a super-resolution result should not pick up compression
            # artefacts unless asked for.
            "webp": {"lossless": True} if quality is None else {"quality": int(quality)},
        }[fmt]
        if fmt != "bmp":
            if raster.icc_profile:
                options["icc_profile"] = raster.icc_profile
            if raster.exif:
                options["exif"] = raster.exif
        atomic_write(path, lambda tmp: im.save(tmp, format=fmt.upper(), **options))


def _pillow(samples: np.ndarray, purpose: str):
    """``(H, W, C)`` samples (C = 1..4, uint8; or one uint16 channel) as a ``PIL.Image``."""
    Image = _require("PIL.Image", "Pillow", purpose)
    return Image.fromarray(samples[:, :, 0] if samples.shape[2] == 1 else samples)


def raster_to_pillow(raster: Raster):
    """An image :class:`Raster` as a ``PIL.Image`` (the inverse of :func:`raster_from_pillow`):
    ``L``, ``LA``, ``RGB``, ``RGBA`` for 8-bit, ``I;16`` for 16-bit gray; the ICC profile and
    EXIF in ``im.info``.

    Raises:
        ValueError: a field, more than 4 samples per pixel, or 16-bit colour or alpha (Pillow
            has no such mode; keep those as arrays).
    """
    if raster.kind != "image":
        raise ValueError("a field has no PIL form; keep it as an array")
    samples = _quantise(raster.data, raster.dtype).transpose(1, 2, 0)
    if raster.alpha is not None:
        samples = np.concatenate([samples, _quantise(raster.alpha, raster.dtype)[:, :, None]], -1)
    channels = samples.shape[2]
    if channels > 4 or (raster.dtype == np.uint16 and channels != 1):
        raise ValueError(
            f"PIL has no image mode for {channels} {np.dtype(raster.dtype).itemsize * 8}-bit "
            "samples per pixel; keep the image as an array"
        )
    im = _pillow(np.ascontiguousarray(samples), "PIL images")
    if raster.icc_profile:
        im.info["icc_profile"] = raster.icc_profile
    if raster.exif:
        im.info["exif"] = raster.exif
    return im


def missing_reason(path: Path) -> str:
    """Why ``path`` cannot be opened: ``no such file or folder``, or what is in the way."""
    for parent in reversed(path.parents):  # the first existing non-folder on the way down
        if parent != Path(".") and parent.exists() and not parent.is_dir():
            return f"{parent} is a file, not a folder"
    if path.exists() or path.is_symlink():
        if path.is_symlink() and not path.exists():
            return "broken symbolic link"
        return "not a regular file or folder"  # a FIFO, socket or device
    return "no such file or folder"
