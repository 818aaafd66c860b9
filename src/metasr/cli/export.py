"""``metasr export``: write a model at one request as ONNX or a torch.export file.

Examples::

    metasr export --model default --scale 2 -o photo_x2.onnx            # any input size
    metasr export --model default --input-size 64x64 --scale 3.5x2 -o photo.pt2
    metasr export --model t2m --input-size 96x144 --size 721x1440 -o t2m.onnx

Without ``--input-size`` (or with ``--input-size dynamic``) the file takes any height and width
at the scale (:mod:`metasr.export`: scales ``p/q`` with ``q ≤ 10``, convolutional networks);
with ``--input-size HxW`` it takes that size only and bakes the request's geometry in (any
request, any network). Run an ``.onnx`` file with ``metasr upscale --model file.onnx``
(onnxruntime) or any ONNX runtime.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import MODEL_HELP, CLIError
from ._outputs import check_output_file, check_outputs

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export``."""
    p = subparsers.add_parser(
        "export",
        help="export a model at one scale (any input size) or one input size and scale/size "
        "to ONNX (or torch.export)",
        description="Export a model for one request (--scale or --size) as an ONNX file (plain "
        "standard ops, opset 18, dynamic batch; needs metasr[export]) or, for a .pt2 output, a "
        "torch.export program: for any input size (the default, at a --scale) or for one "
        "--input-size.",
    )
    p.add_argument(
        "--model",
        default="default",
        help=MODEL_HELP.replace("; an .onnx file from 'metasr export' (onnxruntime)", ""),
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--scale", type=str, help="scale factor: 2.5, or VERTICALxHORIZONTAL (3.5x2)")
    what.add_argument("--size", type=str, help="output HEIGHTxWIDTH (721x1440)")
    p.add_argument(
        "--input-size",
        "--input_size",
        dest="input_size",
        default="dynamic",
        help="input HEIGHTxWIDTH the exported file takes (96x144), or 'dynamic' (the default): "
        "any height and width, at a --scale p/q with q <= 10 (2, 2.5, 3.5x2, 2.3), for the "
        "convolutional networks (not meta_swinir), .onnx only",
    )
    p.add_argument(
        "-o", "--output", required=True, help="output file: .onnx (ONNX) or .pt2 (torch.export)"
    )
    p.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="skip running the exported file once against PyTorch",
    )
    p.set_defaults(func=run)


def _spec(kind: str, text: str):
    from ..data.scales import parse_scale_spec, parse_size_spec

    try:
        return parse_scale_spec(text) if kind == "scale" else parse_size_spec(text)
    except ValueError as exc:
        raise CLIError(f"bad --{kind.replace('_', '-')}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoints import checkpoint_stats, load_model
    from ..export import (
        DYNAMIC_EXAMPLE,
        PROGRAM_FIXED_SIZE,
        export_onnx,
        export_program,
        format_request,
    )
    from ..io import atomic_write

    out = Path(args.output)
    suffix = out.suffix.lower()
    if suffix not in (".onnx", ".pt2"):
        raise CLIError(f"bad -o {out}: the file must end in .onnx or .pt2")
    check_output_file(out, "-o")
    check_outputs({"-o": out}, [args.model])
    scale = _spec("scale", args.scale) if args.scale is not None else None
    size = _spec("size", args.size) if args.size is not None else None
    dynamic = args.input_size.strip().lower() == "dynamic"
    input_size = None if dynamic else _spec("input_size", args.input_size)
    if dynamic and size is not None:
        raise CLIError(
            "--size needs --input-size HxW: an output size is a different scale for every "
            "input size, so a file for any input size takes a --scale"
        )
    if dynamic:
        if suffix == ".pt2":
            raise CLIError(
                f"{PROGRAM_FIXED_SIZE}: give --input-size HxW, or write an .onnx file for any "
                "input size"
            )
        _dynamic_scale(scale)
    loaded = load_model(args.model)
    if loaded.format == "onnx":
        raise CLIError(f"--model {args.model} is already an ONNX file")
    _check_memory(loaded, DYNAMIC_EXAMPLE if dynamic else input_size, scale, size)
    net = loaded.model.eval()
    if suffix == ".onnx":
        export_onnx(net, out, input_size, scale=scale, size=size,
                    value_range=loaded.value_range, name=str(args.model),
                    metadata=_stats_entry(checkpoint_stats(loaded)))  # fmt: skip
    else:
        program = export_program(net, input_size, scale=scale, size=size)
        # Atomic: an interrupted export keeps the previous file and leaves no truncated one.
        atomic_write(out, lambda tmp: torch.export.save(program, str(tmp)))
    request = format_request(scale, size)
    shown = "any input size" if dynamic else f"{input_size[0]}x{input_size[1]} input"
    print(f"{out}: {args.model} at {shown}, {request}")
    if args.check:
        sizes = _check_sizes(scale) if dynamic else [input_size]
        diff = max(_check(out, net, s, scale, size, loaded.value_range) for s in sizes)
        at = ", ".join(f"{h}x{w}" for h, w in sizes)
        print(f"max |difference| / max |output| against PyTorch at {at}: {diff:.1e}")
    return 0


def _dynamic_scale(scale) -> None:
    """Refuse, before the model loads, a scale without a dynamic-size form."""
    from ..ops.meta_upscale.rational import rational_scale

    try:
        rational_scale(scale)
    except ValueError as exc:
        raise CLIError(
            f"bad --scale for a dynamic input size: {exc}; or give --input-size HxW"
        ) from None


def _check_sizes(scale) -> list[tuple[int, int]]:
    """Three small input sizes to check a dynamic-size file at: whole periods of the scale
    and sizes that are not (the crop), each axis different."""
    from ..ops.meta_upscale.rational import rational_scale

    (_, q_v), (_, q_h) = rational_scale(scale)
    return [(4 * q_v, 3 * q_h), (3 * q_v + 1, 5 * q_h + 2), (7, 9)]


def _check_memory(loaded, input_size: tuple[int, int], scale, size) -> None:
    """Refuse, before tracing, an export whose example run cannot fit in free memory.

    The export traces a batch of two inputs through the network (the ONNX file's batch is
    dynamic), so twice one upscale's estimate (:func:`metasr.inference.estimate_upscale`).

    Raises:
        ValueError: a request over the output caps, or the estimate and the free memory.
    """
    import torch

    from ..geometry import UpscaleRequest
    from ..inference import estimate_upscale
    from ..ops.memory import available_memory_bytes, gib

    h, w = input_size
    est = estimate_upscale(
        loaded, (loaded.in_channels, h, w), UpscaleRequest(scale=scale, size=size)
    )
    need = 2 * (est.host_bytes + est.work_bytes)
    free = available_memory_bytes(torch.device("cpu"))
    if free is not None and need > free:
        H, W = est.output_size
        raise ValueError(
            f"exporting {h}x{w} -> {H}x{W} traces a batch of 2 and needs about {gib(need)}, "
            f"more than the {gib(free)} of free memory; export a smaller --input-size"
        )


def _stats_entry(stats) -> dict[str, str]:
    """A field model's statistics as ONNX metadata (applied by ``metasr upscale``)."""
    from ..field_stats import stats_metadata

    return {} if stats is None else stats_metadata(stats)


def _check(out: Path, net, input_size, scale, size, value_range: float) -> float:
    """Run the exported file and the network on one random input; their relative difference."""
    import torch

    from ..export import OnnxModel

    x = torch.rand(1, net.in_channels, *input_size) * value_range
    with torch.inference_mode():
        ref = net(x, scale=scale, size=size)
        if out.suffix.lower() == ".onnx":
            y = OnnxModel(out)(x, scale=scale, size=size)
        else:
            y = torch.export.load(str(out)).module()(x)
    return float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
