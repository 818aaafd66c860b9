"""Training photographs from Debian's wallpaper packages, cut into DIV2K-style HR sub-images.

``python -m tools.samples debian-photos DIR`` (``make photos``) runs three separable steps:

1. **Fetch** (:func:`fetch_debian_packages`): ``apt-get download`` of
   :data:`DEBIAN_PHOTO_PACKAGES` into a temporary folder and ``dpkg -x`` of each ``.deb`` into
   its own folder. Nothing is installed; the package client is the only network access (its
   index must be current: run ``apt-get update`` first). Only these packages are used for
   training; other wallpaper packages stay available for independent evaluation.
2. **Scan** (:func:`scan_package`): every raster under ``usr/share/backgrounds`` of an extracted
   package is decoded one at a time, measured (:func:`image_stats`), classified
   (:func:`photo_drop_reason`), hashed for deduplication and matched to its licence in
   ``usr/share/doc/PKG/copyright`` (:func:`licence_for`; DEP-5 ``Files:`` stanzas, last match
   wins). The version comes from the package's ``changelog.Debian.gz``.
3. **Write** (:func:`build_photo_dataset`): duplicates are removed, each kept photo is assigned
   to ``train`` or ``val`` by a hash of its name, training photos are cut into sub-images, held-out
   photos are written whole, and ``manifest.json`` records every file seen.

**What counts as a photograph.** Vector files (``.svg``, ``.svgz``) are dropped by format and
symbolic links (aliases of another file) are skipped. A raster is dropped, with the first
reason that applies, if

* ``transparent``: it has an alpha channel with any pixel below 255 (overlay artwork meant to
  be composited over a flat colour; a photograph has no transparency);
* ``few-colours``: the entropy of its colour histogram (6 bits per channel, 262 144 bins) is
  below :data:`MIN_COLOUR_ENTROPY` bits, or it has fewer than :data:`MIN_COLOURS_PER_PIXEL`
  distinct 8-bit colours per pixel (flat drawings, logos, gradients, dithered vector art;
  camera noise and natural colour variation give photographs tens of thousands of colours);
* ``flat``: on a copy reduced to at most 1024 pixels on the long side (box filter, which
  averages JPEG noise away), more than :data:`MAX_FLAT_FRACTION` of the pixels have a
  luminance gradient below 0.5 grey levels (renders and vector art are made of perfectly
  smooth areas; even defocused backgrounds of photographs keep some texture);
* ``busy-pattern``: the median luminance gradient of that reduced copy exceeds
  :data:`MAX_MEDIAN_GRADIENT` levels (tilings, pixel patterns, dense illustration: a photograph
  has mostly smooth content, with a heavy tail of strong edges);
* ``periodic``: the detail of the luminance (minus its 9×9 box blur, at most 512 pixels on
  the long side) has a normalised autocorrelation above :data:`MAX_PERIODICITY` at some lag of
  at least 16 pixels along both axes (repeating tiles and geometric wallpapers repeat in two
  directions; natural scenes do not, and motion blur or a horizon correlates along one axis
  only).

The thresholds were set by looking at contact sheets of what is kept and dropped from these
five packages (docs/training.md, "Training photos"); the counts of that run are in the docs.

**Deduplication.** Exact duplicates share the SHA-256 of their decoded RGB pixels. Near
duplicates (the same picture at several resolutions, light/dark or colour variants) share a
difference hash: the luminance reduced to 17×16, z-normalised, and the signs of its horizontal
differences (256 bits); two hashes within :data:`NEAR_DUPLICATE_BITS` bits are one picture and
only the one with the most pixels is kept.

**Layout.** ``DIR/train`` holds HR sub-images (``crop``×``crop`` at ``step``, the last row and
column of crops flush with the border, as BasicSR's ``extract_subimages.py`` does for DIV2K;
crops whose luminance standard deviation is below :data:`MIN_CROP_STD` are dropped as
near-flat), ``DIR/val`` the held-out photos whole, both as RGB PNG, the layout
:class:`~metasr.data.ArbitraryScaleDataset` and :class:`~metasr.data.ArbitraryScaleTestDataset`
read. scikit-image's colour photos join with their fixed split (``SKIMAGE_TRAIN`` /
``SKIMAGE_VAL``). A Debian photo goes to ``val`` when the first 8 hex digits of
``sha256("package/path")`` fall below ``val_fraction`` of the range, so the split of a file
never depends on which other files exist.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from metasr.io import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = [
    "DEBIAN_PHOTO_PACKAGES",
    "ImageStats",
    "PackageTree",
    "PhotoRecord",
    "build_photo_dataset",
    "crop_boxes",
    "difference_hash",
    "fetch_debian_packages",
    "image_stats",
    "licence_for",
    "photo_drop_reason",
    "scan_package",
    "write_contact_sheet",
]

#: The Debian packages whose photographs are used for training.
DEBIAN_PHOTO_PACKAGES = (
    "gnome-backgrounds",
    "ukui-wallpapers",
    "mate-backgrounds",
    "lomiri-wallpapers",
    "sway-backgrounds",
)

RASTER_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"})
VECTOR_SUFFIXES = frozenset({".svg", ".svgz"})

#: Minimum entropy (bits) of the 6-bit-per-channel colour histogram.
MIN_COLOUR_ENTROPY = 6.9
#: Minimum distinct 8-bit RGB colours per pixel.
MIN_COLOURS_PER_PIXEL = 0.006
#: Maximum fraction of near-zero-gradient pixels on the reduced copy.
MAX_FLAT_FRACTION = 0.40
#: Maximum median luminance gradient (grey levels) on the reduced copy.
MAX_MEDIAN_GRADIENT = 8.0
#: Maximum secondary autocorrelation peak.
MAX_PERIODICITY = 0.4
#: Hamming distance (of 256 bits) under which two difference hashes are the same picture.
NEAR_DUPLICATE_BITS = 40
#: Training crops with a luminance standard deviation below this (grey levels) are dropped.
MIN_CROP_STD = 4.0

_REDUCED_SIDE = 1024
_MIN_LAG = 16


@dataclass(frozen=True)
class PackageTree:
    """One extracted package: its name, version and the root ``dpkg -x`` wrote into."""

    name: str
    version: str
    root: Path


@dataclass(frozen=True)
class ImageStats:
    """The measurements :func:`photo_drop_reason` decides on (see the module docstring)."""

    transparent: bool
    colour_entropy: float
    colours_per_pixel: float
    flat_fraction: float
    median_gradient: float
    periodicity: float


@dataclass
class PhotoRecord:
    """One file seen: where it came from, its licence, and what became of it."""

    package: str
    version: str
    source: str
    licence: str
    copyright: str
    width: int = 0
    height: int = 0
    status: str = "dropped"
    reason: str = ""
    split: str = ""
    outputs: list[str] = field(default_factory=list)
    stats: dict[str, Any] | None = None
    sha256: str = ""
    dhash: str = ""


# --------------------------------------------------------------------------------------------
# Fetch


def fetch_debian_packages(packages: Sequence[str], workdir: str | os.PathLike) -> list[PackageTree]:
    """``apt-get download`` each package into ``workdir`` and ``dpkg -x`` it to ``workdir/PKG``.

    Raises:
        RuntimeError: when the package client fails (its message is included).
    """
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not available: debian-photos needs a Debian system")
    done = subprocess.run(
        ["apt-get", "download", *packages], cwd=work, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(
            "apt-get download failed (run apt-get update first?): " + done.stderr.strip()[-500:]
        )
    trees = []
    for name in packages:
        debs = sorted(work.glob(f"{name}_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download left no .deb for {name} in {work}")
        root = work / name
        subprocess.run(["dpkg", "-x", str(debs[-1]), str(root)], check=True)
        trees.append(PackageTree(name, package_version(root, name), root))
    return trees


def package_version(root: Path, name: str) -> str:
    """The version on the first line of ``usr/share/doc/NAME/changelog.Debian.gz``."""
    changelog = root / "usr/share/doc" / name / "changelog.Debian.gz"
    if not changelog.is_file():
        return "unknown"
    with gzip.open(changelog, "rt", encoding="utf-8", errors="replace") as fh:
        match = re.match(r"\S+ \(([^)]+)\)", fh.readline())
    return match.group(1) if match else "unknown"


# --------------------------------------------------------------------------------------------
# Licences


def _dep5_paragraphs(text: str) -> list[dict[str, str]]:
    paragraphs: list[dict[str, str]] = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key is not None:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields:
            paragraphs.append(fields)
    return paragraphs


def licence_for(copyright_text: str, installed_path: str) -> tuple[str, str]:
    """The ``(licence, copyright)`` that a Debian copyright file gives an installed file.

    DEP-5 files: ``Files:`` patterns are relative to the source tree, so each pattern is
    matched against every trailing part of ``installed_path`` (``a/b/c.png``, ``b/c.png``,
    ``c.png``); the last matching stanza wins, as the format specifies. Other copyright files
    are free text: a ``- NAME:`` list entry that matches the file name and the next "Licensed
    under ..." line, else the licence of the package as a whole ("GNU General Public License
    ... version N or later" gives ``GPL-N+``), else ``"see copyright file"``.

    Returns:
        ``(licence identifier or phrase, copyright holders)``.
    """
    parts = Path(installed_path).parts
    suffixes = ["/".join(parts[i:]) for i in range(len(parts))]
    if copyright_text.lstrip().lower().startswith("format:"):
        found = ("see copyright file", "")
        for para in _dep5_paragraphs(copyright_text):
            patterns = para.get("files", "").split()
            if any(fnmatch.fnmatchcase(s, p) for p in patterns for s in suffixes):
                licence = para.get("license", "").split("\n")[0].strip()
                found = (
                    licence or "see copyright file",
                    " ".join(para.get("copyright", "").split()),
                )
        return found
    name = parts[-1]
    lines = copyright_text.splitlines()
    for i, line in enumerate(lines):
        entry = re.match(r"\s*-\s*(\S+?):?\s*$", line)
        if entry and fnmatch.fnmatchcase(name, entry.group(1).rstrip(":")):
            for follow in lines[i + 1 : i + 20]:
                lic = re.search(r"Licensed under (.+?)\.?\s*$", follow)
                if lic:
                    return lic.group(1), ""
    gpl = re.search(
        r"GNU General Public License.{0,200}?version (\d)(.{0,80}?later)?", copyright_text, re.S
    )
    if gpl:
        return f"GPL-{gpl.group(1)}{'+' if gpl.group(2) else ''}", ""
    return "see copyright file", ""


# --------------------------------------------------------------------------------------------
# Measurements


def _reduced_luma(img: PILImage.Image) -> np.ndarray:
    """Luminance ``(h, w)`` float64 of ``img`` box-reduced to at most 1024 on the long side."""
    small = img.convert("RGB")
    small.thumbnail((_REDUCED_SIDE, _REDUCED_SIDE), _box())
    return np.asarray(small.convert("L"), dtype=np.float64)


def _box() -> Any:
    from PIL import Image

    return Image.Resampling.BOX


def _periodicity(luma: np.ndarray) -> float:
    """Largest normalised autocorrelation of the detail of ``luma`` at lags off both axes.

    The detail is ``luma`` minus its 9×9 box blur: smooth content correlates with itself at
    any short lag, so only the high-pass part can show a repeating pattern. It is measured on
    a copy reduced to at most 512 pixels, and lags must be at least 16 pixels on both axes.
    """
    from PIL import Image, ImageFilter

    img = Image.fromarray(np.clip(luma, 0, 255).astype(np.uint8))
    img.thumbnail((512, 512), Image.Resampling.BOX)
    y = np.asarray(img, dtype=np.float64)
    x = y - np.asarray(img.filter(ImageFilter.BoxBlur(4)), dtype=np.float64)
    x = x - x.mean()
    energy = float((x * x).sum())
    if energy <= 0:
        return 0.0
    h, w = x.shape
    # Zero-padding to twice the size makes the FFT correlation linear, not circular; dividing by
    # the overlap area keeps long lags (few overlapping pixels) comparable to short ones.
    spec = np.fft.rfft2(x, s=(2 * h, 2 * w))
    corr = np.fft.irfft2(spec * np.conj(spec), s=(2 * h, 2 * w))
    ones = np.fft.rfft2(np.ones_like(x), s=(2 * h, 2 * w))
    overlap = np.fft.irfft2(ones * np.conj(ones), s=(2 * h, 2 * w))
    lag_y = np.minimum(np.arange(2 * h), 2 * h - np.arange(2 * h))[:, None]
    lag_x = np.minimum(np.arange(2 * w), 2 * w - np.arange(2 * w))[None, :]
    # Lags off both axes only: a tiling repeats along two directions, so it also correlates at
    # diagonal lags, while motion blur or a horizon in a photograph correlates along one axis.
    # Only lags where at least half of the image overlaps itself count.
    valid = (lag_y >= _MIN_LAG) & (lag_x >= _MIN_LAG) & (overlap >= 0.5 * h * w)
    norm = corr / np.maximum(overlap, 1.0) / (energy / (h * w))
    return float(norm[valid].max()) if valid.any() else 0.0


def image_stats(img: PILImage.Image) -> ImageStats:
    """Measure one image (any Pillow mode) for :func:`photo_drop_reason`."""
    transparent = False
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        alpha = np.asarray(img.convert("RGBA").getchannel("A"))
        transparent = bool(alpha.min() < 255)
    rgb = np.asarray(img.convert("RGB"))
    packed = (
        (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    )
    colours = len(np.unique(packed))
    q = (rgb >> 2).astype(np.int32)
    hist = np.bincount(
        ((q[..., 0] << 12) | (q[..., 1] << 6) | q[..., 2]).ravel(), minlength=1 << 18
    )
    p = hist[hist > 0] / packed.size
    del packed, q, hist
    luma = _reduced_luma(img)
    grad = np.hypot(np.diff(luma, axis=1)[:-1], np.diff(luma, axis=0)[:, :-1])
    return ImageStats(
        transparent=transparent,
        colour_entropy=float(-(p * np.log2(p)).sum()),
        colours_per_pixel=colours / rgb.shape[0] / rgb.shape[1],
        flat_fraction=float((grad < 0.5).mean()) if grad.size else 1.0,
        median_gradient=float(np.median(grad)) if grad.size else 0.0,
        periodicity=_periodicity(luma),
    )


def photo_drop_reason(stats: ImageStats) -> str | None:
    """Why an image is not a photograph (the module docstring's rules), or ``None``."""
    if stats.transparent:
        return "transparent"
    if stats.colour_entropy < MIN_COLOUR_ENTROPY or stats.colours_per_pixel < MIN_COLOURS_PER_PIXEL:
        return "few-colours"
    if stats.flat_fraction > MAX_FLAT_FRACTION:
        return "flat"
    if stats.median_gradient > MAX_MEDIAN_GRADIENT:
        return "busy-pattern"
    if stats.periodicity > MAX_PERIODICITY:
        return "periodic"
    return None


def difference_hash(img: PILImage.Image) -> int:
    """256-bit difference hash of the z-normalised 17×16 luminance (see the module docstring)."""
    from PIL import Image

    grey = img.convert("L").resize((17, 16), Image.Resampling.BOX)
    y = np.asarray(grey, dtype=np.float64)
    # Normalising makes light/dark and colour variants of one picture hash alike.
    y = (y - y.mean()) / (y.std() + 1e-6)
    bits = (np.diff(y, axis=1) > 0).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def _hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


# --------------------------------------------------------------------------------------------
# Scan


def scan_package(tree: PackageTree) -> list[PhotoRecord]:
    """Measure, classify, hash and attribute every image under ``usr/share/backgrounds``."""
    from PIL import Image

    copyright_file = tree.root / "usr/share/doc" / tree.name / "copyright"
    text = (
        copyright_file.read_text(encoding="utf-8", errors="replace")
        if copyright_file.is_file()
        else ""
    )
    base = tree.root / "usr/share/backgrounds"
    records = []
    for path in sorted(base.rglob("*")) if base.is_dir() else []:
        suffix = path.suffix.lower()
        if suffix not in RASTER_SUFFIXES | VECTOR_SUFFIXES or path.is_dir():
            continue
        rel = path.relative_to(tree.root).as_posix()
        licence, holders = licence_for(text, path.relative_to(base).as_posix())
        rec = PhotoRecord(tree.name, tree.version, rel, licence, holders)
        if path.is_symlink():
            rec.reason = f"symlink to {os.readlink(path)}"
        elif suffix in VECTOR_SUFFIXES:
            rec.reason = "vector"
        else:
            with Image.open(path) as img:
                img.load()
                rec.width, rec.height = img.size
                stats = image_stats(img)
                rec.stats = {
                    k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(stats).items()
                }
                rec.reason = photo_drop_reason(stats) or ""
                rec.status = "candidate" if not rec.reason else "dropped"
                rgb = img.convert("RGB")
                rec.sha256 = hashlib.sha256(rgb.tobytes()).hexdigest()
                rec.dhash = f"{difference_hash(rgb):064x}"
        records.append(rec)
    return records


def deduplicate(records: Sequence[PhotoRecord]) -> None:
    """Mark exact and near duplicates among the candidates; the one with most pixels stays."""
    candidates = [r for r in records if r.status == "candidate"]
    # Largest first, then by name, so the kept copy does not depend on the scan order.
    candidates.sort(key=lambda r: (-r.width * r.height, r.package, r.source))
    kept: list[PhotoRecord] = []
    for rec in candidates:
        twin = next((k for k in kept if k.sha256 == rec.sha256), None)
        kind = "exact"
        if twin is None:
            twin = next(
                (
                    k
                    for k in kept
                    if _hamming(int(k.dhash, 16), int(rec.dhash, 16)) <= NEAR_DUPLICATE_BITS
                ),
                None,
            )
            kind = "near"
        if twin is None:
            kept.append(rec)
        else:
            rec.status = "dropped"
            rec.reason = f"duplicate-{kind} of {twin.package}/{twin.source}"


# --------------------------------------------------------------------------------------------
# Write


def crop_boxes(height: int, width: int, crop: int, step: int) -> list[tuple[int, int, int, int]]:
    """``(top, left, bottom, right)`` of the DIV2K-style sub-images of an ``height×width`` image.

    Windows of ``crop`` (or the whole side, if shorter) every ``step`` pixels, plus one flush
    with the far border when the grid leaves a remainder, as BasicSR's ``extract_subimages``
    with ``thresh_size=0``.
    """
    if crop <= 0 or step <= 0:
        raise ValueError(f"crop and step must be positive, got crop={crop}, step={step}")

    def starts(n: int) -> tuple[list[int], int]:
        size = min(crop, n)
        out = list(range(0, n - size + 1, step))
        if out[-1] + size < n:
            out.append(n - size)
        return out, size

    ys, ch = starts(height)
    xs, cw = starts(width)
    return [(y, x, y + ch, x + cw) for y in ys for x in xs]


def _in_val(key: str, val_fraction: float) -> bool:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) < val_fraction * 0x100000000


def _out_stem(package: str, source: str) -> str:
    rel = Path(source)
    parts = rel.with_suffix("").parts
    if parts[:3] == ("usr", "share", "backgrounds"):
        parts = parts[3:]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", package + "-" + "-".join(parts))


def _write_photo(
    img: PILImage.Image, rec: PhotoRecord, stem: str, dest: Path, crop: int, step: int
) -> None:
    rgb = img.convert("RGB")
    if rec.split == "val":
        target = dest / "val" / f"{stem}.png"
        atomic_write(target, lambda tmp: rgb.save(tmp, compress_level=3))
        rec.outputs.append(target.relative_to(dest).as_posix())
        return
    arr = np.asarray(rgb)
    luma = arr @ np.array([0.299, 0.587, 0.114])
    n_flat = 0
    for i, (t, l, b, r) in enumerate(crop_boxes(arr.shape[0], arr.shape[1], crop, step)):
        if luma[t:b, l:r].std() < MIN_CROP_STD:
            n_flat += 1
            continue
        target = dest / "train" / f"{stem}_s{i:03d}.png"
        tile = rgb.crop((l, t, r, b))
        atomic_write(target, lambda tmp, tile=tile: tile.save(tmp, compress_level=3))
        rec.outputs.append(target.relative_to(dest).as_posix())
    rec.reason = f"{n_flat} near-flat crops dropped" if n_flat else ""


def skimage_records(train: Iterable[str], val: Iterable[str]) -> list[PhotoRecord]:
    """Records of scikit-image's bundled photos with their fixed split (status ``candidate``)."""
    try:
        import skimage
        import skimage.data
    except ImportError:
        raise ImportError("scikit-image is needed: pip install scikit-image") from None
    records = []
    for split, names in (("train", train), ("val", val)):
        for name in names:
            rec = PhotoRecord(
                "scikit-image",
                skimage.__version__,
                f"skimage/data/{name}",
                "see scikit-image's skimage/data/README.txt",
                "",
                status="candidate",
                split=split,
            )
            records.append(rec)
    return records


def build_photo_dataset(
    trees: Sequence[PackageTree],
    dest: str | os.PathLike,
    crop: int = 480,
    step: int = 240,
    val_fraction: float = 0.2,
    skimage_split: tuple[Sequence[str], Sequence[str]] | None = None,
) -> list[PhotoRecord]:
    """Scan extracted packages, keep unique photographs and write ``dest/{train,val}``.

    Args:
        trees: extracted packages (:func:`fetch_debian_packages`, or folders made by hand).
        dest: output folder; ``train/``, ``val/`` and ``manifest.json`` are (re)written.
        crop, step: sub-image side and stride in pixels (DIV2K: 480 and 240).
        val_fraction: share of Debian photos held out whole (by name hash).
        skimage_split: ``(train_names, val_names)`` of scikit-image photos to add; ``None``
            adds none.

    Returns:
        one record per file seen (also written to ``dest/manifest.json``).
    """
    from PIL import Image

    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    if crop <= 0 or step <= 0:
        raise ValueError(f"crop and step must be positive, got crop={crop}, step={step}")
    start = time.perf_counter()
    out = Path(dest)
    for split in ("train", "val"):
        shutil.rmtree(out / split, ignore_errors=True)
        (out / split).mkdir(parents=True)
    records: list[PhotoRecord] = []
    for tree in trees:
        records.extend(scan_package(tree))
    deduplicate(records)
    for rec in records:
        if rec.status == "candidate":
            rec.split = "val" if _in_val(f"{rec.package}/{rec.source}", val_fraction) else "train"
    sk_root = None
    if skimage_split is not None:
        import skimage.data

        sk_root = Path(skimage.data.__file__).parent
        records.extend(skimage_records(*skimage_split))
    for rec in records:
        if rec.status != "candidate":
            continue
        path = (sk_root.parent.parent / rec.source) if rec.package == "scikit-image" else None
        if path is None:
            tree = next(t for t in trees if t.name == rec.package)
            path = tree.root / rec.source
        with Image.open(path) as img:
            img.load()
            rec.width, rec.height = img.size
            _write_photo(img, rec, _out_stem(rec.package, rec.source), out, crop, step)
        rec.status = "kept"
    manifest = {
        "packages": {t.name: t.version for t in trees},
        "crop": crop,
        "step": step,
        "val_fraction": val_fraction,
        "seconds": round(time.perf_counter() - start, 1),
        "files": [asdict(r) for r in records],
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return records


def write_contact_sheet(
    records: Sequence[PhotoRecord],
    roots: dict[str, Path],
    target: str | os.PathLike,
    thumb: int = 160,
) -> Path:
    """A PNG of thumbnails: kept photographs first, then dropped rasters, each labelled.

    Args:
        records: from :func:`build_photo_dataset`.
        roots: package name → extraction root, to find the source files.
        target: PNG to write.
        thumb: thumbnail side in pixels.
    """
    from PIL import Image, ImageDraw

    shown = [r for r in records if r.package in roots and r.width > 0]
    shown.sort(key=lambda r: (r.status != "kept", r.reason, r.package, r.source))
    cols = 8
    rows = max(1, math.ceil(len(shown) / cols))
    cell_h = thumb + 24
    sheet = Image.new("RGB", (cols * thumb, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, rec in enumerate(shown):
        x, y = (i % cols) * thumb, (i // cols) * cell_h
        with Image.open(roots[rec.package] / rec.source) as img:
            img.draft("RGB", (thumb, thumb))
            small = img.convert("RGB")
            small.thumbnail((thumb, thumb))
        sheet.paste(small, (x, y))
        colour = (0, 120, 0) if rec.status == "kept" else (200, 0, 0)
        label = rec.split if rec.status == "kept" else rec.reason.split(" of ")[0]
        draw.text((x + 2, y + thumb), f"{label}", fill=colour)
        draw.text((x + 2, y + thumb + 11), Path(rec.source).name[:26], fill=(0, 0, 0))
    path = Path(target)
    atomic_write(path, lambda tmp: sheet.save(tmp))
    return path


def fetch_and_build(
    dest: str | os.PathLike,
    packages: Sequence[str] = DEBIAN_PHOTO_PACKAGES,
    extracted: str | os.PathLike | None = None,
    contact_sheet: str | os.PathLike | None = None,
    **kwargs: Any,
) -> list[PhotoRecord]:
    """The CLI's ``debian-photos``: fetch (or reuse ``extracted/PKG`` folders), then build.

    ``kwargs`` go to :func:`build_photo_dataset` (the caller passes ``skimage_split``).

    ``extracted`` names a folder holding one ``dpkg -x`` output per package (``extracted/PKG``);
    without it the packages are downloaded into a temporary folder removed afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="metasr-debs-") as tmp:
        if extracted is None:
            trees = fetch_debian_packages(packages, tmp)
        else:
            trees = []
            for name in packages:
                root = Path(extracted) / name
                if not root.is_dir():
                    raise FileNotFoundError(f"no extracted package folder {root}")
                trees.append(PackageTree(name, package_version(root, name), root))
        records = build_photo_dataset(trees, dest, **kwargs)
        if contact_sheet is not None:
            write_contact_sheet(records, {t.name: t.root for t in trees}, contact_sheet)
    return records
