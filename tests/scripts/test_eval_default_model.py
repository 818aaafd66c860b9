"""scripts/eval_default_model.py: whole images of a folder, a baseline, SSIM and --tta columns;
the bundled model names."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from metasr.archs import create_model
from metasr.checkpoints import load_model, save_checkpoint
from metasr.evaluate import evaluate
from metasr.weights import BUNDLED, bundled_checkpoint
from tools.samples import make_synthetic_images

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location(
        "eval_default_model", ROOT / "scripts" / "eval_default_model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    kwargs = {"n_resblocks": 1, "n_feats": 8, "hidden": 16, "img_range": 1.0}
    kwargs["bicubic_residual"] = True
    save_checkpoint(path, create_model("meta_edsr", **kwargs), "meta_edsr", kwargs)
    return path


def test_comparison_columns(tmp_path, capsys):
    data = tmp_path / "val"
    make_synthetic_images(data, n=2, size=(36, 44), seed=3)
    model, base = _tiny(tmp_path / "a.safetensors", 0), _tiny(tmp_path / "b.safetensors", 1)
    out = tmp_path / "r.json"
    argv = ["--model", str(model), "--data", str(data), "--baseline", str(base), "--ssim"]
    argv += ["--tta", "--repeat", "0", "--scales", "2", "1.5x3", "--json", str(out)]
    assert _script().main(argv) == 0
    printed = capsys.readouterr().out
    assert "| scale | bicubic |" in printed and "(baseline)" in printed and "--tta |" in printed
    assert "| ×1.5x3 |" in printed and "model − baseline" in printed
    result = json.loads(out.read_text())
    methods = result["methods"]
    assert list(methods) == ["bicubic", "baseline", "model", "tta"]
    assert "tta" not in result  # --repeat 0: no timing table
    # Every column is what the one evaluator gives for that method.
    script = _script()
    photos, names = script.load_folder(data)
    upscaler = script.model_upscaler(load_model(str(base)))
    rows = evaluate(upscaler, photos, ["1.5x3"], bicubic=True, names=names)
    mean_psnr = sum(r["psnr"] for r in rows) / len(rows)
    mean_ssim = sum(r["ssim"] for r in rows) / len(rows)
    mean_bic = sum(r["bicubic_psnr"] for r in rows) / len(rows)
    assert methods["baseline"]["1.5x3"]["psnr"] == pytest.approx(mean_psnr, abs=1e-6)
    assert methods["baseline"]["1.5x3"]["ssim"] == pytest.approx(mean_ssim, abs=1e-6)
    assert methods["bicubic"]["1.5x3"]["psnr"] == pytest.approx(mean_bic, abs=1e-6)
    for key in methods:
        for cell in methods[key].values():
            assert 0 < cell["ssim"] <= 1 and cell["psnr"] > 5
    # Different networks, different numbers (the columns are not copies of one another).
    assert methods["model"]["2"]["psnr"] != methods["baseline"]["2"]["psnr"]
    assert methods["tta"]["2"]["psnr"] != methods["model"]["2"]["psnr"]


def test_bundled_names_resolve():
    assert set(BUNDLED) >= {"default", "default-v1"}
    old = load_model("default-v1")
    new = load_model("default")
    assert old.name == "default-v1" and new.name == "default"
    # The first default model (6 blocks of 32 features) stays loadable under its own file; the
    # default is the photo model of issue 13 (12 × 48), docs/benchmarks.md.
    assert old.kwargs["n_resblocks"] == 6 and old.kwargs["n_feats"] == 32
    assert new.kwargs["n_resblocks"] == 12 and new.kwargs["n_feats"] == 48
    assert bundled_checkpoint("default") != bundled_checkpoint("default-v1")
    for name in BUNDLED:
        assert bundled_checkpoint(name).stat().st_size <= 20 * 2**20
    with pytest.raises(ValueError, match="no bundled model"):
        bundled_checkpoint("default-v0")
