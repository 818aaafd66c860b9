"""``metasr upscale`` refusing what it cannot do well, in one line (issue 10, items 2-5, 8, 9).

Each test reproduces one defect on small inputs (the readers' and writers' own refusals are in
``tests/test_io.py``). Refusals that must happen before a large
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
from helpers import png_chunk
from metasr import io as mio
from metasr.checkpoints import save_checkpoint
from metasr.cli import main, one_line
from metasr.data.files import list_files
from metasr.io import is_temporary_name

PIL = pytest.importorskip("PIL", reason="image tests need Pillow")
tifffile = pytest.importorskip("tifffile")
png = pytest.importorskip("png")
from PIL import Image  # noqa: E402

KWARGS = {"n_resblocks": 1, "n_feats": 8, "img_range": 1.0}
SRC = str(Path(__file__).resolve().parents[2] / "src")


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


def _png16_bomb(path: Path, side: int = 14000) -> None:
    """A genuine, valid 16-bit gray PNG of ``side``² zeros: ~0.4 MB on disk, 392 MB decoded."""
    row = b"\0" * (1 + 2 * side)  # filter byte + samples
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row * 500) for _ in range(side // 500)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    path.write_bytes(
        mio._PNG_SIGNATURE
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
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


# ------------------------------------------------------- item 5: saturation, NaN and inf


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
