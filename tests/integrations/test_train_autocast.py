"""``train: autocast: bfloat16`` in ``MetaSRModel``: a bfloat16 forward, float32 everything else.

One optimisation step on fixed samples, in-process (as ``tests/integrations/ddp_step.py`` builds
the model), with and without autocast, from the same initial weights.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import default_collate

if importlib.util.find_spec("basicsr") is None:
    pytest.skip("BasicSR is not installed (pip install 'metasr[train]')", allow_module_level=True)

from tools.samples import make_synthetic_images  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _options(autocast: object) -> dict:
    opt = yaml.safe_load((ROOT / "options" / "train" / "tiny_cpu.yml").read_text())
    opt.update(is_train=True, dist=False, rank=0, world_size=1, num_gpu=0)
    opt["path"] = {"pretrain_network_g": None, "strict_load_g": True}
    if autocast is not None:
        opt["train"]["autocast"] = autocast
    return opt


def _step(opt: dict, batch: dict):
    from basicsr.models import build_model

    torch.manual_seed(0)  # the same initial weights for every model
    model = build_model(opt)
    net = model.get_bare_model(model.net_g)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    model.feed_data(batch)
    model.optimize_parameters(1)
    after = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return model, before, after


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> dict:
    import metasr.integrations.basicsr  # noqa: F401  (registers the model and datasets)
    from metasr.data.datasets import BatchSpec
    from metasr.integrations.basicsr import MetaSRTrainDataset

    root = tmp_path_factory.mktemp("autocast")
    make_synthetic_images(root, n=4, size=(64, 64), seed=0)
    ds = MetaSRTrainDataset(dataroot_gt=str(root), lq_patch_size=16, cache=True)
    spec = BatchSpec(scale=(1.7, 2.3), lq_patch=16)
    return default_collate([ds.sample(i, spec, rng=random.Random(i)) for i in range(4)])


def test_bfloat16_step_is_a_float32_model_with_a_close_update(batch):
    ref, before, after_ref = _step(_options(None), batch)
    amp, before_amp, after_amp = _step(_options("bfloat16"), batch)
    assert amp.autocast_dtype is torch.bfloat16 and ref.autocast_dtype is None
    for k in before:
        torch.testing.assert_close(before[k], before_amp[k], rtol=0, atol=0)
    # The loss is taken on a float32 output; parameters and their update stay float32.
    assert amp.output.dtype == torch.float32 and amp.output.shape == ref.output.shape
    assert all(v.dtype == torch.float32 for v in after_amp.values() if v.is_floating_point())
    # bfloat16 keeps ~3 significant digits: the output is within a few 1/256 of float32's.
    diff = (amp.output - ref.output).abs()
    assert 0 < diff.max() < 0.05 and diff.mean() < 0.005
    torch.testing.assert_close(amp.log_dict["l_pix"], ref.log_dict["l_pix"], rtol=0.05, atol=1e-3)
    # The first Adam step moves each weight by about lr·sign(grad): compare the moves' signs.
    moved = agree = 0
    for k, v in after_ref.items():
        if not v.is_floating_point():
            continue
        d_ref, d_amp = (v - before[k]).flatten(), (after_amp[k] - before[k]).flatten()
        big = d_ref.abs() > 0.5 * d_ref.abs().max()
        moved += int(big.sum())
        agree += int((torch.sign(d_ref[big]) == torch.sign(d_amp[big])).sum())
    assert moved > 100 and agree / moved > 0.9


@pytest.mark.parametrize("value", ["float16", "fp8", 16, ["bfloat16"]])
def test_unsupported_autocast_is_refused(value):
    from basicsr.models import build_model

    import metasr.integrations.basicsr  # noqa: F401

    with pytest.raises(ValueError, match="autocast: .* is not supported; use bfloat16"):
        build_model(_options(value))


@pytest.mark.parametrize("value", [None, "float32", False])
def test_autocast_off(value):
    from metasr.integrations.basicsr.model import _autocast_of_options

    assert _autocast_of_options(_options(value)) is None
