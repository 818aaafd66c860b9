"""``metasr eval``: PSNR/SSIM of a model on a folder of images or ``.npy`` fields at given scales.

``metasr eval --model default --data photos/ --scales 2,3,1.5x4`` needs no option file: it loads
a model (``default``, a ``.safetensors`` checkpoint, a BasicSR ``net_g_*.pth`` written by
``MetaSRModel``, a registry name, or ``bicubic``), makes LR images with MATLAB bicubic per axis,
and prints PSNR/SSIM per scale (Y channel for RGB, raw values for ``.npy`` fields; border
``ceil(r_v)`` rows, ``ceil(r_h)`` columns). The protocol is :mod:`metasr.evaluate`; scales follow
the grammar of :mod:`metasr.data.scales` (``--scales 3.5,2`` is two scales; ``3.5x2`` one pair),
and ``--lq-size 96x144`` evaluates at a fixed LR size instead.

Everything the user gives is checked before the evaluation runs (which can take minutes): the
scales, ``--backend``, ``--device`` (a device this machine has), and the ``--csv``/``--json``/
``--plot`` destinations (not a folder, not below a file, in a writable folder).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import DEVICE_HELP, MODEL_HELP, CLIError, device_arg

__all__ = ["load_eval_model", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval``."""
    e = subparsers.add_parser(
        "eval",
        help="PSNR/SSIM of a model on a folder of images or .npy arrays at given scales",
        description="Evaluate a model at arbitrary (asymmetric) scales: LR made by MATLAB "
        "bicubic per axis, PSNR/SSIM on Y (RGB) or raw values, border ceil(r) per axis.",
    )
    e.add_argument(
        "--model",
        required=True,
        help=f"{MODEL_HELP}; or 'bicubic' (the baseline alone)",
    )
    e.add_argument("--data", required=True, help="folder (or file) of HR images or .npy arrays")
    e.add_argument(
        "--scales",
        default=None,
        help="comma-separated scales, each R or VERTICALxHORIZONTAL (2,3,1.5x4); default 2,3,4 "
        "unless --lq-size is given",
    )
    e.add_argument(
        "--lq-size",
        "--lq_size",
        dest="lq_size",
        default=None,
        help="comma-separated LR sizes HEIGHTxWIDTH (96x144): the HR is shrunk to exactly this",
    )
    e.add_argument("--opt", help="option YAML whose network_g describes a .pth checkpoint")
    e.add_argument("--bicubic", action="store_true", help="add bicubic-baseline columns")
    e.add_argument(
        "--tta",
        action="store_true",
        help="test-time self-ensemble of the model: the mean over the 8 flips and transposes",
    )
    e.add_argument("--device", default="auto", help=DEVICE_HELP)
    e.add_argument(
        "--backend",
        default=None,
        help="Meta-Upscale backend for every head: auto, naive, im2col, torch, triton "
        "(default: the model's own)",
    )
    e.add_argument("--csv", type=Path, help="write the table as CSV")
    e.add_argument("--json", type=Path, help="write the table as JSON")
    e.add_argument("--plot", type=Path, help="plot PSNR per scale to a PNG (needs matplotlib)")
    nc = e.add_argument_group(
        "netCDF fields (--data with .nc files; climate metrics; needs pip install metasr[climate])"
    )
    nc.add_argument("--var", metavar="NAME", help="the variable to score")
    nc.add_argument(
        "--baselines",
        default="nearest,bilinear,bicubic,conservative",
        help="comma-separated regridding baselines (default: all four; '' for none)",
    )
    nc.add_argument(
        "--stats", metavar="MEAN,STD|FILE", help="normalisation for a model without statistics"
    )
    nc.add_argument(
        "--weights",
        choices=("coslat", "area"),
        default="coslat",
        help="latitude weights of the scores (default coslat)",
    )
    e.set_defaults(func=_cmd_eval)


def load_eval_model(spec: str, opt_path: str | None, device: str, backend: str | None):
    """The model ``eval`` runs, as a :class:`metasr.evaluate.EvalModel`.

    ``spec`` is ``bicubic`` or anything :func:`metasr.checkpoints.load_model` takes (the format
    is read from the file's content); a BasicSR ``.pth`` that does not record its network takes
    the ``network_g`` options of ``opt_path``. ``backend`` is set on every head.
    """
    from ..checkpoints import load_model
    from ..evaluate import EvalModel, as_upscaler

    if spec == "bicubic":
        return as_upscaler("bicubic")
    network_opt = None
    if opt_path:
        from .options import load_options

        network_opt = load_options(opt_path).get("network_g")
        if not isinstance(network_opt, dict):
            raise CLIError(f"{opt_path}: no 'network_g' mapping")
    loaded = load_model(spec, device="cpu", backend=backend, network_opt=network_opt)
    # as_upscaler scales 0..1 images by the network's input_range (255 for MetaRDN/MetaEDSR).
    return EvalModel(as_upscaler(loaded.model, device).fn, loaded.in_channels, spec)


def _read_data(data: str, in_channels: int) -> tuple[list[Any], list[str], str]:
    """HR tensors, their names and kind (``"image"``/``"array"``) from ``--data``."""
    from ..data.files import data_kind, list_files, read_sample

    files = list_files(data, what="--data")
    kind = data_kind(files[0])
    if kind == "image" and in_channels not in (0, 1, 3):
        raise CLIError(f"model takes {in_channels} channels; images have 1 or 3")
    channels = in_channels if in_channels in (1, 3) else 3
    return [read_sample(p, channels) for p in files], [p.name for p in files], kind


def _settings(args: argparse.Namespace) -> list[object]:
    from ..data.scales import parse_scale_list, parse_size_list
    from ..evaluate import LQSize

    settings: list[object] = []
    if args.scales is not None or args.lq_size is None:
        settings += parse_scale_list(args.scales if args.scales is not None else "2,3,4")
    if args.lq_size is not None:
        settings += [LQSize(h, w) for h, w in parse_size_list(args.lq_size)]
    return settings


def _check_backend(backend: str | None) -> None:
    import metasr

    if backend is not None and backend != "auto" and backend not in metasr.backends():
        raise CLIError(
            f"unknown --backend {backend!r}; choose from auto, {', '.join(metasr.backends())}"
        )


def _check_device(device: str) -> str:
    """``--device`` checked, ``auto`` resolved (:func:`metasr.cli.device_arg`): the name."""
    return str(device_arg(device))


def _check_outputs(args: argparse.Namespace, flags: tuple[str, ...]) -> None:
    """Refuse ``--csv``/``--json``/``--plot`` destinations that cannot be written or that name
    an input (the data, the model, the option or statistics file), before the evaluation runs.

    The file itself may not exist yet; its nearest existing ancestor must be a writable folder
    (missing folders below it are created when writing).
    """
    from ._outputs import check_output_file, check_outputs

    outputs = {flag: getattr(args, flag[2:]) for flag in flags}
    for flag, path in outputs.items():
        if path is not None:
            check_output_file(path, flag, create_folders=True)
    data = Path(args.data)
    inputs: list[object] = list(data.iterdir()) if data.is_dir() else [data]
    check_outputs(outputs, [*inputs, args.model, args.opt, args.stats])


def _check_plot_available() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CLIError("--plot needs matplotlib: pip install matplotlib") from None


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CLIError("--plot needs matplotlib: pip install matplotlib") from None
    from ..io import atomic_write

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
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)


def _cmd_eval(args: argparse.Namespace) -> int:
    from ._netcdf import field_data, run_eval_fields

    if field_data(args):  # netCDF fields: climate metrics against regridding baselines
        _check_backend(args.backend)
        args.device = _check_device(args.device)
        _check_outputs(args, ("--csv", "--json"))
        return run_eval_fields(args)
    if args.var is not None or args.stats is not None:
        raise CLIError("--var and --stats are for netCDF (.nc) data")
    return _eval_images(args)


def _eval_images(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate, summarize, write_results
    from ..metrics import format_table

    settings = _settings(args)
    _check_backend(args.backend)
    _check_device(args.device)
    _check_outputs(args, ("--csv", "--json", "--plot"))
    if args.plot:
        _check_plot_available()
    model = load_eval_model(args.model, args.opt, args.device, args.backend)
    images, names, kind = _read_data(args.data, model.in_channels)
    per_image = evaluate(
        model,
        images,
        settings,
        kind=kind,
        bicubic=args.bicubic,
        names=names,
        progress=True,
        tta=args.tta,
    )
    rows = summarize(per_image)
    cols = ["scale", "images", "psnr", "ssim"]
    if args.bicubic:
        cols += ["bicubic_psnr", "bicubic_ssim", "delta_psnr"]
    print(f"model: {model.name}{' (self-ensemble)' if args.tta else ''}   data: {args.data}")
    print(format_table(rows, cols))
    header = {"model": model.name, "data": str(args.data)}
    write_results(rows, cols, args.csv, args.json, header, per_image=per_image)
    if args.plot:
        _plot(rows, args.plot, model.name)
    return 0
