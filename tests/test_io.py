"""``metasr.io``: round trips per format and bit depth, EXIF, refusals, atomic writes, helpers."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from metasr.data.files import data_kind, list_files, read_image, read_sample, write_image
from metasr.io import Raster, atomic_write, read_raster, write_raster

PIL = pytest.importorskip("PIL", reason="image tests need Pillow")
png = pytest.importorskip("png", reason="16-bit PNG needs pypng")
tifffile = pytest.importorskip("tifffile")
from PIL import Image  # noqa: E402


def _codes(h: int, w: int, channels: int, dtype: type) -> np.ndarray:
    """Random samples ``(h, w, channels)`` covering the whole range of ``dtype``."""
    top = np.iinfo(dtype).max
    rng = np.random.default_rng(7)
    codes = rng.integers(0, top + 1, size=(h, w, channels), dtype=np.int64)
    codes[0, 0], codes[0, 1] = 0, top
    return codes.astype(dtype)


def _raster(codes: np.ndarray, alpha: bool) -> Raster:
    unit = codes.astype(np.float32) / np.float32(np.iinfo(codes.dtype).max)
    data = unit[:, :, :-1] if alpha else unit
    return Raster(
        data=np.ascontiguousarray(data.transpose(2, 0, 1)),
        kind="image",
        dtype=codes.dtype,
        alpha=np.ascontiguousarray(unit[:, :, -1]) if alpha else None,
    )


def _samples_of(raster: Raster) -> np.ndarray:
    """``(H, W, C[+alpha])`` integer codes of an image raster."""
    top = np.iinfo(raster.dtype).max
    planes = raster.data.transpose(1, 2, 0)
    if raster.alpha is not None:
        planes = np.concatenate([planes, raster.alpha[:, :, None]], -1)
    return np.rint(planes.astype(np.float64) * top).astype(np.int64)


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["8bit", "16bit"])
@pytest.mark.parametrize(
    ("channels", "alpha"),
    [(1, False), (2, True), (3, False), (4, True)],
    ids=["L", "LA", "RGB", "RGBA"],
)
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_image_round_trip(tmp_path, suffix, channels, alpha, dtype):
    codes = _codes(9, 11, channels, dtype)
    raster = _raster(codes, alpha)
    write_raster(tmp_path / f"a{suffix}", raster)
    back = read_raster(tmp_path / f"a{suffix}")
    assert back.kind == "image" and back.dtype == dtype
    assert back.data.shape == (channels - alpha, 9, 11) and (back.alpha is not None) == alpha
    assert np.array_equal(_samples_of(back), codes.astype(np.int64))


@pytest.mark.parametrize("suffix", [".bmp", ".webp", ".jpg"])
def test_8bit_formats(tmp_path, suffix):
    codes = _codes(8, 10, 3, np.uint8)
    write_raster(tmp_path / f"a{suffix}", _raster(codes, False))
    back = read_raster(tmp_path / f"a{suffix}")
    assert back.dtype == np.uint8 and back.data.shape == (3, 8, 10)
    if suffix != ".jpg":  # lossless
        assert np.array_equal(_samples_of(back), codes.astype(np.int64))


def test_what_formats_cannot_hold_is_refused(tmp_path):
    rgba16 = _raster(_codes(4, 5, 4, np.uint16), alpha=True)
    rgba8 = _raster(_codes(4, 5, 4, np.uint8), alpha=True)
    with pytest.raises(ValueError, match="BMP cannot store 16-bit"):
        write_raster(tmp_path / "a.bmp", rgba16)
    with pytest.raises(ValueError, match="BMP cannot store the alpha channel"):
        write_raster(tmp_path / "a.bmp", rgba8)
    with pytest.raises(ValueError, match="not .npy"):
        write_raster(tmp_path / "a.npy", rgba8)
    rgb8 = _raster(_codes(4, 5, 3, np.uint8), alpha=False)
    with pytest.raises(TypeError, match="quality must be an integer"):
        write_raster(tmp_path / "a.jpg", rgb8, quality="high")
    with pytest.raises(ValueError, match="quality must be 1..100"):
        write_raster(tmp_path / "a.jpg", rgb8, quality=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("shape", "dtype"), [((6, 7), np.float32), ((2, 6, 7), np.float64), ((6, 7), np.int16)]
)
def test_npy_round_trip(tmp_path, shape, dtype):
    arr = (np.random.default_rng(3).standard_normal(shape) * 300).astype(dtype)
    np.save(tmp_path / "a.npy", arr)
    raster = read_raster(tmp_path / "a.npy")
    assert raster.kind == "field" and raster.data.shape[-2:] == (6, 7)
    write_raster(tmp_path / "b.npy", raster)
    back = np.load(tmp_path / "b.npy")
    assert back.dtype == dtype and back.shape == shape and np.array_equal(back, arr)


def test_float_tiff_is_a_field(tmp_path):
    arr = np.random.default_rng(4).standard_normal((3, 6, 7)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", arr, photometric="minisblack", planarconfig="separate")
    raster = read_raster(tmp_path / "f.tif")
    assert raster.kind == "field" and raster.planar
    write_raster(tmp_path / "g.tif", raster)
    assert np.array_equal(tifffile.imread(tmp_path / "g.tif"), arr)
    with pytest.raises(ValueError, match="not an image; store it as .npy"):
        read_image(tmp_path / "f.tif")


# ------------------------------------------------------------------------- what is read


def test_16bit_colour_png_keeps_16_bits(tmp_path):
    """Pillow alone would reduce a 16-bit RGB PNG to 8 bits; both readers keep all 16."""
    codes = _codes(6, 8, 3, np.uint16)
    with open(tmp_path / "a.png", "wb") as fh:
        png.Writer(8, 6, greyscale=False, bitdepth=16).write(fh, codes.reshape(6, -1))
    want = codes.transpose(2, 0, 1).astype(np.float32) / np.float32(65535)
    assert np.array_equal(read_raster(tmp_path / "a.png").data, want)
    assert torch.equal(read_sample(tmp_path / "a.png"), torch.from_numpy(want))


def test_mode_i_images(tmp_path):
    """A 16-bit gray PNG (Pillow mode "I"/"I;16") is divided by 65535; a 32-bit integer image is
    refused, not divided by 65535 (it has no defined white level)."""
    codes = _codes(5, 6, 1, np.uint16)[:, :, 0]
    Image.fromarray(codes).save(tmp_path / "i.png")  # Pillow opens it as "I;16" (older: "I")
    got = read_image(tmp_path / "i.png", channels=None)
    assert torch.equal(got[0], torch.from_numpy(codes.astype(np.float32) / np.float32(65535)))
    tifffile.imwrite(tmp_path / "i32.tif", codes.astype(np.int32) * 1000)
    with pytest.raises(ValueError, match="unsupported image sample type int32"):
        read_image(tmp_path / "i32.tif")


def test_exif_orientation_is_honoured(tmp_path):
    """EXIF orientation 6 (rotate 90° clockwise to display) is applied by both readers."""
    codes = _codes(4, 7, 3, np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(codes).save(tmp_path / "cam.png", exif=exif)
    upright = np.rot90(codes, k=-1)  # what a viewer shows: 7 rows, 4 columns
    raster = read_raster(tmp_path / "cam.png")
    assert np.array_equal(_samples_of(raster), upright.astype(np.int64))
    assert read_image(tmp_path / "cam.png").shape == (3, 7, 4)


def test_8bit_training_images_unchanged(tmp_path):
    """8-bit data for training is exactly what Pillow gives, divided by 255 (as before)."""
    rgb = _codes(9, 10, 3, np.uint8)
    rgba = np.concatenate([rgb, _codes(9, 10, 1, np.uint8)], -1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "gray.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")
    for name in ("rgb.png", "rgba.png", "gray.png", "pal.png"):
        with Image.open(tmp_path / name) as im:
            for channels, mode in ((3, "RGB"), (1, "L")):
                want = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
                want = want[None] if want.ndim == 2 else want.transpose(2, 0, 1)
                got = read_image(tmp_path / name, channels)
                assert torch.equal(got, torch.from_numpy(np.ascontiguousarray(want))), (name, mode)
    assert read_image(tmp_path / "rgba.png", channels=None).shape == (3, 9, 10)  # alpha dropped


def test_bad_files(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "a.gif").write_bytes(b"GIF89a")
    with pytest.raises(ValueError, match="broken.png"):
        read_raster(tmp_path / "broken.png")
    with pytest.raises(ValueError, match="unsupported format '.gif'"):
        read_raster(tmp_path / "a.gif")
    with pytest.raises(FileNotFoundError):
        read_raster(tmp_path / "missing.png")
    np.save(tmp_path / "nan.npy", np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="NaN"):
        read_sample(tmp_path / "nan.npy")


# ------------------------------------------------------------------------------- atomic writes


def test_atomic_write_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def dying(tmp):
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, dying)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    assert target.read_bytes() == b"old"


def test_atomic_write_permissions_without_touching_the_umask(tmp_path, monkeypatch):
    """The result has the mode of a plain open(); the process umask is never changed."""
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")

    def no_umask(mask):
        raise AssertionError("atomic_write must not change the process umask")

    monkeypatch.setattr(os, "umask", no_umask)
    atomic_write(tmp_path / "atomic.bin", lambda tmp: tmp.write_bytes(b"y"))
    assert (tmp_path / "atomic.bin").read_bytes() == b"y"
    assert (tmp_path / "atomic.bin").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atomic.bin", "plain.bin"]


def test_atomic_write_needs_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write(tmp_path / "no" / "a.png", lambda tmp: None)


# ---------------------------------------------------------------------------- data helpers


def test_write_image_and_read_back(tmp_path):
    img = torch.rand(3, 5, 6)
    write_image(tmp_path / "sub" / "a.png", img)  # parent folders are created
    back = read_image(tmp_path / "sub" / "a.png")
    assert torch.equal(back, (img * 255).round() / 255)
    write_image(tmp_path / "a.npy", img)
    assert torch.equal(read_sample(tmp_path / "a.npy"), img)
    write_image(tmp_path / "g.png", img[:1])
    assert Image.open(tmp_path / "g.png").mode == "L"


def test_list_files_and_kinds(tmp_path):
    for name in ("b.png", "a.bmp", "c.tif"):
        Image.fromarray(_codes(4, 4, 3, np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_files(tmp_path)] == ["a.bmp", "b.png", "c.tif"]
    assert data_kind(tmp_path / "x.npy") == "array" and data_kind(tmp_path / "x.BMP") == "image"
    np.save(tmp_path / "d.npy", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="mixes images"):
        list_files(tmp_path)
