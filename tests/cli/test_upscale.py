"""``metasr upscale`` and ``metasr info`` end to end, on generated images and arrays.

Most tests call ``metasr.cli.main`` in-process with a tiny randomly initialised Meta-EDSR saved
as a metasr checkpoint; one runs the real ``python -m metasr`` in a subprocess. The bundled
default model is tested only when its file is present.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import metasr
from metasr import tiling
from metasr.checkpoints import load_checkpoint, load_model, save_checkpoint
from metasr.cli import main
from metasr.geometry import UpscaleRequest
from metasr.inference import upscale_array
from metasr.io import read_raster
from metasr.weights import DEFAULT_CHECKPOINT

PIL = pytest.importorskip("PIL", reason="image tests need Pillow")
from PIL import Image  # noqa: E402

ONE_CODE = 1  # tiled vs whole: at most one 8-bit code value (1/255) apart


# ------------------------------------------------------------------------------------ fixtures


def _tiny_edsr(bicubic_residual: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    model = metasr.create_model(
        "meta_edsr", n_resblocks=1, n_feats=8, img_range=1.0, bicubic_residual=bicubic_residual
    )
    if bicubic_residual:
        # Undo the ×0.1 start of the head: a random head then changes the picture visibly,
        # so a geometry error in a tile could not hide under the bicubic term.
        with torch.no_grad():
            model.pos2weight.meta_block[2].weight.mul_(10)
    return model.eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny random Meta-EDSR (bicubic residual) as a metasr .safetensors checkpoint."""
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    kwargs = {"n_resblocks": 1, "n_feats": 8, "img_range": 1.0, "bicubic_residual": True}
    save_checkpoint(path, _tiny_edsr(), "meta_edsr", kwargs)
    return path


def _rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def smooth_image(h: int, w: int, channels: int = 3, bits: int = 8) -> np.ndarray:
    """A photo-like test image (smooth gradients plus texture), ``(h, w[, c])``."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    planes = [
        0.5 + 0.4 * np.sin(6 * xx + 2 * c) * np.cos(5 * yy - c) + 0.05 * _rng().random((h, w))
        for c in range(channels)
    ]
    img = np.clip(np.stack(planes, -1), 0, 1)
    top = 2**bits - 1
    img = np.rint(img * top).astype(np.uint8 if bits == 8 else np.uint16)
    return img[..., 0] if channels == 1 else img


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def upscale(inp: Path, out: Path, ckpt: Path, capsys, *extra: str) -> None:
    rc, _, err = run(["upscale", inp, "-o", out, "--model", ckpt, "-q", *extra], capsys)
    assert rc == 0, err


# ---------------------------------------------------------------------------- scales and sizes


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--scale", "2.5", (100, 125)),
        ("--scale", "3.5x2", (140, 100)),
        ("--scale", "1.5X4", (60, 200)),
        ("--size", "81x120", (81, 120)),
    ],
)
def test_scale_and_size(tmp_path, ckpt, capsys, flag, value, expected):
    Image.fromarray(smooth_image(40, 50)).save(tmp_path / "a.png")
    upscale(tmp_path / "a.png", tmp_path / "b.png", ckpt, capsys, flag, value)
    with Image.open(tmp_path / "b.png") as im:
        assert im.mode == "RGB"
        assert (im.height, im.width) == expected


def test_output_is_the_model_output(tmp_path, ckpt, capsys):
    """The CLI result is the model's output on the 0..1 image, rounded to 8 bits."""
    img = smooth_image(30, 36)
    Image.fromarray(img).save(tmp_path / "a.png")
    upscale(tmp_path / "a.png", tmp_path / "b.png", ckpt, capsys, "--scale", "2.3x1.7")
    got = np.asarray(Image.open(tmp_path / "b.png")).astype(int)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y = load_checkpoint(ckpt).model(x, scale=(2.3, 1.7))
    want = np.rint(y[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(int)
    assert np.abs(got - want).max() <= ONE_CODE


# -------------------------------------------------------------------------------------- tiling


@pytest.mark.parametrize(
    ("bicubic_residual", "request_"),
    [(True, {"scale": (2.3, 3.1)}), (True, {"size": (71, 131)}), (False, {"scale": 1.37})],
    ids=["residual-2.3x3.1", "residual-size", "plain-x1.37"],
)
def test_tiled_equals_whole(bicubic_residual, request_):
    """Tiles with the default overlap reproduce the whole-image output (float32 noise only),
    while tiles run on their own grid would not (so the comparison is not vacuous)."""
    model = _tiny_edsr(bicubic_residual)
    x = torch.from_numpy(smooth_image(31, 43)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        whole = tiling.upscale(model, x, UpscaleRequest(**request_))
        tiled = tiling.upscale(model, x, UpscaleRequest(**request_), tile=12)
        assert tiled.shape == whole.shape
        assert (tiled - whole).abs().max().item() < 1e-4

        # Naive tiling: each tile upscaled by itself, its grid restarting at its corner.
        geom = metasr.build_geometry(31, 43, **request_)
        naive = torch.empty_like(whole)
        rows = tiling.plan_axis(geom.row_idx, 31, 12, 0)
        cols = tiling.plan_axis(geom.col_idx, 43, 12, 0)
        for rt in rows:
            for ct in cols:
                xt = x[..., rt.core_lo : rt.core_hi, ct.core_lo : ct.core_hi]
                size = (rt.out_hi - rt.out_lo, ct.out_hi - ct.out_lo)
                naive[..., rt.out_lo : rt.out_hi, ct.out_lo : ct.out_hi] = model(xt, size=size)
        assert (naive - whole).abs().max().item() > 0.02


def test_tiled_vs_whole_cli_within_one_code(tmp_path, ckpt, capsys):
    Image.fromarray(smooth_image(40, 50)).save(tmp_path / "a.png")
    upscale(tmp_path / "a.png", tmp_path / "whole.png", ckpt, capsys, "--scale", "3.3x2.6")
    upscale(
        tmp_path / "a.png", tmp_path / "tiled.png", ckpt, capsys, "--scale", "3.3x2.6",
        "--tile", "16",
    )  # fmt: skip
    whole = np.asarray(Image.open(tmp_path / "whole.png")).astype(int)
    tiled = np.asarray(Image.open(tmp_path / "tiled.png")).astype(int)
    assert np.abs(whole - tiled).max() <= ONE_CODE


def test_tiled_field_per_channel(tmp_path, ckpt, capsys):
    field = _rng().standard_normal((2, 25, 31)).astype(np.float32)
    np.save(tmp_path / "f.npy", field)
    upscale(tmp_path / "f.npy", tmp_path / "w.npy", ckpt, capsys, "--scale", "2.5")
    upscale(tmp_path / "f.npy", tmp_path / "t.npy", ckpt, capsys, "--scale", "2.5", "--tile", "12")
    assert np.abs(np.load(tmp_path / "w.npy") - np.load(tmp_path / "t.npy")).max() < 1e-4


# ----------------------------------------------------------------------- formats and channels


def test_16bit_png_and_tiff_keep_16_bits(tmp_path, ckpt, capsys):
    png = pytest.importorskip("png", reason="16-bit PNG needs pypng")
    tifffile = pytest.importorskip("tifffile")
    img = smooth_image(30, 40, bits=16)
    png.Writer(40, 30, greyscale=False, bitdepth=16).write(
        open(tmp_path / "a.png", "wb"), img.reshape(30, -1)
    )
    tifffile.imwrite(tmp_path / "a.tif", img, photometric="rgb")
    upscale(tmp_path / "a.png", tmp_path / "b.png", ckpt, capsys, "--scale", "2")
    upscale(tmp_path / "a.tif", tmp_path / "b.tif", ckpt, capsys, "--scale", "2")
    from_png = read_raster(tmp_path / "b.png")
    from_tif = tifffile.imread(tmp_path / "b.tif")
    assert from_png.dtype == np.uint16 and from_png.shape == (60, 80)
    assert from_tif.dtype == np.uint16 and from_tif.shape == (60, 80, 3)
    assert (from_tif % 257 != 0).mean() > 0.5  # real 16-bit values, not 8-bit ones scaled up
    png_codes = np.rint(from_png.data.transpose(1, 2, 0) * 65535).astype(int)
    assert np.abs(png_codes - from_tif.astype(int)).max() <= 1


def test_rgba_alpha_upscaled_separately(tmp_path, ckpt, capsys):
    rgb = smooth_image(30, 40)
    alpha = np.zeros((30, 40), np.uint8)
    alpha[8:22, 10:30] = 255
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    upscale(tmp_path / "rgba.png", tmp_path / "o.png", ckpt, capsys, "--scale", "2.5x3")
    upscale(tmp_path / "rgb.png", tmp_path / "o_rgb.png", ckpt, capsys, "--scale", "2.5x3")
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert out.shape == (75, 120, 4)
    # Colour goes through the model exactly as without alpha ...
    assert np.array_equal(out[..., :3], np.asarray(Image.open(tmp_path / "o_rgb.png")))
    # ... and alpha is bicubic, clamped to 0..1.
    a = torch.from_numpy(alpha).float()[None, None] / 255
    want = torch.nn.functional.interpolate(a, size=(75, 120), mode="bicubic", align_corners=False)
    want = np.rint(want[0, 0].clamp(0, 1).numpy() * 255)
    assert np.abs(out[..., 3] - want).max() <= ONE_CODE


def test_grayscale_is_model_on_replicated_gray(tmp_path, ckpt, capsys):
    """Gray: the RGB model on gray replicated to RGB, then the mean of its three outputs."""
    gray = smooth_image(30, 40, channels=1)
    Image.fromarray(gray).save(tmp_path / "g.png")
    upscale(tmp_path / "g.png", tmp_path / "o.png", ckpt, capsys, "--scale", "2")
    with Image.open(tmp_path / "o.png") as im:
        assert im.mode == "L"
        out = np.asarray(im).astype(int)
    x = torch.from_numpy(gray).float()[None, None].expand(1, 3, 30, 40) / 255
    with torch.no_grad():
        y = load_checkpoint(ckpt).model(x, scale=2)[0].mean(0)
    want = np.rint(y.clamp(0, 1).numpy() * 255).astype(int)
    assert np.abs(out - want).max() <= ONE_CODE


@pytest.mark.parametrize("suffix", [".jpg", ".webp", ".tif", ".bmp"])
def test_other_8bit_formats(tmp_path, ckpt, capsys, suffix):
    Image.fromarray(smooth_image(30, 40)).save(tmp_path / f"a{suffix}")
    upscale(tmp_path / f"a{suffix}", tmp_path / f"b{suffix}", ckpt, capsys, "--scale", "1.5")
    raster = read_raster(tmp_path / f"b{suffix}")
    assert raster.dtype == np.uint8 and raster.shape == (45, 60)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((33, 21), np.float64), ((1, 33, 21), np.float32), ((4, 20, 16), np.float16)],
)
def test_npy_keeps_dtype_and_layout(tmp_path, ckpt, capsys, shape, dtype):
    field = (280 + 10 * _rng().standard_normal(shape)).astype(dtype)  # e.g. temperatures in K
    np.save(tmp_path / "f.npy", field)
    upscale(tmp_path / "f.npy", tmp_path / "g.npy", ckpt, capsys, "--size", "50x40")
    out = np.load(tmp_path / "g.npy")
    assert out.dtype == dtype
    assert out.shape == shape[:-2] + (50, 40)
    # Values are not squeezed into 0..1: they stay in the field's own range.
    assert 200 < float(np.median(out)) < 360


def test_npy_channel_is_model_on_replicated_channel(tmp_path, ckpt, capsys):
    """A 1-channel field on an RGB model: replicate, run, take the mean of the outputs."""
    field = _rng().random((25, 30)).astype(np.float32)
    np.save(tmp_path / "f.npy", field)
    upscale(tmp_path / "f.npy", tmp_path / "g.npy", ckpt, capsys, "--scale", "2")
    model = load_checkpoint(ckpt).model
    with torch.no_grad():
        y = model(torch.from_numpy(field)[None, None].expand(1, 3, 25, 30), scale=2)
    np.testing.assert_allclose(np.load(tmp_path / "g.npy"), y[0].mean(0).numpy(), atol=1e-5)


def test_npy_integer_and_minmax(tmp_path, ckpt, capsys):
    field = (1000 + 500 * _rng().random((20, 24))).astype(np.int16)
    np.save(tmp_path / "i.npy", field)
    upscale(tmp_path / "i.npy", tmp_path / "o.npy", ckpt, capsys, "--scale", "2", "--normalize",
            "minmax")  # fmt: skip
    out = np.load(tmp_path / "o.npy")
    assert out.dtype == np.int16 and out.shape == (40, 48)
    assert 900 < out.mean() < 1600


# ------------------------------------------------------------------------- many files, models


def test_folder_and_glob(tmp_path, ckpt, capsys):
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    dst.mkdir()
    for name in ("a.png", "b.png", "c.jpg"):
        Image.fromarray(smooth_image(20, 24)).save(src / name)
    (src / "notes.txt").write_text("not an image")
    rc, out, err = run(["upscale", src, "-o", dst, "--model", ckpt, "--scale", "2"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in dst.iterdir()) == ["a.png", "b.png", "c.jpg"]
    assert len(out.strip().splitlines()) == 3  # one line per file

    glob_dst = tmp_path / "glob"
    glob_dst.mkdir()
    rc, _, err = run(
        ["upscale", f"{src}/*.png", "-o", glob_dst, "--model", ckpt, "--scale", "2", "-q"], capsys
    )
    assert rc == 0, err
    assert sorted(p.name for p in glob_dst.iterdir()) == ["a.png", "b.png"]


def test_official_checkpoint(tmp_path, capsys):
    """A raw state dict with the official MetaRDN layout loads as the official model."""
    torch.manual_seed(0)
    official = metasr.create_model("meta_rdn", G0=8, D=1, C=1, G=4, pos_encoding="official")
    torch.save(official.state_dict(), tmp_path / "model_1000.pt")
    Image.fromarray(smooth_image(20, 24)).save(tmp_path / "a.png")
    rc, _, err = run(
        ["upscale", tmp_path / "a.png", "-o", tmp_path / "b.png", "--scale", "2.5", "-q",
         "--model", tmp_path / "model_1000.pt"],
        capsys,
    )  # fmt: skip
    assert rc == 0, err
    assert Image.open(tmp_path / "b.png").size == (60, 50)
    assert load_model(tmp_path / "model_1000.pt").value_range == 255.0


def test_basicsr_checkpoint_from_metasr_training(tmp_path, capsys):
    """A BasicSR net_g_*.pth as MetaSRModel writes it (weights + network options) upscales."""
    net = _tiny_edsr()
    opts = {"type": "MetaEDSR", "n_resblocks": 1, "n_feats": 8, "img_range": 1.0,
            "bicubic_residual": True, "backend": "torch"}  # fmt: skip
    torch.save({"params": net.state_dict(), "metasr_network": opts}, tmp_path / "net_g_latest.pth")
    img = smooth_image(20, 24)
    Image.fromarray(img).save(tmp_path / "a.png")
    upscale(tmp_path / "a.png", tmp_path / "b.png", tmp_path / "net_g_latest.pth", capsys,
            "--scale", "2x1.5")  # fmt: skip
    got = np.asarray(Image.open(tmp_path / "b.png")).astype(int)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y = net(x, scale=(2, 1.5))
    want = np.rint(y[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(int)
    assert np.abs(got - want).max() <= ONE_CODE


def test_registry_name_and_backend(tmp_path, capsys, monkeypatch):
    ops = importlib.import_module("metasr.ops.meta_upscale.planning")  # where it is chosen

    requested = []
    real = ops.select_backend

    def spy(backend, *args, **kwargs):  # which backend the head actually ran with
        chosen = real(backend, *args, **kwargs)
        requested.append((backend, chosen.name))
        return chosen

    monkeypatch.setattr(ops, "select_backend", spy)
    Image.fromarray(smooth_image(12, 14)).save(tmp_path / "a.png")
    for backend in ("torch", "im2col"):
        requested.clear()
        rc, _, err = run(
            ["upscale", tmp_path / "a.png", "-o", tmp_path / "b.png", "--scale", "1.5", "-q",
             "--model", "meta_edsr_tiny", "--backend", backend, "--overwrite"],
            capsys,
        )  # fmt: skip
        assert rc == 0, err
        # The CLI shows the warning as one line of its own, without Python's source line.
        assert err.startswith("metasr: warning: ") and "random weights" in err, err
        assert Image.open(tmp_path / "b.png").size == (21, 18)
        assert requested and set(requested) == {(backend, backend)}
    with pytest.warns(UserWarning):
        assert load_model("meta_edsr_tiny", backend="im2col").model.backend == "im2col"


def test_export_script_round_trip(tmp_path, capsys):
    """scripts/export_default_model.py: BasicSR net_g + options → a model the CLI loads."""
    pytest.importorskip("yaml")
    import runpy

    opts = tmp_path / "opt.yml"
    opts.write_text(
        "network_g:\n  type: MetaEDSR\n  n_resblocks: 1\n  n_feats: 8\n  img_range: 1.0\n"
        "  bicubic_residual: true\n  backend: torch\n"
    )
    net = metasr.create_model(
        "meta_edsr", n_resblocks=1, n_feats=8, img_range=1.0, bicubic_residual=True
    )
    torch.save({"params": net.state_dict()}, tmp_path / "net_g_10.pth")
    script = Path(__file__).resolve().parents[2] / "scripts" / "export_default_model.py"
    argv = ["export", "--checkpoint", str(tmp_path / "net_g_10.pth"), "--opt", str(opts), "-o",
            str(tmp_path / "m.safetensors")]  # fmt: skip
    old = sys.argv
    sys.argv = argv
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = old
    assert done.value.code == 0
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.arch == "meta_edsr" and "backend" not in loaded.kwargs
    for k, v in net.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k])


def test_subprocess_python_m_metasr(tmp_path, ckpt):
    Image.fromarray(smooth_image(16, 20)).save(tmp_path / "a.png")
    proc = subprocess.run(
        [sys.executable, "-m", "metasr", "upscale", str(tmp_path / "a.png"), "-o",
         str(tmp_path / "b.png"), "--scale", "2x3", "--model", str(ckpt), "--device", "cpu"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "a.png ->" in proc.stdout
    assert Image.open(tmp_path / "b.png").size == (60, 32)


# -------------------------------------------------------------------------------------- errors


def _expect_error(argv: list, capsys, code: int, fragment: str) -> None:
    rc, _, err = run(argv, capsys)
    assert rc == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--scale", "2.5y"], 2, "bad --scale"),
        (["--scale", "abc"], 2, "bad --scale"),
        (["--scale", "3.5,2"], 2, "bad --scale"),  # a comma separates scales: write 3.5x2
        (["--scale", "0.5"], 2, "must be >= 1"),
        (["--scale", "2x0.9"], 2, "must be >= 1"),
        (["--size", "10x"], 2, "bad --size"),
        (["--size", "0x5"], 2, "bad --size"),
        (["--size", "10x10"], 1, "smaller than the input"),
        (["--scale", "2", "--tile", "-1"], 2, "bad --tile"),
        (["--scale", "2", "--backend", "bogus"], 2, "unknown --backend"),
        (["--scale", "2", "--half"], 2, "--half needs a CUDA device"),
    ],
)
def test_bad_arguments(tmp_path, ckpt, capsys, args, code, fragment):
    Image.fromarray(smooth_image(20, 24)).save(tmp_path / "a.png")
    argv = ["upscale", tmp_path / "a.png", "-o", tmp_path / "b.png", "--model", ckpt, *args]
    _expect_error(argv, capsys, code, fragment)
    assert not (tmp_path / "b.png").exists()


def test_bad_files(tmp_path, ckpt, capsys):
    good = tmp_path / "a.png"
    Image.fromarray(smooth_image(20, 24)).save(good)
    Image.fromarray(smooth_image(20, 24)).save(tmp_path / "b.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    (tmp_path / "a.bmp").write_bytes(b"BM")  # a truncated BMP
    (tmp_path / "a.gif").write_bytes(b"GIF89a")
    (tmp_path / "x.npy").write_bytes(b"nonsense")
    cases = [
        ([tmp_path / "missing.png", "-o", tmp_path / "o.png"], 1, "no such file"),
        ([tmp_path / "broken.png", "-o", tmp_path / "o.png"], 1, "broken.png"),
        ([tmp_path / "x.npy", "-o", tmp_path / "o.npy"], 1, "x.npy"),
        ([tmp_path / "a.bmp", "-o", tmp_path / "o.png"], 1, "a.bmp"),
        ([tmp_path / "a.gif", "-o", tmp_path / "o.png"], 1, "unsupported format '.gif'"),
        ([good, "-o", tmp_path / "o.gif"], 1, "unsupported format '.gif'"),
        ([good, "-o", tmp_path / "o.npy"], 1, "not .npy"),
        ([good, tmp_path / "b.png", "-o", tmp_path / "nowhere.png"], 2, "looks like a file"),
        ([good, "-o", good / "o.png"], 2, "is a file, not a folder"),
        ([good, "-o", good], 2, "overwrite its input"),
        ([f"{tmp_path}/*.tif", "-o", tmp_path], 1, "no supported files match"),
    ]
    for args, code, fragment in cases:
        _expect_error(["upscale", *args, "--scale", "2", "--model", ckpt], capsys, code, fragment)
    assert not (tmp_path / "o.png").exists()


def test_bad_checkpoints(tmp_path, capsys):
    from safetensors.torch import save_file

    Image.fromarray(smooth_image(20, 24)).save(tmp_path / "a.png")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    torch.save({"params": {"w": torch.zeros(2)}}, tmp_path / "net_g_1000.pth")
    torch.save({"params": _tiny_edsr().state_dict()}, tmp_path / "net_g_2000.pth")
    torch.save({"w": torch.zeros(2)}, tmp_path / "random.pt")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    cases = [
        (tmp_path / "a.png", "not a model checkpoint"),
        (tmp_path / "plain.safetensors", "without metasr model metadata"),
        (tmp_path / "garbage.safetensors", "not a readable safetensors file"),
        (tmp_path / "net_g_1000.pth", "BasicSR training checkpoint"),
        (tmp_path / "net_g_2000.pth", "does not record its network"),
        (tmp_path / "random.pt", "not a model checkpoint"),
        (tmp_path / "missing.safetensors", "no such file"),
        ("no_such_model", "not 'default' or a registered architecture"),
    ]
    for model, fragment in cases:
        argv = ["upscale", tmp_path / "a.png", "-o", tmp_path / "b.png", "--scale", "2",
                "--model", model]  # fmt: skip
        _expect_error(argv, capsys, 1, fragment)


def test_failed_write_leaves_no_file(tmp_path, ckpt, capsys, monkeypatch):
    """A write that dies half-way leaves neither the target nor a temporary file behind."""
    Image.fromarray(smooth_image(20, 24)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()

    def dying_save(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", dying_save)
    argv = ["upscale", tmp_path / "a.png", "-o", out, "--scale", "2", "--model", ckpt]
    _expect_error(argv, capsys, 2, "No space left on device")
    assert list(out.iterdir()) == []


def test_cuda_requested_without_gpu(tmp_path, ckpt, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    Image.fromarray(smooth_image(20, 24)).save(tmp_path / "a.png")
    argv = ["upscale", tmp_path / "a.png", "-o", tmp_path / "b.png", "--scale", "2",
            "--model", ckpt, "--device", "cuda"]  # fmt: skip
    _expect_error(argv, capsys, 2, "no CUDA device")


# ------------------------------------------------------------------------------ info, default


def test_info(capsys):
    rc, out, _ = run(["info"], capsys)
    assert rc == 0
    for word in ("metasr", "torch", "python", "backends on cpu", "torch        available"):
        assert word in out
    if os.environ.get("METASR_CPU_KERNELS", "") != "1":  # opt-in unset: says how to opt in
        assert "compiled CPU intervals order: unavailable: " in out
        assert "METASR_CPU_KERNELS=1" in out
    rc, out, _ = run(["info", "--json"], capsys)
    import json

    info = json.loads(out)
    assert rc == 0 and info["metasr"] == metasr.__version__
    assert set(info["backends"]["cpu"]) == set(metasr.backends("cpu"))
    from metasr.weights import BUNDLED

    assert set(info["bundled_models"]) == set(BUNDLED) >= {"default", "t2m"}
    assert info["bundled_models"]["t2m"]["present"] == BUNDLED["t2m"].is_file()


@pytest.mark.skipif(
    not DEFAULT_CHECKPOINT.is_file(),
    reason=f"the bundled default model ({DEFAULT_CHECKPOINT.name}) is not trained/exported yet",
)
def test_default_model_beats_bicubic():
    """The bundled model loads by name and beats bicubic on a held-out photo (×2, Y-PSNR)."""
    from metasr.assets import SAMPLE_IMAGE
    from metasr.data.resize import imresize
    from metasr.metrics import psnr

    loaded = load_model("default")
    hr = torch.from_numpy(read_raster(SAMPLE_IMAGE).data).double()  # (3, 160, 200), held out
    lr = torch.round(imresize(hr, scale=0.5) * 255) / 255
    sr = torch.from_numpy(
        upscale_array(loaded, lr.float().numpy(), UpscaleRequest(scale=2))
    ).double()
    bic = imresize(lr, scale=2)
    sr, bic = (torch.round(t.clamp(0, 1) * 255) / 255 for t in (sr, bic))
    assert psnr(sr, hr, scale=2).item() > psnr(bic, hr, scale=2).item()


def test_outputs_get_ordinary_file_permissions(tmp_path):
    # Written through a temporary file (mkstemp: mode 0600) and renamed; the result must carry
    # the mode an ordinary open() would give, not stay private.
    from metasr.io import atomic_write

    target = tmp_path / "out.bin"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"x"))
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~umask)
