"""``metasr.io``: round trips per format and bit depth, EXIF, refusals, atomic writes, helpers."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import png_chunk
from metasr import io as mio
from metasr.data.files import data_kind, list_files, read_image, read_sample, write_image
from metasr.io import (
    Raster,
    atomic_write,
    check_finite_result,
    is_temporary_name,
    read_raster,
    write_raster,
)

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


# ---------------------------------------------------------------------------- hostile files
# (issue 10): sizes judged from the header before decoding, several pages or frames refused,
# integer casts that saturate, NaN never written as integer samples.


def _header_only_png(path: Path, h: int, w: int, bits: int) -> None:
    """A PNG whose header declares ``h``×``w`` but whose image data is garbage."""
    ihdr = struct.pack(">IIBBBBB", w, h, bits, 2, 0, 0, 0)
    path.write_bytes(
        mio._PNG_SIGNATURE
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"junk")
        + png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("bits", [8, 16])
def test_png_header_checked_before_decoding(tmp_path, bits):
    # The data is garbage: a reader that decoded first would fail with a decoding error.
    _header_only_png(tmp_path / "a.png", 20000, 20000, bits)
    with pytest.raises(ValueError, match="20000x20000 is larger than the limit"):
        read_raster(tmp_path / "a.png")


def test_npy_header_checked_before_reading(tmp_path):
    path = tmp_path / "a.npy"
    with open(path, "wb") as fh:  # declares 3 x 20000 x 20000 float64 (9.6 GB), holds 100 bytes
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<f8", "fortran_order": False, "shape": (3, 20000, 20000)}
        )
        fh.write(b"\0" * 100)
    with pytest.raises(ValueError, match="20000x20000x3 is larger than the limit"):
        read_raster(path)


def test_one_limit_for_every_reader(tmp_path, monkeypatch):
    """Each format is refused above ``max_pixels`` and read at exactly ``max_pixels``."""
    rgb = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "a.jpg")
    Image.fromarray(rgb).save(tmp_path / "a.webp", lossless=True)
    Image.fromarray(rgb).save(tmp_path / "a.bmp")
    tifffile.imwrite(tmp_path / "a.tif", rgb)
    png.Writer(16, 12, greyscale=False, bitdepth=16).write(
        open(tmp_path / "b.png", "wb"), (rgb.astype(np.uint16) * 257).reshape(12, 48)
    )
    np.save(tmp_path / "a.npy", rgb.transpose(2, 0, 1).astype(np.float32))
    for name in ("a.png", "a.jpg", "a.webp", "a.bmp", "a.tif", "b.png", "a.npy"):
        assert read_raster(tmp_path / name, max_pixels=12 * 16).shape == (12, 16)
        with pytest.raises(ValueError, match=f"{name}: image of 12x16.*larger than the limit"):
            read_raster(tmp_path / name, max_pixels=12 * 16 - 1)
    with pytest.raises(TypeError, match="max_pixels must be an integer"):
        read_raster(tmp_path / "a.png", max_pixels=192.0)
    with pytest.raises(ValueError, match="max_pixels must be >= 1"):
        read_raster(tmp_path / "a.png", max_pixels=0)
    # The module-wide default is the same limit.
    monkeypatch.setattr(mio, "MAX_PIXELS", 100)
    with pytest.raises(ValueError, match="limit of 100 pixels"):
        read_raster(tmp_path / "a.jpg")


def test_temporary_names_fit_and_keep_whole_characters():
    name = mio._temporary_name(Path("é" * 127 + ".tiff"), "0123abcd", 255)
    raw = os.fsencode(name)
    assert len(raw) <= 255 and raw.decode("utf-8").endswith(".0123abcd.tiff")
    assert is_temporary_name(name)
    # Hidden, so folder and glob expansion (which skips hidden files) never takes one as an input.
    assert name.startswith(".") and not is_temporary_name(name[1:])


def _apng16(path: Path) -> None:
    """A 16-bit PNG made animated by an ``acTL`` chunk (the pypng path ignores it)."""
    png.Writer(4, 3, greyscale=True, bitdepth=16).write(
        open(path, "wb"), np.zeros((3, 4), np.uint16)
    )
    raw = path.read_bytes()
    ihdr_end = 8 + 8 + 13 + 4
    actl = png_chunk(b"acTL", struct.pack(">II", 2, 0))
    path.write_bytes(raw[:ihdr_end] + actl + raw[ihdr_end:])


def test_multi_page_and_animated_files_refused(tmp_path):
    frames = [Image.new("RGB", (16, 12), c) for c in ("red", "green", "blue")]
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    _apng16(tmp_path / "anim16.png")
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:  # separate pages, different sizes
        tif.write(np.zeros((12, 16), np.uint8))
        tif.write(np.zeros((6, 8), np.uint8))
    cases = {
        "anim.webp": "animated WebP with 3 frames",
        "anim.png": "animated PNG with 3 frames",
        "anim16.png": "animated PNG with 2 frames",
        "pages.tif": "multi-page TIFF with 2 pages",
    }
    for name, fragment in cases.items():
        with pytest.raises(ValueError, match=fragment):
            read_raster(tmp_path / name)


@pytest.mark.parametrize(
    "dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]
)
def test_integer_casts_saturate(tmp_path, dtype):
    info = np.iinfo(dtype)
    values = [4.0 * 2.0**64, -4.0 * 2.0**64, float(info.max), float(info.min), 0.0, 1.4, -0.6]
    raster = Raster(data=np.array(values).reshape(1, 1, -1), kind="field", dtype=np.dtype(dtype))
    write_raster(tmp_path / "a.npy", raster)
    got = np.load(tmp_path / "a.npy")
    expected = [info.max, info.min, info.max, info.min, 0, 1, -1 if info.min < 0 else 0]
    assert got.dtype == dtype and got.ravel().tolist() == expected


def test_int64_near_max_does_not_wrap(tmp_path):
    top = np.iinfo(np.int64).max
    np.save(tmp_path / "a.npy", np.full((2, 3), top - 10, dtype=np.int64))
    raster = read_raster(tmp_path / "a.npy")
    write_raster(tmp_path / "b.npy", raster)  # float64 2**63 on the way: must not wrap
    assert (np.load(tmp_path / "b.npy") == top).all()


def test_check_finite_result():
    src = Raster(data=np.ones((1, 2, 2)), kind="field", dtype=np.dtype(np.float32))
    bad = src.with_data(np.array([[[1.0, np.nan], [np.inf, 2.0]]]))
    with pytest.raises(ValueError, match="2 NaN or infinite values of 4"):
        check_finite_result(src, bad)
    check_finite_result(src.with_data(np.full((1, 2, 2), np.nan)), bad)  # NaN in, NaN out
    half = Raster(data=np.ones((1, 2, 2)), kind="field", dtype=np.dtype(np.float16))
    with pytest.raises(ValueError, match="beyond the range of float16"):
        check_finite_result(half, half.with_data(np.full((1, 2, 2), 7e4)))


def test_nan_is_not_written_as_integer_samples(tmp_path):
    nan = np.array([[[0.5, np.nan]]])
    for kind, dtype, name in [("image", np.uint8, "a.png"), ("field", np.int16, "a.npy")]:
        raster = Raster(data=nan, kind=kind, dtype=np.dtype(dtype))
        with pytest.raises(ValueError, match=f"{name}: cannot store NaN"):
            write_raster(tmp_path / name, raster)
    assert list(tmp_path.iterdir()) == []
