"""Issue 25, items 2 and 5: version, device default, --model help, ``metasr info``'s extras,
``--force_yml`` before metasr's own option checks, the one missing-extra message, and scripts
that must not write onto a shipped file by default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch

import metasr
from metasr._extras import EXTRAS, MissingDependencyError, require
from metasr.cli import CLIError, build_parser, device_arg, main

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- item 5


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"metasr {metasr.__version__}"


def test_every_device_flag_defaults_to_auto():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    with_device = []
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest == "device":
                with_device.append(name)
                assert action.default == "auto", name
    assert {"upscale", "eval", "bench"} <= set(with_device)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert device_arg("auto").type == expected
    with pytest.raises(CLIError):
        device_arg("tpu")


def test_model_help_names_every_kind():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("upscale", "eval"):
        action = next(a for a in sub.choices[name]._actions if a.dest == "model")
        for word in ("'default'", "'default-v1'", "'t2m'", ".onnx", ".safetensors", ".pth"):
            assert word in action.help, (name, word)


def test_extras_table_matches_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS) == set(deps)
    for extra, reqs in deps.items():
        names = {r.split("=")[0].split(">")[0].split("<")[0].split("[")[0].strip() for r in reqs}
        assert {d for d, _ in EXTRAS[extra]} == names, extra


def test_info_lists_every_extra(capsys):
    assert main(["info", "--json"]) == 0
    import json

    info = json.loads(capsys.readouterr().out)
    assert set(info["extras"]) == set(EXTRAS)
    for extra, entry in info["extras"].items():
        assert isinstance(entry["imports"], bool)
        assert "metasr[" in entry["install"] or extra == "train"
    # climate and export are installed for the tests (Makefile EXTRAS): they must import
    assert info["extras"]["climate"]["imports"] and info["extras"]["export"]["imports"]


# ---------------------------------------------------------------------------- item 2


def test_require_names_the_extra(monkeypatch):
    for extra, pairs in EXTRAS.items():
        for _, module in pairs:
            monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
            with pytest.raises(MissingDependencyError, match=rf"metasr\[{extra}\]"):
                require(module, extra, "a feature")
    # a ValueError too: the CLI's one-line path and callers catching ValueError see it
    assert issubclass(MissingDependencyError, ValueError)


def _fake_missing(monkeypatch, *modules):
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


def test_netcdf_without_climate_is_one_line(tmp_path, monkeypatch, capsys):
    src = tmp_path / "t.nc"
    src.write_bytes(b"CDF\x01")
    _fake_missing(monkeypatch, "xarray", "netCDF4")
    rc = main(["upscale", str(src), "--var", "t", "--target-grid", "era5", "-o",
               str(tmp_path / "o.nc"), "--baseline", "bicubic"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and "metasr[climate]" in err and "Traceback" not in err


def test_export_without_onnx_is_one_line(tmp_path, monkeypatch, capsys):
    _fake_missing(monkeypatch, "onnx", "onnxscript")
    rc = main(["export", "--model", "default", "--input-size", "8x8", "--scale", "2", "-o",
               str(tmp_path / "m.onnx")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "metasr[export]" in err
    assert not (tmp_path / "m.onnx").exists()


def test_force_yml_num_gpu_before_checks(tmp_path, monkeypatch):
    pytest.importorskip("yaml")
    from metasr.cli import train as cli_train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    opt_file = str(ROOT / "options/train/MetaRDN_DIV2K.yml")
    opt = cli_train.load_options(opt_file)
    with pytest.raises(CLIError, match="num_gpu is 1"):
        cli_train._check_options(opt, opt_file, True)
    # with the override, the num_gpu check passes and the next problem (the data) is reported
    opt = cli_train.apply_force_yml(opt, ["num_gpu=0"], opt_file)
    assert opt["num_gpu"] == 0
    with pytest.raises(CLIError, match="path does not exist: datasets/DIV2K"):
        cli_train._check_options(opt, opt_file, True)
    # ... and so does the override of that path
    train_dir, val_dir = tmp_path / "hr", tmp_path / "val"
    train_dir.mkdir()
    val_dir.mkdir()
    overrides = [
        "num_gpu=0",
        f"datasets:train:dataroot_gt={train_dir}",
        f"datasets:val:dataroot_gt={val_dir}",
    ]
    opt = cli_train.apply_force_yml(cli_train.load_options(opt_file), overrides, opt_file)
    cli_train._check_options(opt, opt_file, True)
    with pytest.raises(CLIError, match="no section"):
        cli_train.apply_force_yml(opt, ["nosuch:key=1"], opt_file)


def test_force_yml_on_the_command_line(monkeypatch, capsys):
    pytest.importorskip("yaml")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    opt_file = str(ROOT / "options/train/MetaRDN_DIV2K.yml")
    rc = main(["train", "-opt", opt_file, "--force_yml", "num_gpu=0"])
    err = capsys.readouterr().err
    assert rc == 2 and "num_gpu" not in err and "path does not exist" in err


def test_export_default_model_script_needs_output():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/export_default_model.py"), "--checkpoint", "x.pth"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2 and "-o/--output" in proc.stderr
