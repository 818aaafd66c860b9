"""Issue 25, item 3: safe batch output of ``metasr upscale``: output folders created, existing
outputs skipped unless ``--overwrite``, ``--suffix``, ``--ext``, ``--recursive``, ``--quality``,
and the ICC profile and EXIF carried over with the orientation reset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import metasr
from metasr.checkpoints import save_checkpoint
from metasr.cli import main

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    kwargs = {"n_resblocks": 1, "n_feats": 8, "img_range": 1.0}
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_checkpoint(path, metasr.create_model("meta_edsr", **kwargs).eval(), "meta_edsr", kwargs)
    return path


def _photo(path: Path, h: int = 12, w: int = 16, **save) -> Path:
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, **save)
    return path


def _run(capsys, *argv) -> tuple[int, str]:
    rc = main(["upscale", *map(str, argv)])
    return rc, capsys.readouterr().err


def test_folder_created_suffix_ext(tmp_path, ckpt, capsys):
    a, b = _photo(tmp_path / "a.png"), _photo(tmp_path / "b.jpg")
    out = tmp_path / "new" / "deeper"
    rc, err = _run(capsys, a, b, "-o", out, "--scale", "2", "--model", ckpt, "-q",
                   "--suffix", "_x2", "--ext", "webp")  # fmt: skip
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["a_x2.webp", "b_x2.webp"]
    with Image.open(out / "a_x2.webp") as im:
        assert im.size == (32, 24)
    # a file output: --suffix/--ext do not apply
    rc, err = _run(capsys, a, "-o", tmp_path / "c.png", "--scale", "2", "--model", ckpt,
                   "--suffix", "_x2")  # fmt: skip
    assert rc == 2 and "output folder" in err


def test_existing_outputs_skipped_unless_overwrite(tmp_path, ckpt, capsys):
    a = _photo(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"mine")
    rc, err = _run(capsys, a, "-o", out, "--scale", "2", "--model", ckpt, "-q")
    assert rc == 0 and (out / "a.png").read_bytes() == b"mine"
    assert err.count("\n") == 1 and "exists: skipped (--overwrite replaces it)" in err
    rc, err = _run(capsys, a, "-o", out, "--scale", "2", "--model", ckpt, "-q", "--overwrite")
    assert rc == 0 and err == ""
    with Image.open(out / "a.png") as im:
        assert im.size == (32, 24)


def test_recursive_mirrors_folders_and_ignores_its_output(tmp_path, ckpt, capsys):
    src = tmp_path / "photos"
    (src / "trip" / "day1").mkdir(parents=True)
    (src / ".cache").mkdir()
    _photo(src / "top.png")
    _photo(src / "trip" / "day1" / "x.png")
    _photo(src / ".cache" / "hidden.png")
    out = src / "up"  # inside the input tree: a re-run must not take its results as inputs
    for _ in range(2):
        rc, err = _run(capsys, src, "-o", out, "-r", "--scale", "1.5", "--model", ckpt, "-q",
                       "--overwrite")  # fmt: skip
        assert rc == 0, err
    found = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert found == ["top.png", "trip/day1/x.png"]
    # without -r only the folder's own files
    rc, err = _run(capsys, src, "-o", tmp_path / "flat", "--scale", "1.5", "--model", ckpt, "-q")
    assert rc == 0 and [p.name for p in (tmp_path / "flat").iterdir()] == ["top.png"]


def test_quality(tmp_path, ckpt, capsys):
    a = _photo(tmp_path / "a.png", 32, 32)
    sizes = {}
    for q in (20, 95):
        rc, err = _run(capsys, a, "-o", tmp_path / f"q{q}.jpg", "--scale", "2", "--model", ckpt,
                       "--quality", q, "-q")  # fmt: skip
        assert rc == 0, err
        sizes[q] = (tmp_path / f"q{q}.jpg").stat().st_size
    assert sizes[20] < sizes[95]
    rc, err = _run(capsys, a, "-o", tmp_path / "q.png", "--scale", "2", "--model", ckpt,
                   "--quality", 50)  # fmt: skip
    assert rc == 2 and "--quality is for JPEG and WebP" in err and not (tmp_path / "q.png").exists()
    rc, err = _run(capsys, a, "-o", tmp_path / "q.jpg", "--scale", "2", "--model", ckpt,
                   "--quality", 0)  # fmt: skip
    assert rc == 2 and "1..100" in err


@pytest.mark.parametrize("ext", ["jpg", "png", "webp"])
def test_icc_and_exif_carried_over_orientation_reset(tmp_path, ckpt, capsys, ext):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the upright picture is the 16×12 transpose
    exif[0x010F] = "metasr test camera"  # Make
    src = _photo(tmp_path / "cam.jpg", 12, 16, icc_profile=icc, exif=exif.tobytes())
    out = tmp_path / "out"
    rc, err = _run(capsys, src, "-o", out, "--ext", ext, "--scale", "2", "--model", ckpt, "-q")
    assert rc == 0, err
    with Image.open(out / f"cam.{ext.replace('jpeg', 'jpg')}") as im:
        assert im.size == (24, 32)  # upright (w, h) = (12, 16), doubled
        assert im.info.get("icc_profile") == icc
        got = im.getexif()
        assert got.get(0x010F) == "metasr test camera"
        assert got.get(0x0112, 1) == 1
