"""``metasr.checkpoints``: every format, detection by content, the state-dict cleaner, backends."""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch

import metasr
from helpers import TINY_MODELS
from metasr._state_dict import WRAPPER_KEYS, clean_state_dict
from metasr.checkpoints import (
    NETWORK_KEY,
    build_network,
    load_basicsr_checkpoint,
    load_model,
    save_checkpoint,
    set_backend,
)

pytest.importorskip("safetensors")

EDSR_OPTS = {"type": "MetaEDSR", "n_resblocks": 1, "n_feats": 8, "hidden": 16, "img_range": 1.0}


def _edsr(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network(EDSR_OPTS).eval()


def _official(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return metasr.create_model("meta_rdn", G0=8, D=1, C=1, G=4, pos_encoding="official").eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k])) for k in sa)


# -------------------------------------------------------------------------- the state dict cleaner


def test_clean_state_dict_wrappers_prefix_and_ema_preference():
    a = {"w": torch.zeros(1)}
    b = {"w": torch.ones(1)}
    assert clean_state_dict(a) == (a, None)
    sd, key = clean_state_dict({"params": a, "params_ema": b, NETWORK_KEY: {"type": "X"}})
    assert key == "params_ema" and torch.equal(sd["w"], b["w"])
    sd, key = clean_state_dict({"params": a, "params_ema": b}, param_key="params")
    assert key == "params" and torch.equal(sd["w"], a["w"])
    for wrapper in WRAPPER_KEYS:
        sd, key = clean_state_dict({wrapper: {"module.w": b["w"]}, "epoch": 3})
        assert key == wrapper and list(sd) == ["w"]
    assert list(clean_state_dict({"module.a": a["w"], "b": a["w"]})[0]) == ["a", "b"]


def test_clean_state_dict_errors():
    with pytest.raises(ValueError, match="expected a state_dict"):
        clean_state_dict([torch.zeros(1)])
    with pytest.raises(ValueError, match="neither a state_dict"):
        clean_state_dict({"epoch": 3, "optimizer": {"lr": 1e-4}})
    with pytest.raises(ValueError, match=r"no state dict under 'params_ema' \(found: params\)"):
        clean_state_dict({"params": {"w": torch.zeros(1)}}, param_key="params_ema")


# ------------------------------------------------------------------------------------ formats


def test_metasr_safetensors_round_trip(tmp_path):
    model = _edsr()
    kwargs = {k: v for k, v in EDSR_OPTS.items() if k != "type"}
    save_checkpoint(tmp_path / "m.safetensors", model, "meta_edsr", kwargs, {"note": "hi"})
    loaded = load_model(tmp_path / "m.safetensors")
    assert (loaded.format, loaded.arch, loaded.kwargs) == ("metasr", "meta_edsr", kwargs)
    assert loaded.metadata["note"] == "hi" and not loaded.model.training
    assert _same_weights(model, loaded.model)


def test_basicsr_checkpoint_written_by_metasr_training(tmp_path):
    """``{"params", "params_ema", "metasr_network"}``: rebuilt from the recorded options, EMA."""
    plain, ema = _edsr(0), _edsr(1)
    opts = {**EDSR_OPTS, "backend": "torch"}
    obj = {"params": plain.state_dict(), "params_ema": ema.state_dict(), NETWORK_KEY: opts}
    torch.save(obj, tmp_path / "net_g_latest.pth")
    loaded = load_model(tmp_path / "net_g_latest.pth")
    assert (loaded.format, loaded.arch) == ("basicsr", "meta_edsr")
    assert loaded.metadata == {"param_key": "params_ema", "basicsr_type": "MetaEDSR"}
    assert loaded.model.backend == "torch" and loaded.value_range == 1.0
    assert _same_weights(ema, loaded.model)
    assert _same_weights(plain, load_model(tmp_path / "net_g_latest.pth", param_key="params").model)
    net, used = load_basicsr_checkpoint(tmp_path / "net_g_latest.pth")
    assert used == opts and _same_weights(ema, net)


def test_basicsr_checkpoint_with_options_from_the_caller(tmp_path):
    """A BasicSR file without ``metasr_network`` loads with ``network_opt`` (eval's --opt),
    DataParallel ``module.`` prefixes included, and is refused clearly without it."""
    model = _edsr()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"params": state}, tmp_path / "net_g_5.pth")
    with pytest.raises(ValueError, match="does not record its network"):
        load_model(tmp_path / "net_g_5.pth")
    loaded = load_model(tmp_path / "net_g_5.pth", network_opt=EDSR_OPTS)
    assert loaded.format == "basicsr" and _same_weights(model, loaded.model)
    net, _ = load_basicsr_checkpoint(tmp_path / "net_g_5.pth", EDSR_OPTS)
    assert _same_weights(model, net)


@pytest.mark.parametrize("name", ["model_1000.pt", "renamed.pth", "weights.bin", "noext"])
@pytest.mark.parametrize("wrap", ["raw", "module", "state_dict"])
def test_official_checkpoint_by_content(tmp_path, name, wrap):
    """The official state dict is recognised by its keys whatever the file is called."""
    model = _official()
    sd = model.state_dict()
    obj = {
        "raw": sd,
        "module": {f"module.{k}": v for k, v in sd.items()},
        "state_dict": {"state_dict": sd, "epoch": 1000},
    }[wrap]
    torch.save(obj, tmp_path / name)
    loaded = load_model(tmp_path / name)
    assert (loaded.format, loaded.arch, loaded.value_range) == ("official", "official", 255.0)
    assert loaded.model.pos_encoding == "official" and _same_weights(model, loaded.model)


def test_suffix_does_not_decide(tmp_path):
    """A BasicSR file named .pt loads as BasicSR; a metasr safetensors named .pth as metasr."""
    model = _edsr()
    torch.save({"params": model.state_dict(), NETWORK_KEY: EDSR_OPTS}, tmp_path / "x.pt")
    assert load_model(tmp_path / "x.pt").format == "basicsr"
    save_checkpoint(tmp_path / "y.pth", model, "meta_edsr", {"n_resblocks": 1, "n_feats": 8,
                    "hidden": 16, "img_range": 1.0})  # fmt: skip
    loaded = load_model(tmp_path / "y.pth")
    assert loaded.format == "metasr" and _same_weights(model, loaded.model)


def test_registry_name_and_default():
    with pytest.warns(UserWarning, match="random weights"):
        loaded = load_model("meta_edsr_tiny")
    assert loaded.format == "registry" and loaded.arch == "meta_edsr_tiny"
    from metasr.weights import DEFAULT_CHECKPOINT

    if DEFAULT_CHECKPOINT.is_file():
        assert load_model("default").name == "default"


def test_device_and_dtype():
    with pytest.warns(UserWarning):
        loaded = load_model("meta_edsr_tiny", dtype=torch.float64)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float64}


# ------------------------------------------------------------------------------------ refusals


class _NotWeights:
    pass


def test_clear_errors(tmp_path):
    torch.save({"obj": _NotWeights()}, tmp_path / "pickle.pt")
    (tmp_path / "notes.txt").write_text("not a checkpoint at all")
    (tmp_path / "zeros.safetensors").write_bytes(b"\x00" * 64)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    torch.save(_edsr().state_dict(), tmp_path / "edsr_raw.pth")  # weights without architecture
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "state.pth")
    bad_opts = {"params": _official().state_dict(), NETWORK_KEY: EDSR_OPTS}
    torch.save(bad_opts, tmp_path / "mismatch.pth")
    cases = {
        "pickle.pt": "not a PyTorch weights file that can be loaded safely",
        "notes.txt": "not a model checkpoint",
        "zeros.safetensors": "not a readable safetensors file",
        "list.pt": "holds a list",
        "edsr_raw.pth": r"a state dict of \d+ tensors that is neither the official",
        "state.pth": "not a model checkpoint: a dict",
        "mismatch.pth": "weights do not fit MetaEDSR",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message) as info:
            load_model(tmp_path / name)
        assert name in str(info.value)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_model(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="not a file"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="not 'default' or a registered architecture"):
        load_model("no_such_model")
    with pytest.raises(ValueError, match="unknown network type 'Bogus'"):
        load_model(tmp_path / "edsr_raw.pth", network_opt={"type": "Bogus"})


# ------------------------------------------------------------------------------------ backends


@pytest.mark.parametrize("arch", metasr.list_models())
def test_set_backend_reaches_every_head(arch, monkeypatch):
    """After ``set_backend`` every Meta-Upscale call of the model asks for that backend."""
    op = importlib.import_module("metasr.ops.meta_upscale.planning")  # where it is chosen

    model = metasr.create_model(arch, **TINY_MODELS[arch]).eval()
    asked: list[str | None] = []
    real = op.select_backend

    def spy(backend, *args, **kwargs):
        asked.append(backend)
        return real(backend, *args, **kwargs)

    monkeypatch.setattr(op, "select_backend", spy)
    set_backend(model, "naive")
    x = torch.rand(1, model.in_channels, 8, 8)
    with torch.no_grad():
        model(x, scale=(1.5, 2.0))
    assert asked and set(asked) == {"naive"}
    assert {m.backend for m in model.modules() if hasattr(m, "backend")} == {"naive"}


def test_load_model_backend_and_unknown_backend():
    with pytest.warns(UserWarning):
        assert load_model("meta_swinir", backend="im2col").model.backend == "im2col"
    with pytest.raises(ValueError, match="unknown backend 'bogus'"):
        set_backend(_edsr(), "bogus")
    # Checked once, by the op's own rule, before anything is read (not after the load).
    with pytest.raises(ValueError, match="unknown backend 'bogus'"):
        load_model("no/such/file.safetensors", backend="bogus")
    with pytest.raises(TypeError, match="backend must be a str"):
        load_model("no/such/file.safetensors", backend=1)
    model = _edsr()
    set_backend(model, "Naive")
    assert model.backend == "naive"


# ------------------------------------------------------------------------------------ imports


def test_new_modules_import_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("metasr.checkpoints", "metasr.inference", "metasr.io", "metasr.data"):
            importlib.import_module(name)


def test_build_network_wrong_types_are_type_errors():
    # A wrong type, refused by the constructor's validators, is a TypeError named with the
    # network; Python's own TypeError (a keyword it does not have) is a bad argument.
    with pytest.raises(TypeError, match="MetaEDSR: n_feats must be a positive integer"):
        build_network({"type": "MetaEDSR", "n_feats": "8"})
    with pytest.raises(TypeError, match="model 'meta_edsr': hidden must be a positive integer"):
        build_network({"type": "meta_edsr", "hidden": 8.0})
    with pytest.raises(ValueError, match="unexpected keyword argument 'n_blocks'"):
        build_network({"type": "MetaEDSR", "n_blocks": 3})
