"""One optimisation step of ``MetaSRModel`` on fixed samples, alone or under ``torchrun``.

Run by ``tests/integrations/test_distributed.py``: ``python tests/integrations/ddp_step.py OPT
DATA OUT`` (one process, batch 2B) or ``torchrun --nproc_per_node=2 tests/integrations/ddp_step.py
OPT DATA OUT`` (two ranks × B, rank ``r`` taking samples ``r·B … r·B+B−1`` of the same 2B).
Writes the parameters after the step to ``OUT`` (rank 0); one process also writes the step on the
first B samples only (``OUT.half``), and two ranks record whether feeding them different scales is
refused (``OUT.mismatch``).
"""

from __future__ import annotations

import os
import random
import sys

import torch
import yaml
from torch.utils.data import default_collate

import metasr.integrations.basicsr  # noqa: F401  (registers; installs the DDP fixes)
from metasr.data.datasets import BatchSpec
from metasr.integrations.basicsr import MetaSRTrainDataset, distributed

B = 3  # samples per rank


def _model(opt: dict):
    from basicsr.models import build_model

    torch.manual_seed(0)  # the same initial weights in every process
    return build_model(opt)


def _params(model) -> dict[str, torch.Tensor]:
    net = model.get_bare_model(model.net_g)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def main(opt_path: str, data: str, out: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        distributed.init_dist("pytorch", use_cuda=False)
    rank = int(os.environ.get("RANK", "0"))
    opt = yaml.safe_load(open(opt_path))
    opt.update(is_train=True, dist=world > 1, rank=rank, world_size=world, num_gpu=0)
    opt["path"] = {"pretrain_network_g": None, "strict_load_g": True}
    ds = MetaSRTrainDataset(dataroot_gt=data, lq_patch_size=12, cache=True)
    spec = BatchSpec(scale=(1.7, 2.3), lq_patch=12)
    samples = [ds.sample(i % len(ds), spec, rng=random.Random(i)) for i in range(2 * B)]
    per = 2 * B // world
    model = _model(opt)
    model.feed_data(default_collate(samples[rank * per : (rank + 1) * per]))
    model.optimize_parameters(1)
    if rank == 0:
        torch.save(_params(model), out)
    if world == 1:
        half = _model(opt)
        half.feed_data(default_collate(samples[:B]))
        half.optimize_parameters(1)
        torch.save(_params(half), out + ".half")
    else:
        other = BatchSpec(scale=(1.7 + rank, 2.3), lq_patch=12)
        model.feed_data(default_collate([ds.sample(0, other, rng=random.Random(0))]))
        try:
            model.optimize_parameters(2)
            refused = ""
        except ValueError as exc:
            refused = str(exc)
        if rank == 0:
            with open(out + ".mismatch", "w") as f:
                f.write(refused)
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
