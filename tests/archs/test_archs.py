"""Tests of the Meta-SR networks (``metasr.archs``): registry, shapes at every kind of scale,
gradients, official MetaRDN compatibility (keys, forward, checkpoint loading), SwinIR key
compatibility, and argument errors. Models are tiny so the file runs in well under a minute.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import metasr
from helpers import TINY_MODELS
from metasr.archs import (
    MetaEDSR,
    MetaRDN,
    MetaSwinIR,
    create_model,
    list_models,
    load_official_metardn,
    model_entry,
    register_model,
)

# Small MLP hidden width keeps the heads cheap; every registered name needs an entry there.
TINY = TINY_MODELS
MODELS = metasr.list_models()

SCALES = [2, 3, 2.5, 1.7, 1, (1.5, 4.0), (3.5, 2.0), (1.0, 2.3)]


def _input(name: str, n: int, c: int, h: int, w: int) -> torch.Tensor:
    # MeanShift models take [0, img_range]; SwinIR takes [0, 1].
    model_range = 1.0 if name in ("meta_swinir", "meta_edsr_tiny") else 255.0
    return torch.rand(n, c, h, w) * model_range


def _expected_hw(h: int, w: int, scale) -> tuple[int, int]:
    rv, rh = scale if isinstance(scale, tuple) else (scale, scale)
    return math.floor(h * rv + 1e-6), math.floor(w * rh + 1e-6)


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


def test_registry_lists_every_model_and_tiny_configs_cover_it():
    names = list_models()
    assert names == sorted(names)
    assert {"meta_rdn", "meta_edsr", "meta_edsr_tiny", "meta_swinir"} <= set(names)
    assert set(TINY) == set(names), "add a tiny config for every registered model"
    assert list_models("meta_edsr*") == ["meta_edsr", "meta_edsr_tiny"]
    # `import metasr` exposes the registry lazily.
    assert metasr.list_models() == names
    assert isinstance(metasr.create_model("meta_edsr", **TINY["meta_edsr"]), MetaEDSR)


def test_registry_defaults_and_overrides():
    m = create_model("meta_edsr_tiny")
    assert (m.n_resblocks, m.n_feats, m.img_range, m.bicubic_residual) == (6, 32, 1.0, True)
    m = create_model("meta_edsr_tiny", n_resblocks=1, bicubic_residual=False)
    assert (m.n_resblocks, m.bicubic_residual) == (1, False)
    paper = create_model("meta_edsr", **TINY["meta_edsr"])
    assert paper.bicubic_residual is False and paper.pos_encoding == "asymmetric"
    assert create_model("META_RDN", **TINY["meta_rdn"]).D == 2  # names are case-insensitive


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown model 'meta_rdnn'.*did you mean 'meta_rdn'"):
        create_model("meta_rdnn")
    with pytest.raises(ValueError, match="registered models: meta_edsr"):
        create_model("resnet50")
    with pytest.raises(TypeError, match="model name must be a string"):
        create_model(3)
    with pytest.raises(ValueError, match=r"unexpected argument\(s\) \['n_blocks'\]"):
        create_model("meta_edsr", n_blocks=3)
    with pytest.raises(ValueError, match="already registered"):
        register_model("meta_rdn")(MetaRDN)
    with pytest.raises(ValueError, match="has no argument"):
        register_model("meta_rdn_bogus", depth=3)(MetaRDN)
    assert "meta_rdn_bogus" not in list_models()


# --------------------------------------------------------------------------------------------
# shapes and gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes_every_scale_kind(name):
    torch.manual_seed(0)
    model = create_model(name, **TINY[name]).eval()
    x = _input(name, 2, 3, 7, 9)
    with torch.no_grad():
        for scale in SCALES:
            y = model(x, scale=scale)
            assert y.shape == (2, 3, *_expected_hw(7, 9, scale)), (name, scale)
            assert torch.isfinite(y).all()
        for size in [(7, 9), (23, 31), (10, 40)]:
            assert model(x, size=size).shape == (2, 3, *size)


@pytest.mark.parametrize("name", MODELS)
def test_one_channel_gridded_and_channel_change(name):
    kwargs = dict(TINY[name])
    if name == "meta_edsr_tiny":
        kwargs["bicubic_residual"] = False  # it needs in == out channels
    model = create_model(name, in_channels=1, out_channels=2, **kwargs)
    y = model(_input(name, 1, 1, 6, 5), scale=(2.2, 3.1))
    assert y.shape == (1, 2, 13, 15)
    gridded = create_model(name, in_channels=1, out_channels=1, **TINY[name])
    assert gridded(_input(name, 1, 1, 6, 5), size=(14, 11)).shape == (1, 1, 14, 11)


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_trainable_parameter(name):
    torch.manual_seed(0)
    model = create_model(name, **TINY[name])
    x = _input(name, 2, 3, 6, 7).requires_grad_()
    y = model(x, scale=(2.5, 1.5))
    F.l1_loss(y, torch.rand_like(y)).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        else:  # only the MeanShift convs are frozen
            assert pname.split(".")[0] in ("sub_mean", "add_mean"), pname


@pytest.mark.parametrize("name", MODELS)
def test_backend_is_passed_to_the_head(name):
    torch.manual_seed(0)
    model = create_model(name, backend="naive", **TINY[name]).eval()
    x = _input(name, 1, 3, 5, 6)
    with torch.no_grad():
        ref = model(x, scale=(2.3, 1.6))
        model.backend = "torch"
        got = model(x, scale=(2.3, 1.6))
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
        model.backend = "no_such_backend"
        with pytest.raises(ValueError, match="unknown backend"):
            model(x, scale=2)


@pytest.mark.parametrize("name", MODELS)
def test_bicubic_residual(name):
    kwargs = {**TINY[name], "bicubic_residual": True}
    torch.manual_seed(0)
    on = create_model(name, **kwargs)
    torch.manual_seed(0)
    off = create_model(name, **{**kwargs, "bicubic_residual": False})
    last_on, last_off = on.pos2weight.meta_block[2], off.pos2weight.meta_block[2]
    torch.testing.assert_close(last_on.weight, 0.1 * last_off.weight)
    torch.testing.assert_close(last_on.bias, 0.1 * last_off.bias)
    # With a silent head the network is exactly bicubic upsampling of its input.
    with torch.no_grad():
        last_on.weight.zero_()
        last_on.bias.zero_()
        x = _input(name, 2, 3, 6, 7)
        tol = {"rtol": 1e-5, "atol": 1e-4 * x.abs().max().item()}
        y = on(x, size=(13, 30))
        ref = F.interpolate(x, size=(13, 30), mode="bicubic", align_corners=False)
        torch.testing.assert_close(y, ref, **tol)
        # By scale: sampled at (i + 0.5)/r - 0.5, where the head puts row i, also where the
        # output size is rounded down (7 x 1.5 = 10.5 -> 10 columns), unlike F.interpolate
        # to the rounded size, which would sample at (i + 0.5)·7/10 - 0.5.
        y = on(x, scale=(2.5, 1.5))
        assert y.shape[-2:] == (15, 10)
        ref = F.interpolate(
            x,
            scale_factor=(2.5, 1.5),
            mode="bicubic",
            align_corners=False,
            recompute_scale_factor=False,
        )
        torch.testing.assert_close(y, ref, **tol)
        by_size = F.interpolate(x, size=(15, 10), mode="bicubic", align_corners=False)
        assert not torch.allclose(y, by_size, **tol)


def test_paper_models_default_to_no_residual():
    for cls, kw in ((MetaRDN, TINY["meta_rdn"]), (MetaEDSR, TINY["meta_edsr"])):
        assert cls(**kw).bicubic_residual is False
    assert MetaSwinIR(**TINY["meta_swinir"]).bicubic_residual is False


# --------------------------------------------------------------------------------------------
# MetaRDN vs the official Meta-SR-Pytorch code (branch 0.4.0)
# --------------------------------------------------------------------------------------------


def official_metardn_keys(
    G0: int = 64, D: int = 16, C: int = 8, G: int = 64, n_colors: int = 3, k: int = 3
) -> list[tuple[str, tuple[int, ...]]]:
    """State_dict entries of the official ``MetaRDN`` (model/metardn.py, model/common.py),
    in registration order: MeanShift ×2, SFENet1/2, RDBs, GFF, P2W."""
    keys: list[tuple[str, tuple[int, ...]]] = []
    for ms in ("sub_mean", "add_mean"):
        keys += [(f"{ms}.weight", (3, 3, 1, 1)), (f"{ms}.bias", (3,))]
    keys += [("SFENet1.weight", (G0, n_colors, k, k)), ("SFENet1.bias", (G0,))]
    keys += [("SFENet2.weight", (G0, G0, k, k)), ("SFENet2.bias", (G0,))]
    for d in range(D):
        for c in range(C):
            p = f"RDBs.{d}.convs.{c}.conv.0"
            keys += [(f"{p}.weight", (G, G0 + c * G, 3, 3)), (f"{p}.bias", (G,))]
        keys += [(f"RDBs.{d}.LFF.weight", (G0, G0 + C * G, 1, 1)), (f"RDBs.{d}.LFF.bias", (G0,))]
    keys += [("GFF.0.weight", (G0, D * G0, 1, 1)), ("GFF.0.bias", (G0,))]
    keys += [("GFF.1.weight", (G0, G0, k, k)), ("GFF.1.bias", (G0,))]
    keys += [("P2W.meta_block.0.weight", (256, 3)), ("P2W.meta_block.0.bias", (256,))]
    keys += [("P2W.meta_block.2.weight", (3 * 3 * G0 * 3, 256))]
    keys += [("P2W.meta_block.2.bias", (3 * 3 * G0 * 3,))]
    return keys


def official_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict in the official names: the head's predictor is ``P2W``."""
    head = "upsample.phi."
    return {
        (f"P2W.{k[len(head) :]}" if k.startswith(head) else k): v
        for k, v in model.state_dict().items()
    }


def _key_shapes(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """The official names and shapes of ``model``'s entries."""
    return [(k, tuple(v.shape)) for k, v in official_state_dict(model).items()]


def test_metardn_config_b_keys_equal_official_model_1000():
    with torch.device("meta"):  # config B has 22M parameters; shapes are all we need
        model = MetaRDN(upsample={"pos_encoding": "official"})
    expected = official_metardn_keys()
    assert len(expected) == 304
    assert _key_shapes(model) == expected
    assert expected[-1] == ("P2W.meta_block.2.bias", (1728,))


def test_periodic_metardn_keeps_the_official_keys_and_loads_model_1000_layout():
    # periodic_lon swaps the convolutions' class, not their names: official weights still load.
    with torch.device("meta"):
        model = MetaRDN(upsample={"pos_encoding": "official"}, periodic_lon=True)
    assert _key_shapes(model) == official_metardn_keys()
    src = _official_like_model()
    periodic = load_official_metardn(official_state_dict(src), periodic_lon=True)
    assert periodic.periodic_lon
    for k, v in src.state_dict().items():
        assert torch.equal(periodic.state_dict()[k], v), k


def test_metardn_config_a_and_small_keys():
    with torch.device("meta"):
        a = MetaRDN(D=20, C=6, G=32, upsample={"pos_encoding": "official"})
    assert _key_shapes(a) == official_metardn_keys(D=20, C=6, G=32)
    official = {"hidden": 256, "pos_encoding": "official"}
    small = MetaRDN(**TINY["meta_rdn"] | {"upsample": official})
    assert _key_shapes(small) == official_metardn_keys(G0=8, D=2, C=2, G=4)
    # The asymmetric encoding only changes the MLP's input width.
    asym = dict(_key_shapes(MetaRDN(**TINY["meta_rdn"] | {"upsample": {"hidden": 256}})))
    assert asym["P2W.meta_block.0.weight"] == (256, 4)


def official_input_matrix_wpn(in_h: int, in_w: int, scale: float):
    """trainer.input_matrix_wpn of the official code, re-implemented: float32 projection
    ``arange(out).float() * (1/scale)``; every LR row/column gets ``ceil(scale)`` slots filled in
    order by the output rows/columns that project onto it, unused slots masked out.

    Returns:
        ``pos_mat (1, s·in_h·s·in_w, 3)`` = ``(1/scale, Δv, Δh)``, ``mask (s·in_h, s·in_w)``.
    """
    s = int(math.ceil(scale))

    def axis(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
        proj = torch.arange(0, n_out, 1).float().mul(1.0 / scale)
        base = torch.floor(proj)
        frac = proj - base
        base = base.int()
        offset = torch.ones(n_in, s)
        valid = torch.zeros(n_in, s)
        slot, current = 0, 0
        for i in range(n_out):
            if int(base[i]) == current:
                offset[base[i], slot] = frac[i]
                valid[base[i], slot] = 1
                slot += 1
            else:
                offset[base[i], 0] = frac[i]
                valid[base[i], 0] = 1
                current += 1
                slot = 1
        return offset.reshape(-1), valid.reshape(-1)  # (n_in·s,), LR index major

    out_h, out_w = int(scale * in_h), int(scale * in_w)
    off_h, valid_h = axis(in_h, out_h)
    off_w, valid_w = axis(in_w, out_w)
    rows, cols = s * in_h, s * in_w
    inv = torch.zeros(1, 1)
    inv[0, 0] = 1.0 / scale
    pos = torch.stack(
        (
            inv.expand(rows, cols),
            off_h[:, None].expand(rows, cols),
            off_w[None, :].expand(rows, cols),
        ),
        dim=-1,
    )
    mask = (valid_h[:, None] + valid_w[None, :]).eq(2)
    return pos.reshape(1, -1, 3), mask


def official_metardn_forward(sd: dict, x: torch.Tensor, scale: float, D: int, C: int):
    """The official MetaRDN forward + trainer masking, from raw state_dict tensors.

    Backbone as model/metardn.py; head as its ``repeat_x`` + ``unfold`` + ``matmul`` path on the
    ``ceil(scale)``-times grid, then ``masked_select`` as trainer.test does.
    """
    conv = lambda t, name, pad: F.conv2d(t, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=pad)  # noqa: E731
    x = conv(x, "sub_mean", 0)
    f1 = conv(x, "SFENet1", 1)
    h = conv(f1, "SFENet2", 1)
    outs = []
    for d in range(D):
        t = h
        for c in range(C):
            t = torch.cat((t, F.relu(conv(t, f"RDBs.{d}.convs.{c}.conv.0", 1))), 1)
        h = conv(t, f"RDBs.{d}.LFF", 0) + h
        outs.append(h)
    feat = conv(conv(torch.cat(outs, 1), "GFF.0", 0), "GFF.1", 1) + f1

    N, Cf, H, W = feat.shape
    s = int(math.ceil(scale))
    pos_mat, mask = official_input_matrix_wpn(H, W, scale)
    hid = F.relu(F.linear(pos_mat.view(pos_mat.size(1), -1), *_lin(sd, 0)))
    local_weight = F.linear(hid, *_lin(sd, 2))  # (s²·H·W, Cf·9·3)
    up_x = feat[:, None, None].expand(N, s, s, Cf, H, W).reshape(N * s * s, Cf, H, W)  # repeat_x
    cols = F.unfold(up_x, 3, padding=1)  # (N·s², Cf·9, H·W)
    cols = cols.view(N, s * s, Cf * 9, H * W, 1).permute(0, 1, 3, 4, 2)
    local_weight = local_weight.view(H, s, W, s, -1, 3).permute(1, 3, 0, 2, 4, 5)
    local_weight = local_weight.reshape(s * s, H * W, -1, 3)
    out = torch.matmul(cols, local_weight).permute(0, 1, 4, 2, 3)  # (N, s², 3, H·W, 1)
    out = out.reshape(N, s, s, 3, H, W).permute(0, 3, 4, 1, 5, 2).reshape(N, 3, s * H, s * W)
    out = conv(out, "add_mean", 0)
    out_h, out_w = int(H * scale), int(W * scale)
    return torch.masked_select(out, mask).view(N, 3, out_h, out_w)


def _lin(sd: dict, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    return sd[f"P2W.meta_block.{i}.weight"], sd[f"P2W.meta_block.{i}.bias"]


def _official_like_model(**kwargs) -> MetaRDN:
    torch.manual_seed(0)
    model = create_model("meta_rdn", G0=8, D=2, C=2, G=4, pos_encoding="official", **kwargs)
    model.eval()
    with torch.no_grad():  # trained MeanShift convs are not identities (see MeanShift's docstring)
        for ms in (model.sub_mean, model.add_mean):
            ms.weight.add_(0.05 * torch.randn_like(ms.weight))
            ms.bias.add_(5.0 * torch.randn_like(ms.bias))
    return model


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("scale", [1.5, 2.0, 3.0, 4.0])
def test_metardn_matches_official_forward(scale):
    model = _official_like_model()
    x = torch.rand(2, 3, 9, 11) * 255
    with torch.no_grad():
        ref = official_metardn_forward(official_state_dict(model), x, scale, D=2, C=2)
        y = model(x, scale=scale)
    assert y.shape == ref.shape
    assert _rel_err(y, ref) < 1e-4


@pytest.mark.parametrize("scale", [2.3, 2.7, 3.7])
def test_metardn_official_arithmetic_matches_at_awkward_scales(scale):
    # At h = 31 the float32 grid of the official code puts one output row on another LR row
    # than exact arithmetic does; arithmetic="official" reproduces it.
    model = _official_like_model(arithmetic="official")
    x = torch.rand(1, 3, 31, 12) * 255
    with torch.no_grad():
        ref = official_metardn_forward(official_state_dict(model), x, scale, D=2, C=2)
        y = model(x, scale=scale)
        model.upsample.arithmetic = "exact"
        y_exact = model(x, scale=scale)
    assert y.shape == ref.shape
    assert _rel_err(y, ref) < 1e-5
    assert _rel_err(y_exact, ref) > 1e-3


def test_metardn_official_encoding_rejects_asymmetric_scale():
    model = create_model("meta_rdn", pos_encoding="official", **TINY["meta_rdn"])
    with pytest.raises(ValueError, match="needs r_v == r_h"):
        model(torch.rand(1, 3, 5, 5) * 255, scale=(2.0, 3.0))


# --------------------------------------------------------------------------------------------
# load_official_metardn
# --------------------------------------------------------------------------------------------


def test_load_official_metardn_round_trip_config_b(tmp_path):
    torch.manual_seed(0)
    src = MetaRDN(upsample={"pos_encoding": "official"})
    sd = official_state_dict(src)
    path = tmp_path / "model_1000.pt"
    torch.save(sd, path)
    model = load_official_metardn(path)
    assert (model.G0, model.D, model.C, model.G, model.pos_encoding) == (64, 16, 8, 64, "official")
    for k, v in official_state_dict(model).items():
        assert torch.equal(v, sd[k]), k
    # The network's own load_state_dict takes the official names too (its pre-hook).
    again = MetaRDN(upsample={"pos_encoding": "official"})
    again.load_state_dict(sd)
    assert torch.equal(again.upsample.phi.meta_block[2].bias, sd["P2W.meta_block.2.bias"])


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "params", "module_prefix", "mapping"])
def test_load_official_metardn_wrappers(tmp_path, wrap):
    src = _official_like_model()
    sd = official_state_dict(src)
    obj = {
        "raw": sd,
        "state_dict": {"state_dict": sd, "epoch": 1000},
        "params": {"params": sd},
        "module_prefix": {f"module.{k}": v for k, v in sd.items()},
        "mapping": sd,
    }[wrap]
    if wrap == "mapping":
        model = load_official_metardn(obj, backend="naive")
        assert model.backend == "naive"
    else:
        torch.save(obj, tmp_path / "ckpt.pt")
        model = load_official_metardn(tmp_path / "ckpt.pt")
    x = torch.rand(1, 3, 6, 5) * 255
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(x, scale=2.5), src(x, scale=2.5), rtol=1e-5, atol=1e-3
        )


def test_load_official_metardn_errors(tmp_path):
    sd = official_state_dict(_official_like_model())

    def save(obj, name="bad.pt"):
        torch.save(obj, tmp_path / name)
        return tmp_path / name

    with pytest.raises(ValueError, match="could not read checkpoint"):
        load_official_metardn(tmp_path / "does_not_exist.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read checkpoint"):
        load_official_metardn(tmp_path / "garbage.pt")
    with pytest.raises(ValueError, match="expected a state_dict"):
        load_official_metardn(save([1, 2, 3]))
    with pytest.raises(ValueError, match="neither a state_dict"):
        load_official_metardn(save({"epoch": 3, "optimizer": {"lr": 1e-4}}))
    with pytest.raises(ValueError, match="not an official MetaRDN checkpoint"):
        load_official_metardn(save({"conv.weight": torch.zeros(3)}))
    missing = {k: v for k, v in sd.items() if k != "RDBs.1.LFF.bias"}
    with pytest.raises(ValueError, match=r"1 missing \(RDBs.1.LFF.bias\)"):
        load_official_metardn(save(missing))
    extra = {**sd, "tail.0.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"1 unexpected \(tail.0.weight\)"):
        load_official_metardn(save(extra))
    wrong = {**sd, "P2W.meta_block.0.weight": torch.zeros(256, 4)}  # an asymmetric-encoding MLP
    with pytest.raises(
        ValueError,
        match=r"1 of another shape \(upsample.phi.meta_block.0.weight: file \(256, 4\)",
    ):
        load_official_metardn(save(wrong))
    with pytest.raises(ValueError, match="'pos_encoding' is fixed by the checkpoint"):
        load_official_metardn(sd, pos_encoding="asymmetric")


# --------------------------------------------------------------------------------------------
# MetaSwinIR
# --------------------------------------------------------------------------------------------


def classical_swinir_keys(
    embed_dim: int,
    depths: list[int],
    num_heads: list[int],
    window_size: int,
    img_size: int,
    mlp_ratio: float,
    in_chans: int = 3,
    resi_connection: str = "1conv",
    upscale: int = 2,
    num_feat: int = 64,
) -> dict[str, tuple[int, ...]]:
    """State_dict entries of a classical-SR SwinIR (upsampler='pixelshuffle', patch_norm,
    no ape), from the structure of SwinIR's network_swinir.py."""
    E = embed_dim
    ws = min(window_size, img_size) if img_size <= window_size else window_size
    keys: dict[str, tuple[int, ...]] = {"conv_first.weight": (E, in_chans, 3, 3)}
    keys["conv_first.bias"] = (E,)
    keys["patch_embed.norm.weight"] = keys["patch_embed.norm.bias"] = (E,)

    def resi(prefix: str) -> None:
        if resi_connection == "1conv":
            keys[f"{prefix}.weight"], keys[f"{prefix}.bias"] = (E, E, 3, 3), (E,)
        else:
            for j, shape in (
                (0, (E // 4, E, 3, 3)),
                (2, (E // 4, E // 4, 1, 1)),
                (4, (E, E // 4, 3, 3)),
            ):
                keys[f"{prefix}.{j}.weight"], keys[f"{prefix}.{j}.bias"] = shape, (shape[0],)

    hidden = int(E * mlp_ratio)
    n_windows = (img_size // ws) ** 2
    for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
        for j in range(depth):
            p = f"layers.{i}.residual_group.blocks.{j}"
            keys[f"{p}.norm1.weight"] = keys[f"{p}.norm1.bias"] = (E,)
            if j % 2 == 1 and img_size > window_size:  # shifted blocks keep their mask
                keys[f"{p}.attn_mask"] = (n_windows, ws * ws, ws * ws)
            keys[f"{p}.attn.relative_position_bias_table"] = ((2 * ws - 1) ** 2, heads)
            keys[f"{p}.attn.relative_position_index"] = (ws * ws, ws * ws)
            keys[f"{p}.attn.qkv.weight"], keys[f"{p}.attn.qkv.bias"] = (3 * E, E), (3 * E,)
            keys[f"{p}.attn.proj.weight"], keys[f"{p}.attn.proj.bias"] = (E, E), (E,)
            keys[f"{p}.norm2.weight"] = keys[f"{p}.norm2.bias"] = (E,)
            keys[f"{p}.mlp.fc1.weight"], keys[f"{p}.mlp.fc1.bias"] = (hidden, E), (hidden,)
            keys[f"{p}.mlp.fc2.weight"], keys[f"{p}.mlp.fc2.bias"] = (E, hidden), (E,)
        resi(f"layers.{i}.conv")
    keys["norm.weight"] = keys["norm.bias"] = (E,)
    resi("conv_after_body")
    keys["conv_before_upsample.0.weight"] = (num_feat, E, 3, 3)
    keys["conv_before_upsample.0.bias"] = (num_feat,)
    stages = [4] * int(math.log2(upscale)) if upscale & (upscale - 1) == 0 else [9]
    for n, mult in enumerate(stages):
        keys[f"upsample.{2 * n}.weight"] = (mult * num_feat, num_feat, 3, 3)
        keys[f"upsample.{2 * n}.bias"] = (mult * num_feat,)
    keys["conv_last.weight"], keys["conv_last.bias"] = (in_chans, num_feat, 3, 3), (in_chans,)
    return keys


SWIN_SMALL = dict(embed_dim=8, depths=[2, 2], num_heads=[2, 4], window_size=4, mlp_ratio=2.0)
UPSAMPLER = lambda k: k.startswith(("upsample.", "conv_last."))  # noqa: E731
HEAD_KEYS = {f"upsample.phi.meta_block.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}


@pytest.mark.parametrize("resi_connection", ["1conv", "3conv"])
@pytest.mark.parametrize("upscale", [2, 3, 4])
def test_swinir_backbone_keys_match_classical_swinir(resi_connection, upscale):
    model = MetaSwinIR(img_size=16, resi_connection=resi_connection, **SWIN_SMALL)
    ref = classical_swinir_keys(
        img_size=16, resi_connection=resi_connection, upscale=upscale, **SWIN_SMALL
    )
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: v for k, v in ours.items() if not UPSAMPLER(k)} == {
        k: v for k, v in ref.items() if not UPSAMPLER(k)
    }
    # A classical checkpoint loads with strict=False; only the upsampler differs.
    torch.manual_seed(1)
    ckpt = {k: torch.randn(shape) for k, shape in ref.items()}
    for k in ckpt:  # real index/mask buffers, so "loaded == ours" below is meaningful
        if k.endswith(("relative_position_index", "attn_mask")):
            ckpt[k] = model.state_dict()[k].clone()
    result = model.load_state_dict(ckpt, strict=False)
    assert set(result.missing_keys) == HEAD_KEYS
    assert set(result.unexpected_keys) == {k for k in ref if UPSAMPLER(k)}
    sd = model.state_dict()
    for k, v in ckpt.items():
        if not UPSAMPLER(k):
            assert torch.equal(sd[k], v), k


def test_swinir_checkpoint_from_other_img_size_loads_and_masks_agree():
    torch.manual_seed(0)
    a = MetaSwinIR(img_size=16, **SWIN_SMALL).eval()
    b = MetaSwinIR(img_size=24, **SWIN_SMALL).eval()
    result = b.load_state_dict(a.state_dict())  # strict: attn_mask shapes differ, still loads
    assert not result.missing_keys and not result.unexpected_keys
    # a runs 24×24 with a mask computed on the fly, b with its precomputed one; also 16×16.
    for hw in ((24, 24), (16, 16), (13, 21)):
        x = torch.rand(1, 3, *hw)
        with torch.no_grad():
            torch.testing.assert_close(a(x, scale=2.0), b(x, scale=2.0), rtol=1e-5, atol=1e-6)


def test_swinir_any_input_size_exact_output_and_crop():
    torch.manual_seed(0)
    model = MetaSwinIR(img_size=16, **SWIN_SMALL).eval()
    for hw, kw, expected in (
        ((13, 21), dict(scale=(2.5, 1.5)), (32, 31)),
        ((5, 3), dict(size=(17, 30)), (17, 30)),
        ((2, 2), dict(scale=3.0), (6, 6)),  # too small to reflect-pad: replicate
        ((16, 16), dict(scale=1.0), (16, 16)),
    ):
        with torch.no_grad():
            y = model(torch.rand(1, 3, *hw), **kw)
        assert y.shape == (1, 3, *expected)
        assert torch.isfinite(y).all()
    # The input is padded to whole windows for the body, but the head gets the features
    # cropped back to the input size.
    seen = []
    hook = model.upsample.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    with torch.no_grad():
        model(torch.rand(1, 3, 13, 21), scale=2.0)
    hook.remove()
    assert seen == [(1, 64, 13, 21)]


def test_swinir_window_shrinks_like_swinir_for_small_img_size():
    model = MetaSwinIR(img_size=6, embed_dim=8, depths=[2], num_heads=[2], window_size=8)
    blk = model.layers[0].residual_group.blocks[1]
    assert (blk.window_size, blk.shift_size, blk.attn_mask) == (6, 0, None)
    assert model(torch.rand(1, 3, 6, 9), scale=2).shape == (1, 3, 12, 18)


def test_swinir_seed_config_reduced_training_step():
    # The seed: in_chans 1, img_size (96, 144), embed_dim 156, depths/heads [6]*6, window 8,
    # mlp_ratio 2, output (721, 1440). Same structure at reduced width/depth and input.
    torch.manual_seed(0)
    model = MetaSwinIR(
        img_size=(24, 36),
        in_chans=1,
        embed_dim=12,
        depths=[2, 2],
        num_heads=[2, 2],
        window_size=8,
        mlp_ratio=2,
        use_checkpoint=True,
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, target = torch.rand(1, 1, 24, 36), torch.rand(1, 1, 181, 360)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    y = model(x, size=(181, 360))
    assert y.shape == (1, 1, 181, 360)
    loss = F.l1_loss(y, target)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("layers.") for k in changed)
    assert any(k.startswith("upsample.phi") for k in changed)


def test_swinir_seed_config_full_size_builds():
    with torch.device("meta"):
        model = MetaSwinIR(
            img_size=(96, 144),
            in_chans=1,
            embed_dim=156,
            depths=[6] * 6,
            num_heads=[6] * 6,
            window_size=8,
            mlp_ratio=2,
        )
    blk = model.layers[5].residual_group.blocks[5]
    assert blk.attn_mask.shape == (12 * 18, 64, 64)
    assert model.pos2weight.meta_block[2].out_features == 9 * 64 * 1


# --------------------------------------------------------------------------------------------
# argument errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("meta_edsr", dict(n_feats=0), "n_feats must be a positive integer"),
        ("meta_edsr", dict(kernel_size=4), "kernel_size must be odd"),
        ("meta_edsr", dict(img_range=-1.0), "img_range must be a positive"),
        ("meta_edsr", dict(res_scale=float("nan")), "res_scale must be a positive finite"),
        ("meta_edsr", dict(pos_encoding="polar"), "pos_encoding must be one of"),
        ("meta_edsr", dict(arithmetic="fast"), "arithmetic must be"),
        ("meta_edsr", dict(mean=(0.5, 0.5)), "mean has 2 values but the input has 3 channels"),
        ("meta_edsr", dict(bicubic_residual=True, out_channels=1), "needs in_channels == out"),
        ("meta_rdn", dict(D=0), "D must be a positive integer"),
        ("meta_swinir", dict(embed_dim=10, num_heads=(3,)), "not divisible by num_heads"),
        ("meta_swinir", dict(depths=(2, 2)), "equal length"),
        ("meta_swinir", dict(resi_connection="2conv"), "resi_connection must be"),
        ("meta_swinir", dict(patch_size=4), "patch_size must be 1"),
        ("meta_swinir", dict(img_size=(16, 16, 3)), "img_size must be an int or a pair"),
        ("meta_swinir", dict(drop_path_rate=1.5), "drop_path_rate must be in"),
        ("meta_swinir", dict(in_chans=1, in_channels=2), "disagree"),
    ],
)
def test_bad_constructor_arguments(name, kwargs, match):
    """Bad values (wrong types: test_wrong_constructor_types_are_type_errors)."""
    with pytest.raises(ValueError, match=match):
        create_model(name, **{**TINY[name], **kwargs})


#: A wrong type for an argument every registered network takes.
WRONG_TYPES = [
    (dict(in_channels=2.5), "in_(channels|chans) must be a positive integer"),  # SwinIR: chans
    (dict(out_channels="3"), "out_(channels|chans) must be a positive integer"),
    (dict(bicubic_residual="yes"), "bicubic_residual must be True or False"),
    (dict(periodic_lon=1), "periodic_lon must be True or False"),
    (dict(upsample=[("hidden", 8)]), "upsample must be a metasr.HeadConfig"),
    (dict(upsample={"hidden": 8.0}), "hidden must be a positive integer"),
    (dict(upsample={"arithmetic": 1}), "arithmetic must be a string"),
    (dict(mean="gray"), "mean must be a number or a sequence"),
]


@pytest.mark.parametrize("kwargs, match", WRONG_TYPES)
@pytest.mark.parametrize("name", MODELS)
def test_wrong_constructor_types_are_type_errors(name, kwargs, match):
    """The constructor itself, and create_model (which names the model)."""
    entry = model_entry(name)
    with pytest.raises(TypeError, match=match):
        entry.constructor(**{**entry.defaults, **TINY[name], **kwargs})
    with pytest.raises(TypeError, match=f"model {name!r}: .*{match}"):
        create_model(name, **{**TINY[name], **kwargs})


@pytest.mark.parametrize("name", MODELS)
def test_wrong_call_types_are_type_errors(name):
    model = create_model(name, **TINY[name])
    x = _input(name, 1, 3, 5, 5)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        model(x.numpy(), scale=2)
    with pytest.raises(TypeError, match="scale must be a real number"):
        model(x, scale="2")
    with pytest.raises(TypeError, match="size W must be an integer"):
        model(x, size=(10, 10.5))
    with pytest.raises(TypeError, match="request must be a metasr.UpscaleRequest"):
        model(x, request={"scale": 2})


@pytest.mark.parametrize("name", MODELS)
def test_bad_call_arguments(name):
    model = create_model(name, **TINY[name])
    x = _input(name, 1, 3, 5, 5)
    with pytest.raises(ValueError, match="must be >= 1"):
        model(x, scale=0.5)
    with pytest.raises(ValueError, match="exactly one of scale"):
        model(x)
    with pytest.raises(ValueError, match="exactly one of scale"):
        model(x, scale=2, size=(10, 10))
    with pytest.raises(ValueError, match="smaller than the input"):
        model(x, size=(4, 10))
    with pytest.raises(ValueError, match="has 1 channels but the model has in_channels=3"):
        model(x[:, :1], scale=2)
    with pytest.raises(ValueError, match="must be 4-D"):
        model(x[0], scale=2)
    with pytest.raises(ValueError, match="floating-point"):
        model(x.to(torch.uint8), scale=2)


def test_import_metasr_does_not_import_archs():
    code = "import sys, metasr; print('metasr.archs' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
