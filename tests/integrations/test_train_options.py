"""Option files that BasicSR would accept and fail on later (or train wrongly with): refused in
one line, exit 2, before BasicSR's option dump and before ``experiments/NAME`` exists.

Issue 22 items 9 (field statistics, periodic_lon, missing values), 10, 16 and 18 (each case
here failed before the fix). Nothing trains: every case stops in the checks.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

if importlib.util.find_spec("basicsr") is None:
    pytest.skip("BasicSR is not installed (pip install 'metasr[train]')", allow_module_level=True)

from metasr.cli import main  # noqa: E402
from tools.samples import make_synthetic_images  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TRAIN_OPT = ROOT / "options" / "train" / "tiny_cpu.yml"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_options")
    make_synthetic_images(root / "data" / "train", n=2, size=(48, 48), seed=0)
    make_synthetic_images(root / "data" / "val", n=1, size=(48, 48), seed=1)
    return root


@pytest.fixture(scope="module")
def base(workdir) -> dict:
    opt = yaml.safe_load(TRAIN_OPT.read_text())
    opt["datasets"]["train"]["dataroot_gt"] = str(workdir / "data" / "train")
    opt["datasets"]["val"]["dataroot_gt"] = str(workdir / "data" / "val")
    return opt


def _set(opt: dict, dotted: str, value: object) -> dict:
    out = copy.deepcopy(opt)
    *parents, last = dotted.split(".")
    node = out
    for key in parents:
        node = node[key]
    if value is _DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return out


_DELETE = object()


def _refused(workdir, capsys, opt: dict, fragment: str, *extra: str) -> None:
    path = workdir / "bad.yml"
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    code = main(["train", "-opt", str(path), *extra])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]
    assert "weights_only=False" not in err
    assert not (workdir / "experiments").exists()


CASES = [
    ("train.total_iter", -5, "total_iter"),
    ("train.total_iter", float("inf"), "total_iter"),
    ("train.total_iter", 0, "total_iter"),
    ("train.optim_g.lr", "fast", "lr"),
    ("train.optim_g.lr", float("nan"), "lr"),
    ("train.optim_g.lr", -1e-3, "lr"),
    ("train.optim_g.lr", 0, "lr"),
    ("train.optim_g.type", "Adamm", "optim_g.type"),
    ("train.scheduler.type", "StepLR", "scheduler.type"),
    ("train.pixel_opt", _DELETE, "needs a loss"),
    ("train.pixel_opt.type", "L3Loss", "unknown loss type"),
    ("datasets.train.dataset_enlarge_ratio", 0, "dataset_enlarge_ratio"),
    ("logger.print_freq", 0, "print_freq"),
    ("logger.save_checkpoint_freq", 0, "save_checkpoint_freq"),
    ("val.val_freq", 0, "val_freq"),
    ("manual_seed", "abc", "manual_seed"),
    ("datasets.train.batch_size_per_gpu", 0, "batch_size_per_gpu"),
    ("datasets.train.batch_size_per_gpu", -2, "batch_size_per_gpu"),
    ("datasets.train.num_worker_per_gpu", -1, "num_worker_per_gpu"),
    ("datasets.train.scale_sampler.p_symmetric", 2.0, "p_symmetric"),
    ("datasets.train.scale_sampler.p_symmetric", -0.5, "p_symmetric"),
]


@pytest.mark.parametrize(
    "dotted, value, fragment", CASES, ids=[c[0] + "=" + str(c[1]) for c in CASES]
)
def test_bad_training_values_are_refused_before_basicsr(
    workdir, base, capsys, monkeypatch, dotted, value, fragment
):
    monkeypatch.chdir(workdir)
    _refused(workdir, capsys, _set(base, dotted, value), fragment)


def test_force_yml_values_are_checked_too_and_keys_are_names(workdir, base, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    _refused(workdir, capsys, base, "total_iter", "--force_yml", "train:total_iter=-5")
    _refused(workdir, capsys, base, "bad --force_yml", "--force_yml",
             'train"]+print(1)#:total_iter=5')  # fmt: skip
    _refused(workdir, capsys, base, "bad --force_yml", "--force_yml", "train:total_iter=1=2")


@pytest.mark.parametrize("kind", ["png", "pickle"])
def test_pretrained_file_that_is_not_weights_gives_no_unsafe_advice(
    workdir, base, capsys, monkeypatch, kind
):
    monkeypatch.chdir(workdir)
    bad = workdir / f"pretrained_{kind}.pth"
    if kind == "png":
        from PIL import Image

        Image.new("RGB", (4, 4)).save(workdir / "x.png")
        bad.write_bytes((workdir / "x.png").read_bytes())
        fragment = "not a PyTorch"
    else:
        # a global torch's safe loader refuses (its message advises weights_only=False)
        bad.write_bytes(pickle.dumps({"params": os.getcwd}, protocol=2))
        fragment = "can be loaded safely"
    _refused(workdir, capsys, _set(base, "path.pretrain_network_g", str(bad)), fragment)


# ---- field datasets --------------------------------------------------------------------------

xr = None


def _field_opt(base: dict, workdir: Path, name: str, data: np.ndarray, lon: np.ndarray,
               **dataset) -> dict:  # fmt: skip
    global xr
    xr = pytest.importorskip("xarray")
    pytest.importorskip("netCDF4")
    lat = np.linspace(80, -80, data.shape[-2])
    da = xr.DataArray(
        data,
        dims=("time", "lat", "lon"),
        coords={"time": np.arange(data.shape[0]), "lat": lat, "lon": lon},
        name="t2m",
        attrs={"units": "K"},
    )
    path = workdir / f"{name}.nc"
    da.to_dataset().to_netcdf(path)
    opt = copy.deepcopy(base)
    opt["network_g"].update(in_channels=1, out_channels=1, img_range=1.0)
    opt["datasets"] = {
        "train": {
            "name": name,
            "type": "MetaSRFieldDataset",
            "source": "netcdf",
            "dataroot_gt": str(path),
            "var": "t2m",
            "scale_sampler": {"type": "uniform", "min": 2.0, "max": 2.0},
            "lq_patch_size": None,
            "num_worker_per_gpu": 0,
            "batch_size_per_gpu": 1,
            **dataset,
        }
    }
    opt["val"] = None
    opt["train"].pop("val", None)
    return opt


def _global_lon(w: int) -> np.ndarray:
    return np.arange(w) * (360.0 / w)


def test_field_training_mistakes_are_refused_before_basicsr(workdir, base, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    rng = np.random.default_rng(0)
    good = (280 + rng.standard_normal((2, 16, 32))).astype(np.float32)
    opt = _field_opt(base, workdir, "missing_var", good, _global_lon(32), var="tp")
    _refused(workdir, capsys, opt, "'tp'")
    holes = good.copy()
    holes[0, 3, 4:9] = np.nan
    _refused(workdir, capsys, _field_opt(base, workdir, "holes", holes, _global_lon(32)),
             "missing (NaN) values")  # fmt: skip
    flat = np.full_like(good, 273.15)
    _refused(workdir, capsys, _field_opt(base, workdir, "flat", flat, _global_lon(32)),
             "constant")  # fmt: skip
    ratio = _field_opt(base, workdir, "ratio", good, _global_lon(32),
                       scale_sampler={"type": "fixed", "scale": 20.0})  # fmt: skip
    _refused(workdir, capsys, ratio, "datasets.train")
    celsius = _field_opt(base, workdir, "celsius", good, _global_lon(32))
    celsius["field_stats"] = {"mean": 7.0, "std": 10.0, "units": "degC", "variable": "t2m"}
    _refused(workdir, capsys, celsius, "degC")
    regional = _field_opt(base, workdir, "regional", good, np.linspace(-10, 20, 32))
    regional["network_g"]["periodic_lon"] = True
    _refused(workdir, capsys, regional, "periodic_lon")


def test_dataroot_gt_lists_pass_basicsrs_option_parsing():
    """BasicSR's parse_options calls os.path.expanduser(dataroot_gt): a TypeError on the lists
    field datasets accept, unless metasr's integration is installed."""
    import sys

    import metasr.integrations.basicsr  # noqa: F401  (installs the list-aware path)

    osp = sys.modules["basicsr.utils.options"].osp
    home = os.path.expanduser("~")
    assert osp.expanduser(["~/a.nc", "b.nc"]) == [f"{home}/a.nc", "b.nc"]
    assert osp.expanduser("~/c.nc") == f"{home}/c.nc" and osp.join("a", "b") == "a/b"
