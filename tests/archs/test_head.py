"""One Meta-Upscale head: HeadConfig, flat option spellings, official and shipped weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import metasr
from metasr import MetaUpsample
from metasr.checkpoints import build_network, load_model
from metasr.modules import HeadConfig, fold_head_options
from metasr.weights import BUNDLED

ROOT = Path(__file__).resolve().parents[2]

SMALL = {
    "meta_rdn": dict(G0=8, D=1, C=1, G=4),
    "meta_edsr": dict(n_resblocks=1, n_feats=8),
    "meta_edsr_tiny": dict(n_resblocks=1, n_feats=8),
    "meta_swinir": dict(img_size=8, embed_dim=8, depths=(2,), num_heads=(2,), window_size=4),
}


def test_head_config_of():
    assert HeadConfig.of(None) == HeadConfig()
    assert HeadConfig.of({"hidden": 8}).hidden == 8
    c = HeadConfig(hidden=8, backend="torch")
    assert HeadConfig.of(c) is c
    with pytest.raises(ValueError, match="unknown head option"):
        HeadConfig.of({"hiden": 8})
    with pytest.raises(TypeError, match="HeadConfig or a mapping"):
        HeadConfig.of(8)


def test_flat_options_fold_into_upsample():
    assert fold_head_options({"G0": 8, "hidden": 8, "meta_kernel_size": 5}) == {
        "G0": 8,
        "upsample": {"hidden": 8, "kernel_size": 5},
    }
    assert fold_head_options({"G0": 8}) == {"G0": 8}
    folded = fold_head_options({"hidden": 8, "upsample": HeadConfig(backend="torch")})
    assert HeadConfig.of(folded["upsample"]) == HeadConfig(hidden=8, backend="torch")
    with pytest.raises(ValueError, match="given twice"):
        fold_head_options({"hidden": 8, "upsample": {"hidden": 16}})


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_network_composes_one_head(name):
    assert set(SMALL) == set(metasr.list_models())
    options = dict(hidden=8, activation="gelu", meta_kernel_size=5, backend="torch")
    torch.manual_seed(0)
    flat = metasr.create_model(name, **SMALL[name], **options)
    torch.manual_seed(0)
    config = HeadConfig(hidden=8, activation="gelu", kernel_size=5, backend="torch")
    one = metasr.create_model(name, **SMALL[name], upsample=config)
    assert isinstance(flat.upsample, MetaUpsample) and flat.pos2weight is flat.upsample.phi
    assert flat.backend == "torch" and flat.pos2weight.kernel_size == 5
    for (ka, va), (kb, vb) in zip(flat.state_dict().items(), one.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    assert any(k.startswith("upsample.phi.meta_block.") for k in flat.state_dict())
    flat.backend = "naive"
    assert flat.upsample.backend == "naive"


@pytest.mark.parametrize("path", sorted((ROOT / "options" / "train").glob("*.yml")), ids=str)
def test_option_files_spell_the_head_flat(path):
    yaml = pytest.importorskip("yaml")
    opt = yaml.safe_load(path.read_text()).get("network_g")
    if opt is None:
        pytest.skip(f"{path.name} is not a BasicSR option file (no network_g)")
    with torch.device("meta"):
        net = build_network(opt)
    for key, field in (("hidden", "hidden"), ("meta_kernel_size", "kernel_size")):
        if key in opt:
            assert getattr(net.pos2weight, field) == opt[key], key
    if "pos_encoding" in opt:
        assert net.pos_encoding == opt["pos_encoding"]


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_every_shipped_checkpoint_loads(name):
    if not BUNDLED[name].is_file():
        pytest.skip(f"{BUNDLED[name]} is not in this checkout")
    loaded = load_model(name)
    keys = list(loaded.model.state_dict())
    assert any(k.startswith("upsample.phi.") for k in keys)
    assert not any(k.startswith("P2W.") for k in keys)
    x = torch.rand(1, loaded.in_channels, 6, 7)
    with torch.no_grad():
        assert loaded.model(x, scale=1.5).shape[-2:] == (9, 10)
