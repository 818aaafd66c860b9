"""``metasr demo``: upscale the bundled sample photo and write a bicubic-vs-model comparison
(what ``make demo`` runs; :mod:`metasr.demo`)."""

from __future__ import annotations

import argparse

from . import DEVICE_HELP, MODEL_HELP, device_arg

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo``."""
    p = subparsers.add_parser(
        "demo",
        help="upscale the bundled sample photo and write a comparison with bicubic",
        description="Upscale the bundled sample photo (160x200, or --input) and write "
        "input.png, bicubic.png, metasr.png and comparison.png (side by side, with an "
        "enlarged crop) into the output folder.",
    )
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--scale", default="3.5x2", help="VERTICALxHORIZONTAL or one factor (3.5x2)")
    p.add_argument("--model", default="default", help=MODEL_HELP)
    p.add_argument("--input", default=None, help="an RGB image (default: the bundled sample)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import SAMPLE_IMAGE
    from ..demo import run as run_demo

    device = device_arg(args.device)
    run_demo(args.out, args.scale, args.model, args.input or SAMPLE_IMAGE, str(device))
    return 0
