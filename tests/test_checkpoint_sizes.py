"""Sizes refused before allocation (issue 22 items 22 and 23; each test failed before the fix)."""

from __future__ import annotations

import time

import pytest
import torch

import metasr
import metasr.export
import metasr.ops.memory
from metasr.checkpoints import load_model, save_checkpoint
from metasr.cli import main


def test_a_pth_archive_declaring_more_than_free_memory_is_refused_before_torch_load(
    tmp_path, monkeypatch
):
    path = tmp_path / "net_g_1.pth"
    torch.save({"params": {"w": torch.zeros(64, 1024)}}, path)  # 256 KiB declared
    monkeypatch.setattr(metasr.ops.memory, "available_memory_bytes", lambda device: 64 << 10)
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(1))
    with pytest.raises(ValueError, match="declares .* more than the .* free memory"):
        load_model(str(path))
    assert not loads


def test_pos2weight_far_too_large_is_refused_at_once():
    for kw in ({"hidden_layers": 10**6}, {"hidden": 10**8}):
        start = time.perf_counter()
        with pytest.raises(ValueError, match="over the limits"):
            metasr.Pos2Weight(3, 3, **kw)
        assert time.perf_counter() - start < 1.0


def test_export_beyond_free_memory_is_refused_before_tracing(tmp_path, capsys, monkeypatch):
    kw = {"in_channels": 3, "out_channels": 3, "n_resblocks": 1, "n_feats": 8}
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, metasr.create_model("meta_edsr", **kw), "meta_edsr", kw)
    monkeypatch.setattr(metasr.ops.memory, "available_memory_bytes", lambda device: 1 << 20)
    monkeypatch.setattr(metasr.export, "export_program", lambda *a, **k: pytest.fail("traced"))
    argv = ["export", "--model", str(ckpt), "--input-size", "64x64", "--scale", "4"]
    assert main([*argv, "-o", str(tmp_path / "m.pt2"), "--no-check"]) == 1
    err = capsys.readouterr().err
    assert "free memory" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
