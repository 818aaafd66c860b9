"""Hardening of reading, writing and ``metasr upscale`` (issue 10, items 2-5, 8 and 9).

Each test reproduces one defect on small inputs. Refusals that must happen before a large
allocation run ``python -m metasr`` in a subprocess under ``RLIMIT_DATA`` (never ``RLIMIT_AS``,
which breaks CUDA builds of torch at import) and check a one-line error in bounded time.
"""

from __future__ import annotations

import os
import resource
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import metasr
from metasr import io as mio
from metasr.checkpoints import save_checkpoint
from metasr.cli import main, one_line
from metasr.data.files import list_files
from metasr.io import Raster, check_finite_result, is_temporary_name, read_raster, write_raster

PIL = pytest.importorskip("PIL", reason="image tests need Pillow")
tifffile = pytest.importorskip("tifffile")
png = pytest.importorskip("png")
from PIL import Image  # noqa: E402

KWARGS = {"n_resblocks": 1, "n_feats": 8, "img_range": 1.0}
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_checkpoint(path, metasr.create_model("meta_edsr", **KWARGS).eval(), "meta_edsr", KWARGS)
    return path


def _rgb(h: int = 12, w: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _run(argv: list, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _one_error(argv: list, capsys, code: int, fragment: str) -> str:
    rc, _, err = _run(argv, capsys)
    # one error line; warnings about the input (a field outside the model's range) may precede
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("metasr: warning:")]
    assert rc == code, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]
    return lines[0]


def _limited(argv: list, cwd: Path, data_gb: float = 3.0, timeout: float = 60.0):
    """``python -m metasr ARGV`` with at most ``data_gb`` GB of heap; (result, seconds)."""
    limit = int(data_gb * 2**30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    env = {**os.environ, "PYTHONPATH": SRC, "CUDA_VISIBLE_DEVICES": ""}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "metasr", *map(str, argv)],
        cwd=cwd, env=env, preexec_fn=cap, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return proc, time.perf_counter() - start


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png16_bomb(path: Path, side: int = 14000) -> None:
    """A genuine, valid 16-bit gray PNG of ``side``² zeros: ~0.4 MB on disk, 392 MB decoded."""
    row = b"\0" * (1 + 2 * side)  # filter byte + samples
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row * 500) for _ in range(side // 500)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    path.write_bytes(
        mio._PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


# ------------------------------------------------------------ item 2: decompression bombs


def test_png16_bomb_refused_before_decoding(tmp_path, ckpt):
    bomb = tmp_path / "bomb.png"
    _png16_bomb(bomb)
    assert bomb.stat().st_size < 1_000_000
    proc, seconds = _limited(
        ["upscale", bomb, "-o", tmp_path / "o.png", "--scale", "2", "--model", ckpt], tmp_path
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and "14000x14000 is larger than the limit" in lines[0], proc.stderr
    assert seconds < 30
    assert not (tmp_path / "o.png").exists()


def _header_only_png(path: Path, h: int, w: int, bits: int) -> None:
    """A PNG whose header declares ``h``×``w`` but whose image data is garbage."""
    ihdr = struct.pack(">IIBBBBB", w, h, bits, 2, 0, 0, 0)
    path.write_bytes(
        mio._PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"junk") + _chunk(b"IEND", b"")
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
    rgb = _rgb(12, 16)
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


def test_cli_max_pixels(tmp_path, ckpt, capsys):
    Image.fromarray(_rgb(12, 16)).save(tmp_path / "a.png")
    argv = ["upscale", tmp_path / "a.png", "-o", tmp_path / "o.png", "--scale", "2",
            "--model", ckpt, "-q"]  # fmt: skip
    _one_error([*argv, "--max-pixels", "100"], capsys, 1, "larger than the limit of 100 pixels")
    _one_error([*argv, "--max-pixels", "0"], capsys, 2, "bad --max-pixels")
    assert _run([*argv, "--max-pixels", "192"], capsys)[0] == 0


# ------------------------------------------ item 3: signals, temporary files and NAME_MAX


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_sighup_clean_up_like_sigint(tmp_path, ckpt, capsys, monkeypatch, signame):
    signum = getattr(signal, signame)
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()

    def killed_while_saving(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG partial")
        os.kill(os.getpid(), signum)  # handled at the next bytecode, inside this write
        time.sleep(5)  # not reached when the signal is handled as it must be

    monkeypatch.setattr(Image.Image, "save", killed_while_saving)
    # Under nohup SIGHUP is ignored, and the CLI rightly keeps it so: test the default case.
    previous = signal.signal(signum, signal.SIG_DFL)
    try:
        _check_signal_clean_up(tmp_path, out, ckpt, capsys, signum, signame)
    finally:
        signal.signal(signum, previous)


def _check_signal_clean_up(tmp_path, out, ckpt, capsys, signum, signame) -> None:
    before = signal.getsignal(signum)
    start = time.perf_counter()
    rc, _, err = _run(["upscale", tmp_path / "a.png", "-o", out, "--scale", "2",
                       "--model", ckpt, "-q"], capsys)  # fmt: skip
    assert time.perf_counter() - start < 4
    assert rc == 128 + signum, err
    assert err.strip() == f"metasr: terminated by {signame}"
    assert list(out.iterdir()) == []  # neither the target nor the hidden temporary file
    assert signal.getsignal(signum) == before  # handlers restored after the command


def test_folders_and_globs_skip_hidden_and_temporary_files(tmp_path, ckpt, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir(), out.mkdir()
    Image.fromarray(_rgb()).save(inp / "a.png")
    (inp / ".a.0123abcd.png").write_bytes(b"\x89PNG partial")  # left by a SIGKILLed run
    (inp / ".hidden.png").write_bytes(b"junk")
    assert is_temporary_name(".a.0123abcd.png") and not is_temporary_name("a.png")
    for spec in (inp, f"{inp}/*.png", f"{inp}/.*.png"):
        rc, _, err = _run(["upscale", spec, "-o", out, "--scale", "2", "--model", ckpt, "-q"],
                          capsys)  # fmt: skip
        if str(spec).endswith(".*.png"):  # only hidden files match: nothing to do
            assert rc == 1 and "no supported files match" in err
        else:
            assert rc == 0, err
            assert sorted(p.name for p in out.iterdir()) == ["a.png"]
    assert [p.name for p in list_files(inp)] == ["a.png"]


def test_longest_legal_output_name(tmp_path, ckpt, capsys):
    """A 249-byte name: the temporary file must still fit NAME_MAX (255)."""
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    name = "x" * 245 + ".png"
    assert len(name.encode()) == 249
    rc, _, err = _run(["upscale", tmp_path / "a.png", "-o", tmp_path / name, "--scale", "2",
                       "--model", ckpt, "-q"], capsys)  # fmt: skip
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.png", name])


def test_temporary_names_fit_and_keep_whole_characters():
    name = mio._temporary_name(Path("é" * 127 + ".tiff"), "0123abcd", 255)
    raw = os.fsencode(name)
    assert len(raw) <= 255 and raw.decode("utf-8").endswith(".0123abcd.tiff")
    assert is_temporary_name(name)


# ------------------------------------------------- item 4: several pages or frames refused


def _apng16(path: Path) -> None:
    """A 16-bit PNG made animated by an ``acTL`` chunk (the pypng path ignores it)."""
    png.Writer(4, 3, greyscale=True, bitdepth=16).write(
        open(path, "wb"), np.zeros((3, 4), np.uint16)
    )
    raw = path.read_bytes()
    ihdr_end = 8 + 8 + 13 + 4
    actl = _chunk(b"acTL", struct.pack(">II", 2, 0))
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


# ------------------------------------------------------- item 5: saturation, NaN and inf


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


def test_nan_weights_and_huge_inputs_write_nothing(tmp_path, ckpt, capsys):
    torch.manual_seed(0)
    model = metasr.create_model("meta_edsr", **KWARGS)
    save_checkpoint(tmp_path / "nan.safetensors", model, "meta_edsr", KWARGS)
    # save_checkpoint refuses NaN weights, so poison the file as a broken training run would.
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(tmp_path / "nan.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
    state = load_file(str(tmp_path / "nan.safetensors"))
    state[next(iter(state))].fill_(float("nan"))
    save_file(state, str(tmp_path / "nan.safetensors"), metadata=meta)
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    np.save(tmp_path / "h.npy", np.full((8, 8), 3e38, np.float32))
    _one_error(["upscale", tmp_path / "a.png", "-o", tmp_path / "o.png", "--scale", "2",
                "--model", tmp_path / "nan.safetensors"], capsys, 1,
               "non-finite weights")  # fmt: skip
    _one_error(["upscale", tmp_path / "h.npy", "-o", tmp_path / "o.npy", "--scale", "2",
                "--model", ckpt], capsys, 1, "NaN or infinite values")  # fmt: skip
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "o.npy").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "h.npy", "nan.safetensors"]


# ------------------------------------------------------------------------ item 8: messages


def test_one_line_keeps_every_reason():
    text = "backend 'triton' cannot run meta_upscale:\n  naive: available\n  triton: needs CUDA"
    assert one_line(text) == (
        "backend 'triton' cannot run meta_upscale: naive: available; triton: needs CUDA"
    )
    assert one_line("first\nsecond") == "first; second"


def test_message_cases(tmp_path, ckpt, capsys):
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((6, 8), np.int16))
    np.savez(tmp_path / "z", a=np.zeros((4, 4)))
    (tmp_path / "z.npz").rename(tmp_path / "z.npy")
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "file").write_bytes(b"")
    a, o = tmp_path / "a.png", tmp_path / "o.png"
    cases = [
        ([a, "-o", o, "--model", ""], 2, "bad --model ''"),
        ([a, "-o", o, "--scale", "1e400"], 2, "must be finite"),
        ([tmp_path / "s.tif", "-o", tmp_path / "o.tif"], 1, "unsigned 8- or 16-bit"),
        ([tmp_path / "z.npy", "-o", tmp_path / "o.npy"], 1, "an .npz archive, not an .npy"),
        ([tmp_path / "fifo.png", "-o", o], 1, "not a regular file"),
        ([tmp_path / "file" / "a.png", "-o", o], 1, "file is a file, not a folder"),
        ([a, "-o", tmp_path / "file" / "o.png"], 2, "is a file, not a folder"),
        ([tmp_path / "missing.png", "-o", o], 1, "no such file or folder"),
        ([f"{tmp_path}/*.jpg", "-o", tmp_path], 1, "no supported files match"),
    ]
    for args, code, fragment in cases:
        argv = ["upscale", *args, "--model", ckpt, "-q"]
        if "--scale" not in args:
            argv += ["--scale", "2"]
        if "" in args:
            argv = ["upscale", *args, "--scale", "2"]
        line = _one_error(argv, capsys, code, fragment)
        assert "use 8 or 16 bits" not in line
    assert not o.exists()


def test_backend_refusal_lists_every_reason(tmp_path, ckpt, capsys, monkeypatch):
    import metasr.inference

    def refuse(*args, **kwargs):
        raise ValueError("backend 'x' cannot run meta_upscale:\n  naive: available\n  x: no GPU")

    monkeypatch.setattr(metasr.inference, "upscale_raster", refuse)
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    line = _one_error(["upscale", tmp_path / "a.png", "-o", tmp_path / "o.png", "--scale", "2",
                       "--model", ckpt], capsys, 1, "naive: available; x: no GPU")  # fmt: skip
    assert "cannot run meta_upscale: naive" in line


@pytest.mark.parametrize(("tile", "suggests"), [(0, "--tile 512"), (256, "--tile"), (64, None)])
def test_out_of_memory_hint(tmp_path, ckpt, capsys, monkeypatch, tile, suggests):
    import metasr.inference
    from metasr.ops.memory import OutOfMemoryError

    def oom(*args, **kwargs):
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(metasr.inference, "upscale_raster", oom)
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    argv = ["upscale", tmp_path / "a.png", "-o", tmp_path / "o.png", "--scale", "2",
            "--model", ckpt, "--tile", tile]  # fmt: skip
    line = _one_error(argv, capsys, 1, "out of cpu memory")
    if suggests is None:  # tiles are already small: the output or the model does not fit
        assert "try" not in line and "will not help" in line
    else:
        assert suggests in line
        assert ("--tile 512" in line) == (tile == 0)  # never 512 when tiles are already smaller


def test_memory_error_is_one_line(tmp_path, ckpt, capsys, monkeypatch):
    import metasr.inference

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 358. GiB for an array")

    monkeypatch.setattr(metasr.inference, "upscale_raster", no_memory)
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    argv = ["upscale", tmp_path / "a.png", "-o", tmp_path / "o.png", "--scale", "2",
            "--model", ckpt]  # fmt: skip
    _one_error(argv, capsys, 1, "out of memory: Unable to allocate 358. GiB")


def test_write_error_names_the_target(tmp_path, ckpt, capsys, monkeypatch):
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()

    def denied(self, fp, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(fp))

    monkeypatch.setattr(Image.Image, "save", denied)
    line = _one_error(["upscale", tmp_path / "a.png", "-o", out, "--scale", "2",
                       "--model", ckpt], capsys, 1, "Permission denied")  # fmt: skip
    assert str(out / "a.png") in line and "/." not in line
    assert list(out.iterdir()) == []


def test_warnings_are_one_line(tmp_path, ckpt, capsys):
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    # A registry name builds random weights, with a warning saying so.
    rc, _, err = _run(["upscale", tmp_path / "a.png", "-o", tmp_path / "o.png",
                       "--scale", "2", "--model", "meta_edsr_tiny", "-q"], capsys)  # fmt: skip
    assert rc == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metasr: warning: "), err
    assert "random weights" in lines[0] and ".py:" not in err


# -------------------------------------------------------------- item 9: symbolic links


def test_symlinked_inputs_keep_their_names(tmp_path, ckpt, capsys):
    """A DVC/git-annex layout: links named after their content, targets all called data.png."""
    blobs, links, out = tmp_path / "blobs", tmp_path / "links", tmp_path / "out"
    for sub in ("aa", "bb", "cc"):
        (blobs / sub).mkdir(parents=True)
        Image.fromarray(_rgb()).save(blobs / sub / "data.png")
    links.mkdir(), out.mkdir()
    (links / "cat.png").symlink_to(blobs / "aa" / "data.png")
    (links / "dog.png").symlink_to(blobs / "bb" / "data.png")
    (links / "cow.png").symlink_to(blobs / "aa" / "data.png")  # same blob, another name
    rc, _, err = _run(["upscale", links, "-o", out, "--scale", "2", "--model", ckpt, "-q"],
                      capsys)  # fmt: skip
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["cat.png", "cow.png", "dog.png"]
    assert not any(p.is_symlink() for p in out.iterdir())
    # One named link as the single input, into a folder: named after the link too.
    out2 = tmp_path / "out2"
    out2.mkdir()
    assert _run(["upscale", links / "dog.png", "-o", out2, "--scale", "2", "--model", ckpt, "-q"],
                capsys)[0] == 0  # fmt: skip
    assert [p.name for p in out2.iterdir()] == ["dog.png"]


def test_nan_is_not_written_as_integer_samples(tmp_path):
    nan = np.array([[[0.5, np.nan]]])
    for kind, dtype, name in [("image", np.uint8, "a.png"), ("field", np.int16, "a.npy")]:
        raster = Raster(data=nan, kind=kind, dtype=np.dtype(dtype))
        with pytest.raises(ValueError, match=f"{name}: cannot store NaN"):
            write_raster(tmp_path / name, raster)
    assert list(tmp_path.iterdir()) == []
