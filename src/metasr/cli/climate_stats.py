"""``metasr climate-stats``: a variable's normalisation statistics, into a file or a checkpoint.

Examples::

    metasr climate-stats train_*.nc --var t2m -o t2m_stats.json
    metasr climate-stats train_*.nc --var t2m --checkpoint model.safetensors   # stored in it
    metasr climate-stats train.nc --var t2m --checkpoint model.safetensors --into t2m.safetensors

The statistics (:func:`metasr.climate.compute_stats`: area-weighted mean and standard deviation
over every valid point of every time step, with the variable's units and grid) are what
``metasr upscale`` normalises a netCDF field with before the model, and de-normalises after.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import CLIError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``climate-stats``."""
    p = subparsers.add_parser(
        "climate-stats",
        help="normalisation statistics of a netCDF variable (for a checkpoint)",
        description="Area-weighted mean and standard deviation of one variable over every "
        "time step of the given netCDF files (one grid), with its units; written as JSON and/or "
        "stored in a metasr checkpoint, where 'metasr upscale' applies them.",
        epilog="Workflow: docs/climate.md.",
    )
    p.add_argument("inputs", nargs="+", metavar="FILE", help="netCDF files on one grid")
    p.add_argument("--var", required=True, metavar="NAME", help="the variable")
    p.add_argument("-o", "--output", type=Path, help="write the statistics as JSON here")
    p.add_argument(
        "--checkpoint", type=Path, help="store the statistics in this metasr .safetensors model"
    )
    p.add_argument(
        "--into", type=Path, help="with --checkpoint: write the model with statistics here instead"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import climate as mc
    from ..climate.stats import add_checkpoint_stats
    from ..io import atomic_write_text
    from ._outputs import check_output_file, check_outputs

    if args.into is not None and args.checkpoint is None:
        raise CLIError("--into needs --checkpoint")
    outputs = {"-o": args.output, "--into": args.into}
    for flag, path in outputs.items():
        if path is not None:
            check_output_file(path, flag)
    # --checkpoint without --into is rewritten in place (on purpose); it is an input for -o.
    check_outputs(outputs, [*args.inputs, args.checkpoint])
    values, grid, units = [], None, None
    for item in args.inputs:
        try:
            da = mc.read_field(item, args.var)
        except ValueError as exc:
            text = str(exc)
            raise ValueError(text if str(item) in text else f"{item}: {text}") from None
        g = mc.grid_of(da)
        if grid is not None and not g.same_as(grid):
            raise ValueError(f"{item}: grid {g!r} differs from the first file's {grid!r}")
        these = str(da.attrs.get("units", ""))
        if units is not None and not mc.same_units(these, units):
            # Averaging K with degC gives "mean 139 K": every file must say the same units.
            raise ValueError(
                f"{item}: {args.var!r} is in {these or 'no units'!r}, the first file's in "
                f"{units or 'no units'!r}; convert them to one unit first"
            )
        grid, units = g, these if units is None else units
        values.append(da.values.reshape(-1, *g.shape))
    units = units or ""
    if not units:
        print(f"metasr: warning: {args.var!r} has no units attribute", file=sys.stderr)
    stats = mc.compute_stats(np.concatenate(values), grid, variable=args.var, units=units)
    if args.checkpoint is not None:
        written = add_checkpoint_stats(args.checkpoint, stats, args.into)
        print(f"statistics stored in {written}")
    if args.output is not None:
        atomic_write_text(args.output, stats.to_json() + "\n")
        print(f"statistics written to {args.output}")
    print(
        f"{args.var}: mean {stats.mean[0]:.6g} {units}, std {stats.std[0]:.6g} {units} "
        f"(area-weighted, {sum(v.shape[0] for v in values)} fields on {stats.grid})"
    )
    return 0
