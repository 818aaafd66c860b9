"""The one evaluator (``metasr.evaluate``) and ``metasr eval``: LR sizing, 8-bit rounding, border
shave, asymmetric scales and LR sizes, the bicubic baseline, and ``--backend`` reaching every head.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import metasr
from metasr import checkpoints, metrics
from metasr.checkpoints import set_backend
from metasr.cli import main
from metasr.data import ArbitraryScaleTestDataset, bicubic_pair, imresize, lq_size_for
from metasr.evaluate import LQSize, as_upscaler, evaluate, score, summarize

meta_upscale_pkg = importlib.import_module("metasr.ops.meta_upscale.planning")  # where chosen

pytest.importorskip("PIL")


def _hr(c: int = 3, h: int = 33, w: int = 40, seed: int = 0) -> torch.Tensor:
    """A smooth-ish random image in 0..1 at 8-bit levels, ``(c, h, w)`` float32."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(c, h // 3 + 2, w // 3 + 2, generator=g, dtype=torch.float64)
    x = torch.nn.functional.interpolate(x[None], size=(h, w), mode="bilinear")[0]
    return metrics.quantize_8bit(x).float()


# -- LR sizing -------------------------------------------------------------------------------


def test_lr_sizing_is_the_guarded_floor_everywhere(tmp_path):
    # 33 / 1.1 is 29.999999999999996 in floating point: int(33 // 1.1) gives 29 rows, the
    # guarded floor of metasr.geometry 30 (and 30 · 1.1 = 33 rows back, the whole image).
    assert int(33 // 1.1) == 29
    assert lq_size_for(33, 33, (1.1, 1.1)) == (30, 30, 33, 33)
    hr = _hr(h=33, w=33)
    lq, gt = bicubic_pair(hr, (1.1, 1.1))
    assert lq.shape == (3, 30, 30) and gt.shape == (3, 33, 33)
    seen = []

    def spy(lq, scale, size):
        seen.append((tuple(lq.shape), size))
        return imresize(lq, scale=scale, size=size)

    evaluate(spy, [hr], [1.1])
    assert seen == [((1, 3, 30, 30), (33, 33))]
    # The test dataset (metasr test, BasicSR validation) cuts the same LR from the same file.
    from metasr.data import write_image

    write_image(tmp_path / "a.png", hr)
    item = ArbitraryScaleTestDataset(dataroot_gt=str(tmp_path), scales=[1.1])[0]
    assert item["lq"].shape == (3, 30, 30) and item["gt"].shape == (3, 33, 33)
    torch.testing.assert_close(item["lq"], metrics.quantize_8bit(lq), rtol=0, atol=0)


# -- quantisation ----------------------------------------------------------------------------


def test_quantize_8bit():
    x = torch.tensor([-0.2, 0.0, 0.3, 0.5 / 255, 1.5 / 255, 254.4 / 255, 1.0, 1.7])
    q = metrics.quantize_8bit(x)
    codes = q * 255
    torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-4)
    # clamp, then round half to even (0.5 → 0, 1.5 → 2), as torch.round
    assert (codes.round().tolist()) == [0, 0, 76, 0, 2, 254, 255, 255]
    assert q.dtype == x.dtype and metrics.quantize_8bit(x.double()).dtype == torch.float64


def test_model_output_and_lr_are_rounded_to_8_bits_for_images_only():
    hr = _hr(h=30, w=36)
    offset = 0.4 / 255  # below half a code: vanishes in the 8-bit output
    outputs = []

    def fn(lq, scale, size):
        outputs.append(lq)
        return metrics.quantize_8bit(imresize(lq, scale=scale, size=size)) + offset

    rows = evaluate(fn, [hr], [2], bicubic=True)
    (row,) = rows
    assert torch.equal(outputs[0], metrics.quantize_8bit(outputs[0]))
    assert row["psnr"] == row["bicubic_psnr"] and row["ssim"] == row["bicubic_ssim"]
    # Fields are not rounded: the offset (and the rounding in fn) change the score.
    field = hr[:1] * 40.0 - 10.0
    outputs.clear()
    (frow,) = evaluate(fn, [field], [2], kind="array", bicubic=True)
    assert not torch.equal(outputs[0], metrics.quantize_8bit(outputs[0]))
    assert frow["psnr"] != frow["bicubic_psnr"]


# -- border shave, asymmetric scales, sizes -------------------------------------------------


@pytest.mark.parametrize("scale", [(2.0, 2.0), (1.5, 4.0), (3.5, 2.0), (2.3, 2.3)])
def test_border_shave_is_ceil_r_per_axis(scale):
    hr = _hr(h=45, w=52)
    bv, bh = math.ceil(scale[0]), math.ceil(scale[1])

    def perfect_but_border(rows: int, cols: int):
        def fn(lq, s, size):
            out = hr[None, :, : size[0], : size[1]].clone()
            out[..., :rows, :] = 0
            out[..., :, size[1] - cols :] = 1
            return out

        return fn

    inside = evaluate(perfect_but_border(bv, bh), [hr], [scale])[0]
    assert inside["psnr"] == math.inf and inside["ssim"] == pytest.approx(1.0)
    assert (inside["r_v"], inside["r_h"]) == scale
    assert evaluate(perfect_but_border(bv + 1, 0), [hr], [scale])[0]["psnr"] < 100
    assert evaluate(perfect_but_border(0, bh + 1), [hr], [scale])[0]["psnr"] < 100


def test_lq_size_setting():
    hr = _hr(h=37, w=50)
    seen = []

    def fn(lq, scale, size):
        seen.append((tuple(lq.shape[-2:]), scale, size))
        return imresize(lq, scale=scale, size=size)

    (row,) = evaluate(fn, [hr], [LQSize(8, 10)])
    assert seen == [((8, 10), (37 / 8, 5.0), (37, 50))]
    assert row["scale"] == "lq8x10" and math.isfinite(row["psnr"])
    with pytest.raises(ValueError):
        evaluate(fn, [hr], [LQSize(40, 10)])


# -- bicubic baseline against the metrics module ----------------------------------------------


@pytest.mark.parametrize("scale", [(2.0, 2.0), (1.5, 4.0), (3.3, 2.7)])
def test_bicubic_baseline_equals_metrics_module(scale):
    hr = _hr(h=47, w=61, seed=3).double()
    h, w, H, W = lq_size_for(47, 61, scale)
    gt = hr[:, :H, :W]
    lq = metrics.quantize_8bit(imresize(gt, scale=(1 / scale[0], 1 / scale[1]), size=(h, w)))
    bic = metrics.quantize_8bit(imresize(lq, scale=scale, size=(H, W)))
    want_psnr = float(metrics.psnr(bic, gt, scale=scale)[0])
    want_ssim = float(metrics.ssim(bic, gt, scale=scale)[0])
    (row,) = evaluate("bicubic", [hr], [scale], bicubic=True)
    assert row["bicubic_psnr"] == want_psnr and row["bicubic_ssim"] == want_ssim
    assert row["psnr"] == want_psnr and row["ssim"] == want_ssim


def test_field_scores_raw_values():
    field = _hr(c=1, h=40, w=44).double() * 300.0 + 200.0  # kelvin-like, far from 0..1
    (row,) = evaluate("bicubic", [field], [(2.0, 2.5)], kind="array")
    lq, gt = bicubic_pair(field, (2.0, 2.5))
    sr = imresize(lq, scale=(2.0, 2.5), size=tuple(gt.shape[-2:]))
    assert row["psnr"] == float(metrics.psnr(sr, gt, scale=(2.0, 2.5), data_range="gt")[0])


def test_score_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="does not match the HR"):
        score(torch.zeros(3, 20, 20), torch.zeros(3, 20, 21), (2.0, 2.0))


# -- the per-scale table -----------------------------------------------------------------------


def test_summarize():
    rows = [
        {"scale": "2", "image": "a", "psnr": 30.0, "bicubic_psnr": 29.0},
        {"scale": "1.5x4", "image": "a", "psnr": 20.0, "bicubic_psnr": 22.0},
        {"scale": "2", "image": "b", "psnr": 32.0, "bicubic_psnr": 30.0},
    ]
    table = summarize(rows)
    assert [r["scale"] for r in table] == ["2", "1.5x4", "mean"]
    assert table[0] == {
        "scale": "2",
        "images": 2,
        "psnr": 31.0,
        "bicubic_psnr": 29.5,
        "delta_psnr": 1.5,
    }
    assert table[2]["images"] == 3 and table[2]["psnr"] == 25.5  # scales weigh equally
    assert table[2]["delta_psnr"] == pytest.approx(-0.25)


def test_as_upscaler_scales_by_input_range():
    net = metasr.create_model(
        "meta_edsr", n_resblocks=1, n_feats=8, upsample={"hidden": 16}, img_range=255.0
    )
    net.eval()
    lq = _hr(h=10, w=12)[None]
    got = as_upscaler(net).fn(lq, (2.0, 2.0), (20, 24))
    with torch.no_grad():
        want = net(lq * 255.0, scale=(2.0, 2.0)) / 255.0
    torch.testing.assert_close(got, want)


# -- metasr eval --backend reaches every head ------------------------------------------------

_NETS = {
    "meta_edsr": dict(n_resblocks=1, n_feats=8, upsample={"hidden": 16}),
    "meta_rdn": dict(G0=8, D=2, C=2, G=4, upsample={"hidden": 16}),
    "meta_swinir": dict(
        img_size=16,
        embed_dim=8,
        depths=(2,),
        num_heads=(2,),
        window_size=4,
        upsample={"hidden": 16},
    ),
}


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory) -> Path:
    from tools.samples import make_synthetic_images

    root = tmp_path_factory.mktemp("eval")
    make_synthetic_images(root / "hr", n=2, size=(26, 30), seed=4)
    for arch, kwargs in _NETS.items():
        torch.manual_seed(0)
        plain = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
        net = metasr.create_model(arch, **kwargs)
        checkpoints.save_checkpoint(root / f"{arch}.safetensors", net, arch, plain)
    # A BasicSR checkpoint as MetaSRModel writes it (network options inside).
    torch.manual_seed(0)
    rdn = metasr.archs.MetaRDN(**_NETS["meta_rdn"])
    torch.save(
        {"params": rdn.state_dict(), "metasr_network": {"type": "MetaRDN", **_NETS["meta_rdn"]}},
        root / "net_g_latest.pth",
    )
    return root


@pytest.fixture
def backend_spy(monkeypatch) -> list[tuple[str | None, str]]:
    """Record ``(requested, chosen)`` for every Meta-Upscale call."""
    calls: list[tuple[str | None, str]] = []
    real = meta_upscale_pkg.select_backend

    def spy(backend, *args, **kwargs):
        chosen = real(backend, *args, **kwargs)
        calls.append((backend, chosen.name))
        return chosen

    monkeypatch.setattr(meta_upscale_pkg, "select_backend", spy)
    return calls


def _run(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "model", ["default", "meta_edsr.safetensors", "meta_rdn.safetensors", "meta_swinir.safetensors",
              "net_g_latest.pth"],
)  # fmt: skip
def test_eval_backend_reaches_every_head(eval_dir, backend_spy, capsys, model):
    spec = model if model == "default" else str(eval_dir / model)
    code, out, err = _run(
        capsys, "eval", "--model", spec, "--data", eval_dir / "hr", "--scales", "2,1.5x2",
        "--backend", "im2col",
    )  # fmt: skip
    assert code == 0, err
    assert re.search(r"^\s*1\.5x2\s+2\s+\d+\.\d{4}", out, re.M), out
    # Two images at two scales: four forward passes, every one through the backend asked for
    # (not the model's own "auto", which is "torch" on the CPU).
    assert backend_spy == [("im2col", "im2col")] * 4


def test_eval_without_backend_keeps_the_models_own(eval_dir, backend_spy, capsys):
    code, _, err = _run(
        capsys, "eval", "--model", eval_dir / "meta_edsr.safetensors", "--data", eval_dir / "hr",
        "--scales", "2",
    )  # fmt: skip
    assert code == 0, err
    assert backend_spy == [("auto", "torch")] * 2


def test_eval_cli_settings_and_json(eval_dir, capsys, tmp_path):
    code, out, err = _run(
        capsys, "eval", "--model", "bicubic", "--data", eval_dir / "hr", "--scales", "3.5,2",
        "--lq-size", "10x12", "--json", tmp_path / "r.json",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads((tmp_path / "r.json").read_text())
    # "3.5,2" is two scales here as in every list; the LR size is its own setting.
    assert [r["scale"] for r in data["results"]] == ["3.5", "2", "lq10x12", "mean"]
    assert [r["images"] for r in data["results"]] == [2, 2, 2, 6]
    assert len(data["per_image"]) == 6 and data["per_image"][4]["r_v"] == 2.6
    assert all(np.isfinite(r["psnr"]) for r in data["results"])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--backend", "bogus"], "unknown --backend 'bogus'"),
        (["--scales", "2,1.5y"], "bad scale '1.5y'"),
        (["--lq-size", "10x"], "bad size '10x'"),
        (["--lq-size", "40x12"], "smaller than"),
    ],
)
def test_eval_bad_arguments_are_one_line(eval_dir, capsys, args, fragment):
    code, _, err = _run(capsys, "eval", "--model", "bicubic", "--data", eval_dir / "hr", *args)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]


def test_set_backend_covers_networks_with_and_without_heads():
    for arch, kwargs in _NETS.items():
        net = metasr.create_model(arch, **kwargs)
        set_backend(net, "im2col")
        holders = [m for m in net.modules() if hasattr(m, "backend")]
        assert holders and all(m.backend == "im2col" for m in holders), arch
