"""Test-wide setup.

Without a GPU, the Triton kernels run through the Triton interpreter: TRITON_INTERPRET must be
set before any kernel module is imported (Triton reads it when the kernels are defined).
Every buffer the backends' kernels fill is NaN-poisoned first (the :func:`poison_outputs`
fixture, flash-linear-attention's trick), so a pixel a kernel skips fails the test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests pick backends explicitly; a user's override must not leak in.
os.environ.pop("METASR_BACKEND", None)

from metasr.ops import memory  # noqa: E402  (after TRITON_INTERPRET is set)


def nan_output(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """:func:`metasr.ops.memory.empty_output`, but NaN-filled."""
    return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device)


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backends allocate through ``memory.empty_output``; in tests it returns NaN."""
    monkeypatch.setattr(memory, "empty_output", nan_output)


@pytest.fixture
def no_tf32():
    """Exact float32 convolutions and matmuls on CUDA, as the float32 tolerances assume."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def hr_dir(tmp_path_factory):
    """A folder holding one generated 24x24 RGB photo (``tools.samples``), per test module."""
    from tools.samples import make_synthetic_images

    root = tmp_path_factory.mktemp("hr")
    make_synthetic_images(root, n=1, size=(24, 24), seed=0)
    return root


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A saved tiny MetaEDSR (1 block, 8 features): load it with load_model(str(path))."""
    import metasr
    from metasr.checkpoints import save_checkpoint

    torch.manual_seed(0)
    kwargs = dict(n_resblocks=1, n_feats=8, hidden=16)
    path = tmp_path_factory.mktemp("limits") / "tiny.safetensors"
    save_checkpoint(path, metasr.create_model("meta_edsr", **kwargs), "meta_edsr", kwargs)
    return path
