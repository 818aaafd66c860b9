"""No file is lost: every output goes through the one atomic writer and never lands on an input.

Issue 22, items 1-4 (each test here failed before the fix): the netCDF writer's fixed visible
``NAME.nc.part``, outputs replacing inputs (``eval --json X.nc``, ``climate-stats -o``,
``export -o`` onto the model, hard links), two inputs of one name into one folder, and
interrupted exports and reports that truncated the target or destroyed the previous file.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import metasr
from metasr.checkpoints import save_checkpoint
from metasr.cli import main

xr = pytest.importorskip("xarray")
pytest.importorskip("netCDF4")

KW = {"in_channels": 1, "out_channels": 1, "n_resblocks": 1, "n_feats": 8}


def _field_file(path: Path, value: float = 280.0) -> Path:
    rng = np.random.default_rng(0)
    data = (value + rng.standard_normal((2, 8, 16))).astype(np.float32)
    da = xr.DataArray(
        data,
        dims=("time", "lat", "lon"),
        coords={
            "time": np.arange(2),
            "lat": ("lat", np.linspace(87.5, -87.5, 8), {"units": "degrees_north"}),
            "lon": ("lon", np.arange(16) * 22.5, {"units": "degrees_east"}),
        },
        attrs={"units": "K"},
        name="t2m",
    )
    da.to_dataset().to_netcdf(path)
    return path


def _checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    save_checkpoint(path, metasr.create_model("meta_edsr", **KW), "meta_edsr", KW)
    return path


def _upscale_nc(src: Path, out: Path | str) -> int:
    argv = [str(src), "--var", "t2m", "--target-grid", "16x32", "--baseline", "bilinear"]
    return main(["upscale", *argv, "-o", str(out), "-q"])


def _visible(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


# ---- item 1: the netCDF temporary file ------------------------------------------------------


def test_planted_part_symlink_is_neither_followed_nor_becomes_the_output(tmp_path):
    src = _field_file(tmp_path / "v_in.nc")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "v.nc.part").symlink_to("../victim.txt")
    assert _upscale_nc(src, out / "v.nc") == 0
    assert victim.read_text() == "precious"
    assert not (out / "v.nc").is_symlink() and (out / "v.nc").is_file()
    assert xr.open_dataset(out / "v.nc")["t2m"].shape == (2, 16, 32)


def test_a_users_own_part_file_is_kept_and_a_part_folder_is_no_obstacle(tmp_path):
    src = _field_file(tmp_path / "in.nc")
    (tmp_path / "keep.nc.part").write_text("mine")
    (tmp_path / "dir.nc.part").mkdir()
    assert _upscale_nc(src, tmp_path / "keep.nc") == 0
    assert (tmp_path / "keep.nc.part").read_text() == "mine"
    assert _upscale_nc(src, tmp_path / "dir.nc") == 0  # IsADirectoryError before
    assert (tmp_path / "dir.nc").is_file() and (tmp_path / "dir.nc.part").is_dir()


def test_write_field_interrupted_keeps_the_old_file_and_its_temporary_is_hidden(
    tmp_path, monkeypatch
):
    from metasr import climate as mc

    src = _field_file(tmp_path / "in.nc")
    da = mc.read_field(src, "t2m")
    target = tmp_path / "out.nc"
    target.write_bytes(b"previous good file")
    used: list[Path] = []

    def interrupted(self, path, *args, **kwargs):
        used.append(Path(path))
        Path(path).write_bytes(b"CDF\x01 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(xr.Dataset, "to_netcdf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mc.write_field(da, target)
    assert target.read_bytes() == b"previous good file"
    assert used and used[0].name.startswith(".") and used[0].parent == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nc", "out.nc"]


# ---- item 2: an output onto an input ---------------------------------------------------------


@pytest.mark.parametrize("flag", ["--json", "--csv"])
def test_eval_report_onto_the_data_is_refused(tmp_path, capsys, flag):
    data = _field_file(tmp_path / "x.nc")
    before = data.read_bytes()
    argv = ["eval", "--model", "bilinear", "--data", str(data), "--var", "t2m"]
    assert main([*argv, "--scales", "2", "--baselines", "", flag, str(data)]) == 2
    err = capsys.readouterr().err
    assert "would overwrite its input" in err and err.count("\n") == 1
    assert data.read_bytes() == before


def test_eval_report_onto_a_file_of_the_data_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "d"
    folder.mkdir()
    data = _field_file(folder / "x.nc")
    before = data.read_bytes()
    argv = ["eval", "--model", "bilinear", "--data", str(folder), "--var", "t2m"]
    assert main([*argv, "--scales", "2", "--json", str(data)]) == 2
    assert data.read_bytes() == before


def test_climate_stats_onto_its_input_or_onto_the_checkpoint_is_refused(tmp_path, capsys):
    data = _field_file(tmp_path / "x.nc")
    before = data.read_bytes()
    assert main(["climate-stats", str(data), "--var", "t2m", "-o", str(data)]) == 2
    assert data.read_bytes() == before
    ckpt = _checkpoint(tmp_path / "m.safetensors")
    model = ckpt.read_bytes()
    argv = ["climate-stats", str(data), "--var", "t2m", "--checkpoint", str(ckpt)]
    assert main([*argv, "-o", str(ckpt)]) == 2
    assert main([*argv, "--into", str(data)]) == 2
    assert ckpt.read_bytes() == model and data.read_bytes() == before
    assert "would overwrite its input" in capsys.readouterr().err


def test_export_onto_the_model_file_is_refused(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "m.safetensors")
    named_onnx = tmp_path / "m.onnx"
    os.replace(ckpt, named_onnx)  # a safetensors file so named: load_model reads the content
    before = named_onnx.read_bytes()
    argv = ["export", "--model", str(named_onnx), "--input-size", "8x8", "--scale", "2"]
    assert main([*argv, "-o", str(named_onnx)]) == 2
    assert named_onnx.read_bytes() == before
    assert "would overwrite its input" in capsys.readouterr().err


def test_hard_and_symbolic_links_to_an_input_are_refused(tmp_path, capsys):
    src = _field_file(tmp_path / "in.nc")
    before = src.read_bytes()
    os.link(src, tmp_path / "hard.nc")
    (tmp_path / "soft.nc").symlink_to("in.nc")
    assert _upscale_nc(src, tmp_path / "hard.nc") == 2
    assert _upscale_nc(src, tmp_path / "soft.nc") == 2
    assert src.read_bytes() == before and (tmp_path / "soft.nc").is_symlink()
    # images too: a hard link of the input as -o
    from PIL import Image

    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "a.png")
    os.link(tmp_path / "a.png", tmp_path / "b.png")
    png = (tmp_path / "a.png").read_bytes()
    argv = ["upscale", str(tmp_path / "a.png"), "--scale", "2", "--model", "bicubic"]
    assert main([*argv, "-o", str(tmp_path / "b.png"), "-q"]) == 2
    assert (tmp_path / "a.png").read_bytes() == png


def test_the_target_grid_file_and_stats_file_are_inputs_too(tmp_path, capsys):
    src = _field_file(tmp_path / "in.nc")
    grid = _field_file(tmp_path / "grid.nc")
    before = grid.read_bytes()
    argv = ["upscale", str(src), "--var", "t2m", "--target-grid", str(grid), "--baseline"]
    assert main([*argv, "bilinear", "-o", str(grid), "-q"]) == 2
    assert grid.read_bytes() == before


# ---- item 3: one name from two folders -------------------------------------------------------


def test_same_netcdf_name_from_two_folders_is_refused(tmp_path, capsys):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        _field_file(tmp_path / sub / "same.nc", 280.0 if sub == "a" else 300.0)
    out = tmp_path / "out"
    out.mkdir()
    argv = ["upscale", str(tmp_path / "a" / "same.nc"), str(tmp_path / "b" / "same.nc")]
    code = main([*argv, "--var", "t2m", "--target-grid", "16x32", "--baseline", "nearest",
                 "-o", str(out)])  # fmt: skip
    assert code == 2
    assert "several inputs are named 'same.nc'" in capsys.readouterr().err
    assert not list(out.iterdir())


# ---- item 4: interrupted writes keep the previous file ---------------------------------------


def test_interrupted_onnx_export_keeps_the_previous_file(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxscript")
    ckpt = _checkpoint(tmp_path / "m.safetensors")
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous good export")

    def interrupted(model, args, f, *a, **kw):
        Path(f).write_bytes(b"\x08\x09 truncated")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.onnx, "export", interrupted)
    argv = ["export", "--model", str(ckpt), "--input-size", "8x8", "--scale", "2"]
    assert main([*argv, "-o", str(target)]) == 130
    assert target.read_bytes() == b"previous good export"
    assert _visible(tmp_path) == {"m.safetensors", "m.onnx"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_interrupted_pt2_export_keeps_the_previous_file(tmp_path, monkeypatch, capsys):
    import metasr.export

    ckpt = _checkpoint(tmp_path / "m.safetensors")
    target = tmp_path / "m.pt2"
    target.write_bytes(b"previous good program")
    monkeypatch.setattr(metasr.export, "export_program", lambda *a, **k: object())

    def interrupted(program, f, *a, **kw):
        Path(f).write_bytes(b"PK truncated")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.export, "save", interrupted)
    argv = ["export", "--model", str(ckpt), "--input-size", "8x8", "--scale", "2"]
    assert main([*argv, "-o", str(target), "--no-check"]) == 130
    assert target.read_bytes() == b"previous good program"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2", "m.safetensors"]


def test_interrupted_report_keeps_the_previous_csv_and_json(tmp_path):
    from metasr.evaluate import write_results

    csv_path, json_path = tmp_path / "r.csv", tmp_path / "r.json"
    csv_path.write_text("old csv")
    json_path.write_text("old json")

    def rows():
        yield {"scale": 2, "psnr": 30.0}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_results(rows(), ["scale", "psnr"], csv_path=csv_path)
    assert csv_path.read_text() == "old csv"
    with pytest.raises(TypeError):  # a value JSON cannot hold: nothing replaced
        write_results([{"scale": object()}], ["scale"], json_path=json_path)
    assert json_path.read_text() == "old json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.json"]


def test_interrupted_checkpoint_save_keeps_the_previous_one(tmp_path, monkeypatch):
    pytest.importorskip("metasr.integrations.basicsr")
    from metasr.integrations.basicsr.model import MetaSRModel

    models = tmp_path / "models"
    models.mkdir()
    (models / "net_g_latest.pth").write_bytes(b"previous weights")
    fake = SimpleNamespace(
        opt={"path": {"models": str(models)}, "network_g": {"type": "MetaEDSR"}},
        get_bare_model=lambda net: net,
        field_stats=None,
    )

    def interrupted(obj, f, *a, **kw):
        Path(f).write_bytes(b"PK half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        MetaSRModel.save_network(fake, torch.nn.Linear(2, 2), "net_g", -1)
    assert (models / "net_g_latest.pth").read_bytes() == b"previous weights"
    assert [p.name for p in models.iterdir()] == ["net_g_latest.pth"]
