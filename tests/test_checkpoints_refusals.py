"""Hostile but realistic checkpoints and model arguments (issue 10, items 6, 7, 11).

Each test reproduces one reported defect: crafted checkpoint metadata, a network of terabytes
asked for by a file, weights of another architecture, NaN weights, devices this machine lacks,
``save_checkpoint`` with the wrong architecture. (The inference argument checks are in
``tests/test_inference.py``, ``metasr eval``'s destinations in ``tests/cli/test_eval.py``, paired
LR of the wrong size in ``tests/data/test_datasets.py``.) The huge requests run in a subprocess
under a 3 GiB ``RLIMIT_DATA`` (never ``RLIMIT_AS``: CUDA builds of torch reserve address space at
import), so a refusal that came after an allocation would fail there instead of taking the
machine down.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import metasr
from helpers import run_cli, single_line
from metasr import checkpoints
from metasr.archs import _registry
from metasr.checkpoints import build_network, load_model, resolve_device, save_checkpoint

safetensors_torch = pytest.importorskip("safetensors.torch")

TINY_EDSR = {"n_resblocks": 1, "n_feats": 8, "upsample": {"hidden": 16}, "img_range": 1.0}


def _tiny_edsr(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return metasr.create_model("meta_edsr", **TINY_EDSR).eval()


def _crafted(path: Path, arch: str, kwargs_json: str) -> Path:
    """A metasr checkpoint whose metadata says ``arch``/``kwargs_json`` over tiny weights."""
    state = {k: v.contiguous().clone() for k, v in _tiny_edsr().state_dict().items()}
    meta = {"format": checkpoints.CHECKPOINT_FORMAT, "format_version": "1", "arch": arch,
            "kwargs": kwargs_json}  # fmt: skip
    safetensors_torch.save_file(state, str(path), metadata=meta)
    return path


# ------------------------------------------------------------------- item 7: crafted metadata


@pytest.mark.parametrize(
    ("kwargs_json", "fragment"),
    [
        ("[1, 2]", "'kwargs' metadata must be a JSON object of constructor arguments, got a list"),
        ('"n_feats"', "must be a JSON object of constructor arguments, got a str"),
        ('{"n_feats": "64"}', "n_feats must be a positive integer"),
        ('{"n_feats": [64]}', "cannot build meta_edsr from its metadata"),
        ('{"no_such_argument": 1}', "unexpected argument(s) ['no_such_argument']"),
    ],
)
def test_crafted_kwargs_metadata_is_one_value_error(tmp_path, kwargs_json, fragment):
    path = _crafted(tmp_path / "m.safetensors", "meta_edsr", kwargs_json)
    with pytest.raises(ValueError) as info:
        load_model(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_crafted_kwargs_metadata_in_the_cli(tmp_path, hr_dir, capsys):
    path = _crafted(tmp_path / "m.safetensors", "meta_edsr", "[1, 2]")
    code, _, err = run_cli(capsys, "eval", "--model", path, "--data", hr_dir, "--scales", "2")
    assert code == 1
    assert "must be a JSON object" in single_line(err)


# Run under a 3 GiB data limit: an allocation of the requested size would fail (MemoryError /
# RuntimeError traceback) instead of printing the one-line refusal the test expects.
_LIMITED = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_DATA, (3 << 30, 3 << 30))
    from metasr.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        # 36 TB of convolution weights (the reported case).
        ({"n_feats": 10**6}, "parameter and buffer elements"),
        # Tiny blocks, but ten million of them: Python objects alone would fill memory.
        ({"n_resblocks": 10**7, "n_feats": 1}, "modules"),
    ],
)
def test_huge_network_in_metadata_is_refused_before_allocating(tmp_path, hr_dir, kwargs, fragment):
    path = _crafted(tmp_path / "huge.safetensors", "meta_edsr", json.dumps(kwargs))
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-c", _LIMITED, "eval", "--model", str(path), "--data", str(hr_dir),
         "--scales", "2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert run.returncode == 1, run.stderr[-2000:]
    line = single_line(run.stderr)
    assert "cannot build meta_edsr from its metadata" in line and fragment in line, line
    assert "refused before building it" in line
    assert elapsed < 60


def test_size_caps_in_the_api():
    with pytest.raises(ValueError, match="more than 1,073,741,824 parameter and buffer elements"):
        metasr.create_model("meta_rdn", G0=10**6)
    with pytest.raises(ValueError, match="more than 1,073,741,824"):
        build_network({"type": "MetaEDSR", "n_feats": 10**6})
    # A wrong argument type is refused by the constructor's checks (a TypeError naming the
    # model and the argument), not by Python deep inside a layer.
    with pytest.raises(TypeError, match="model 'meta_swinir': depths must be a list or tuple"):
        metasr.create_model("meta_swinir", depths=5)
    with pytest.raises(ValueError, match=r"num_heads\[1\] must be a positive integer"):
        metasr.create_model("meta_swinir", depths=(2, 2), num_heads=(2, 0))
    with pytest.raises(TypeError, match="network options must be a mapping"):
        build_network([("type", "MetaEDSR")])  # type: ignore[arg-type]
    size = _registry.measure_model(lambda: metasr.archs.MetaEDSR(**TINY_EDSR))
    assert size.parameters == sum(p.numel() for p in _tiny_edsr().parameters())
    assert size.nbytes == 4 * size.elements and size.modules > 1


def test_free_memory_bounds_the_build(monkeypatch):
    # Pretend the machine has 1 MiB free: the default meta_edsr (6.7 MB of weights) is refused.
    monkeypatch.setattr(_registry, "available_memory_bytes", lambda device: 1 << 20)
    with pytest.raises(ValueError, match=r"needs 0\.0 GiB .* 0\.0 GiB of memory is available"):
        metasr.create_model("meta_edsr")
    metasr.create_model("meta_edsr", **TINY_EDSR)  # 60 kB fits


# ----------------------------------------------------- item 6: another architecture's weights


def test_weights_of_another_architecture_are_one_short_line(tmp_path, hr_dir, capsys):
    torch.manual_seed(0)
    rdn = metasr.create_model("meta_rdn", G0=8, D=2, C=2, G=4, upsample={"hidden": 16})
    torch.save({"params": rdn.state_dict()}, tmp_path / "net_g_5000.pth")
    opt = tmp_path / "edsr.yml"
    opt.write_text("network_g: {type: MetaEDSR, n_resblocks: 1, n_feats: 8, hidden: 16}\n")
    code, _, err = run_cli(
        capsys, "eval", "--model", tmp_path / "net_g_5000.pth", "--opt", opt, "--data", hr_dir,
        "--scales", "2",
    )  # fmt: skip
    assert code == 1
    line = single_line(err)
    assert "the weights do not fit MetaEDSR" in line
    edsr_keys, rdn_keys = set(_tiny_edsr().state_dict()), set(rdn.state_dict())
    assert f"{len(edsr_keys - rdn_keys)} missing (" in line
    assert f"{len(rdn_keys - edsr_keys)} unexpected (" in line
    assert line.count(", ...") == 2 and len(line) < 600, line


def test_weights_of_other_arguments_name_the_shapes(tmp_path):
    net = metasr.create_model("meta_edsr", n_resblocks=1, n_feats=8, upsample={"hidden": 16})
    torch.save({"params": net.state_dict()}, tmp_path / "n.pth")
    shapes = r"of another shape \(head\.0\.weight: file \(8, 3, 3, 3\), network \(16, 3, 3, 3\)"
    with pytest.raises(ValueError, match=shapes):
        load_model(tmp_path / "n.pth", network_opt={"type": "MetaEDSR", **TINY_EDSR, "n_feats": 16})


# ------------------------------------------------------------------------- non-finite weights


def test_non_finite_weights_are_refused_at_load(tmp_path):
    net = _tiny_edsr()
    save_checkpoint(tmp_path / "ok.safetensors", net, "meta_edsr", TINY_EDSR)
    state = safetensors_torch.load_file(str(tmp_path / "ok.safetensors"))
    meta = json.loads(json.dumps(_metadata(tmp_path / "ok.safetensors")))
    names = sorted(state)[:2]
    state[names[0]][0] = float("nan")
    state[names[1]][..., 0] = float("inf")
    safetensors_torch.save_file(state, str(tmp_path / "nan.safetensors"), metadata=meta)
    with pytest.raises(ValueError) as info:
        load_model(tmp_path / "nan.safetensors")
    message = str(info.value)
    assert "non-finite weights (NaN or infinity) in 2 tensor(s)" in message
    assert names[0] in message and "nan.safetensors" in message
    # BasicSR files go through the same check.
    torch.save(
        {"params": state, checkpoints.NETWORK_KEY: {"type": "MetaEDSR", **TINY_EDSR}},
        tmp_path / "net_g.pth",
    )
    with pytest.raises(ValueError, match="non-finite weights"):
        load_model(tmp_path / "net_g.pth")


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata())


# --------------------------------------------------------------- item 11: save_checkpoint arch


def test_save_checkpoint_refuses_what_would_never_load(tmp_path):
    target = tmp_path / "m.safetensors"
    net = _tiny_edsr()
    with pytest.raises(ValueError, match=r"does not rebuild this MetaEDSR .* missing"):
        save_checkpoint(target, net, "meta_rdn", {})
    with pytest.raises(ValueError, match=r"of another shape"):
        save_checkpoint(target, net, "meta_edsr", {**TINY_EDSR, "n_feats": 16})
    with pytest.raises(ValueError, match="unknown model 'meta_edrs'"):
        save_checkpoint(target, net, "meta_edrs", TINY_EDSR)
    with pytest.raises(TypeError, match="kwargs must be a mapping"):
        save_checkpoint(target, net, "meta_edsr", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kwargs must be JSON-serialisable"):
        save_checkpoint(target, net, "meta_edsr", {**TINY_EDSR, "img_range": float("nan")})
    broken = _tiny_edsr()
    with torch.no_grad():
        next(broken.parameters())[0] = float("nan")
    with pytest.raises(ValueError, match="non-finite weights"):
        save_checkpoint(target, broken, "meta_edsr", TINY_EDSR)
    assert list(tmp_path.iterdir()) == []
    # What is accepted loads back (the registry name is stored lower-cased).
    save_checkpoint(target, net, "Meta_EDSR", TINY_EDSR)
    assert load_model(target).arch == "meta_edsr"


# --------------------------------------------------------------------------------- devices


@pytest.mark.parametrize("device", ["tpu", "cuda:banana", 3.5])
def test_unknown_device_is_a_value_error(device):
    with pytest.raises(ValueError, match="unknown device"):
        load_model("meta_edsr_tiny", device=device)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_a_value_error():
    with pytest.raises(ValueError, match="no CUDA device is available"):
        resolve_device("cuda")


def test_dtype_must_be_floating():
    with pytest.raises(ValueError, match="floating-point torch.dtype"):
        load_model("meta_edsr_tiny", dtype=torch.int64)
    with pytest.raises(TypeError, match="floating-point torch.dtype"):
        load_model("meta_edsr_tiny", dtype="float32")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="backend must be a string"):
        load_model("meta_edsr_tiny", backend=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("option", [{"periodic_lon": True}, {"bicubic_residual": True}])
def test_save_checkpoint_refuses_kwargs_missing_a_behaviour_option(tmp_path, option):
    # These options leave every weight name and shape as they are, so only a comparison of the
    # options themselves catches kwargs that would rebuild another function.
    kwargs = {"n_resblocks": 1, "n_feats": 8, "hidden": 8}
    model = metasr.create_model("meta_edsr", **kwargs, **option)
    with pytest.raises(ValueError, match=next(iter(option))):
        save_checkpoint(tmp_path / "m.safetensors", model, "meta_edsr", kwargs)
    assert not (tmp_path / "m.safetensors").exists()
    save_checkpoint(tmp_path / "m.safetensors", model, "meta_edsr", {**kwargs, **option})
