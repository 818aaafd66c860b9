"""Distributed training (DDP) through ``torchrun`` on the CPU with gloo.

Real runs of ``metasr train --launcher pytorch`` on the tiny option file, in fresh processes as a
user starts them, with loopback rendezvous (127.0.0.1, free ports): two ranks on one node, a
resume, two "nodes" on one machine, a node with a bad data path; plus one DDP step compared with
a single-process step on the same samples. Every process is short (a few dozen iterations); the
file takes about two minutes on two cores, most of it interpreter start-up.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

if importlib.util.find_spec("basicsr") is None:
    pytest.skip("BasicSR is not installed (pip install 'metasr[train]')", allow_module_level=True)
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("this PyTorch has no gloo backend", allow_module_level=True)

from tools.samples import make_synthetic_images  # noqa: E402

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[2]
TRAIN_OPT = ROOT / "options" / "train" / "tiny_cpu.yml"
NAME = "MetaEDSR_tiny_cpu"
SEED = 0
_ITER = re.compile(r"iter:\s+([\d,]+),.*l_pix: (\S+) r_v: (\S+) r_h: (\S+)")
_DIGESTS = re.compile(r"Parameters @ (-?\d+): sha256 per rank (.+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env["METASR_DIST_TIMEOUT"] = "60"  # a lost rank fails the test instead of hanging it
    env["OMP_NUM_THREADS"] = "1"
    for key in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "METASR_DIST_BACKEND",
    ):
        env.pop(key, None)
    return env


def _torchrun(
    *args: str, nproc: int = 2, nnodes: int = 1, node_rank: int = 0, port: int | None = None
):
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nnodes}",
        f"--node_rank={node_rank}",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={port or _free_port()}",
        *args,
    ]


def _run(cmd: list[str], cwd: Path, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _train(cwd: Path, opt: Path, *extra: str, launcher: str = "pytorch") -> list[str]:
    return ["-m", "metasr", "train", "-opt", str(opt), "--launcher", launcher, *extra]


def _log(cwd: Path) -> str:
    logs = sorted((cwd / "experiments" / NAME).glob("train_*.log"))
    return "\n".join(p.read_text() for p in logs)


def _steps(log: str) -> dict[int, tuple[float, float, float]]:
    """iteration → (loss, r_v, r_h) from the training log."""
    return {
        int(m[1].replace(",", "")): (float(m[2]), float(m[3]), float(m[4]))
        for m in _ITER.finditer(log)
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp_data")
    make_synthetic_images(root / "train", n=6, size=(96, 96), seed=0)
    make_synthetic_images(root / "val", n=2, size=(60, 72), seed=1)
    return root


@pytest.fixture(scope="module")
def opt_file(data) -> Path:
    opt = yaml.safe_load(TRAIN_OPT.read_text())
    opt["manual_seed"] = SEED
    train = opt["datasets"]["train"]
    train["dataroot_gt"] = str(data / "train")
    # 24 samples an epoch: 3 batches a rank with two ranks, 6 with one, so the runs cross
    # several epoch boundaries (each reshuffles) and the resume lands mid-epoch.
    train["dataset_enlarge_ratio"] = 4
    opt["datasets"]["val"]["dataroot_gt"] = str(data / "val")
    opt["train"]["total_iter"] = 20
    opt["logger"].update(print_freq=1, save_checkpoint_freq=10)
    opt["val"]["val_freq"] = 20
    path = data / "train.yml"
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def ddp_dir(tmp_path_factory, opt_file) -> Path:
    """Two ranks for 20 iterations, then ``--auto_resume`` to 30 (two ranks again)."""
    cwd = tmp_path_factory.mktemp("ddp")
    first = _run(_torchrun(*_train(cwd, opt_file)), cwd)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    (cwd / "first.log").write_text(_log(cwd))
    resumed = _run(
        _torchrun(*_train(cwd, opt_file, "--auto_resume", "--force_yml", "train:total_iter=30")),
        cwd,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return cwd


@pytest.fixture(scope="module")
def single_steps(tmp_path_factory, opt_file) -> dict[int, tuple[float, float, float]]:
    """One process, 30 iterations uninterrupted."""
    cwd = tmp_path_factory.mktemp("single")
    run = _run(
        [
            sys.executable,
            *_train(cwd, opt_file, "--force_yml", "train:total_iter=30", launcher="none"),
        ],
        cwd,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return _steps(_log(cwd))


def test_two_ranks_agree_and_learn(ddp_dir, opt_file):
    from metasr.checkpoints import load_basicsr_checkpoint
    from metasr.integrations.basicsr import MetaSRTrainDataset
    from metasr.integrations.basicsr.distributed import batch_spec_at, check_replicas_identical

    log = (ddp_dir / "first.log").read_text()
    assert "World size (gpu number): 2" in log
    assert "Effective batch size: 4 per process x 2 process(es) = 8" in log
    steps = _steps(log)
    assert sorted(steps) == list(range(1, 21))
    # Every rank checks each iteration that all ranks train this scale (the run fails
    # otherwise), and it is the (seed, iteration) schedule's.
    dataset = MetaSRTrainDataset(yaml.safe_load(opt_file.read_text())["datasets"]["train"])
    for it, (_, r_v, r_h) in steps.items():
        spec = batch_spec_at(dataset, SEED, it)
        assert (r_v, r_h) == pytest.approx(spec.scale, rel=1e-4), it
    assert len({(r_v, r_h) for _, r_v, r_h in steps.values()}) > 10
    losses = [steps[i][0] for i in range(1, 21)]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    # Parameters bit-identical on both ranks at every checkpoint, and those saved.
    digests = {int(m[1]): m[2].split() for m in _DIGESTS.finditer(log)}
    assert sorted(digests) == [-1, 10, 20]
    for per_rank in digests.values():
        assert len(per_rank) == 2 and per_rank[0] == per_rank[1]
    net, _ = load_basicsr_checkpoint(ddp_dir / "experiments" / NAME / "models" / "net_g_20.pth")
    assert check_replicas_identical(net, 20) == digests[20][0]


def test_one_set_of_outputs(ddp_dir):
    exp = ddp_dir / "experiments"
    assert [p.name for p in exp.iterdir()] == [NAME]  # no second, renamed experiment folder
    models = sorted(p.name for p in (exp / NAME / "models").iterdir())
    # Every 10 iterations of the run and its resume, once, by rank 0.
    assert models == ["net_g_10.pth", "net_g_20.pth", "net_g_30.pth", "net_g_latest.pth"]
    states = sorted(p.name for p in (exp / NAME / "training_states").iterdir())
    assert states == ["10.state", "20.state", "30.state"]
    assert len(list((exp / NAME).glob("train_*.log"))) == 2  # the first run and the resume
    log = (ddp_dir / "first.log").read_text()
    assert log.count("Validation tiny_val @ 20") == 1


def test_resume_and_world_size_keep_the_scale_sequence(ddp_dir, single_steps):
    log = _log(ddp_dir)
    assert "Resuming training from epoch: 6, iter: 20." in log
    resumed = {it: s for it, s in _steps(log[log.index("Resuming training") :]).items()}
    assert sorted(resumed) == list(range(21, 31))
    first = _steps((ddp_dir / "first.log").read_text())
    assert sorted(single_steps) == list(range(1, 31))
    # Same (r_v, r_h) at every iteration: two ranks (run, then resumed) and one process.
    for it in range(1, 31):
        ddp = first[it] if it <= 20 else resumed[it]
        assert ddp[1:] == single_steps[it][1:], it


def test_one_ddp_step_equals_one_step_on_the_whole_batch(tmp_path, data):
    script = str(ROOT / "tests" / "integrations" / "ddp_step.py")
    out = tmp_path / "params"
    args = [script, str(TRAIN_OPT), str(data / "train")]
    single = _run([sys.executable, *args, f"{out}.single"], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = _run(_torchrun(*args, f"{out}.ddp"), tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a = torch.load(f"{out}.single")
    b = torch.load(f"{out}.ddp")
    half = torch.load(f"{out}.single.half")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    # The comparison can tell batches apart: a step on half of the samples differs.
    assert max(float((a[k] - half[k]).abs().max()) for k in a) > 1e-4
    refused = Path(f"{out}.ddp.mismatch").read_text()
    assert "ranks train different batches at iteration 2" in refused


def _two_nodes(
    cwd: Path, opts: tuple[Path, Path], *extra: str
) -> list[subprocess.CompletedProcess]:
    port = _free_port()
    procs = [
        subprocess.Popen(
            _torchrun(*_train(cwd, opt, *extra), nproc=1, nnodes=2, node_rank=rank, port=port),
            cwd=cwd,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank, opt in enumerate(opts)
    ]
    results = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return results


def test_two_nodes_on_one_machine(tmp_path, opt_file):
    nodes = _two_nodes(tmp_path, (opt_file, opt_file), "--force_yml", "train:total_iter=6")
    for node in nodes:
        assert node.returncode == 0, node.stderr[-3000:]
    log = _log(tmp_path)
    assert "World size (gpu number): 2" in log
    assert sorted(_steps(log)) == list(range(1, 7))
    models = sorted(p.name for p in (tmp_path / "experiments" / NAME / "models").iterdir())
    assert models == ["net_g_latest.pth"]


def test_a_bad_data_path_on_one_node_ends_the_job(tmp_path, opt_file):
    opt = yaml.safe_load(opt_file.read_text())
    opt["datasets"]["train"]["dataroot_gt"] = str(tmp_path / "missing")
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(opt, sort_keys=False))
    nodes = _two_nodes(tmp_path, (opt_file, bad))
    for node in nodes:
        assert node.returncode != 0
        assert "rank 1: " in node.stderr and "path does not exist" in node.stderr, node.stderr[
            -3000:
        ]
    assert not (tmp_path / "experiments").exists()


def test_sampler_shards_reshuffles_and_shares_specs(data):
    from metasr.integrations.basicsr import MetaSRTrainDataset
    from metasr.integrations.basicsr.distributed import IterationScaleSampler, batch_spec_at

    ds = MetaSRTrainDataset(dataroot_gt=str(data / "train"), lq_patch_size=[8, 12])
    ranks = [
        IterationScaleSampler(ds, 2, r, ratio=2, batch_size=2, seed=7, start_iter=10, start_epoch=1)
        for r in range(2)
    ]
    orders = {}
    for epoch in (1, 2):
        items = []
        for s in ranks:
            s.set_epoch(epoch)
            items.append(list(s))
        idx = [[i for i, _ in it] for it in items]
        assert sorted(idx[0] + idx[1]) == sorted(list(range(6)) * 2)  # disjoint shards
        for k in range(len(items[0])):
            # The same spec on both ranks; batch b of epoch e is iteration 10 + 3(e-1) + b + 1.
            it = 10 + 3 * (epoch - 1) + k // 2 + 1
            assert items[0][k][1] == items[1][k][1] == batch_spec_at(ds, 7, it)
        orders[epoch] = idx[0]
    assert orders[1] != orders[2]
    assert batch_spec_at(ds, 7, 11) != batch_spec_at(ds, 8, 11)


def test_backend_choice(monkeypatch):
    from metasr.integrations.basicsr.distributed import BACKEND_ENV, resolve_backend

    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert resolve_backend(None, use_cuda=False) == "gloo"
    assert resolve_backend("gloo", use_cuda=True) == "gloo"
    if torch.cuda.is_available() and torch.distributed.is_nccl_available():
        assert resolve_backend(None, use_cuda=True) == "nccl"
    with pytest.raises(ValueError, match="nccl backend needs CUDA"):
        resolve_backend("nccl", use_cuda=False)
    monkeypatch.setenv(BACKEND_ENV, "nccl")
    with pytest.raises(ValueError, match="nccl backend needs CUDA"):
        resolve_backend(None, use_cuda=False)
    monkeypatch.setenv(BACKEND_ENV, "gloo")
    assert resolve_backend(None, use_cuda=True) == "gloo"


def test_slurm_variables(monkeypatch):
    from metasr.integrations.basicsr import distributed

    for key, value in {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_NODELIST": "gpu[01-02]",
        "MASTER_ADDR": "127.0.0.1",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    distributed._slurm_environment(port=29777)
    got = {
        k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    assert got == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29777",
    }


def test_launcher_without_torchrun_is_one_line(tmp_path, opt_file):
    run = _run([sys.executable, *_train(tmp_path, opt_file)], tmp_path, timeout=60)
    assert run.returncode != 0
    assert "start the command with torchrun" in run.stderr
    assert "Traceback" not in run.stderr
