"""Issue 25, item 4: ``tile="auto"`` tiles only what does not fit, the overlap comes from each
network's receptive field (seamless for RDN and SwinIR too), and the progress bar appears for
long runs only, never with ``-q`` or off a terminal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metasr import api
from metasr.archs import MetaEDSR, MetaRDN, MetaSwinIR
from metasr.checkpoints import LoadedModel, load_model
from metasr.geometry import UpscaleRequest
from metasr.inference import estimate_upscale
from metasr.io import Raster
from metasr.tiling import DEFAULT_OVERLAP, default_overlap, upscale

ONE_CODE = 1 / 255

NETS = {
    # deeper than a fixed 16 px of context covers: RDN 4 blocks x 4 layers, SwinIR 2x2 blocks
    "rdn": lambda: MetaRDN(G0=8, D=4, C=4, G=4, upsample={"hidden": 16}, bicubic_residual=False),
    "swinir": lambda: MetaSwinIR(
        img_size=16,
        embed_dim=8,
        depths=(2, 2),
        num_heads=(2, 2),
        window_size=4,
        upsample={"hidden": 16},
        img_range=1.0,
    ),  # fmt: skip
    "edsr": lambda: MetaEDSR(n_resblocks=4, n_feats=8, upsample={"hidden": 16}, img_range=1.0),
}


def _x(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(NETS))
def test_default_overlap_covers_the_receptive_field(name):
    torch.manual_seed(0)
    model = NETS[name]().double().eval()
    x = _x(26, 30).double()
    with torch.no_grad():
        whole = model(x, scale=(2.3, 1.7))
        span = (whole.max() - whole.min()).item()

        def diff(ov: int) -> float:
            tiled = upscale(model, x, UpscaleRequest(scale=(2.3, 1.7)), tile=10, overlap=ov)
            return (tiled - whole).abs().max().item() / span

        ov = default_overlap(model)
        # the tiles see all the whole image shows them: equal to float32 rounding (tiles are
        # assembled in float32), far within one 8-bit code
        assert diff(ov) < 1e-6
        assert diff(0) > 1e-3  # not vacuous: without context the tiles differ
        if name == "rdn":
            assert ov > DEFAULT_OVERLAP  # the old fixed 16 px is less than this network's reach


def test_auto_tiles_only_what_does_not_fit(monkeypatch):
    loaded = load_model("default")
    raster = Raster(data=np.random.default_rng(0).random((3, 96, 90), np.float32),
                    kind="image", dtype=np.dtype(np.uint8))  # fmt: skip
    whole, tile = api.run_checked(loaded, raster, UpscaleRequest(scale=2))
    assert tile == 0
    ov = default_overlap(loaded.model)
    est = estimate_upscale(loaded, raster.data.shape, UpscaleRequest(scale=2), 64, ov)
    free = est.host_bytes + est.work_bytes + 1
    from metasr.ops import memory

    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: free)
    tiled, tile = api.run_checked(loaded, raster, UpscaleRequest(scale=2))
    assert tile == 64
    # tiled and whole agree within one 8-bit code
    assert np.abs(tiled.data - whole.data).max() <= ONE_CODE
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: 1000)
    with pytest.raises(ValueError, match="needs about"):
        api.run_checked(loaded, raster, UpscaleRequest(scale=2))


class _Recorder:
    calls: list = []

    def __init__(self, iterable, **kwargs):
        self.iterable = list(iterable)
        _Recorder.calls.append(kwargs)

    def __iter__(self):
        return iter(self.iterable)


def test_progress_bar_for_long_runs_only(monkeypatch):
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", _Recorder)
    monkeypatch.setattr(api, "PROGRESS_PIXELS", 2000)  # stands for ~2 s of work
    monkeypatch.setattr(api, "PROGRESS_TILE", 16)
    torch.manual_seed(0)
    net = MetaEDSR(n_resblocks=1, n_feats=8, upsample={"hidden": 16}, img_range=1.0).eval()
    loaded = LoadedModel(
        model=net,
        name="tiny",
        arch="meta_edsr",
        in_channels=3,
        out_channels=3,
        value_range=1.0,
        metadata={},
        format="registry",
    )
    big = Raster(data=_x(40, 40).numpy()[0], kind="image", dtype=np.dtype(np.uint8))
    small = Raster(data=_x(12, 12).numpy()[0], kind="image", dtype=np.dtype(np.uint8))
    _Recorder.calls.clear()
    _, tile = api.run_checked(loaded, big, UpscaleRequest(scale=2), progress=True)
    assert tile == 16 and len(_Recorder.calls) == 1
    # shown only after 2 s, and never when stderr is not a terminal (tqdm's disable=None)
    assert _Recorder.calls[0]["delay"] == 2.0 and _Recorder.calls[0]["disable"] is None
    _Recorder.calls.clear()
    _, tile = api.run_checked(loaded, big, UpscaleRequest(scale=2), progress=False)  # -q
    _, tile_small = api.run_checked(loaded, small, UpscaleRequest(scale=2), progress=True)
    assert tile == 0 and tile_small == 0 and _Recorder.calls == []
