"""``metasr train``, ``metasr test`` (BasicSR pipelines) and ``metasr eval`` (PSNR/SSIM table).

``train``/``test`` run BasicSR's ``train_pipeline``/``test_pipeline`` with metasr registered
(:mod:`metasr.integrations.basicsr`) and the current directory as BasicSR's root, so
``experiments/``, ``tb_logger/`` and ``results/`` land where the command is run, as with
BasicSR's own ``basicsr/train.py``. The option file is checked first, so a missing dataset path
or a misspelt type is one line, not a traceback from inside BasicSR.

``eval`` needs no option file: ``metasr eval --model default --data photos/ --scales 2,3,1.5x4``
loads a model (``default``, a ``.safetensors`` checkpoint, a BasicSR ``net_g_*.pth`` written by
``MetaSRModel``, a registry name, or ``bicubic``), makes LR images with MATLAB bicubic per axis,
and prints PSNR/SSIM per scale (Y channel for RGB, raw values for ``.npy`` fields; border
``ceil(r_v)`` rows, ``ceil(r_h)`` columns).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from . import CLIError

__all__ = ["register"]

_INSTALL_HINT = "pip install --no-build-isolation basicsr==1.4.2 && pip install 'metasr[train]'"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``test`` and ``eval``."""
    for name, helptext, func in (
        ("train", "train a network with BasicSR from an option file", _cmd_train),
        ("test", "test a trained network with BasicSR from an option file", _cmd_test),
    ):
        p = subparsers.add_parser(
            name,
            help=helptext,
            description=f"{helptext[0].upper()}{helptext[1:]} (BasicSR {name} pipeline; "
            "outputs go under the current directory).",
        )
        p.add_argument("-opt", "--opt", dest="opt", required=True, help="option YAML file")
        p.add_argument(
            "--launcher",
            choices=["none", "pytorch", "slurm"],
            default="none",
            help="pytorch: under torchrun (one process per GPU, or CPU processes with gloo); "
            "slurm: one srun task per GPU (see docs/training.md)",
        )
        if name == "train":
            p.add_argument(
                "--auto_resume",
                "--auto-resume",
                dest="auto_resume",
                action="store_true",
                help="resume from the newest experiments/<name>/training_states/*.state",
            )
        p.add_argument("--debug", action="store_true", help="BasicSR debug mode")
        # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK instead.
        p.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
        p.add_argument(
            "--force_yml",
            nargs="+",
            default=None,
            metavar="KEY=VALUE",
            help="override options, e.g. train:total_iter=100",
        )
        p.set_defaults(func=func)

    e = subparsers.add_parser(
        "eval",
        help="PSNR/SSIM of a model on a folder of images or .npy arrays at given scales",
        description="Evaluate a model at arbitrary (asymmetric) scales: LR made by MATLAB "
        "bicubic per axis, PSNR/SSIM on Y (RGB) or raw values, border ceil(r) per axis.",
    )
    e.add_argument(
        "--model",
        required=True,
        help="'default', a .safetensors or BasicSR net_g_*.pth checkpoint, a registry name, "
        "or 'bicubic'",
    )
    e.add_argument("--data", required=True, help="folder (or file) of HR images or .npy arrays")
    e.add_argument(
        "--scales", default="2,3,4", help="comma-separated scales; 1.5x4 = vertical x horizontal"
    )
    e.add_argument("--opt", help="option YAML whose network_g describes a .pth checkpoint")
    e.add_argument("--bicubic", action="store_true", help="add bicubic-baseline columns")
    e.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    e.add_argument("--backend", default=None, help="Meta-Upscale backend (default: auto)")
    e.add_argument("--csv", type=Path, help="write the table as CSV")
    e.add_argument("--json", type=Path, help="write the table as JSON")
    e.add_argument("--plot", type=Path, help="plot PSNR per scale to a PNG (needs matplotlib)")
    e.set_defaults(func=_cmd_eval)


# -- option files ------------------------------------------------------------------------------


def _load_options(path_str: str) -> dict[str, Any]:
    path = Path(path_str)
    if not path.is_file():
        raise CLIError(f"option file not found: {path}")
    try:
        import yaml
    except ImportError:
        raise CLIError(f"reading option files needs PyYAML: {_INSTALL_HINT}") from None
    try:
        opt = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CLIError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(opt, dict):
        raise CLIError(f"{path}: expected a mapping of options at the top level")
    return opt


def _need(opt: Mapping[str, Any], key: str, where: str, kind: type | tuple = dict) -> Any:
    if key not in opt or opt[key] is None:
        raise CLIError(f"{where}: missing option '{key}'")
    if not isinstance(opt[key], kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise CLIError(f"{where}: option '{key}' must be a {names}, got {opt[key]!r}")
    return opt[key]


def _check_path(value: object, where: str) -> None:
    for item in value if isinstance(value, list) else [value]:
        if not isinstance(item, str):
            raise CLIError(f"{where}: expected a path, got {item!r}")
        if "{" in item:
            continue  # a per-scale template, resolved when a scale is drawn
        if not Path(os.path.expanduser(item)).exists():
            raise CLIError(f"{where}: path does not exist: {item}")


def _check_options(opt: dict[str, Any], src: str, is_train: bool) -> None:
    """Structural checks that BasicSR would otherwise fail on with a KeyError traceback."""
    import torch

    _need(opt, "name", src, str)
    _need(opt, "model_type", src, str)
    net = _need(opt, "network_g", src)
    _need(net, "type", f"{src}: network_g", str)
    paths = _need(opt, "path", src)
    datasets = _need(opt, "datasets", src)
    if not datasets:
        raise CLIError(f"{src}: 'datasets' is empty")
    num_gpu = opt.get("num_gpu", 1)
    if num_gpu not in ("auto", None) and not isinstance(num_gpu, int):
        raise CLIError(f"{src}: num_gpu must be an integer or 'auto', got {num_gpu!r}")
    if isinstance(num_gpu, int) and num_gpu > 0 and not torch.cuda.is_available():
        raise CLIError(
            f"{src}: num_gpu is {num_gpu} but no CUDA device is available; use num_gpu: 0 (CPU)"
        )
    for key in ("pretrain_network_g", "resume_state"):
        if paths.get(key):
            _check_path(paths[key], f"{src}: path.{key}")
    phases = []
    for phase, dopt in datasets.items():
        where = f"{src}: datasets.{phase}"
        if not isinstance(dopt, dict):
            raise CLIError(f"{where}: must be a mapping of options")
        kind = str(phase).split("_")[0]
        if kind not in ("train", "val", "test"):
            raise CLIError(f"{where}: phase must be train, val_*, or test_*")
        phases.append(kind)
        _need(dopt, "name", where, str)
        _need(dopt, "type", where, str)
        if "dataroot_gt" in dopt:
            _check_path(dopt["dataroot_gt"], f"{where}.dataroot_gt")
        if dopt.get("dataroot_lq"):
            _check_path(dopt["dataroot_lq"], f"{where}.dataroot_lq")
        if kind == "train":
            _need(dopt, "batch_size_per_gpu", where, int)
            _need(dopt, "num_worker_per_gpu", where, int)
    if is_train:
        if "train" not in phases:
            raise CLIError(f"{src}: datasets needs a 'train' entry")
        train = _need(opt, "train", src)
        _need(train, "optim_g", f"{src}: train")
        _need(train, "scheduler", f"{src}: train")
        _need(train, "total_iter", f"{src}: train", (int, float))
        logger = _need(opt, "logger", src)
        _need(logger, "print_freq", f"{src}: logger", int)
        _need(logger, "save_checkpoint_freq", f"{src}: logger", (int, float))
        if opt.get("val") is not None:
            _need(opt["val"], "val_freq", f"{src}: val", (int, float))
    else:
        _need(opt, "val", src)


def _check_registered(opt: dict[str, Any], src: str) -> None:
    """Every ``type`` named by the options must be in BasicSR's registries."""
    from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, MODEL_REGISTRY

    def check(name: str, registry, where: str) -> None:
        if name not in registry:
            ours = sorted(k for k in registry.keys() if k.startswith("Meta"))
            raise CLIError(
                f"{src}: {where}: unknown type {name!r} (metasr registers {', '.join(ours)})"
            )

    check(opt["model_type"], MODEL_REGISTRY, "model_type")
    check(opt["network_g"]["type"], ARCH_REGISTRY, "network_g.type")
    for phase, dopt in opt["datasets"].items():
        check(dopt["type"], DATASET_REGISTRY, f"datasets.{phase}.type")
        if dopt["type"] in ("MetaSRTrainDataset", "MetaSRTestDataset"):
            # Build it once now (file listing only, nothing decoded) so that a bad scale
            # sampler or patch size is reported before BasicSR starts logging and training.
            try:
                DATASET_REGISTRY.get(dopt["type"])({**dopt, "cache": False})
            except (ValueError, FileNotFoundError) as exc:
                raise CLIError(f"{src}: datasets.{phase}: {exc}") from None


def _import_integration() -> None:
    try:
        import metasr.integrations.basicsr  # noqa: F401
    except ImportError as exc:
        raise CLIError(f"{exc}".splitlines()[0]) from None


@contextlib.contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    # BasicSR's parse_options reads sys.argv itself.
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def _basicsr_argv(prog: str, args: argparse.Namespace) -> list[str]:
    argv = [prog, "-opt", str(args.opt), "--launcher", args.launcher]
    if getattr(args, "auto_resume", False):
        argv.append("--auto_resume")
    if args.debug:
        argv.append("--debug")
    if args.local_rank:
        argv += ["--local_rank", str(args.local_rank)]
    if args.force_yml:
        argv += ["--force_yml", *args.force_yml]
    return argv


def _check_all(args: argparse.Namespace, is_train: bool) -> None:
    opt = _load_options(args.opt)
    _check_options(opt, str(args.opt), is_train)
    _import_integration()
    _check_registered(opt, str(args.opt))


def _start_distributed(args: argparse.Namespace) -> None:
    """Start the process group before any option check, so that every rank can learn of a
    failed check on another one (a data path missing on one node) instead of waiting for it."""
    _import_integration()
    from ..integrations.basicsr.distributed import init_dist

    if args.local_rank and "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    try:
        opt = _load_options(args.opt)
    except CLIError:
        opt = {}  # reported by the checks, on every rank
    params = opt.get("dist_params") if isinstance(opt.get("dist_params"), dict) else {}
    num_gpu = opt.get("num_gpu", 1)
    try:
        init_dist(
            args.launcher,
            backend=params.get("backend"),
            port=params.get("port"),
            use_cuda=None if num_gpu == "auto" else num_gpu != 0,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _run_pipeline(args: argparse.Namespace, is_train: bool) -> int:
    if args.launcher != "none":
        _start_distributed(args)
    try:
        if args.launcher == "none":
            _check_all(args, is_train)
        else:
            from ..integrations.basicsr.distributed import first_failure

            error = None
            try:
                _check_all(args, is_train)
            except CLIError as exc:
                error = str(exc)
            error = first_failure(error)
            if error is not None:
                raise CLIError(error)
        from basicsr.test import test_pipeline
        from basicsr.train import train_pipeline

        pipeline: Callable[[str], None] = train_pipeline if is_train else test_pipeline
        prog = f"metasr {'train' if is_train else 'test'}"
        with _argv(_basicsr_argv(prog, args)):
            pipeline(os.getcwd())
    finally:
        _stop_distributed()
    return 0


def _stop_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _cmd_train(args: argparse.Namespace) -> int:
    return _run_pipeline(args, is_train=True)


def _cmd_test(args: argparse.Namespace) -> int:
    return _run_pipeline(args, is_train=False)


# -- eval --------------------------------------------------------------------------------------


class _EvalModel:
    """What ``eval`` runs: ``fn(lq (1, C, h, w), scale, (H, W)) -> (1, C', H, W)``."""

    def __init__(self, fn: Callable, in_channels: int, name: str) -> None:
        self.fn = fn
        self.in_channels = in_channels
        self.name = name


def _bicubic_fn(lq, scale, size):
    from ..data.resize import imresize

    return imresize(lq, scale=scale, size=size)


def _load_eval_model(spec: str, opt_path: str | None, device: str, backend: str | None):
    import torch

    from ..modules import MetaUpsample

    if spec == "bicubic":
        return _EvalModel(_bicubic_fn, 0, "bicubic")
    path = Path(spec)
    value_range = 1.0
    if path.suffix.lower() == ".pth" and path.is_file():
        from ..integrations.checkpoints import load_basicsr_checkpoint, network_value_range

        network_opt = None
        if opt_path:
            network_opt = _load_options(opt_path).get("network_g")
            if not isinstance(network_opt, dict):
                raise CLIError(f"{opt_path}: no 'network_g' mapping")
        net, nopt = load_basicsr_checkpoint(path, network_opt)
        in_channels = int(nopt.get("in_channels", nopt.get("in_chans", 3)) or 3)
        value_range = network_value_range(net)
    else:
        try:
            from ..hub import load_model
        except ImportError:
            load_model = None
        if load_model is not None:
            loaded = load_model(spec, device="cpu")
            net, in_channels, value_range = loaded.model, loaded.in_channels, loaded.value_range
        else:  # pragma: no cover - only before metasr.hub exists
            from .. import archs

            if spec not in archs.list_models():
                raise CLIError(f"unknown model {spec!r}: not a file or registered model")
            net, in_channels = archs.create_model(spec), 3
    if backend is not None:
        for m in net.modules():
            if isinstance(m, MetaUpsample):
                m.backend = backend
    net = net.to(device).eval()

    def fn(lq, scale, size):
        with torch.no_grad():
            out = net(lq.to(device) * value_range, scale=scale)
        return (out / value_range).float().cpu()

    return _EvalModel(fn, in_channels, spec)


def evaluate(
    model: _EvalModel,
    data: str,
    scales: list[tuple[float, float]],
    bicubic: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """PSNR/SSIM per scale (one row each, plus a mean row) of ``model`` on ``data``."""
    from tqdm import tqdm

    from .. import metrics
    from ..data.datasets import ArbitraryScaleTestDataset
    from ..data.resize import imresize
    from ..data.scales import format_scale

    channels = model.in_channels if model.in_channels in (1, 3) else 3
    ds = ArbitraryScaleTestDataset(dataroot_gt=data, scales=scales, channels=channels)
    if model.in_channels not in (0, 1, 3) and ds.kind == "image":
        raise CLIError(f"model takes {model.in_channels} channels; images have 1 or 3")
    is_image = ds.kind == "image"
    data_range: float | str = 1.0 if is_image else "gt"
    sums: dict[str, dict[str, list[float]]] = {}
    for idx in tqdm(range(len(ds)), desc="eval", unit="img", disable=not progress):
        item = ds[idx]
        scale = tuple(float(v) for v in item["scale"])
        gt = item["gt"]
        lq = item["lq"][None]
        preds = {"": model.fn(lq, scale, tuple(gt.shape[-2:]))[0]}
        if bicubic:
            preds["bicubic_"] = imresize(lq, scale=scale, size=tuple(gt.shape[-2:]))[0]
        row = sums.setdefault(format_scale(scale), {})
        for prefix, sr in preds.items():
            if tuple(sr.shape) != tuple(gt.shape):
                raise CLIError(
                    f"model output {tuple(sr.shape)} does not match the HR {tuple(gt.shape)} at "
                    f"scale {format_scale(scale)}"
                )
            if is_image:
                sr = sr.clamp(0, 1).mul(255.0).round().div(255.0)
            for name, fn in (("psnr", metrics.psnr), ("ssim", metrics.ssim)):
                val = float(fn(sr, gt, scale=scale, data_range=data_range)[0])
                row.setdefault(prefix + name, []).append(val)
    rows = []
    for label, vals in sums.items():
        r: dict[str, Any] = {"scale": label, "images": len(vals["psnr"])}
        r.update({k: sum(v) / len(v) for k, v in vals.items()})
        if bicubic:
            r["delta_psnr"] = r["psnr"] - r["bicubic_psnr"]
        rows.append(r)
    mean = {"scale": "mean", "images": sum(r["images"] for r in rows)}
    for key in rows[0]:
        if key not in ("scale", "images"):
            mean[key] = sum(r[key] for r in rows) / len(rows)
    return [*rows, mean]


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CLIError("--plot needs matplotlib: pip install matplotlib") from None
    body = [r for r in rows if r["scale"] != "mean"]
    labels = [f"×{r['scale']}" for r in body]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(body) + 2), 3.2))
    ax.plot(labels, [r["psnr"] for r in body], "o-", label=title)
    if "bicubic_psnr" in body[0]:
        ax.plot(labels, [r["bicubic_psnr"] for r in body], "s--", label="bicubic")
    ax.set_xlabel("scale (vertical × horizontal)")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..data.scales import parse_scale_list
    from ..metrics import format_table

    scales = parse_scale_list(args.scales)
    model = _load_eval_model(args.model, args.opt, args.device, args.backend)
    rows = evaluate(model, args.data, scales, bicubic=args.bicubic)
    cols = ["scale", "images", "psnr", "ssim"]
    if args.bicubic:
        cols += ["bicubic_psnr", "bicubic_ssim", "delta_psnr"]
    print(f"model: {model.name}   data: {args.data}")
    print(format_table(rows, cols))
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=cols)
            writer.writeheader()
            writer.writerows(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        # JSON has no infinity (identical images give PSNR inf): write null.
        clean = [
            {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in r.items()}
            for r in rows
        ]
        payload = {"model": model.name, "data": str(args.data), "results": clean}
        args.json.write_text(json.dumps(payload, indent=2))
    if args.plot:
        _plot(rows, args.plot, model.name)
    return 0
