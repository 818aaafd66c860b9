"""The Debian training-photo pipeline, offline: classifier, dedup, licences, crops, split."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from tools import photos
from tools.photos import (
    PackageTree,
    build_photo_dataset,
    crop_boxes,
    difference_hash,
    image_stats,
    licence_for,
    photo_drop_reason,
)

Image = pytest.importorskip("PIL.Image")


def _natural(seed: int, h: int = 600, w: int = 800) -> np.ndarray:
    """A photo-like ``(h, w, 3)`` uint8 image: 1/f-textured colour field plus sensor noise."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    amp = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(h, w)) ** 1.8
    out = np.empty((h, w, 3))
    base = np.fft.irfft2(amp * np.exp(2j * np.pi * rng.random((h, w // 2 + 1))), s=(h, w))
    for c in range(3):
        tint = np.fft.irfft2(amp * np.exp(2j * np.pi * rng.random((h, w // 2 + 1))), s=(h, w))
        field = base + 0.4 * tint
        out[..., c] = (field - field.mean()) / field.std()
    out = 128 + 40 * out + rng.normal(0, 2.0, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def _gradient(h: int = 600, w: int = 800) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // w, yy * 255 // h, np.full((h, w), 90)], -1).astype(np.uint8)


def _drawing(h: int = 600, w: int = 800) -> np.ndarray:
    """Flat-colour shapes, as a rasterised vector wallpaper."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (30, 60, 120)
    yy, xx = np.mgrid[0:h, 0:w]
    img[(yy - 300) ** 2 + (xx - 400) ** 2 < 150**2] = (240, 180, 20)
    img[100:200, 50:700] = (200, 30, 60)
    return img


def _tiling(h: int = 600, w: int = 800) -> np.ndarray:
    """A repeating textured tile (periodic in both directions)."""
    tile = (_natural(7, 64, 64) * 0.25 + 90).astype(np.uint8)  # low contrast: not "busy"
    return np.tile(tile, (h // 64 + 1, w // 64 + 1, 1))[:h, :w]


def test_classifier_keeps_natural_and_drops_synthetic_kinds():
    assert photo_drop_reason(image_stats(Image.fromarray(_natural(0)))) is None
    assert photo_drop_reason(image_stats(Image.fromarray(_gradient()))) in ("few-colours", "flat")
    assert photo_drop_reason(image_stats(Image.fromarray(_drawing()))) == "few-colours"
    assert photo_drop_reason(image_stats(Image.fromarray(_tiling()))) == "periodic"
    rgba = Image.fromarray(_natural(1)).convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 10))
    assert photo_drop_reason(image_stats(rgba)) == "transparent"


def test_difference_hash_matches_resized_and_recoloured_copies_only():
    img = Image.fromarray(_natural(2))
    small = img.resize((400, 300), Image.Resampling.LANCZOS)
    dark = Image.fromarray((np.asarray(img) * 0.4).astype(np.uint8))
    other = Image.fromarray(_natural(3))
    h = difference_hash(img)
    assert photos._hamming(h, difference_hash(small)) <= photos.NEAR_DUPLICATE_BITS
    assert photos._hamming(h, difference_hash(dark)) <= photos.NEAR_DUPLICATE_BITS
    assert photos._hamming(h, difference_hash(other)) > photos.NEAR_DUPLICATE_BITS


def test_crop_boxes_cover_the_image_flush_with_the_border():
    boxes = crop_boxes(1000, 1300, 480, 240)
    assert {b[0] for b in boxes} == {0, 240, 480, 520}
    assert {b[1] for b in boxes} == {0, 240, 480, 720, 820}
    assert all(b[2] - b[0] == 480 and b[3] - b[1] == 480 for b in boxes)
    assert crop_boxes(300, 480, 480, 240) == [(0, 0, 300, 480)]
    with pytest.raises(ValueError, match="step"):
        crop_boxes(10, 10, 4, 0)


DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: x

Files: *
Copyright: 2020 Someone
License: GPL-2+

Files: nature/*.jpg
Copyright: 2008, A Photographer
           2009, Another
License: CC-BY-SA-4.0

Files: debian/*
Copyright: 2011 Packager
License: GPL-2+
"""


def test_licence_for_matches_dep5_stanzas_on_path_suffixes():
    assert licence_for(DEP5, "mate/nature/Aqua.jpg") == (
        "CC-BY-SA-4.0",
        "2008, A Photographer 2009, Another",
    )
    assert licence_for(DEP5, "mate/abstract/Flow.png")[0] == "GPL-2+"
    free = (
        "Image Authors:\n - adwaita*\n   Copyright 2011 J\n   Licensed under CC BY-SA 3.0.\n\n"
        "Licenses:\n the GNU General Public License as published by\n the Free Software "
        "Foundation; either version 2 of the License, or\n (at your option) any later version."
    )
    assert licence_for(free, "gnome/adwaita-d.webp")[0] == "CC BY-SA 3.0"
    assert licence_for(free, "gnome/grid-d.webp")[0] == "GPL-2+"


def _fake_package(root: Path, name: str, images: dict[str, np.ndarray]) -> PackageTree:
    doc = root / "usr/share/doc" / name
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(DEP5)
    with gzip.open(doc / "changelog.Debian.gz", "wt") as fh:
        fh.write(f"{name} (1.2-3) unstable; urgency=medium\n")
    for rel, arr in images.items():
        path = root / "usr/share/backgrounds" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)
    (root / "usr/share/backgrounds/logo.svg").write_text("<svg/>")
    return PackageTree(name, photos.package_version(root, name), root)


def test_build_dataset_dedups_splits_and_records(tmp_path):
    photo_a, photo_b = _natural(10, 700, 900), _natural(11, 520, 640)
    small_a = np.asarray(Image.fromarray(photo_a).resize((450, 350), Image.Resampling.BICUBIC))
    tree = _fake_package(
        tmp_path / "pkg",
        "fake-backgrounds",
        {
            "nature/a.jpg": photo_a,
            "nature/a_small.png": small_a,
            "nature/b.png": photo_b,
            "abstract/drawing.png": _drawing(),
        },
    )
    assert tree.version == "1.2-3"
    records = build_photo_dataset([tree], tmp_path / "out", crop=256, step=128, val_fraction=0.0)
    by_name = {Path(r.source).name: r for r in records}
    assert by_name["logo.svg"].reason == "vector"
    assert by_name["drawing.png"].reason == "few-colours"
    assert by_name["a_small.png"].reason.startswith("duplicate-near of fake-backgrounds/")
    assert by_name["a.jpg"].status == by_name["b.png"].status == "kept"
    assert by_name["a.jpg"].licence == "CC-BY-SA-4.0"
    assert by_name["drawing.png"].licence == "GPL-2+"
    n_crops = len(crop_boxes(700, 900, 256, 128)) + len(crop_boxes(520, 640, 256, 128))
    train = sorted((tmp_path / "out/train").iterdir())
    assert len(train) == n_crops  # textured everywhere: no near-flat crop
    with Image.open(train[0]) as im:
        assert im.size == (256, 256) and im.mode == "RGB"
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["packages"] == {"fake-backgrounds": "1.2-3"}
    assert {f["source"] for f in manifest["files"]} == {r.source for r in records}

    # All held out: whole photos in val/, and the split is a function of the name only.
    build_photo_dataset([tree], tmp_path / "out2", val_fraction=1.0)
    assert sorted(p.name for p in (tmp_path / "out2/val").iterdir()) == [
        "fake-backgrounds-nature-a.png",
        "fake-backgrounds-nature-b.png",
    ]
    assert not any((tmp_path / "out2/train").iterdir())
    half = [r.split for r in build_photo_dataset([tree], tmp_path / "o3", val_fraction=0.5)]
    assert half == [r.split for r in build_photo_dataset([tree], tmp_path / "o4", val_fraction=0.5)]


def test_near_flat_crops_are_dropped(tmp_path):
    img = _natural(12, 512, 1024)
    img[:, 512:] = 100  # right half flat
    tree = _fake_package(tmp_path / "pkg", "half-flat", {"x/half.png": img})
    rec = next(r for r in photos.scan_package(tree) if r.source.endswith("half.png"))
    rec.status, rec.split = "candidate", "train"
    (tmp_path / "o/train").mkdir(parents=True)
    photos._write_photo(Image.fromarray(img), rec, "half", tmp_path / "o", 256, 256)
    assert len(rec.outputs) == 4 and rec.reason == "4 near-flat crops dropped"


def test_build_rejects_bad_fraction(tmp_path):
    with pytest.raises(ValueError, match="val_fraction"):
        build_photo_dataset([], tmp_path, val_fraction=1.5)
