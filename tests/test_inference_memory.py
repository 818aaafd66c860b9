"""The memory an upscale needs (metasr.inference.estimate_upscale) and its refusal before any
work (check_upscale_memory): which tile it suggests, and what the self-ensemble adds."""

from __future__ import annotations

import re

import pytest
import torch

from metasr import inference
from metasr.checkpoints import load_model
from metasr.geometry import UpscaleRequest
from metasr.ops import memory


def test_tile_is_suggested_only_when_it_would_fit(monkeypatch, tiny_checkpoint):
    loaded = load_model(str(tiny_checkpoint), device=torch.device("cpu"))
    shape = (3, 256, 256)
    whole = inference.estimate_upscale(loaded, shape, UpscaleRequest(scale=4))
    tiled = inference.estimate_upscale(loaded, shape, UpscaleRequest(scale=4), tile=64)
    assert tiled.work_bytes < whole.work_bytes
    fits_tiled = tiled.host_bytes + tiled.work_bytes
    assert fits_tiled < whole.host_bytes + whole.work_bytes
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: fits_tiled)
    with pytest.raises(ValueError, match=r"--tile \d+") as info:
        inference.check_upscale_memory(loaded, shape, UpscaleRequest(scale=4))
    # The suggested tile (the largest that fits, with the network's own overlap) does fit.
    suggested = int(re.search(r"--tile (\d+)", str(info.value)).group(1))
    est = inference.estimate_upscale(loaded, shape, UpscaleRequest(scale=4), tile=suggested)
    assert 64 <= suggested < 256 and est.host_bytes + est.work_bytes <= fits_tiled
    # Already tiled at the smallest suggestion: nothing to suggest.
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: fits_tiled - 1)
    with pytest.raises(ValueError) as info:
        inference.check_upscale_memory(loaded, shape, UpscaleRequest(scale=4), tile=64)
    assert "--tile" not in str(info.value)
    # The result alone does not fit: tiles cannot help.
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: whole.host_bytes // 2)
    with pytest.raises(ValueError) as info:
        inference.check_upscale_memory(loaded, shape, UpscaleRequest(scale=4))
    assert "--tile" not in str(info.value)


def test_self_ensemble_is_counted_where_the_result_is(monkeypatch, tiny_checkpoint):
    """--tta keeps an accumulator and an inverted term beside the result: two more results."""
    loaded = load_model(str(tiny_checkpoint), device=torch.device("cpu"))
    shape = (3, 200, 160)
    result = 3 * 800 * 640 * 4  # float32 (3, H, W) at ×4
    plain = inference.estimate_upscale(loaded, shape, UpscaleRequest(scale=4))
    ens = inference.estimate_upscale(loaded, shape, UpscaleRequest(scale=4), tta=8)
    assert (ens.host_bytes, ens.work_bytes) == (plain.host_bytes, plain.work_bytes + 2 * result)
    assert inference.estimate_upscale(loaded, shape, UpscaleRequest(scale=4), tta=1) == plain
    plain_t = inference.estimate_upscale(loaded, shape, UpscaleRequest(scale=4), tile=64)
    ens_t = inference.estimate_upscale(loaded, shape, UpscaleRequest(scale=4), tile=64, tta=True)
    assert (ens_t.host_bytes, ens_t.work_bytes) == (
        plain_t.host_bytes + 2 * result,
        plain_t.work_bytes,
    )
    with pytest.raises(ValueError, match="tta must be"):
        inference.estimate_upscale(loaded, shape, UpscaleRequest(scale=4), tta=3)
    # Memory that fits the plain call but not the ensemble refuses the ensemble only.
    need = plain.host_bytes + plain.work_bytes
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: need)
    assert inference.check_upscale_memory(loaded, shape, UpscaleRequest(scale=4)) == plain
    with pytest.raises(ValueError, match="needs about"):
        inference.check_upscale_memory(loaded, shape, UpscaleRequest(scale=4), tta=8)
