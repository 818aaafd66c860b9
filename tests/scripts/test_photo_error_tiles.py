"""scripts/photo_error_tiles.py: where a model's excess error over bicubic lies."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metasr.archs import create_model
from metasr.checkpoints import save_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location(
        "photo_error_tiles", ROOT / "scripts" / "photo_error_tiles.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_excess_in_one_tile_is_found_and_holds_the_whole_share():
    tiles = _script()
    hr = torch.zeros(128, 192, dtype=torch.float64)
    bicubic = hr + 1.0  # error 1 everywhere
    model = hr.clone()  # error 0 everywhere (the model wins) ...
    model[64:128, 128:192] = 4.0  # ... but 16 in one tile
    r = tiles.tile_report(hr, model, bicubic, tile=64, top=2)
    assert r.mse_bicubic == pytest.approx(1.0)
    assert r.mse_model == pytest.approx(16.0 / 6)
    assert r.worst_tiles[0] == (64, 128, pytest.approx(15.0))
    assert r.worst_tiles[1][2] == pytest.approx(-1.0)
    assert r.worst_share == pytest.approx(1.0)  # tiles where the model wins do not count
    # All pixels are flat in the HR: one gradient class holds them.
    assert r.gradient_classes[0]["fraction"] == 1.0
    assert r.gradient_classes[-1]["hi"] is None and r.gradient_classes[-1]["mse_model"] is None


def test_excess_spread_evenly_has_a_small_share_and_gradient_classes_split_errors():
    tiles = _script()
    g = torch.Generator().manual_seed(0)
    hr = torch.zeros(256, 256, dtype=torch.float64)
    hr[:, 128:] = 100.0  # one vertical edge
    model = hr + torch.randn(256, 256, generator=g, dtype=torch.float64)
    r = tiles.tile_report(hr, model, hr.clone(), tile=32)
    assert r.mse_bicubic == 0.0
    assert 0.05 <= r.worst_share < 0.1  # 64 tiles: the worst 3 hold little more than 3/64
    flat, *_, edge = r.gradient_classes
    assert edge["fraction"] == pytest.approx(1 / 255)  # the edge column of the 255 compared
    assert flat["mse_model"] == pytest.approx(1.0, rel=0.05)


def test_bad_shapes_are_refused():
    tiles = _script()
    a = torch.zeros(64, 64)
    with pytest.raises(ValueError, match="one shape"):
        tiles.tile_report(a, a, torch.zeros(64, 65))
    with pytest.raises(ValueError, match="no 128x128 tile"):
        tiles.tile_report(a, a, a, tile=128)


def _photo(path: Path) -> Path:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:150, 0:200]
    img = 120 + 60 * np.sin(x / 7.0)[..., None] * np.cos(y / 11.0)[..., None]
    img = img + rng.normal(0, 3, (150, 200, 3))
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)
    return path


def test_main_reports_writes_png_and_json(tmp_path, capsys):
    tiles = _script()
    photo = _photo(tmp_path / "p.png")
    kwargs = {"n_resblocks": 1, "n_feats": 8, "hidden": 16, "img_range": 1.0}
    kwargs["bicubic_residual"] = True
    torch.manual_seed(0)
    model = tmp_path / "m.safetensors"
    save_checkpoint(model, create_model("meta_edsr", **kwargs), "meta_edsr", kwargs)
    out_png, out_json = tmp_path / "w.png", tmp_path / "r.json"
    args = [str(photo), "--scale", "1.5x4", "--model", str(model), "--tile", "16"]
    assert tiles.main([*args, "--png", str(out_png), "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "worst 5 % of tiles hold" in text and "| HR gradient" in text
    report = json.loads(out_json.read_text())
    assert math.isfinite(report["mse_model"]) and report["mse_bicubic"] > 0
    # HR | model | bicubic, each at most 192 square, enlarged 2x: the shaved output is 146 x 192
    # (150 rows less ceil(1.5) on each side; 50 LR columns x 4 less 4 on each side).
    with Image.open(out_png) as im:
        assert im.size == (2 * 3 * 192, 2 * 146)
    assert report["worst_tiles"][0][0] % 16 == 0


def test_main_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    tiles = _script()
    photo = _photo(tmp_path / "p.png")
    assert tiles.main([str(photo), "--scale", "zero"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert tiles.main([str(tmp_path / "missing.png"), "--scale", "2"]) == 2
    assert capsys.readouterr().err.startswith("error:")
