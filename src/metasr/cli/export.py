"""``metasr export``: write a model at one input size and request as ONNX or a torch.export file.

Examples::

    metasr export --model default --input-size 256x256 --scale 2 -o photo_x2.onnx
    metasr export --model climate.safetensors --input-size 96x144 --size 721x1440 -o t2m.onnx
    metasr export --model default --input-size 64x64 --scale 3.5x2 -o photo.pt2

The file takes a fixed input size (any batch) and bakes the geometry of the request in; run an
``.onnx`` file with ``metasr upscale --model file.onnx`` (onnxruntime) or any ONNX runtime.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import MODEL_HELP, CLIError
from ._outputs import check_output_file, check_outputs

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export``."""
    p = subparsers.add_parser(
        "export",
        help="export a model at a fixed input size and scale/size to ONNX (or torch.export)",
        description="Export a model for one input size and one request (--scale or --size) as "
        "an ONNX file (plain standard ops, opset 18, dynamic batch; needs metasr[export]) or, "
        "for a .pt2 output, a torch.export program.",
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
        required=True,
        help="input HEIGHTxWIDTH the exported file takes (96x144)",
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
    from ..export import export_onnx, export_program, format_request
    from ..io import atomic_write

    out = Path(args.output)
    suffix = out.suffix.lower()
    if suffix not in (".onnx", ".pt2"):
        raise CLIError(f"bad -o {out}: the file must end in .onnx or .pt2")
    check_output_file(out, "-o")
    check_outputs({"-o": out}, [args.model])
    scale = _spec("scale", args.scale) if args.scale is not None else None
    size = _spec("size", args.size) if args.size is not None else None
    input_size = _spec("input_size", args.input_size)
    loaded = load_model(args.model)
    if loaded.format == "onnx":
        raise CLIError(f"--model {args.model} is already an ONNX file")
    _check_memory(loaded, input_size, scale, size)
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
    print(f"{out}: {args.model} at {input_size[0]}x{input_size[1]} input, {request}")
    if args.check:
        diff = _check(out, net, input_size, scale, size, loaded.value_range)
        print(f"max |difference| / max |output| against PyTorch: {diff:.1e}", file=sys.stdout)
    return 0


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
