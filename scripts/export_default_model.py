"""Convert a BasicSR generator checkpoint into a metasr model file (``.safetensors``).

A BasicSR ``net_g_*.pth`` holds weights only (``{"params": state_dict}``, and
``"params_ema"`` when EMA was on); the architecture lives in the training options. This script
joins the two: it rebuilds the network from ``network_g`` of the options (or ``--arch`` /
``--kwargs``), loads the weights strictly, checks the model runs, and writes a safetensors file
whose metadata names the architecture and its arguments, so that ``metasr upscale --model FILE``
needs nothing else. By default it writes the bundled default model.

Usage::

    python scripts/export_default_model.py \\
        --checkpoint experiments/default_model/models/net_g_latest.pth \\
        --opt options/train/default_model.yml
    python scripts/export_default_model.py --checkpoint net_g_5000.pth \\
        --arch meta_edsr --kwargs '{"n_resblocks": 6, "n_feats": 32}' -o my.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from metasr.checkpoints import load_checkpoint, load_model, save_checkpoint
from metasr.weights import DEFAULT_CHECKPOINT

#: The bundled model must stay small enough to ship in the wheel (issue 13: at most 20 MB).
MAX_BYTES = 20 * 10**6


def read_network_options(opt_path: Path) -> tuple[str, dict]:
    """``(type, kwargs)`` of ``network_g`` in a BasicSR options YAML."""
    import yaml

    with open(opt_path) as fh:
        opt = yaml.safe_load(fh)
    net = dict(opt.get("network_g") or {})
    if "type" not in net:
        raise SystemExit(f"{opt_path}: no network_g.type")
    return net.pop("type"), net


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="BasicSR net_g_*.pth")
    parser.add_argument("--opt", type=Path, help="BasicSR training options (network_g)")
    parser.add_argument("--arch", help="metasr registry name (instead of --opt)")
    parser.add_argument("--kwargs", default="{}", help="JSON constructor arguments (with --arch)")
    parser.add_argument("--key", help="checkpoint entry: params_ema (default if present) or params")
    # Required: a default would overwrite the bundled model the package ships.
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help=f"the .safetensors file to write (the bundled default model is {DEFAULT_CHECKPOINT})",
    )
    parser.add_argument("--note", default="", help="free text stored in the metadata")
    args = parser.parse_args(argv)

    if args.opt:
        arch_type, kwargs = read_network_options(args.opt)
    elif args.arch:
        arch_type, kwargs = args.arch, json.loads(args.kwargs)
    else:
        parser.error("give --opt (BasicSR options) or --arch/--kwargs")
    # The backend is a run-time choice (CPU training used "torch"), not part of the network.
    kwargs.pop("backend", None)

    # The metasr loader: wrappers (params_ema preferred), module. prefixes, strict loading.
    try:
        loaded = load_model(
            args.checkpoint, network_opt={"type": arch_type, **kwargs}, param_key=args.key
        )
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(str(exc)) from None
    model, arch, entry = loaded.model, loaded.arch, loaded.metadata["param_key"]
    entry = entry or "(raw state dict)"
    # A quick run at an asymmetric scale: a wrong value range or broken head shows up here.
    with torch.inference_mode():
        y = model(torch.rand(1, model.in_channels, 12, 10), scale=(2.5, 1.5))
    if y.shape[-2:] != (30, 15) or not torch.isfinite(y).all():
        raise SystemExit(f"the rebuilt model gives {tuple(y.shape)} / non-finite values")

    metadata = {
        "source_checkpoint": args.checkpoint.name,
        "source_entry": entry,
        "basicsr_type": arch_type,
    }
    if args.opt:
        metadata["training_options"] = args.opt.name
    if args.note:
        metadata["note"] = args.note
    save_checkpoint(args.output, model, arch, kwargs, metadata=metadata)
    size = args.output.stat().st_size
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.output}: {arch} {kwargs}, {params} parameters, {size / 2**20:.2f} MiB")
    if size > MAX_BYTES:
        print(f"warning: larger than {MAX_BYTES / 1e6:.0f} MB, too big to bundle", file=sys.stderr)
        return 1
    # Round trip through the loader the CLI uses.
    loaded = load_checkpoint(args.output)
    for (k, a), b in zip(
        model.state_dict().items(), loaded.model.state_dict().values(), strict=True
    ):
        if not torch.equal(a, b):
            raise SystemExit(f"round trip changed {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
