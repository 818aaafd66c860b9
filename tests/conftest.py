"""Test-wide setup.

Without a GPU, the Triton kernels run through the Triton interpreter: TRITON_INTERPRET must be
set before any kernel module is imported (Triton reads it when the kernels are defined).
Outputs are NaN-poisoned before backends write them, so a pixel a kernel skips fails the test.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["METASR_POISON_OUTPUTS"] = "1"
# Tests pick backends explicitly; a user's override must not leak in.
os.environ.pop("METASR_BACKEND", None)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
