"""metasr inside BasicSR: importing this module registers everything an option file names.

* ``ARCH_REGISTRY``: ``MetaRDN``, ``MetaEDSR``, ``MetaSwinIR`` (``network_g.type``);
* ``DATASET_REGISTRY``: ``MetaSRTrainDataset`` (random crops, one scale per batch) and
  ``MetaSRTestDataset`` (whole images × a list of scales); for lat/lon fields
  ``MetaSRFieldDataset`` (conservatively coarsened pairs, whole fields or full-width latitude
  bands, with coordinates) and ``MetaSRFieldTestDataset`` (whole fields × ratios);
* ``MODEL_REGISTRY``: ``MetaSRModel`` (passes each batch's scale to the network; validation per
  scale);
* ``METRIC_REGISTRY``: ``calculate_psnr_metasr``, ``calculate_ssim_metasr`` (per-axis border
  shave ``ceil(r_v)``/``ceil(r_h)``, Y channel or raw field).

Use it from Python as BasicSR's own ``train.py`` is used::

    import metasr.integrations.basicsr  # noqa: F401  (registers)
    from basicsr.train import train_pipeline
    train_pipeline(root_path=".")

or with ``metasr train -opt options/train/...yml``. BasicSR 1.4.2 needs two fixes with current
PyTorch; both are applied here, once, before anything else touches BasicSR (see
:func:`_install_torchvision_shim` and :func:`_load_resume_state`). Its distributed start-up and
DDP wrapping assume CUDA; :mod:`.distributed` replaces them (CPU/gloo and CUDA/nccl under
``torchrun`` or SLURM) and gives every rank the same scale at each iteration.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from os import path as osp
from typing import Any

import torch

__all__ = [
    "MetaSRFieldDataset",
    "MetaSRFieldTestDataset",
    "MetaSRModel",
    "MetaSRTestDataset",
    "MetaSRTrainDataset",
    "register",
]


def _install_torchvision_shim() -> None:
    """Provide ``torchvision.transforms.functional_tensor`` for BasicSR 1.4.2.

    Why: ``basicsr/data/degradations.py`` (imported by ``import basicsr``) does
    ``from torchvision.transforms.functional_tensor import rgb_to_grayscale``; torchvision 0.17
    removed that public module (its content lives on as ``_functional_tensor``). Without this
    alias ``import basicsr`` fails with ``ModuleNotFoundError``.
    """
    name = "torchvision.transforms.functional_tensor"
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
        return  # an older torchvision that still has it
    except ImportError:
        pass
    try:
        sys.modules[name] = importlib.import_module("torchvision.transforms._functional_tensor")
    except ImportError:
        from torchvision.transforms import functional as tvf

        shim = types.ModuleType(name)
        shim.rgb_to_grayscale = tvf.rgb_to_grayscale  # type: ignore[attr-defined]
        sys.modules[name] = shim


_install_torchvision_shim()

try:
    import basicsr  # noqa: F401, E402  (after the shim, on purpose)
    import basicsr.train  # noqa: E402
except ImportError as exc:  # pragma: no cover - exercised only without the train extra
    raise ImportError(
        f"metasr's BasicSR integration needs BasicSR 1.4.2 ({exc}); install the training "
        "extra: pip install --no-build-isolation basicsr==1.4.2 && pip install 'metasr[train]'"
    ) from exc

from basicsr.utils import check_resume, scandir  # noqa: E402
from basicsr.utils.registry import (  # noqa: E402
    ARCH_REGISTRY,
    DATASET_REGISTRY,
    METRIC_REGISTRY,
    MODEL_REGISTRY,
)

from ...checkpoints import ARCH_NAMES, build_network  # noqa: E402
from ...climate.fields import FieldDataset, FieldTestDataset  # noqa: E402
from ...data.datasets import ArbitraryScaleDataset, ArbitraryScaleTestDataset  # noqa: E402
from . import distributed  # noqa: E402
from .metrics import calculate_psnr_metasr, calculate_ssim_metasr  # noqa: E402
from .model import MetaSRModel  # noqa: E402


def _load_resume_state(opt: dict[str, Any]) -> dict[str, Any] | None:
    """Replacement for ``basicsr.train.load_resume_state`` that also works without a GPU.

    Why: BasicSR 1.4.2 loads the training state with
    ``map_location=lambda s, loc: s.cuda(torch.cuda.current_device())``, which raises on a
    CPU-only machine (and on a CUDA build without a driver), so ``--auto_resume`` and
    ``path.resume_state`` never worked on CPU. Here the state goes to the training device
    (``num_gpu: 0`` or no CUDA → CPU).

    Which file is resumed is unchanged: with ``--auto_resume`` the newest
    ``experiments/<name>/training_states/<iter>.state``, otherwise ``path.resume_state``. Its
    epoch and iteration are recorded as ``opt["resumed_at"]``, from which the training sampler
    continues the per-iteration scale sequence (:class:`.distributed.IterationScaleSampler`).
    """
    state_path = None
    if opt.get("auto_resume"):
        folder = osp.join("experiments", opt["name"], "training_states")
        if osp.isdir(folder):
            iters = [
                int(osp.splitext(f)[0])
                for f in scandir(folder, suffix="state", recursive=False, full_path=False)
                if osp.splitext(f)[0].isdigit()
            ]
            if iters:
                state_path = osp.join(folder, f"{max(iters)}.state")
                opt["path"]["resume_state"] = state_path
    else:
        state_path = opt["path"].get("resume_state")
    if state_path is None:
        return None
    if not osp.isfile(state_path):
        raise FileNotFoundError(f"resume state does not exist: {state_path}")
    if opt.get("num_gpu", 0) != 0 and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    state = torch.load(state_path, map_location=device)
    check_resume(opt, state["iter"])
    opt["resumed_at"] = {"epoch": int(state["epoch"]), "iter": int(state["iter"])}
    return state


class _PathAcceptingLists:
    """``os.path`` for ``basicsr.utils.options``, whose ``expanduser(dataroot_gt)`` fails with a
    ``TypeError`` on a list of roots, which field datasets accept (``dataroot_gt: [a.nc, b.nc]``):
    each item is expanded instead."""

    def __getattr__(self, name: str) -> Any:
        return getattr(osp, name)

    @staticmethod
    def expanduser(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [osp.expanduser(v) for v in value]
        return osp.expanduser(value)


# train_pipeline looks the function up in its module's globals at call time.
basicsr.train.load_resume_state = _load_resume_state
sys.modules["basicsr.utils.options"].osp = _PathAcceptingLists()
distributed.install()


class MetaSRTrainDataset(ArbitraryScaleDataset):
    """BasicSR name of :class:`metasr.data.ArbitraryScaleDataset` (random crops, one scale a
    batch; options in its docstring)."""


class MetaSRTestDataset(ArbitraryScaleTestDataset):
    """BasicSR name of :class:`metasr.data.ArbitraryScaleTestDataset` (whole images × scales)."""


class MetaSRFieldDataset(FieldDataset):
    """BasicSR name of :class:`metasr.climate.fields.FieldDataset` (field pairs with coordinates,
    one ratio and band a batch; options in its module's docstring)."""


class MetaSRFieldTestDataset(FieldTestDataset):
    """BasicSR name of :class:`metasr.climate.fields.FieldTestDataset` (whole fields × ratios)."""


def _arch_factory(name: str):
    """A callable named ``name`` that builds the metasr network from BasicSR's ``**opt``."""

    def factory(**kwargs: Any) -> torch.nn.Module:
        return build_network({"type": name, **kwargs})

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"metasr's {name} (see metasr.archs), built from BasicSR options."
    return factory


def register() -> None:
    """Register metasr's archs, datasets, model and metrics into BasicSR (idempotent)."""
    for name in ARCH_NAMES:
        if name not in ARCH_REGISTRY:
            ARCH_REGISTRY.register(_arch_factory(name))
    for obj, registry in (
        (MetaSRTrainDataset, DATASET_REGISTRY),
        (MetaSRTestDataset, DATASET_REGISTRY),
        (MetaSRFieldDataset, DATASET_REGISTRY),
        (MetaSRFieldTestDataset, DATASET_REGISTRY),
        (MetaSRModel, MODEL_REGISTRY),
        (calculate_psnr_metasr, METRIC_REGISTRY),
        (calculate_ssim_metasr, METRIC_REGISTRY),
    ):
        if obj.__name__ not in registry:
            registry.register(obj)


register()
logging.getLogger("basicsr").debug("metasr registered into BasicSR")
