"""scripts/model_displacement.py: the sub-pixel displacement of a smooth blob."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from metasr.evaluate import as_upscaler

BICUBIC = as_upscaler("bicubic").fn

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location(
        "model_displacement", ROOT / "scripts" / "model_displacement.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("scale", [(2.0, 2.0), (1.5, 4.0), (3.5, 2.0)])
def test_bicubic_puts_the_blob_back_and_a_known_shift_is_measured(scale):
    m = _script()
    for dy, dx in m.displacement(BICUBIC, scale):
        assert abs(dy) < 0.01 and abs(dx) < 0.01

    def down_one_row_left_one(lq, s, size):
        return torch.roll(BICUBIC(lq, s, size), shifts=(1, -1), dims=(-2, -1))

    # Within 2 % of the shift: the fixed window cuts a little more of a blob moved off its
    # centre (the displacements of interest are tenths of a pixel, where that is < 0.002).
    for dy, dx in m.displacement(down_one_row_left_one, scale):
        assert dy == pytest.approx(1.0, rel=0.02) and dx == pytest.approx(-1.0, rel=0.02)


def test_centroid_ignores_a_uniform_bias():
    m = _script()
    img = m.blob(40.3)[0]
    y, x = m.centroid(img + 0.1, 40.3)
    assert y == pytest.approx(40.3, abs=0.01) and x == pytest.approx(40.3, abs=0.01)


def test_wrong_output_size_is_refused():
    m = _script()
    with pytest.raises(ValueError, match="the model gave"):
        m.displacement(lambda lq, s, z: BICUBIC(lq, s, z)[..., :-1, :], (2.0, 2.0))


def test_main_prints_a_table_and_refuses_a_bad_scale(tmp_path, capsys):
    from metasr.archs import create_model
    from metasr.checkpoints import save_checkpoint

    m = _script()
    kwargs = {"n_resblocks": 1, "n_feats": 8, "hidden": 16, "img_range": 1.0}
    kwargs["bicubic_residual"] = True
    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, create_model("meta_edsr", **kwargs), "meta_edsr", kwargs)
    assert m.main(["--model", str(path), "--scales", "2", "1.5x4"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert lines[0] == f"| scale | bicubic | {path} |" and len(lines) == 3  # header, 2 scales
    assert m.main(["--model", str(path), "--scales", "zero"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


@pytest.mark.parametrize("scale", [(3.5, 2.0), (2.3, 2.7)])
def test_a_silent_head_puts_the_blob_where_bicubic_does(scale):
    """The bicubic residual samples where the head puts each row: with the head silenced, a
    network is its bicubic term, and that must not move the blob even where the output size is
    rounded down (96 / 3.5 = 27 LR rows, 94 HR rows, not 94.5). Sampling at the sizes' ratio
    instead (F.interpolate to the rounded size) moved it by 0.2 pixel here."""
    from metasr.archs import create_model

    m = _script()
    net = create_model(
        "meta_edsr", n_resblocks=1, n_feats=8, hidden=16, img_range=1.0, bicubic_residual=True
    ).eval()
    with torch.no_grad():
        net.pos2weight.meta_block[2].weight.zero_()
        net.pos2weight.meta_block[2].bias.zero_()
    for dy, dx in m.displacement(lambda lq, s, z: net(lq, scale=s).detach(), scale):
        assert abs(dy) < 0.01 and abs(dx) < 0.01
