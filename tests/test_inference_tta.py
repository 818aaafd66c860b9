"""Test-time self-ensemble (``metasr.inference.self_ensemble``, ``tta=``, ``--tta``).

What can be checked exactly: shapes and the transposed requests each transform sends; that a
model equivariant by construction (MATLAB bicubic with the nominal factor, the stand-in for the
grid convention the networks learn; a network reduced to its ``F.interpolate`` residual) gives
back its plain output; that a flip on an axis where ``h·r`` is fractional moves that grid, and
is left out; tiled == whole; the CLI flags; refusals.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import metasr
from metasr.checkpoints import LoadedModel, network_value_range, save_checkpoint
from metasr.cli import main
from metasr.data.resize import imresize
from metasr.evaluate import evaluate
from metasr.geometry import UpscaleRequest, parse_scale, resolve_output_size
from metasr.inference import (
    DIHEDRAL,
    Dihedral,
    self_ensemble,
    tta_count,
    tta_transforms,
    upscale_array,
    upscale_raster,
)
from metasr.io import Raster

PIL = pytest.importorskip("PIL", reason="the CLI test writes a PNG")
from PIL import Image  # noqa: E402


def _tiny(zero_head: bool = False) -> LoadedModel:
    """A small random Meta-EDSR with the bicubic residual; ``zero_head``: the residual alone."""
    torch.manual_seed(0)
    kwargs = {"n_resblocks": 1, "n_feats": 8, "img_range": 1.0, "bicubic_residual": True}
    model = metasr.create_model("meta_edsr", **kwargs).eval()
    with torch.no_grad():
        last = model.pos2weight.meta_block[2]
        if zero_head:  # every per-pixel weight is zero: the output is F.interpolate's bicubic
            last.weight.zero_()
            last.bias.zero_()
        else:  # undo the ×0.1 start, so that the head visibly changes the picture
            last.weight.mul_(10)
    return LoadedModel(model, "tiny", "meta_edsr", kwargs, 3, 3, network_value_range(model))


def _matlab_bicubic(x: torch.Tensor, scale: object, size: object) -> torch.Tensor:
    """MATLAB bicubic with the nominal factor ``r``: output ``i`` samples ``(i + 0.5)/r − 0.5``.

    The networks learn this grid (their LR images are made this way), so it is the exact
    stand-in for what a flip does to their output grid.
    """
    H, W, r_v, r_h = resolve_output_size(
        x.shape[-2], x.shape[-1], scale=scale if size is None else None, size=size
    )
    if scale is not None:
        r_v, r_h = parse_scale(scale)
    return imresize(x, scale=(r_v, r_h), size=(H, W))


def _data(c: int = 3, h: int = 14, w: int = 19, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).random((c, h, w)).astype(np.float32)


# ------------------------------------------------------------------------- transforms, shapes


def test_dihedral_is_the_group_of_eight_and_invert_undoes_apply():
    x = torch.arange(2 * 3 * 5, dtype=torch.float64).reshape(1, 2, 3, 5)
    images = {tuple(t.apply(x).flatten().tolist()) for t in DIHEDRAL}
    assert len(DIHEDRAL) == 8 and len(images) == 8  # eight distinct images of a 3×5 array
    assert DIHEDRAL[0] == Dihedral()
    for t in DIHEDRAL:
        assert t.apply(x).shape[-2:] == ((5, 3) if t.transpose else (3, 5))
        torch.testing.assert_close(t.invert(t.apply(x)), x, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("scale", "size"), [(2.0, None), ((3.5, 2.0), None), (None, (31, 45)), ((1.5, 4.0), None)]
)
def test_each_transform_gets_the_transposed_request(scale, size):
    """A transposed input is ``(w, h)`` and gets ``(r_h, r_v)`` / ``(W, H)``."""
    h, w = 9, 11
    x = torch.rand(1, 3, h, w, dtype=torch.float64)
    calls = []

    def run(xt, s, z):
        calls.append((tuple(xt.shape[-2:]), s, z))
        return _matlab_bicubic(xt, s, z)

    y = self_ensemble(run, x, scale, size, DIHEDRAL)
    H, W, _, _ = resolve_output_size(h, w, scale=scale, size=size)
    assert y.shape == (1, 3, H, W) and y.dtype == torch.float64
    assert len(calls) == 8
    for t, (shape, s, z) in zip(DIHEDRAL, calls, strict=True):
        if not t.transpose:
            assert (shape, s, z) == ((h, w), scale, size)
        else:
            assert shape == (w, h)
            want_s = None if scale is None else tuple(reversed(parse_scale(scale)))
            want_z = None if size is None else (size[1], size[0])
            assert (s, z) == (want_s, want_z)


@pytest.mark.parametrize("tta", [True, 2, 4, 8])
@pytest.mark.parametrize(
    ("scale", "size"), [(2, None), ((2.5, 1.5), None), ((1.5, 3.0), None), (None, (23, 41))]
)
def test_shapes_match_the_plain_output(tta, scale, size):
    loaded = _tiny()
    data = _data()
    plain = upscale_array(loaded, data, UpscaleRequest(scale=scale, size=size))
    got = upscale_array(loaded, data, UpscaleRequest(scale=scale, size=size), tta=tta)
    assert got.shape == plain.shape and got.dtype == np.float32
    assert np.isfinite(got).all()
    if len(tta_transforms(tta, 14, 19, scale, size)) > 1:  # 19 × 2.5 keeps no column flip
        assert np.abs(got - plain).max() > 1e-4  # a random network is not equivariant
    else:
        np.testing.assert_array_equal(got, plain)


def test_which_transforms_are_grid_exact():
    # 14 rows × 2.5 = 35 (whole), 19 columns × 2.5 = 47.5: flips of the columns move the grid.
    assert tta_transforms(True, 14, 19, 2.5) == [t for t in DIHEDRAL if not t.flip_cols]
    assert tta_transforms(8, 14, 19, (2.5, 2.0)) == list(DIHEDRAL)
    assert tta_transforms(4, 14, 19, 2.0) == list(DIHEDRAL[:4])
    assert tta_transforms(2, 14, 19, 2.0) == list(DIHEDRAL[:2])
    assert tta_transforms(False, 14, 19, 2.0) == [Dihedral()]
    # A size request sets r = H/h, so every flip is exact; 30 rows at ×1.1 are 33 exactly.
    assert tta_transforms(8, 14, 19, size=(37, 50)) == list(DIHEDRAL)
    assert tta_transforms(8, 30, 30, 1.1) == list(DIHEDRAL)
    # The evaluator gives both: the scale sets r, the size H.
    assert len(tta_transforms(8, 85, 10, (3.5, 2.0), (297, 20))) == 4


# --------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize(
    ("h", "w", "scale"), [(12, 17, 2), (12, 17, 3), (12, 18, (4.0, 1.5)), (10, 16, (1.5, 2.5))]
)
def test_equivariant_model_gives_its_plain_output_where_flips_keep_the_grid(h, w, scale):
    """h·r_v and w·r_h are whole here: the 8 terms estimate the same pixels exactly."""
    x = torch.rand(1, 3, h, w, dtype=torch.float64)
    plain = _matlab_bicubic(x, scale, None)
    got = self_ensemble(_matlab_bicubic, x, scale, None, DIHEDRAL)
    torch.testing.assert_close(got, plain, rtol=0, atol=1e-12)


def test_a_flip_where_h_r_is_fractional_moves_the_grid_and_is_left_out():
    """85 rows at ×3.5 give 297 (not 297.5): a vertical flip moves the grid by half a row."""
    x = torch.rand(1, 3, 85, 10, dtype=torch.float64)
    scale = (3.5, 2.0)
    plain = _matlab_bicubic(x, scale, None)
    vflip = DIHEDRAL[2]
    moved = vflip.invert(_matlab_bicubic(vflip.apply(x), scale, None))
    assert (moved - plain).abs().max() > 1e-3
    exact = self_ensemble(_matlab_bicubic, x, scale, None, True)
    torch.testing.assert_close(exact, plain, rtol=0, atol=1e-12)
    everything = self_ensemble(_matlab_bicubic, x, scale, None, DIHEDRAL)
    assert (everything - plain).abs().max() > 1e-4


@pytest.mark.parametrize(("scale", "size"), [((2.7, 1.9), None), (3, None), (None, (29, 33))])
@pytest.mark.parametrize("tile", [0, 6])
def test_network_reduced_to_its_bicubic_residual_is_unchanged_by_tta(scale, size, tile):
    """``F.interpolate`` samples ``(i + 0.5)·h/H − 0.5``: symmetric under every transform."""
    loaded = _tiny(zero_head=True)
    data = _data()
    plain = upscale_array(loaded, data, UpscaleRequest(scale=scale, size=size))
    got = upscale_array(loaded, data, UpscaleRequest(scale=scale, size=size), tile=tile, tta=True)
    np.testing.assert_allclose(got, plain, rtol=0, atol=2e-6)


def test_tiled_tta_equals_whole_tta_for_the_default_model():
    loaded = metasr.checkpoints.load_model("default")
    data = _data(h=30, w=37, seed=5)
    for scale in ((2.5, 1.5), 3):
        whole = upscale_array(loaded, data, UpscaleRequest(scale=scale), tta=True)
        tiled = upscale_array(loaded, data, UpscaleRequest(scale=scale), tta=True, tile=12)
        # The tiling tolerance of tests/test_tiling.py (tiled == whole within 1e-4).
        np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-4)
        assert np.abs(whole - upscale_array(loaded, data, UpscaleRequest(scale=scale))).max() > 1e-3


def test_raster_and_minmax_fields_pass_tta_through():
    loaded = _tiny()
    field = (_data(1) * 50 + 270).astype(np.float64)
    raster = Raster(field, kind="field", dtype=np.dtype(np.float64))
    got = upscale_raster(loaded, raster, UpscaleRequest(scale=2), normalize="minmax", tta=4)
    lo, span = field.min(), field.max() - field.min()
    want = upscale_array(loaded, (field - lo) / span, UpscaleRequest(scale=2), tta=4) * span + lo
    np.testing.assert_allclose(got.data, want, rtol=1e-6)


def test_evaluate_scores_the_ensemble():
    hr = torch.rand(3, 24, 30, dtype=torch.float64)
    rows = evaluate("bicubic", [hr], ["2", "3.5x2"], tta=True, metric_names=("psnr",))
    plain = evaluate("bicubic", [hr], ["2", "3.5x2"], metric_names=("psnr",))
    # MATLAB bicubic is equivariant where the grid is kept, and tta keeps only those flips.
    for a, b in zip(rows, plain, strict=True):
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-9)


# ---------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("bad", [3, 0, -1, 16, 2.0, "yes", None, [8]])
def test_bad_tta_values_are_refused(bad):
    loaded = _tiny()
    with pytest.raises(ValueError, match="tta must be"):
        tta_count(bad)
    with pytest.raises(ValueError, match="tta must be"):
        upscale_array(loaded, _data(), UpscaleRequest(scale=2), tta=bad)
    raster = Raster((_data() * 255).astype(np.uint8), kind="image", dtype=np.dtype(np.uint8))
    with pytest.raises(ValueError, match="tta must be"):
        upscale_raster(loaded, raster, UpscaleRequest(scale=2), tta=bad)
    with pytest.raises(ValueError, match="tta must be"):
        evaluate("bicubic", [torch.rand(3, 12, 12)], ["2"], tta=bad)


def test_bad_transforms_and_runs_are_refused():
    x = torch.rand(1, 3, 6, 7)
    with pytest.raises(ValueError, match="transforms must be"):
        self_ensemble(_matlab_bicubic, x, 2, None, [])
    with pytest.raises(ValueError, match="transforms must be"):
        self_ensemble(_matlab_bicubic, x, 2, None, ["hflip"])

    def ignores_the_request(xt, s, z):  # answers with the untransposed shape
        return torch.zeros(1, 3, 12, 14)

    with pytest.raises(ValueError, match="honour the transformed request"):
        self_ensemble(ignores_the_request, x, 2, None, DIHEDRAL)
    with pytest.raises(ValueError, match="scale"):
        self_ensemble(_matlab_bicubic, x, None, None, 8)


# ----------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    loaded = _tiny()
    save_checkpoint(path, loaded.model, "meta_edsr", loaded.kwargs)
    return path


def test_cli_upscale_tta(tmp_path, ckpt, capsys):
    pixels = (np.random.default_rng(0).random((11, 13, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    outs = {}
    for name, extra in (("plain", []), ("tta", ["--tta"])):
        code = main(
            ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / f"{name}.png"),
             "--scale", "2.5x2", "--model", str(ckpt), "-q", *extra]
        )  # fmt: skip
        assert code == 0, capsys.readouterr().err
        outs[name] = np.asarray(Image.open(tmp_path / f"{name}.png")).astype(int)
    want = upscale_array(
        _tiny(), pixels.transpose(2, 0, 1) / 255.0, UpscaleRequest(scale=(2.5, 2)), tta=True
    )
    want = np.clip(np.round(want * 255), 0, 255).astype(int).transpose(1, 2, 0)
    assert outs["tta"].shape == (27, 26, 3)
    assert np.abs(outs["tta"] - want).max() <= 1  # 8-bit rounding of float32 sums
    assert np.abs(outs["tta"] - outs["plain"]).max() > 2


def test_cli_eval_tta(tmp_path, capsys):
    from tools.samples import make_synthetic_images

    make_synthetic_images(tmp_path / "hr", n=1, size=(26, 30), seed=4)
    results = {}
    for name, extra in (("plain", []), ("tta", ["--tta"])):
        code = main(
            ["eval", "--model", "default", "--data", str(tmp_path / "hr"), "--scales", "2",
             "--json", str(tmp_path / f"{name}.json"), *extra]
        )  # fmt: skip
        assert code == 0, capsys.readouterr().err
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())["results"][0]
    assert "self-ensemble" in capsys.readouterr().out
    assert results["tta"]["psnr"] != pytest.approx(results["plain"]["psnr"], abs=1e-6)
