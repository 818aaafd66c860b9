"""A hostile pass over every subcommand, table-driven (issue 22, "your own hostile pass").

Each case is an argument list (``{W}``: a folder of prepared inputs, ``{O}``: an empty output
folder of the case), the exit status expected, and a fragment of the one-line message. Every
case also checks what must hold whatever the input: no traceback, at most one error line, no
input changed or lost, and nothing written (no visible nor temporary file) unless it succeeds.
The cases run in one process against tiny files; a case costs milliseconds to a second.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import metasr
from helpers import field_dataset
from metasr.checkpoints import save_checkpoint
from metasr.cli import main
from metasr.field_stats import FieldStats, stats_metadata

xr = pytest.importorskip("xarray")
pytest.importorskip("netCDF4")

KW = {"in_channels": 1, "out_channels": 1, "n_resblocks": 1, "n_feats": 8}
KW3 = {"in_channels": 3, "out_channels": 3, "n_resblocks": 1, "n_feats": 8}


def _nc(path: Path, *, name="t2m", lat_units="degrees_north", units="K", shape=(2, 8, 16),
        lat=None, value=280.0) -> None:  # fmt: skip
    lat = np.linspace(80, -80, shape[1]) if lat is None else lat
    field_dataset(
        shape, lat=lat, name=name, value=value, lat_units=lat_units, units=units
    ).to_netcdf(path)


@pytest.fixture(scope="module")
def W(tmp_path_factory) -> Path:
    from PIL import Image

    w = tmp_path_factory.mktemp("hostile")
    rgb = (np.arange(8 * 8 * 3).reshape(8, 8, 3) * 3 % 256).astype(np.uint8)
    Image.fromarray(rgb).save(w / "a.png")
    big = np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb[..., 0]).save(w / "g.png")
    Image.fromarray(rgb).save(w / "a.jpg")
    np.save(w / "x.npy", np.random.default_rng(0).random((1, 8, 8)).astype(np.float32))
    np.save(w / "nan.npy", np.full((8, 8), np.nan, np.float32))
    np.save(w / "vec.npy", np.zeros(8, np.float32))
    np.save(w / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(w / "cplx.npy", np.zeros((8, 8), np.complex64))
    (w / "text.png").write_text("not an image")
    (w / "empty.png").write_bytes(b"")
    (w / "trunc.png").write_bytes((w / "a.png").read_bytes()[:40])
    (w / "notes.txt").write_text("hello")
    (w / "d").mkdir()
    Image.fromarray(big).save(w / "d" / "a.png")  # eval's SSIM needs 11x11 after shaving
    (w / "d2").mkdir()
    Image.fromarray(big[..., 1]).save(w / "d2" / "a.png")
    (w / "empty").mkdir()
    (w / "dnc").mkdir()
    _nc(w / "f.nc")
    _nc(w / "dnc" / "f.nc")
    _nc(w / "rad.nc", lat_units="radians", lat=np.linspace(1.4, -1.4, 8))
    _nc(w / "c.nc", units="degC", value=7.0)
    _nc(w / "nounits.nc", units="")
    _nc(w / "fine.nc", shape=(1, 16, 32))
    _nc(w / "other.nc", name="tp")
    (w / "bad.nc").write_text("CDF? no")
    (w / "trunc.nc").write_bytes((w / "f.nc").read_bytes()[:200])
    (w / "dir.nc").mkdir()
    torch.manual_seed(0)
    save_checkpoint(w / "m.safetensors", metasr.create_model("meta_edsr", **KW), "meta_edsr", KW)
    stats = FieldStats(("t2m",), ("K",), (280.0,), (2.0,), "8x16")
    save_checkpoint(w / "t.safetensors", metasr.create_model("meta_edsr", **KW), "meta_edsr",
                    KW, metadata=stats_metadata(stats))  # fmt: skip
    save_checkpoint(w / "m3.safetensors", metasr.create_model("meta_edsr", **KW3), "meta_edsr",
                    KW3)  # fmt: skip
    (w / "stats.json").write_text(stats.to_json())
    (w / "bad.json").write_text("{not json")
    (w / "neg.json").write_text(json.dumps({"mean": 1, "std": -1}))
    (w / "fake.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    (w / "fake.pth").write_bytes(b"PK\x03\x04 not really a zip")
    (w / "cfg.yml").write_text("name: [unclosed\n")
    (w / "list.yml").write_text("- 1\n- 2\n")
    (w / "empty.yml").write_text("")
    return w


def _digest(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p.relative_to(root)) + "/"] = "dir"
    return out


UP = ["upscale", "-q"]
NC = ["upscale", "-q", "{W}/f.nc", "--var", "t2m"]
EVAL = ["eval", "--model", "bicubic", "--data", "{W}/d"]
EVNC = ["eval", "--model", "bilinear", "--data", "{W}/f.nc", "--var", "t2m", "--scales", "2"]
EXP = ["export", "--model", "{W}/m3.safetensors", "--input-size", "8x8"]
CS = ["climate-stats", "{W}/f.nc", "--var", "t2m"]
BENCH = ["bench", "--config", "div2k-x4"]
M = ["--model", "{W}/m3.safetensors"]

# (id, argv, exit status, fragment of the error line; None: no error expected)
# fmt: off
CASES: list[tuple[str, list[str], int, str | None]] = [
    # ---- upscale: scale and size -----------------------------------------------------------
    *[
        (f"scale={s!r}", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", s, *M], 2, "--scale")
        for s in ["0", "-1", "nan", "inf", "-inf", "abc", "2x", "x2", "2x3x4", "", " ", "0.5",
                  "1e400", "2xnan", "0x2", "1,2,3", "2..5", "0x0", "2 x", "++2", "2x-3"]
    ],  # fmt: skip
    ("scale=1e9", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "1e9", *M], 1, "exceeds"),
    *[
        (f"size={s!r}", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--size", s, *M], 2, "--size")
        for s in ["0x5", "5x0", "-3x4", "axb", "3", "1.5x2", "", "4x4x4", "x", "16xinf"]
    ],  # fmt: skip
    ("size-huge", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--size", "99999999x99999999", *M], 1,
     "exceeds"),  # fmt: skip
    ("size-smaller", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--size", "4x4", *M], 1, ""),
    ("scale-and-size", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--size", "9x9"], 2,
     "not allowed"),  # fmt: skip
    ("no-scale", [*UP, "{W}/a.png", "-o", "{O}/o.png", *M], 2, "--scale or --size"),
    # ---- upscale: options ------------------------------------------------------------------
    ("tile=-1", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--tile", "-1", *M], 2,
     "--tile"),  # fmt: skip
    ("tile=abc", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--tile", "abc"], 2,
     "--tile"),  # fmt: skip
    ("overlap=-1", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--tile-overlap", "-1",
                    *M], 2, "--tile-overlap"),  # fmt: skip
    ("max-pixels=0", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--max-pixels", "0",
                      *M], 2, "--max-pixels"),  # fmt: skip
    ("max-pixels=-5", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--max-pixels",
                       "-5", *M], 2, "--max-pixels"),  # fmt: skip
    ("max-pixels=10", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--max-pixels", "10",
                       *M], 1, "limit"),  # fmt: skip
    ("device=tpu", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--device", "tpu", *M],
     2, "device"),  # fmt: skip
    ("device=cuda:99", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--device",
                        "cuda:99", *M], 2, "device"),  # fmt: skip
    ("device=''", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--device", "", *M], 2,
     "device"),  # fmt: skip
    ("half-cpu", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--half", "--device",
                  "cpu", *M], 2, "--half"),  # fmt: skip
    ("backend=foo", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--backend", "foo",
                     *M], 2, "--backend"),  # fmt: skip
    ("backend=''", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--backend", "", *M],
     2, "--backend"),  # fmt: skip
    ("normalize=bogus", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--normalize",
                         "zscore"], 2, "invalid choice"),  # fmt: skip
    ("quality=0", [*UP, "{W}/a.png", "-o", "{O}/o.jpg", "--scale", "2", "--quality", "0", *M],
     2, "--quality"),  # fmt: skip
    ("quality=101", [*UP, "{W}/a.png", "-o", "{O}/o.jpg", "--scale", "2", "--quality", "101",
                     *M], 2, "--quality"),  # fmt: skip
    ("quality-png", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--quality", "80",
                     *M], 2, "--quality"),  # fmt: skip
    ("suffix-path", [*UP, "{W}/a.png", "-o", "{O}/", "--scale", "2", "--suffix", "a/b", *M], 2,
     "--suffix"),  # fmt: skip
    ("ext=gif", [*UP, "{W}/a.png", "-o", "{O}/", "--scale", "2", "--ext", "gif"], 2,
     "invalid choice"),  # fmt: skip
    ("suffix-file-out", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--suffix", "_x",
                         *M], 2, "--suffix"),  # fmt: skip
    ("var-on-image", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--var", "t"], 2,
     "--var"),  # fmt: skip
    ("grid-on-image", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--target-grid", "era5"], 2,
     "--target-grid"),  # fmt: skip
    ("baseline-on-image", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--baseline",
                           "nearest"], 2, "--baseline"),  # fmt: skip
    ("stats-on-image", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--stats", "1,2"],
     2, "--stats"),  # fmt: skip
    # ---- upscale: models -------------------------------------------------------------------
    ("model=''", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--model", ""], 2,
     "--model"),  # fmt: skip
    ("model=' '", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--model", " "], 2,
     "--model"),  # fmt: skip
    ("model-missing", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--model",
                       "{W}/nope.safetensors"], 1, "nope.safetensors"),  # fmt: skip
    ("model-png", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--model", "{W}/a.png"],
     1, "a.png"),  # fmt: skip
    ("model-text", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--model",
                    "{W}/notes.txt"], 1, "notes.txt"),  # fmt: skip
    ("model-dir", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--model", "{W}/d"], 1,
     "d"),  # fmt: skip
    ("model-fake-st", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--model",
                       "{W}/fake.safetensors"], 1, "fake.safetensors"),  # fmt: skip
    ("model-fake-pth", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--model",
                        "{W}/fake.pth"], 1, "fake.pth"),  # fmt: skip
    ("model-unknown-name", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--model",
                            "meta_unicorn"], 1, "meta_unicorn"),  # fmt: skip
    ("model-1ch-rgb", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", "--model",
                       "{W}/m.safetensors"], 0, None),  # fmt: skip  (channel by channel)
    # ---- upscale: inputs -------------------------------------------------------------------
    ("input-missing", [*UP, "{W}/nope.png", "-o", "{O}/o.png", "--scale", "2", *M], 1, "nope"),
    ("input-empty-dir", [*UP, "{W}/empty", "-o", "{O}/", "--scale", "2", *M], 1, "no supported"),
    ("input-txt", [*UP, "{W}/notes.txt", "-o", "{O}/o.png", "--scale", "2", *M], 1, "notes.txt"),
    ("input-text-png", [*UP, "{W}/text.png", "-o", "{O}/o.png", "--scale", "2", *M], 1,
     "text.png"),  # fmt: skip
    ("input-empty-png", [*UP, "{W}/empty.png", "-o", "{O}/o.png", "--scale", "2", *M], 1,
     "empty.png"),  # fmt: skip
    ("input-trunc-png", [*UP, "{W}/trunc.png", "-o", "{O}/o.png", "--scale", "2", *M], 1,
     "trunc.png"),  # fmt: skip
    ("input-glob-none", [*UP, "{W}/*.tif", "-o", "{O}/", "--scale", "2", *M], 1, "no supported"),
    ("npy-nan", [*UP, "{W}/nan.npy", "-o", "{O}/o.npy", "--scale", "2", "--model",
                 "{W}/m.safetensors"], 1, "NaN"),  # fmt: skip
    ("npy-1d", [*UP, "{W}/vec.npy", "-o", "{O}/o.npy", "--scale", "2", "--model",
                "{W}/m.safetensors"], 1, "shape"),  # fmt: skip
    ("npy-object", [*UP, "{W}/obj.npy", "-o", "{O}/o.npy", "--scale", "2", "--model",
                    "{W}/m.safetensors"], 1, "obj.npy"),  # fmt: skip
    ("npy-complex", [*UP, "{W}/cplx.npy", "-o", "{O}/o.npy", "--scale", "2", "--model",
                     "{W}/m.safetensors"], 1, "dtype"),  # fmt: skip
    ("mixed-nc-png", [*UP, "{W}/a.png", "{W}/f.nc", "-o", "{O}/", "--scale", "2", *M], 2,
     "mixed"),  # fmt: skip
    # ---- upscale: outputs ------------------------------------------------------------------
    ("out-onto-input", [*UP, "{W}/a.png", "-o", "{W}/a.png", "--scale", "2", *M], 2,
     "overwrite its input"),  # fmt: skip
    ("out-onto-model", [*UP, "{W}/x.npy", "-o", "{W}/m.safetensors", "--scale", "2", *M], 1,
     ""),  # fmt: skip
    ("out-new-folder", [*UP, "{W}/a.png", "-o", "{O}/no/o.png", "--scale", "2", *M], 0,
     None),  # fmt: skip  (created after every check)
    ("out-under-file", [*UP, "{W}/a.png", "-o", "{W}/a.jpg/o.png", "--scale", "2", *M], 2,
     "not a folder"),  # fmt: skip
    ("out-suffix-unknown", [*UP, "{W}/a.png", "-o", "{O}/o.xyz", "--scale", "2", *M], 1, "xyz"),
    ("out-npy-for-image", [*UP, "{W}/a.png", "-o", "{O}/o.npy", "--scale", "2", *M], 1, ".npy"),
    ("out-png-for-array", [*UP, "{W}/x.npy", "-o", "{O}/o.png", "--scale", "2", "--model",
                           "{W}/m.safetensors"], 1, ".npy"),  # fmt: skip
    ("two-inputs-one-file", [*UP, "{W}/a.png", "{W}/g.png", "-o", "{O}/o.png", "--scale", "2",
                             *M], 2, "folder"),  # fmt: skip
    ("same-name-two-dirs", [*UP, "{W}/d/a.png", "{W}/d2/a.png", "-o", "{O}/", "--scale", "2",
                            *M], 2, "overwrite each other"),  # fmt: skip
    ("ok-png", [*UP, "{W}/a.png", "-o", "{O}/o.png", "--scale", "2", *M], 0, None),
    ("ok-npy", [*UP, "{W}/x.npy", "-o", "{O}/o.npy", "--scale", "1.5x2", "--model",
                "{W}/m.safetensors"], 0, None),  # fmt: skip
    # ---- upscale: netCDF -------------------------------------------------------------------
    ("nc-no-var", ["upscale", "-q", "{W}/f.nc", "-o", "{O}/o.nc", "--target-grid", "16x32"], 2,
     "--var"),  # fmt: skip
    ("nc-var-commas", [*NC[:3], "--var", ",,", "-o", "{O}/o.nc", "--target-grid", "16x32"], 2,
     "--var"),  # fmt: skip
    ("nc-var-missing", [*NC[:3], "--var", "tp", "-o", "{O}/o.nc", "--target-grid", "16x32",
                        "--baseline", "nearest"], 1, "'tp'"),  # fmt: skip
    ("nc-no-grid", [*NC, "-o", "{O}/o.nc"], 2, "--target-grid"),
    *[
        (f"nc-grid={g!r}", [*NC, "-o", "{O}/o.nc", "--target-grid", g, "--baseline", "nearest"],
         c, frag)
        for g, c, frag in [("abc", 2, "unknown grid"), ("0x0", 2, "--target-grid"),
                           ("1x1", 2, "--target-grid"), ("40000x80000", 2, "exceeds"),
                           ("37x4194305", 2, "exceeds"), ("99999999x48", 2, "exceeds"),
                           ("4x8", 1, "coarser"), ("{W}/nope.nc", 1, "no such file"),
                           ("{W}/bad.nc", 2, "not a readable"), ("{W}/dir.nc", 2, "folder"),
                           ("{W}/rad.nc", 2, "radians"), ("{W}/notes.txt", 2, "not a readable")]
    ],  # fmt: skip
    ("nc-baseline-bogus", [*NC, "-o", "{O}/o.nc", "--target-grid", "16x32", "--baseline",
                           "lanczos"], 2, "invalid choice"),  # fmt: skip
    *[
        (f"nc-stats={s!r}", [*NC, "-o", "{O}/o.nc", "--target-grid", "16x32", "--stats", s,
                            "--model", "{W}/m.safetensors"], c, frag)
        for s, c, frag in [("a,b", 2, "--stats"), ("1,0", 2, "std"), ("1,-1", 2, "std"),
                           ("nan,1", 2, "--stats"), ("1", 2, "--stats"), ("1,2,3", 2, "--stats"),
                           ("{W}/bad.json", 2, "bad --stats file"),
                           ("{W}/neg.json", 2, "bad --stats file")]
    ],  # fmt: skip
    ("nc-stats-and-baseline", [*NC, "-o", "{O}/o.nc", "--target-grid", "16x32", "--stats", "1,2",
                               "--baseline", "nearest"], 2, "--stats"),  # fmt: skip
    ("nc-batch-0", [*NC, "-o", "{O}/o.nc", "--target-grid", "16x32", "--batch-size", "0"], 2,
     "--batch-size"),  # fmt: skip
    ("nc-chunk-0", [*NC, "-o", "{O}/o.nc", "--target-grid", "16x32", "--chunk", "0"], 2,
     "--chunk"),  # fmt: skip
    ("nc-scale", [*NC, "-o", "{O}/o.nc", "--scale", "2"], 2, "--target-grid"),
    ("nc-normalize", [*NC, "-o", "{O}/o.nc", "--target-grid", "16x32", "--normalize", "minmax"],
     2, "--normalize"),  # fmt: skip
    ("nc-tta", [*NC, "-o", "{O}/o.nc", "--target-grid", "16x32", "--tta"], 2, "--tta"),
    ("nc-overlap", [*NC, "-o", "{O}/o.nc", "--target-grid", "16x32", "--tile-overlap", "-5"], 2,
     "--tile-overlap"),  # fmt: skip
    ("nc-backend", [*NC, "-o", "{O}/o.nc", "--target-grid", "16x32", "--backend", "foo"], 2,
     "--backend"),  # fmt: skip
    ("nc-maxpix-0", [*NC, "-o", "{O}/o.nc", "--target-grid", "16x32", "--max-pixels", "0"], 2,
     "--max-pixels"),  # fmt: skip
    ("nc-maxpix-10", [*NC, "-o", "{O}/o.nc", "--target-grid", "16x32", "--max-pixels", "10",
                      "--baseline", "nearest"], 1, "max-pixels"),  # fmt: skip
    ("nc-model-''", [*NC, "-o", "{O}/o.nc", "--target-grid", "16x32", "--model", ""], 2,
     "--model"),  # fmt: skip
    ("nc-half-cpu", [*NC, "-o", "{O}/o.nc", "--target-grid", "16x32", "--half", "--device",
                     "cpu", "--model", "{W}/t.safetensors"], 2, "--half"),  # fmt: skip
    ("nc-model-missing", [*NC, "-o", "{O}/o.nc", "--target-grid", "16x32", "--model",
                          "{W}/nope.safetensors"], 1, "nope"),  # fmt: skip
    ("nc-model-no-stats", [*NC, "-o", "{O}/o.nc", "--target-grid", "16x32", "--model",
                           "{W}/m.safetensors"], 1, "stat"),  # fmt: skip
    ("nc-model-3ch", [*NC, "-o", "{O}/o.nc", "--target-grid", "16x32", "--model",
                      "{W}/m3.safetensors", "--stats", "280,2"], 1, ""),  # fmt: skip
    ("nc-units-differ", ["upscale", "-q", "{W}/c.nc", "--var", "t2m", "-o", "{O}/o.nc",
                         "--target-grid", "16x32", "--model", "{W}/t.safetensors"], 1,
     "degC"),  # fmt: skip
    ("nc-out-not-nc", [*NC, "-o", "{O}/o.png", "--target-grid", "16x32", "--baseline",
                       "nearest"], 2, "netCDF"),  # fmt: skip
    ("nc-out-missing-dir", [*NC, "-o", "{O}/no/o.nc", "--target-grid", "16x32", "--baseline",
                            "nearest"], 2, "does not exist"),  # fmt: skip
    ("nc-out-exists", [*NC, "-o", "{W}/fine.nc", "--target-grid", "16x32", "--baseline",
                       "nearest"], 2, "exists"),  # fmt: skip
    ("nc-out-onto-input", [*NC, "-o", "{W}/f.nc", "--target-grid", "16x32", "--baseline",
                           "nearest", "--overwrite"], 2, "overwrite its input"),  # fmt: skip
    ("nc-out-onto-grid", [*NC, "-o", "{W}/fine.nc", "--target-grid", "{W}/fine.nc",
                          "--baseline", "nearest", "--overwrite"], 2,
     "overwrite its input"),  # fmt: skip
    ("nc-out-onto-model", [*NC, "-o", "{W}/t.safetensors", "--target-grid", "16x32"], 2,
     "netCDF"),  # fmt: skip
    ("nc-same-names", ["upscale", "-q", "{W}/f.nc", "{W}/dnc/f.nc", "--var", "t2m", "-o", "{O}",
                       "--target-grid", "16x32", "--baseline", "nearest"], 2,
     "overwrite each other"),  # fmt: skip
    ("nc-two-to-file", ["upscale", "-q", "{W}/f.nc", "{W}/c.nc", "--var", "t2m", "-o",
                        "{O}/o.nc", "--target-grid", "16x32", "--baseline", "nearest"], 2,
     "folder"),  # fmt: skip
    *[
        (f"nc-input-{n}", ["upscale", "-q", "{W}/" + n, "--var", "t2m", "-o", "{O}/o.nc",
                           "--target-grid", "16x32", "--baseline", "nearest"], c, frag)
        for n, c, frag in [("bad.nc", 1, "not a readable"), ("trunc.nc", 1, "not a readable"),
                           ("rad.nc", 1, "radians"), ("nope.nc", 1, "nope.nc"),
                           ("dir.nc", 1, "dir.nc")]
    ],  # fmt: skip
    ("nc-ok", [*NC, "-o", "{O}/o.nc", "--target-grid", "16x32", "--baseline", "bilinear"], 0,
     None),  # fmt: skip
    ("nc-ok-model", [*NC, "-o", "{O}/o.nc", "--target-grid", "16x32", "--model",
                     "{W}/t.safetensors"], 0, None),  # fmt: skip
    # ---- eval ------------------------------------------------------------------------------
    ("eval-data-missing", ["eval", "--model", "bicubic", "--data", "{W}/nope"], 1, "nope"),
    ("eval-data-empty", ["eval", "--model", "bicubic", "--data", "{W}/empty"], 1, "empty"),
    *[
        (f"eval-scales={s!r}", [*EVAL, "--scales", s], c, frag)
        for s, c, frag in [("0", 1, "scale"), ("abc", 1, "scale"), ("", 1, "scale"),
                           ("0.5", 1, ">= 1"), ("nan", 1, "scale"), ("2,,3", 0, None),
                           ("1e9", 1, "")]
    ],  # fmt: skip
    *[
        (f"eval-lq={s!r}", [*EVAL, "--lq-size", s], c, frag)
        for s, c, frag in [("0x0", 1, "size"), ("abc", 1, "size"), ("9999x9999", 1, "")]
    ],  # fmt: skip
    ("eval-csv-dir", [*EVAL, "--scales", "2", "--csv", "{W}/d"], 2, "is a folder"),
    ("eval-json-under-file", [*EVAL, "--scales", "2", "--json", "{W}/a.png/r.json"], 2,
     "not a folder"),  # fmt: skip
    ("eval-csv-onto-data", [*EVAL, "--scales", "2", "--csv", "{W}/d/a.png"], 2,
     "overwrite its input"),  # fmt: skip
    ("eval-csv-eq-json", [*EVAL, "--scales", "2", "--csv", "{O}/r", "--json", "{O}/r"], 2,
     "both name"),  # fmt: skip
    ("eval-plot-onto-model", ["eval", "--model", "{W}/m3.safetensors", "--data", "{W}/d",
                              "--scales", "2", "--plot", "{W}/m3.safetensors"], 2,
     "overwrite its input"),  # fmt: skip
    ("eval-opt-missing", [*EVAL, "--scales", "2", "--opt", "{W}/nope.yml", "--model",
                          "{W}/m3.safetensors"], 2, "nope.yml"),  # fmt: skip
    ("eval-backend", [*EVAL, "--scales", "2", "--backend", "foo"], 2, "--backend"),
    ("eval-device", [*EVAL, "--scales", "2", "--device", "tpu"], 2, "device"),
    ("eval-model-missing", ["eval", "--model", "{W}/nope.pth", "--data", "{W}/d"], 1, "nope"),
    ("eval-var-on-images", [*EVAL, "--scales", "2", "--var", "t2m"], 1, ""),
    ("eval-stats-on-images", [*EVAL, "--scales", "2", "--stats", "1,2"], 2, "--stats"),
    ("eval-weights", [*EVNC, "--weights", "none"], 2, "invalid choice"),
    ("eval-nc-baselines", [*EVNC, "--baselines", "lanczos"], 2, "lanczos"),
    ("eval-nc-plot", [*EVNC, "--plot", "{O}/p.png"], 2, "--plot"),
    ("eval-nc-opt", [*EVNC, "--opt", "{W}/cfg.yml"], 2, "--opt"),
    ("eval-nc-tta", [*EVNC, "--tta"], 2, "--tta"),
    ("eval-nc-no-var", ["eval", "--model", "bilinear", "--data", "{W}/f.nc"], 2, "--var"),
    ("eval-nc-json-onto-data", [*EVNC, "--json", "{W}/f.nc"], 2, "overwrite its input"),
    ("eval-nc-csv-onto-data", [*EVNC, "--csv", "{W}/f.nc"], 2, "overwrite its input"),
    ("eval-nc-bad", ["eval", "--model", "bilinear", "--data", "{W}/bad.nc", "--var", "t2m"], 1,
     "not a readable"),  # fmt: skip
    ("eval-nc-rad", ["eval", "--model", "bilinear", "--data", "{W}/rad.nc", "--var", "t2m"], 1,
     "radians"),  # fmt: skip
    ("eval-nc-var-missing", ["eval", "--model", "bilinear", "--data", "{W}/f.nc", "--var", "tp"],
     1, "'tp'"),  # fmt: skip
    ("eval-nc-stats-bad", [*EVNC, "--stats", "1,0"], 2, "--stats"),
    ("eval-ok", [*EVAL, "--scales", "2", "--json", "{O}/r.json"], 0, None),
    ("eval-nc-ok", [*EVNC, "--csv", "{O}/r.csv"], 0, None),
    # ---- export ----------------------------------------------------------------------------
    ("export-suffix", [*EXP, "--scale", "2", "-o", "{O}/m.txt"], 2, ".onnx or .pt2"),
    ("export-no-suffix", [*EXP, "--scale", "2", "-o", "{O}/m"], 2, ".onnx or .pt2"),
    ("export-dir", [*EXP, "--scale", "2", "-o", "{W}/dir.nc"], 2, ""),
    ("export-missing-dir", [*EXP, "--scale", "2", "-o", "{O}/no/m.onnx"], 2, "does not exist"),
    ("export-onto-model", ["export", "--model", "{W}/m3.safetensors", "--input-size", "8x8",
                           "--scale", "2", "-o", "{W}/m3.safetensors"], 2, ""),  # fmt: skip
    *[
        (f"export-scale={s!r}", [*EXP, "--scale", s, "-o", "{O}/m.onnx"], 2, "--scale")
        for s in ["0", "abc", "nan", "0.5", "-2", ""]
    ],
    *[
        (f"export-size={s!r}", [*EXP, "--size", s, "-o", "{O}/m.onnx"], 2, "--size")
        for s in ["0x0", "axb", "-1x5", "3"]
    ],
    *[
        (f"export-input={s!r}", ["export", "--model", "{W}/m3.safetensors", "--input-size", s,
                                 "--scale", "2", "-o", "{O}/m.onnx"], 2, "--input-size")
        for s in ["0x0", "abc", "-8x8", "8"]
    ],  # fmt: skip
    ("export-input-huge", ["export", "--model", "{W}/m3.safetensors", "--input-size",
                           "40000x40000", "--scale", "4", "-o", "{O}/m.onnx"], 1, ""),  # fmt: skip
    ("export-scale-huge", [*EXP, "--scale", "1e7", "-o", "{O}/m.onnx"], 1, "exceeds"),
    ("export-size-smaller", [*EXP, "--size", "4x4", "-o", "{O}/m.onnx"], 1, ""),
    ("export-no-request", [*EXP, "-o", "{O}/m.onnx"], 2, "required"),
    ("export-both", [*EXP, "--scale", "2", "--size", "9x9", "-o", "{O}/m.onnx"], 2,
     "not allowed"),  # fmt: skip
    ("export-model-missing", ["export", "--model", "{W}/nope.safetensors", "--input-size", "8x8",
                              "--scale", "2", "-o", "{O}/m.onnx"], 1, "nope"),  # fmt: skip
    ("export-model-png", ["export", "--model", "{W}/a.png", "--input-size", "8x8", "--scale",
                          "2", "-o", "{O}/m.onnx"], 1, "a.png"),  # fmt: skip
    ("export-model-bicubic", ["export", "--model", "bicubic", "--input-size", "8x8", "--scale",
                              "2", "-o", "{O}/m.onnx"], 1, ""),  # fmt: skip
    # ---- climate-stats ---------------------------------------------------------------------
    ("cs-missing", ["climate-stats", "{W}/nope.nc", "--var", "t2m"], 1, "nope.nc"),
    ("cs-no-var", ["climate-stats", "{W}/f.nc"], 2, "--var"),
    ("cs-var-missing", ["climate-stats", "{W}/f.nc", "--var", "tp"], 1, "'tp'"),
    ("cs-bad", ["climate-stats", "{W}/bad.nc", "--var", "t2m"], 1, "not a readable"),
    ("cs-trunc", ["climate-stats", "{W}/trunc.nc", "--var", "t2m"], 1, "not a readable"),
    ("cs-dir", ["climate-stats", "{W}/dir.nc", "--var", "t2m"], 1, "folder"),
    ("cs-rad", ["climate-stats", "{W}/rad.nc", "--var", "t2m"], 1, "radians"),
    ("cs-units-differ", ["climate-stats", "{W}/f.nc", "{W}/c.nc", "--var", "t2m"], 1, "degC"),
    ("cs-grids-differ", ["climate-stats", "{W}/f.nc", "{W}/fine.nc", "--var", "t2m"], 1, "grid"),
    ("cs-o-dir", [*CS, "-o", "{W}/d"], 2, "is a folder"),
    ("cs-o-missing-dir", [*CS, "-o", "{O}/no/s.json"], 2, "does not exist"),
    ("cs-o-input", [*CS, "-o", "{W}/f.nc"], 2, "overwrite its input"),
    ("cs-o-checkpoint", [*CS, "--checkpoint", "{W}/t.safetensors", "-o", "{W}/t.safetensors"], 2,
     "overwrite its input"),  # fmt: skip
    ("cs-into-input", [*CS, "--checkpoint", "{W}/t.safetensors", "--into", "{W}/f.nc"], 2,
     "overwrite its input"),  # fmt: skip
    ("cs-into-eq-o", [*CS, "--checkpoint", "{W}/t.safetensors", "--into", "{O}/x", "-o",
                      "{O}/x"], 2, "both name"),  # fmt: skip
    ("cs-into-no-ckpt", [*CS, "--into", "{O}/x.safetensors"], 2, "--checkpoint"),
    ("cs-ckpt-missing", [*CS, "--checkpoint", "{W}/nope.safetensors", "--into",
                         "{O}/x.safetensors"], 1, "nope"),  # fmt: skip
    ("cs-ckpt-png", [*CS, "--checkpoint", "{W}/a.png", "--into", "{O}/x.safetensors"], 1,
     "a.png"),  # fmt: skip
    ("cs-ckpt-3ch", [*CS, "--checkpoint", "{W}/m3.safetensors", "--into", "{O}/x.safetensors"],
     1, ""),  # fmt: skip
    ("cs-ok", [*CS, "-o", "{O}/s.json"], 0, None),
    ("cs-ok-into", [*CS, "--checkpoint", "{W}/m.safetensors", "--into", "{O}/x.safetensors"], 0,
     None),  # fmt: skip
    # ---- bench (all refused before any measurement) ----------------------------------------
    ("bench-config", ["bench", "--config", "nope"], 2, "unknown config"),
    ("bench-config-empty", ["bench", "--config", ""], 2, "config"),
    ("bench-backends", [*BENCH, "--backends", "foo"], 2, "unknown backend"),
    ("bench-backends-empty", [*BENCH, "--backends", ","], 2, "backend"),
    ("bench-device", [*BENCH, "--device", "tpu"], 2, "--device"),
    ("bench-dtype", [*BENCH, "--dtype", "int8"], 2, "dtype"),
    ("bench-mode", [*BENCH, "--mode", "train"], 2, "--mode"),
    *[(f"bench-timeout={t}", [*BENCH, "--timeout", t], 2, "--timeout")
      for t in ["0", "-1", "nan", "inf"]],  # fmt: skip
    ("bench-timeout-abc", [*BENCH, "--timeout", "abc"], 2, "invalid float"),
    ("bench-baseline", [*BENCH, "--backends", "im2col", "--baseline", "torch"], 2, "--baseline"),
    ("bench-json-dir", [*BENCH, "--json", "{W}/d"], 2, "is a folder"),
    ("bench-json-missing-dir", [*BENCH, "--json", "{O}/no/r.json"], 2, "does not exist"),
    ("bench-csv-eq-json", [*BENCH, "--json", "{O}/r", "--csv", "{O}/r"], 2, "both name"),
    ("bench-plot-dir", [*BENCH, "--plot", "{O}"], 2, "is a folder"),
    # ---- info, train, test, top level ------------------------------------------------------
    ("info-bogus", ["info", "--bogus"], 2, "unrecognized"),
    ("no-command", [], 2, "required"),
    ("unknown-command", ["upscal"], 2, "invalid choice"),
    ("train-no-opt", ["train"], 2, "required"),
    ("train-opt-missing", ["train", "-opt", "{W}/nope.yml"], 2, "not found"),
    ("train-opt-dir", ["train", "-opt", "{W}/d"], 2, "is a folder"),
    ("train-opt-broken", ["train", "-opt", "{W}/cfg.yml"], 2, "not valid YAML"),
    ("train-opt-list", ["train", "-opt", "{W}/list.yml"], 2, "mapping"),
    ("train-opt-empty", ["train", "-opt", "{W}/empty.yml"], 2, "mapping"),
    ("train-opt-png", ["train", "-opt", "{W}/a.png"], 2, "not a text"),
    ("train-launcher", ["train", "-opt", "{W}/cfg.yml", "--launcher", "mpi"], 2,
     "invalid choice"),  # fmt: skip
    ("test-opt-missing", ["test", "-opt", "{W}/nope.yml"], 2, "not found"),
    ("test-opt-list", ["test", "-opt", "{W}/list.yml"], 2, "mapping"),
]
# fmt: on


def _argv(argv: list[str], W: Path, O: Path) -> list[str]:  # noqa: E741, N803
    return [a.replace("{W}", str(W)).replace("{O}", str(O)) for a in argv]


@pytest.mark.parametrize("argv, code, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_case(W, tmp_path, capsys, monkeypatch, argv, code, fragment):
    monkeypatch.chdir(tmp_path)
    O = tmp_path / "out"  # noqa: E741, N806
    O.mkdir()
    before = _digest(W)
    try:
        got = main(_argv(argv, W, O))
    except SystemExit as exc:  # argparse's usage errors
        got = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out, err
    errors = [line for line in err.splitlines() if not line.startswith("metasr: warning")]
    errors = [line for line in errors if not line.startswith("usage:") and line.startswith(
        ("metasr", "  ", "error"))] or errors  # fmt: skip
    assert got == code, err
    if code == 0:
        assert not [e for e in errors if "error" in e], err
    else:
        last = errors[-1] if errors else ""
        assert fragment is None or fragment in last, err
        assert len([e for e in errors if "error:" in e]) == 1, err
    assert _digest(W) == before, "an input changed or a file appeared among the inputs"
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    if code != 0:
        assert not written, written
    assert not [p for p in written if p.name.startswith(".")], written


# ---- the Python API ---------------------------------------------------------------------------


class _Phi64(torch.nn.Module):
    """A predictor returning float64 (issue 22 item 19: a raw conv2d dtype error before)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = metasr.Pos2Weight(2, 2)
        self.in_channels, self.out_channels, self.kernel_size = 2, 2, 3
        self.pos_encoding, self.num_pos = "asymmetric", 4

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return self.inner(pos).double()


def _times_1e3(a: np.ndarray, src, dst) -> np.ndarray:
    """A downscaler ×2 per axis whose float64 result (2.8e41) is beyond float32."""
    return np.repeat(np.repeat(a, 2, axis=-2), 2, axis=-1) * 1e3


def _api_cases(W: Path):
    from metasr import climate as mc
    from metasr.checkpoints import load_model
    from metasr.data.scales import build_scale_sampler
    from metasr.export import OnnxModel, export_onnx
    from metasr.io import atomic_write, read_raster, write_raster

    x = torch.rand(1, 2, 6, 6)
    phi = metasr.Pos2Weight(2, 2)
    tiny = metasr.create_model("meta_edsr", **KW)
    # fmt: off
    return {
        "create-unknown": (lambda: metasr.create_model("meta_unicorn"), ValueError),
        "create-n_feats-0": (lambda: metasr.create_model("meta_edsr", n_feats=0), ValueError),
        "create-n_feats-str": (lambda: metasr.create_model("meta_edsr", n_feats="8"),
                               (TypeError, ValueError)),  # fmt: skip
        "create-huge": (lambda: metasr.create_model("meta_edsr", n_feats=10**6), ValueError),
        "create-bad-kwarg": (lambda: metasr.create_model("meta_edsr", colour=1),
                             (TypeError, ValueError)),  # fmt: skip
        "p2w-hidden_layers": (lambda: metasr.Pos2Weight(3, 3, hidden_layers=10**6), ValueError),
        "p2w-hidden": (lambda: metasr.Pos2Weight(3, 3, hidden=10**8), ValueError),
        "p2w-kernel-str": (lambda: metasr.Pos2Weight(3, 3, kernel_size="three"),
                           (TypeError, ValueError)),  # fmt: skip
        "p2w-kernel-even": (lambda: metasr.Pos2Weight(3, 3, kernel_size=2), ValueError),
        "p2w-channels-0": (lambda: metasr.Pos2Weight(0, 3), ValueError),
        "p2w-activation": (lambda: metasr.Pos2Weight(3, 3, activation="tanhh"), ValueError),
        "mu-scale-0": (lambda: metasr.meta_upscale(x, phi, scale=0), ValueError),
        "mu-scale-nan": (lambda: metasr.meta_upscale(x, phi, scale=float("nan")), ValueError),
        "mu-scale-huge": (lambda: metasr.meta_upscale(x, phi, scale=1e9), ValueError),
        "mu-no-request": (lambda: metasr.meta_upscale(x, phi), ValueError),
        "mu-both": (lambda: metasr.meta_upscale(x, phi, scale=2, size=(12, 12)), ValueError),
        "mu-size-smaller": (lambda: metasr.meta_upscale(x, phi, size=(3, 3)), ValueError),
        "mu-3d-input": (lambda: metasr.meta_upscale(x[0], phi, scale=2), (TypeError, ValueError)),
        "mu-channels": (lambda: metasr.meta_upscale(torch.rand(1, 3, 6, 6), phi, scale=2),
                        ValueError),  # fmt: skip
        "mu-backend": (lambda: metasr.meta_upscale(x, phi, scale=2, backend="foo"), ValueError),
        "mu-phi-float64": (lambda: metasr.meta_upscale(x, _Phi64(), scale=2), TypeError),
        "rsize-huge": (lambda: metasr.resolve_output_size(8, 8, scale=1e9), ValueError),
        "rsize-bool": (lambda: metasr.resolve_output_size(8, 8, scale=True),
                       (TypeError, ValueError)),  # fmt: skip
        "read-missing": (lambda: read_raster(W / "nope.png"), FileNotFoundError),
        "read-text": (lambda: read_raster(W / "text.png"), ValueError),
        "read-empty": (lambda: read_raster(W / "empty.png"), ValueError),
        "read-object-npy": (lambda: read_raster(W / "obj.npy"), ValueError),
        "write-missing-folder": (
            lambda: write_raster(W / "no" / "o.png", read_raster(W / "a.png")), FileNotFoundError
        ),
        "atomic-missing-folder": (lambda: atomic_write(W / "no" / "x", lambda t: None),
                                  FileNotFoundError),  # fmt: skip
        "load-missing": (lambda: load_model(str(W / "nope.safetensors")),
                         (FileNotFoundError, ValueError)),  # fmt: skip
        "load-png": (lambda: load_model(str(W / "a.png")), ValueError),
        "load-fake-pth": (lambda: load_model(str(W / "fake.pth")), ValueError),
        "field-bad": (lambda: mc.read_field(W / "bad.nc", "t2m"), ValueError),
        "field-trunc": (lambda: mc.read_field(W / "trunc.nc", "t2m"), ValueError),
        "field-var": (lambda: mc.read_field(W / "f.nc", "tp"), ValueError),
        "field-radians": (lambda: mc.read_field(W / "rad.nc", "t2m"), ValueError),
        "field-max-pixels": (lambda: mc.read_field(W / "f.nc", "t2m", max_pixels=10), ValueError),
        "grid-0x0": (lambda: mc.resolve_grid("0x0"), ValueError),
        "grid-huge": (lambda: mc.resolve_grid("40000x80000"), ValueError),
        "grid-name": (lambda: mc.resolve_grid("era6"), ValueError),
        "grid-dir": (lambda: mc.resolve_grid(W / "dir.nc"), ValueError),
        "stats-std-0": (lambda: FieldStats(("t",), ("K",), (1.0,), (0.0,), ""), ValueError),
        "stats-json": (lambda: FieldStats.from_json("{"), ValueError),
        "sampler-p2": (lambda: build_scale_sampler({"type": "uniform", "p_symmetric": 2}),
                       ValueError),  # fmt: skip
        "sampler-pnan": (lambda: build_scale_sampler({"type": "grid", "p_symmetric": "x"}),
                         ValueError),  # fmt: skip
        "sampler-type": (lambda: build_scale_sampler({"type": "gaussian"}), ValueError),
        "export-input-0": (lambda: export_onnx(tiny, W / "no.onnx", (0, 0), scale=2), ValueError),
        "onnx-png": (lambda: OnnxModel(W / "a.png"), ValueError),
        "downscale-overflow": (
            lambda: mc.downscale(mc.read_field(W / "f.nc", "t2m") * 1e36, "16x32", _times_1e3),
            ValueError,
        ),
    }
    # fmt: on


API_NAMES = [
    "create-unknown", "create-n_feats-0", "create-n_feats-str", "create-huge", "create-bad-kwarg",
    "p2w-hidden_layers", "p2w-hidden", "p2w-kernel-str", "p2w-kernel-even", "p2w-channels-0",
    "p2w-activation", "mu-scale-0", "mu-scale-nan", "mu-scale-huge", "mu-no-request", "mu-both",
    "mu-size-smaller", "mu-3d-input", "mu-channels", "mu-backend", "mu-phi-float64",
    "rsize-huge", "rsize-bool", "read-missing", "read-text", "read-empty", "read-object-npy",
    "write-missing-folder", "atomic-missing-folder", "load-missing", "load-png", "load-fake-pth",
    "field-bad", "field-trunc", "field-var", "field-radians", "field-max-pixels", "grid-0x0",
    "grid-huge", "grid-name", "grid-dir", "stats-std-0", "stats-json", "sampler-p2",
    "sampler-pnan", "sampler-type", "export-input-0", "onnx-png", "downscale-overflow",
]  # fmt: skip


@pytest.mark.parametrize("name", API_NAMES)
def test_hostile_api_case(W, name):
    call, expected = _api_cases(W)[name]
    before = _digest(W)
    if expected is None:
        call()
    else:
        with pytest.raises(expected) as info:
            call()
        text = str(info.value)
        assert text and "\n" not in text.strip() and "weights_only=False" not in text, text
    assert _digest(W) == before


def test_there_are_at_least_200_cases(W):
    assert len(CASES) + len(API_NAMES) >= 200, len(CASES)
    assert len({c[0] for c in CASES}) == len(CASES)
    assert sorted(API_NAMES) == sorted(_api_cases(W))
