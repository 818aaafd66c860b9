"""Distributed (DDP) training with BasicSR: process-group start, per-iteration scales, checks.

BasicSR 1.4.2 starts ``torch.distributed`` itself (``--launcher pytorch|slurm``), but assumes a
CUDA machine: ``_init_dist_pytorch`` calls ``torch.cuda.set_device(rank % num_gpus)`` (a
``ZeroDivisionError`` without a GPU), hard-codes the ``nccl`` backend, ignores ``LOCAL_RANK``
(``rank % num_gpus`` is wrong on nodes with different GPU counts), and ``model_to_device`` wraps
the network in ``DistributedDataParallel(device_ids=[torch.cuda.current_device()])``. The
replacements here are installed into BasicSR once, by :func:`install` (called when
:mod:`metasr.integrations.basicsr` is imported); nothing in site-packages is patched on disk.

* :func:`init_dist`: BasicSR's ``init_dist`` with the backend chosen automatically (``nccl`` when
  the run uses CUDA, else ``gloo``), overridable (``backend=``, ``dist_params.backend`` in the
  option file, or ``METASR_DIST_BACKEND``), ``LOCAL_RANK`` respected, and a timeout
  (``METASR_DIST_TIMEOUT`` seconds, default 1800) so a lost rank ends the job instead of hanging.
* :class:`IterationScaleSampler`: BasicSR's ``EnlargedSampler`` (each rank reads a different
  shard of a per-epoch shuffle) whose items also carry the batch's
  :class:`~metasr.data.datasets.BatchSpec`, drawn from ``(manual_seed, iteration)`` only
  (:func:`batch_spec_at`). Every rank therefore trains on the same ``(r_v, r_h)`` and LR patch
  size at a given iteration, the sequence does not depend on the world size, and a resumed run
  continues it exactly. Equal shapes on all ranks also keep DDP's ranks in lockstep: each step
  costs about the same on every rank, so none waits long in the gradient all-reduce.
* :func:`check_ranks_agree` and :func:`check_replicas_identical`: cheap collective checks that the
  batch spec (every iteration) and the parameters (every checkpoint) are the same on all ranks.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import os
import random
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from basicsr.data.data_sampler import EnlargedSampler
from torch import nn

from ...data.datasets import ArbitraryScaleDataset, BatchSpec

__all__ = [
    "BACKEND_ENV",
    "TIMEOUT_ENV",
    "IterationScaleSampler",
    "batch_spec_at",
    "check_ranks_agree",
    "check_replicas_identical",
    "first_failure",
    "init_dist",
    "install",
    "resolve_backend",
    "wrap_ddp",
]

#: Environment variable that overrides the automatic backend choice (``gloo``, ``nccl``, ...).
BACKEND_ENV = "METASR_DIST_BACKEND"
#: Environment variable: seconds a collective (or the start-up rendezvous) may wait for a rank.
TIMEOUT_ENV = "METASR_DIST_TIMEOUT"
_DEFAULT_TIMEOUT_S = 1800.0


def resolve_backend(requested: str | None = None, use_cuda: bool | None = None) -> str:
    """The ``torch.distributed`` backend to use.

    Args:
        requested: an explicit backend; ``None`` or ``"auto"`` consults ``METASR_DIST_BACKEND``
            and then chooses automatically.
        use_cuda: whether the run puts its model on CUDA (``num_gpu != 0``); ``None``: whenever
            CUDA is available.

    Returns:
        ``requested`` (validated), else ``nccl`` for CUDA runs and ``gloo`` otherwise.
    """
    choice = requested if requested not in (None, "auto") else os.environ.get(BACKEND_ENV)
    cuda = torch.cuda.is_available() if use_cuda is None else use_cuda and torch.cuda.is_available()
    if choice in (None, "", "auto"):
        return "nccl" if cuda and dist.is_nccl_available() else "gloo"
    choice = str(choice).lower()
    if not dist.is_backend_available(choice):
        raise ValueError(f"torch.distributed backend {choice!r} is not available in this PyTorch")
    if choice == "nccl" and not cuda:
        raise ValueError(
            "the nccl backend needs CUDA; this run is on the CPU (no GPU, or num_gpu: 0): use "
            f"gloo ({BACKEND_ENV}=gloo)"
        )
    return choice


def _timeout() -> datetime.timedelta:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        seconds = _DEFAULT_TIMEOUT_S if raw in (None, "") else float(raw)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be > 0 seconds, got {raw!r}")
    return datetime.timedelta(seconds=seconds)


def _slurm_environment(port: int | None) -> None:
    """Translate SLURM's task variables into the ``env://`` ones (as BasicSR's slurm launcher).

    Differences from BasicSR: ``LOCAL_RANK`` is ``SLURM_LOCALID`` (not ``rank % num_gpus``), and a
    ``MASTER_ADDR`` already set is kept (``scontrol`` is asked only otherwise).
    """
    try:
        rank, ntasks = os.environ["SLURM_PROCID"], os.environ["SLURM_NTASKS"]
    except KeyError as exc:
        raise ValueError(
            f"--launcher slurm needs SLURM's {exc.args[0]} (run it under srun)"
        ) from None
    os.environ["RANK"] = rank
    os.environ["WORLD_SIZE"] = ntasks
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    if port is not None:
        os.environ["MASTER_PORT"] = str(port)
    os.environ.setdefault("MASTER_PORT", "29500")  # torch.distributed's default port
    if "MASTER_ADDR" not in os.environ:
        nodes = os.environ.get("SLURM_NODELIST") or os.environ.get("SLURM_JOB_NODELIST")
        if not nodes:
            raise ValueError("--launcher slurm: SLURM_NODELIST is not set and neither MASTER_ADDR")
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True
        )
        os.environ["MASTER_ADDR"] = out.stdout.split()[0]


def init_dist(
    launcher: str,
    backend: str | None = None,
    port: int | None = None,
    use_cuda: bool | None = None,
    **kwargs: Any,
) -> None:
    """Start the default process group for ``--launcher pytorch`` or ``slurm`` (idempotent).

    Replaces ``basicsr.utils.dist_util.init_dist`` (same call signature). With ``pytorch``
    (``torchrun``) the rank, world size and rendezvous address come from the environment
    torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``),
    on one node or several; with ``slurm`` from ``srun``'s variables (one task per GPU).

    Args:
        launcher: ``"pytorch"`` or ``"slurm"``.
        backend: see :func:`resolve_backend` (BasicSR's ``dist_params.backend``).
        port: rendezvous port for ``slurm`` (BasicSR's ``dist_params.port``).
        use_cuda: whether the model goes to CUDA (the option file's ``num_gpu != 0``).
        **kwargs: passed to ``torch.distributed.init_process_group``.
    """
    if dist.is_initialized():
        return  # `metasr train` starts it before BasicSR's parse_options asks again
    if launcher == "slurm":
        _slurm_environment(port)
    elif launcher != "pytorch":
        raise ValueError(f"invalid launcher {launcher!r}: use pytorch (torchrun) or slurm")
    missing = [
        k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
    ]
    if missing:
        raise ValueError(
            f"--launcher {launcher} needs {', '.join(missing)} in the environment: start the "
            "command with torchrun (e.g. torchrun --nproc_per_node=2 $(which metasr) train ...)"
        )
    # As BasicSR: DataLoader workers must not fork a process that may hold a CUDA context.
    if torch.multiprocessing.get_start_method(allow_none=True) is None:
        torch.multiprocessing.set_start_method("spawn")
    name = resolve_backend(backend, use_cuda)
    cuda = torch.cuda.is_available() and use_cuda is not False
    if cuda:
        # One process per GPU: the local rank picks the GPU on this node.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    kwargs.setdefault("timeout", _timeout())
    dist.init_process_group(backend=name, **kwargs)


def first_failure(error: str | None) -> str | None:
    """Share each rank's start-up error with all ranks; the first one (with its rank), or None.

    Called by every rank, so that a bad data path on one node ends the job on all of them at
    once with the same message, instead of leaving the others waiting in a collective.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return error
    errors: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    for rank, err in enumerate(errors):
        if err is not None:
            return f"rank {rank}: {err}"
    return None


def wrap_ddp(net: nn.Module, opt: Mapping[str, Any], device: torch.device) -> nn.Module:
    """``net`` on ``device``, wrapped in ``DistributedDataParallel`` when the run is distributed.

    BasicSR's ``model_to_device`` without its CUDA assumption: on the CPU (gloo) DDP gets no
    ``device_ids``; on CUDA the device of this rank (set by :func:`init_dist`).
    """
    net = net.to(device)
    if opt.get("dist"):
        device_ids = (
            [device.index or torch.cuda.current_device()] if device.type == "cuda" else None
        )
        net = nn.parallel.DistributedDataParallel(
            net,
            device_ids=device_ids,
            find_unused_parameters=bool(opt.get("find_unused_parameters", False)),
        )
    elif opt.get("num_gpu", 0) > 1:
        net = nn.DataParallel(net)
    return net


# -- the scale of every iteration ------------------------------------------------------------


def batch_spec_at(dataset: ArbitraryScaleDataset, seed: int, iteration: int) -> BatchSpec:
    """The scale and LR patch size of training iteration ``iteration`` (1-based, BasicSR's).

    A function of ``(seed, iteration)`` and the dataset's sampler options only: the same on every
    rank, for every world size, and after a resume.
    """
    # random.Random seeds a str through SHA-512: stable across processes and Python versions.
    return dataset.draw_spec(random.Random(f"metasr-batch-spec/{seed}/{iteration}"))


class IterationScaleSampler(EnlargedSampler):
    """BasicSR's ``EnlargedSampler`` that also hands each batch its iteration's spec.

    Indices are BasicSR's: a permutation of the enlarged dataset seeded by the epoch (call
    ``set_epoch``, as ``train_pipeline`` does), of which rank ``r`` takes every
    ``world_size``-th item from ``r``. For an :class:`ArbitraryScaleDataset` each index comes as
    ``(index, spec)`` with the spec of the iteration its batch is trained at (the dataset's
    ``__getitems__`` builds the batch with it); other datasets get plain indices.

    Batch ``b`` of epoch ``e`` is trained at iteration ``start_iter + (e - start_epoch) ·
    batches_per_epoch + b + 1``: BasicSR's loop uses every full batch of an epoch, and a resumed
    run restarts the saved epoch's sampler at the saved iteration.

    Args:
        dataset, num_replicas, rank, ratio: as ``EnlargedSampler``.
        batch_size: samples per batch of this rank's ``DataLoader`` (``drop_last``).
        seed: the run's ``manual_seed`` (the same on all ranks).
        start_iter: iteration of the resumed state (0 for a fresh run).
        start_epoch: epoch of the resumed state (0 for a fresh run).
    """

    def __init__(
        self,
        dataset: Any,
        num_replicas: int,
        rank: int,
        ratio: int = 1,
        *,
        batch_size: int,
        seed: int,
        start_iter: int = 0,
        start_epoch: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas, rank, ratio)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.seed = int(seed)
        self.start_iter = int(start_iter)
        self.start_epoch = int(start_epoch)

    @property
    def batches_per_epoch(self) -> int:
        """Full batches of one epoch on this rank."""
        return self.num_samples // self.batch_size

    def first_iteration(self, epoch: int) -> int:
        """The iteration at which the first batch of ``epoch`` is trained."""
        return self.start_iter + (epoch - self.start_epoch) * self.batches_per_epoch + 1

    def __iter__(self) -> Iterator[Any]:
        indices = super().__iter__()
        # Any dataset that draws batch specs (ArbitraryScaleDataset, metasr.climate.fields'
        # FieldDataset) gets them; others get plain indices.
        if not callable(getattr(self.dataset, "draw_spec", None)):
            return indices
        return self._tagged(indices, self.first_iteration(self.epoch))

    def _tagged(self, indices: Iterator[int], first: int) -> Iterator[tuple[int, BatchSpec]]:
        spec = None
        for k, idx in enumerate(indices):
            if k % self.batch_size == 0:  # a new batch: the spec of its iteration
                spec = batch_spec_at(self.dataset, self.seed, first + k // self.batch_size)
            yield idx, spec


def _shared_seed(opt: dict[str, Any]) -> int:
    """``manual_seed``, made the same on all ranks (BasicSR draws it per rank when unset)."""
    seed = [int(opt["manual_seed"])]
    if opt.get("dist") and dist.is_initialized():
        dist.broadcast_object_list(seed, src=0)
    opt["manual_seed"] = seed[0]
    return seed[0]


def _train_batch_size(opt: Mapping[str, Any]) -> int:
    # The DataLoader batch of one process, as basicsr.data.build_dataloader computes it.
    per_gpu = int(opt["datasets"]["train"]["batch_size_per_gpu"])
    if opt.get("dist"):
        return per_gpu
    return per_gpu * max(int(opt.get("num_gpu") or 0), 1)


def _create_train_val_dataloader(original, opt: dict[str, Any], logger) -> Any:
    """BasicSR's ``create_train_val_dataloader`` with :class:`IterationScaleSampler`."""
    import basicsr.train as bt

    resumed = opt.get("resumed_at") or {}
    sampler_cls = functools.partial(
        IterationScaleSampler,
        batch_size=_train_batch_size(opt),
        seed=_shared_seed(opt),
        start_iter=int(resumed.get("iter", 0)),
        start_epoch=int(resumed.get("epoch", 0)),
    )
    saved, bt.EnlargedSampler = bt.EnlargedSampler, sampler_cls
    try:
        result = original(opt, logger)
    finally:
        bt.EnlargedSampler = saved
    per_gpu = int(opt["datasets"]["train"]["batch_size_per_gpu"])
    world = int(opt.get("world_size", 1))
    lr = opt["train"].get("optim_g", {}).get("lr")
    logger.info(
        f"Effective batch size: {per_gpu} per process x {world} process(es) = {per_gpu * world}"
        f"; learning rate {lr} as in the option file (BasicSR does not rescale it)"
    )
    return result


# -- consistency checks ----------------------------------------------------------------------


def check_ranks_agree(
    iteration: int, scale: Sequence[float], lq_size: Sequence[int], device: torch.device
) -> None:
    """Raise ``ValueError`` on every rank if the ranks train different batch specs.

    One all-gather of five numbers an iteration; DDP synchronises every step anyway.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    mine = torch.tensor([iteration, *scale, *lq_size], dtype=torch.float64, device=device)
    rows = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, mine)
    table = torch.stack(rows).cpu()
    if not bool((table == table[0]).all()):
        described = "; ".join(
            f"rank {r}: iter {int(t[0])} scale {t[1]:g}x{t[2]:g} LR {int(t[3])}x{int(t[4])}"
            for r, t in enumerate(table.tolist())
        )
        raise ValueError(
            f"ranks train different batches at iteration {iteration} ({described}); use "
            "MetaSRTrainDataset, whose sampler gives every rank the same scale"
        )


def _digest(net: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_replicas_identical(net: nn.Module, iteration: int, logger=None) -> str:
    """SHA-256 of ``net``'s state on this rank; ``ValueError`` if ranks differ (any bit).

    Logs the digest of every rank (rank 0's logger) and returns this rank's.
    """
    digest = _digest(net)
    if not (dist.is_available() and dist.is_initialized()):
        return digest
    digests: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if logger is not None:
        logger.info(f"Parameters @ {iteration}: sha256 per rank {' '.join(map(str, digests))}")
    if len(set(digests)) != 1:
        raise ValueError(f"model replicas differ between ranks at iteration {iteration}: {digests}")
    return digest


def install() -> None:
    """Install the replacements into BasicSR (idempotent)."""
    import basicsr.train as bt
    import basicsr.utils.dist_util as du
    import basicsr.utils.options as bo

    # parse_options looks init_dist up in basicsr.utils.options' globals at call time.
    bo.init_dist = du.init_dist = init_dist
    if not getattr(bt.create_train_val_dataloader, "_metasr", False):
        wrapper = functools.partial(_create_train_val_dataloader, bt.create_train_val_dataloader)
        wrapper._metasr = True  # type: ignore[attr-defined]
        bt.create_train_val_dataloader = wrapper
