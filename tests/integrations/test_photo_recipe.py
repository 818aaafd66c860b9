"""The bundled photo model's option file: it loads, builds, trains, and resumes elsewhere.

The recipe (``options/train/MetaEDSR_photo_default.yml``) is run as it is, shrunk only where a
test must be small: a tiny network, generated images, a few iterations. The run is stopped,
its ``experiments/`` folder moved to another directory (another machine, as far as paths go),
and ``metasr train --auto_resume`` must continue there at the right iteration and learning rate.
"""

from __future__ import annotations

import importlib.util
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from metasr.archs import create_model
from metasr.data.scales import MixtureScales, build_scale_sampler

ROOT = Path(__file__).resolve().parents[2]
PHOTO_OPT = ROOT / "options" / "train" / "MetaEDSR_photo_default.yml"

needs_basicsr = pytest.mark.skipif(
    importlib.util.find_spec("basicsr") is None,
    reason="BasicSR is not installed (pip install 'metasr[train]')",
)


def _opt() -> dict:
    return yaml.safe_load(PHOTO_OPT.read_text())


def test_option_file_describes_the_recipe():
    opt = _opt()
    train = opt["train"]
    sched = train["scheduler"]
    assert sched["type"] == "CosineAnnealingRestartLR"
    assert sched["periods"] == [train["total_iter"]] and sched["restart_weights"] == [1]
    assert 0 < train["warmup_iter"] < train["total_iter"] // 10
    assert opt["datasets"]["train"]["dataroot_gt"] == "datasets/photos/train"
    assert opt["datasets"]["val"]["dataroot_gt"] == "datasets/photos/val"
    assert opt["name"] == PHOTO_OPT.stem


def test_option_file_scales_mix_symmetric_asymmetric_and_large():
    import random

    sampler = build_scale_sampler(_opt()["datasets"]["train"]["scale_sampler"])
    assert isinstance(sampler, MixtureScales)
    rng = random.Random(0)
    draws = [sampler.sample(rng) for _ in range(4000)]
    main = [s for s in draws if max(s) <= 4.0]
    large = [s for s in draws if max(s) > 4.0]
    assert all(1.1 <= min(s) for s in draws) and max(max(s) for s in draws) <= 6.0
    assert sum(a == b for a, b in main) > 0.3 * len(main)
    assert sum(a != b for a, b in main) > 0.3 * len(main)
    assert min(a for a, _ in main) < 1.2 and max(a for a, _ in main) > 3.9
    assert 0.01 * len(draws) < len(large) < 0.15 * len(draws)
    assert sampler.max_scale == (6.0, 6.0)


def test_mixture_sampler_validates_and_weights():
    import random

    with pytest.raises(ValueError, match="non-empty"):
        build_scale_sampler({"type": "mixture", "samplers": []})
    with pytest.raises(ValueError, match="one per sampler"):
        build_scale_sampler({"type": "mixture", "samplers": [2, 3], "weights": [1.0]})
    with pytest.raises(ValueError, match="scale sampler type"):
        build_scale_sampler({"type": "mixture", "samplers": [{"type": "nope"}]})
    fixed = {"type": "fixed", "scale": [1.5, 4]}
    s = build_scale_sampler({"type": "mixture", "samplers": [2, fixed], "weights": [0, 1]})
    assert {s.sample(random.Random(i)) for i in range(20)} == {(1.5, 4.0)}
    assert s.max_scale == (2.0, 4.0)


def test_option_file_network_builds_and_fits_the_limits():
    net_opt = dict(_opt()["network_g"])
    assert net_opt.pop("type") == "MetaEDSR"
    net_opt.pop("backend")
    net = create_model("meta_edsr", **net_opt)
    n_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    assert n_bytes < 20 * 2**20
    with torch.inference_mode():
        assert net(torch.rand(1, 3, 9, 7), scale=(3.5, 2.0)).shape == (1, 3, 31, 14)


def _metasr(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "metasr", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


_ITER = re.compile(r"iter:\s+(\d+), lr:\(([0-9.e+-]+),\)")


@needs_basicsr
def test_recipe_runs_stops_and_resumes_in_another_directory(tmp_path):
    from tools.samples import make_synthetic_images

    first, second = tmp_path / "machine_a", tmp_path / "machine_b"
    make_synthetic_images(first / "datasets" / "photos" / "train", n=4, size=(96, 96), seed=0)
    make_synthetic_images(first / "datasets" / "photos" / "val", n=1, size=(40, 48), seed=1)
    opt = _opt()  # dataroots stay relative: the same file runs in either directory
    opt["network_g"].update(n_resblocks=1, n_feats=8, hidden=16, backend="torch")
    opt["datasets"]["train"].update(lq_patch_size=8, num_worker_per_gpu=0, batch_size_per_gpu=2)
    opt["train"].update(total_iter=12, warmup_iter=2)
    opt["train"]["scheduler"]["periods"] = [12]
    opt["logger"].update(print_freq=1, save_checkpoint_freq=6)
    opt["val"]["val_freq"] = 1000
    opt_path = first / "photo.yml"
    opt_path.write_text(yaml.safe_dump(opt, sort_keys=False))

    stopped = _metasr("train", "-opt", "photo.yml", "--force_yml", "train:total_iter=6", cwd=first)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    state_file = first / "experiments" / opt["name"] / "training_states" / "6.state"
    state = torch.load(state_file, map_location="cpu", weights_only=False)
    # Nothing tied to this machine: no path strings, only CPU tensors and plain numbers.
    leaves: list = []

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                walk(k)
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        else:
            leaves.append(x)

    walk(state)
    assert not [x for x in leaves if isinstance(x, str) and ("/" in x or "\\" in x)]
    assert all(x.device.type == "cpu" for x in leaves if isinstance(x, torch.Tensor))

    shutil.copytree(first, second)
    shutil.rmtree(first)
    resumed = _metasr("train", "-opt", "photo.yml", "--auto_resume", cwd=second)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = "\n".join(
        p.read_text() for p in sorted((second / "experiments" / opt["name"]).glob("train_*.log"))
    )
    assert "Resuming training from epoch" in log and "iter: 6." in log
    steps = {int(m[1]): float(m[2]) for m in _ITER.finditer(log)}
    assert sorted(steps) == list(range(1, 13))
    # BasicSR logs the learning rate of the step about to run: warm-up 1/2·lr at iteration 1,
    # then the cosine, continued (not restarted) after the resume.
    lr0, eta_min = opt["train"]["optim_g"]["lr"], opt["train"]["scheduler"]["eta_min"]
    for it in (7, 10):
        expected = eta_min + (lr0 - eta_min) * 0.5 * (1 + math.cos(math.pi * (it - 1) / 12))
        assert steps[it] == pytest.approx(expected, rel=1e-3)
    assert (second / "experiments" / opt["name"] / "models" / "net_g_latest.pth").is_file()


def _photo_stages() -> list[Path]:
    """The option files ``make photo-model`` runs, in order (the Makefile's ``PHOTO_OPTS``)."""
    text = (ROOT / "Makefile").read_text()
    m = re.search(r"^PHOTO_OPTS := \$\(addprefix (\S+),([^)]*)\)", text, re.M)
    assert m, "Makefile: PHOTO_OPTS := $(addprefix PREFIX,SUFFIXES) not found"
    return [ROOT / (m.group(1) + suffix) for suffix in m.group(2).split()]


def test_make_photo_model_chains_each_stage_to_the_last_weights_of_the_one_before():
    stages = _photo_stages()
    assert stages[0] == PHOTO_OPT and len(stages) >= 2
    opts = [yaml.safe_load(p.read_text()) for p in stages]
    assert opts[0]["path"]["pretrain_network_g"] is None
    for path, opt in zip(stages, opts, strict=True):
        train = opt["train"]
        assert opt["name"] == path.stem
        assert train["scheduler"]["periods"] == [train["total_iter"]]
        # One network through the chain: strict loading of the previous stage's weights.
        assert opt["network_g"] == opts[0]["network_g"]
        assert opt["datasets"]["train"]["dataroot_gt"] == "datasets/photos/train"
    for prev, opt in zip(opts, opts[1:], strict=False):
        paths = opt["path"]
        # The previous stage's final checkpoint, not an intermediate one...
        final = f"experiments/{prev['name']}/models/net_g_{prev['train']['total_iter']}.pth"
        assert paths["pretrain_network_g"] == final
        assert paths["strict_load_g"] is True
        # ...and its averaged weights where that stage kept an EMA.
        want_key = "params_ema" if prev["train"].get("ema_decay", 0) > 0 else "params"
        assert paths.get("param_key_g", "params") == want_key
