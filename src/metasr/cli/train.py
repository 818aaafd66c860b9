"""``metasr train`` and ``metasr test`` (BasicSR pipelines); ``metasr eval`` is :mod:`.eval`.

``train``/``test`` run BasicSR's ``train_pipeline``/``test_pipeline`` with metasr registered
(:mod:`metasr.integrations.basicsr`) and the current directory as BasicSR's root, so
``experiments/``, ``tb_logger/`` and ``results/`` land where the command is run, as with
BasicSR's own ``basicsr/train.py``. The option file is checked first, so a missing dataset path
or a misspelt type is one line, not a traceback from inside BasicSR.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from . import CLIError
from .options import load_options

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``test``."""
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


# -- option files ------------------------------------------------------------------------------


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
        _check_train_values(opt, src)
    else:
        _need(opt, "val", src)
    _check_common_values(opt, src)


#: What BasicSR 1.4.2's SRModel builds (base_model.get_optimizer / setup_schedulers).
_OPTIMIZERS = ("Adam",)
_SCHEDULERS = ("MultiStepLR", "MultiStepRestartLR", "CosineAnnealingRestartLR")


def _number(value: object, where: str, *, low: float, integer: bool = False) -> float:
    """``value`` as a finite number >= ``low`` (an integer if asked); ``CLIError`` otherwise.

    YAML reads ``fast`` as a string, ``.nan``/``.inf`` as floats and ``1e-3`` (without a dot)
    as a string: each is refused here, in one line, rather than inside BasicSR or mid-run.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and integer and isinstance(value, float):
        ok = math.isfinite(value) and value.is_integer()
    if not ok or not math.isfinite(value) or value < low:
        kind = "an integer" if integer else "a number"
        raise CLIError(f"{where} must be {kind} >= {low:g}, got {value!r}")
    return float(value)


def _check_train_values(opt: dict[str, Any], src: str) -> None:
    """Values BasicSR takes without a word and fails on later (or trains wrongly with):
    iteration counts, frequencies (``x % 0`` after the first iteration), learning rate,
    optimizer, scheduler and losses."""
    train = opt["train"]
    _number(train["total_iter"], f"{src}: train.total_iter", low=1, integer=True)
    optim = _need(train, "optim_g", f"{src}: train")
    kind = optim.get("type")
    if kind not in _OPTIMIZERS:
        raise CLIError(
            f"{src}: train.optim_g.type {kind!r} is not supported (BasicSR builds "
            f"{', '.join(_OPTIMIZERS)})"
        )
    lr = _number(optim.get("lr"), f"{src}: train.optim_g.lr", low=0)
    if lr == 0:
        raise CLIError(f"{src}: train.optim_g.lr must be > 0, got {optim.get('lr')!r}")
    kind = train["scheduler"].get("type")
    if kind not in _SCHEDULERS:
        raise CLIError(
            f"{src}: train.scheduler.type {kind!r} is not supported (choose from "
            f"{', '.join(_SCHEDULERS)})"
        )
    losses = [k for k in ("pixel_opt", "perceptual_opt") if train.get(k)]
    if not losses:
        raise CLIError(f"{src}: train needs a loss (pixel_opt or perceptual_opt)")
    for key in losses:
        if not isinstance(train[key], dict) or not isinstance(train[key].get("type"), str):
            raise CLIError(f"{src}: train.{key} needs a 'type' (e.g. L1Loss)")
    logger = opt["logger"]
    _number(logger["print_freq"], f"{src}: logger.print_freq", low=1, integer=True)
    _number(logger["save_checkpoint_freq"], f"{src}: logger.save_checkpoint_freq", low=1)
    if opt.get("val") is not None:
        _number(opt["val"]["val_freq"], f"{src}: val.val_freq", low=1)
    dopt = opt["datasets"]["train"]
    _number(dopt["batch_size_per_gpu"], f"{src}: datasets.train.batch_size_per_gpu", low=1)
    _number(dopt["num_worker_per_gpu"], f"{src}: datasets.train.num_worker_per_gpu", low=0)
    if "dataset_enlarge_ratio" in dopt:
        where = f"{src}: datasets.train.dataset_enlarge_ratio"
        _number(dopt["dataset_enlarge_ratio"], where, low=1, integer=True)


def _check_common_values(opt: dict[str, Any], src: str) -> None:
    """Options of both ``train`` and ``test``: the seed, and a pretrained network file that
    must be weights (read safely here: never torch's advice to unpickle it)."""
    seed = opt.get("manual_seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise CLIError(f"{src}: manual_seed must be a non-negative integer, got {seed!r}")
    pretrained = (opt.get("path") or {}).get("pretrain_network_g")
    if isinstance(pretrained, str) and Path(os.path.expanduser(pretrained)).is_file():
        from ..checkpoints import check_weights_file

        try:
            check_weights_file(Path(os.path.expanduser(pretrained)))
        except ValueError as exc:
            raise CLIError(f"{src}: path.pretrain_network_g: {exc}") from None


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
    _check_network(opt["network_g"], src)
    train = opt.get("train") or {}
    for key in ("pixel_opt", "perceptual_opt"):
        if isinstance(train.get(key), dict) and isinstance(train[key].get("type"), str):
            from basicsr.utils.registry import LOSS_REGISTRY

            if train[key]["type"] not in LOSS_REGISTRY:
                raise CLIError(f"{src}: train.{key}: unknown loss type {train[key]['type']!r}")
    for phase, dopt in opt["datasets"].items():
        check(dopt["type"], DATASET_REGISTRY, f"datasets.{phase}.type")
        if dopt["type"] in ("MetaSRFieldDataset", "MetaSRFieldTestDataset"):
            _check_field_dataset(opt, phase, DATASET_REGISTRY.get(dopt["type"]), src)
        if dopt["type"] in ("MetaSRTrainDataset", "MetaSRTestDataset"):
            # Build it once now (file listing only) so that a bad scale sampler or patch size
            # is reported before BasicSR starts logging and training.
            try:
                dataset = DATASET_REGISTRY.get(dopt["type"])({**dopt, "cache": False})
                if dopt["type"] == "MetaSRTestDataset" and dataset.lq_template is not None:
                    _check_first_pairs(dataset)
            except (ValueError, FileNotFoundError) as exc:
                raise CLIError(f"{src}: datasets.{phase}: {exc}") from None


def _check_field_dataset(opt: dict[str, Any], phase: str, cls: Any, src: str) -> None:
    """Build a field dataset now (its source is memoised, so BasicSR's build reads nothing
    again): a missing variable, missing values, a constant field or a ratio too large for the
    grid are one line before ``experiments/NAME`` exists; and the statistics' units and the
    network's ``periodic_lon`` must fit the field."""
    from ..climate import check_units
    from ..climate.fields import stats_from_option

    where = f"{src}: datasets.{phase}"
    try:
        dataset = cls(dict(opt["datasets"][phase]))
        source = dataset.source
        for given in (opt.get("field_stats"), opt["datasets"][phase].get("stats")):
            stats = stats_from_option(given)
            if stats is not None:
                check_units(stats, source.units or None, f"the field {source.variable!r}")
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise CLIError(f"{where}: {exc}") from None
    if opt["network_g"].get("periodic_lon") and not dataset.grid.periodic_lon:
        lon = dataset.grid.lon
        raise CLIError(
            f"{src}: network_g.periodic_lon wraps longitude, but the field of datasets.{phase} "
            f"is regional (longitude {lon[0]:g}…{lon[-1]:g}); set periodic_lon: false"
        )


def _check_network(network_opt: dict[str, Any], src: str) -> None:
    """Build ``network_g`` of a metasr type on the ``meta`` device (no memory), so that wrong
    arguments or a network too large to build (``n_feats: 1000000``) are one line now."""
    import torch

    from ..checkpoints import ARCH_NAMES, build_network

    if network_opt["type"] not in ARCH_NAMES:
        return  # another package's network: BasicSR builds it
    try:
        with torch.device("meta"):
            build_network(network_opt)
    except (TypeError, ValueError) as exc:  # TypeError: a wrong type (ArgumentTypeError)
        raise CLIError(f"{src}: network_g: {exc}") from None


def _check_first_pairs(dataset: Any) -> None:
    """Load the first image's paired LR at every scale: an LR folder of another scale is then
    refused before the run (the dataset checks every other pair when it loads it)."""
    for k in range(len(dataset.scales)):
        dataset[k * len(dataset.gt_paths)]


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


def _yml_value(text: str) -> object:
    """A ``--force_yml`` value as BasicSR 1.4.2's ``_postprocess_yml_value`` reads it."""
    text = text.strip()
    if text == "~" or text.lower() == "none":
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.startswith("!!float"):
        return float(text.replace("!!float", ""))
    if text.isdigit():
        return int(text)
    if text.replace(".", "", 1).isdigit() and text.count(".") < 2:
        return float(text)
    if text.startswith("["):
        import ast

        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    return text


def apply_force_yml(opt: dict[str, Any], entries: list[str] | None, src: str) -> dict[str, Any]:
    """``opt`` with the ``--force_yml KEY:KEY=VALUE`` overrides applied, as BasicSR applies them.

    metasr checks the options before BasicSR reads them, so it must check the options BasicSR
    will run with: the overrides first. Like BasicSR, an override cannot create a new section
    (an intermediate key must exist); the last key may be new.

    Raises:
        CLIError: an entry without ``=``, or a path through a missing or non-mapping entry.
    """
    for entry in entries or []:
        if "=" not in entry:
            raise CLIError(f"bad --force_yml {entry!r}: expected KEY[:KEY...]=VALUE")
        keys, value = entry.split("=", 1)
        path = [k.strip() for k in keys.split(":")]
        # BasicSR splits on every "=" and exec()s the keys as opt["KEY"]...: names only.
        if "=" in value or not all(k.replace("-", "_").isidentifier() for k in path):
            raise CLIError(
                f"bad --force_yml {entry!r}: keys are option names, one '=' before the value"
            )
        node: Any = opt
        for depth, key in enumerate(path[:-1]):
            if not isinstance(node, dict) or key not in node or not isinstance(node[key], dict):
                where = ":".join(path[: depth + 1])
                raise CLIError(f"bad --force_yml {entry!r}: {src} has no section {where!r}")
            node = node[key]
        node[path[-1]] = _yml_value(value)
    return opt


def _check_all(args: argparse.Namespace, is_train: bool) -> None:
    opt = apply_force_yml(load_options(args.opt), args.force_yml, str(args.opt))
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
        opt = apply_force_yml(load_options(args.opt), args.force_yml, str(args.opt))
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
