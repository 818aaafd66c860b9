"""``metasr upscale``: upscale images and arrays by any (asymmetric) scale or to a size.

Examples::

    metasr upscale photo.png -o out.png --scale 2.5
    metasr upscale scans/ -o big/ --scale 3.5x2          # vertical 3.5, horizontal 2
    metasr upscale 't2m_*.npy' -o hires/ --size 721x1440 --model climate.safetensors
    metasr upscale huge.tif -o out.tif --scale 4 --tile 256 --device cuda --half
    metasr upscale t2m.nc --var t2m --target-grid era5 -o t2m_era5.nc --model t2m.safetensors
    metasr upscale t2m.nc --var t2m --target-grid era5 -o t2m_era5_cons.nc --baseline conservative

netCDF inputs go through :mod:`metasr.cli._netcdf` (docs/climate.md).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

from . import CLIError, device_arg

__all__ = ["parse_scale_arg", "parse_size_arg", "register"]


def parse_scale_arg(text: str) -> tuple[float, float]:
    """``--scale``: one scale of :mod:`metasr.data.scales`' grammar (``2.5``, ``3.5x2``).

    ``3.5,2`` is still read as one pair, with a ``FutureWarning`` (write ``3.5x2``).
    """
    from ..data.scales import parse_scale_spec

    try:
        return parse_scale_spec(text, comma_pair=True)
    except ValueError as exc:
        raise CLIError(f"bad --scale: {exc}") from None


def parse_size_arg(text: str) -> tuple[int, int]:
    """``--size``: ``HEIGHTxWIDTH`` in positive integers (``721x1440``)."""
    from ..data.scales import parse_size_spec

    try:
        return parse_size_spec(text)
    except ValueError as exc:
        raise CLIError(f"bad --size: {exc}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "upscale",
        help="upscale images or arrays by any scale",
        description=(
            "Upscale images (PNG, JPEG, BMP, TIFF, WebP; 8/16-bit; gray, RGB, RGBA) and .npy "
            "arrays by any scale per axis, or to a size. Images keep their bit depth; arrays "
            "keep their dtype and values are passed to the model unchanged."
        ),
        epilog="Conventions and examples: docs/usage.md.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders or glob patterns")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output file (one input) or existing folder (files keep their names)",
    )
    # One of them is required; which one depends on the input (checked in run()).
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--scale", type=str, help="factor (2.5) or VERTICALxHORIZONTAL factors (3.5x2), >= 1"
    )
    what.add_argument("--size", type=str, help="output HEIGHTxWIDTH (721x1440)")
    what.add_argument(
        "--target-grid",
        metavar="GRID",
        help="netCDF input: the output grid, 'era5', 'n96', HxW (regular, pole rows) or a "
        "netCDF file whose 1-D lat/lon define it",
    )
    p.add_argument(
        "--model",
        default="default",
        help="'default' (bundled), a metasr .safetensors checkpoint, a BasicSR net_g_*.pth written "
        "by metasr training, the official Meta-SR model_1000.pt, or a registry name (random "
        "weights); the format is read from the file's content",
    )
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    p.add_argument("--half", action="store_true", help="float16 weights and activations (CUDA)")
    p.add_argument(
        "--tile",
        type=int,
        default=0,
        metavar="N",
        help="process the input in tiles of N×N input pixels (0: whole; default 0); a periodic "
        "model (netCDF fields) in full-width bands of N rows",
    )
    p.add_argument(
        "--tile-overlap",
        type=int,
        default=None,
        metavar="M",
        help="input pixels of context around each tile (default 16)",
    )
    p.add_argument(
        "--backend",
        default="auto",
        help="Meta-Upscale backend: auto, naive, im2col, torch, triton (see 'metasr info')",
    )
    p.add_argument(
        "--normalize",
        choices=("none", "minmax"),
        default="none",
        help="arrays only: 'minmax' scales each channel to 0..1 for the model and back "
        "(for image-trained models); default passes values unchanged",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        metavar="N",
        help="refuse inputs larger than N pixels (height x width), checked on the file header "
        "before decoding (default: metasr.io.MAX_PIXELS, 178956970)",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time self-ensemble: average the outputs for the 8 flips and transposes of "
        "the input (about 8x the time; see docs/usage.md)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or file list")
    nc = p.add_argument_group("netCDF fields (.nc input; needs pip install metasr[climate])")
    nc.add_argument("--var", metavar="NAME", help="the variable to downscale")
    nc.add_argument(
        "--baseline",
        choices=("nearest", "bilinear", "bicubic", "conservative", "bicubic-conservative"),
        help="write this regridding instead of running a model (bicubic-conservative: bicubic "
        "then back-projection until the conservative coarsening equals the input)",
    )
    nc.add_argument(
        "--strict",
        action="store_true",
        help="refuse an input outside what the model card covers (ratio, regional, missing "
        "values, units) instead of warning",
    )
    nc.add_argument(
        "--stats",
        metavar="MEAN,STD|FILE",
        help="normalisation for a model without statistics in its checkpoint: MEAN,STD in the "
        "field's units, or a JSON file from 'metasr climate-stats'",
    )
    nc.add_argument(
        "--batch-size", type=int, default=8, metavar="N", help="fields per forward pass (8)"
    )
    p.set_defaults(func=run)


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _is_input(path: Path) -> bool:
    """A supported file a folder or glob contributes (hidden and temporary files are not)."""
    from ..io import SUFFIXES, is_temporary_name

    # A dot file may be a temporary output of a killed run (is_temporary_name), never an input.
    hidden = path.name.startswith(".") or is_temporary_name(path.name)
    return not hidden and path.suffix.lower() in SUFFIXES and path.is_file()


def expand_inputs(items: list[str]) -> list[Path]:
    """Files from file names, folders (their supported files) and glob patterns, in order.

    Paths are kept as given (symbolic links are not resolved), so each output is named after
    the name the user gave; the same path named twice is read once. Folders and globs skip
    hidden files, which include the temporary files of an interrupted run.

    Raises:
        FileNotFoundError: a name that is missing, a folder or glob without supported files.
        ValueError: a file named explicitly with an unsupported suffix.
    """
    from ..io import SUFFIXES, format_of, missing_reason

    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(f for f in path.iterdir() if _is_input(f))
            if not found:
                raise FileNotFoundError(
                    f"{item}: folder has no supported files ({', '.join(SUFFIXES)})"
                )
            files.extend(found)
        elif path.is_file():
            format_of(path)  # an unsupported suffix given by name is an error, not skipped
            files.append(path)
        elif _has_magic(item):
            found = sorted(Path(f) for f in glob.glob(item) if _is_input(Path(f)))
            if not found:
                raise FileNotFoundError(f"{item}: no supported files match")
            files.extend(found)
        else:
            raise FileNotFoundError(f"{item}: {missing_reason(path)}")
    seen: set[str] = set()
    unique: list[Path] = []
    for f in files:
        key = os.path.abspath(f)  # not resolve(): two links to one blob are two inputs
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def plan_outputs(files: list[Path], output: str) -> list[Path]:
    """The output path of each input; checks the destination folder exists."""
    from ..io import format_of

    out = Path(output)
    if out.is_dir():
        targets = [out / f.name for f in files]
        names = [t.name for t in targets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise CLIError(
                f"several inputs are named {dupes[0]!r}; they would overwrite each other"
            )
    elif len(files) > 1 or output.endswith(("/", os.sep)) or not out.suffix:
        # Several inputs need a folder, and a name without a suffix is meant as one.
        if out.exists():
            raise CLIError(f"output {output} is not a folder")
        raise CLIError(f"output folder {output} does not exist")
    else:
        if not out.parent.is_dir():
            if out.parent.exists():
                raise CLIError(f"output folder {out.parent} is a file, not a folder")
            raise CLIError(f"output folder {out.parent} does not exist")
        format_of(out)
        targets = [out]
    for src, dst in zip(files, targets, strict=True):
        if dst.exists() and dst.resolve() == src.resolve():
            raise CLIError(f"{dst}: output would overwrite its input; choose another -o")
    return targets


def _out_of_memory_hint(tile: int) -> str:
    """What to suggest after running out of memory with ``--tile tile``."""
    if tile == 0:
        return "try --tile 512 (or smaller)"
    if tile > 64:
        return f"try a smaller --tile (such as {max(tile // 2, 64)})"
    # Tiles this small hold little: the memory went to the output itself or to the model.
    return "a smaller --tile will not help: use a smaller scale or a device with more memory"


def _nonfinite_hint(loaded, raster) -> str:
    """Why a result may hold NaN/inf: the model's weights, or input values too large."""
    import numpy as np
    import torch

    broken = [
        name for name, p in loaded.model.named_parameters() if not bool(torch.isfinite(p).all())
    ]
    if broken:
        return (
            f"the model's weights hold NaN or infinite values ({len(broken)} tensors, "
            f"e.g. {broken[0]})"
        )
    largest = float(np.abs(raster.data).max())
    hint = f"the input's values (up to {largest:.3g}) may be too large for float32 computation"
    return hint + ("; try --normalize minmax" if raster.kind == "field" else "")


def run(args: argparse.Namespace) -> int:
    from ._netcdf import netcdf_inputs, run_upscale_netcdf

    if netcdf_inputs(args.inputs):  # fields on lat/lon grids: a branch of their own
        return run_upscale_netcdf(args)
    for flag in ("target_grid", "var", "baseline", "stats"):
        if getattr(args, flag) is not None:
            raise CLIError(f"--{flag.replace('_', '-')} is for netCDF (.nc) inputs")
    if args.scale is None and args.size is None:
        raise CLIError("give --scale or --size")
    return _run_rasters(args)


def _run_rasters(args: argparse.Namespace) -> int:
    import torch

    import metasr

    from ..checkpoints import load_model
    from ..inference import check_upscale_memory, upscale_raster
    from ..io import check_finite_result, check_writable, read_raster, write_raster
    from ..ops.memory import OutOfMemoryError
    from ..tiling import DEFAULT_OVERLAP

    scale = parse_scale_arg(args.scale) if args.scale is not None else None
    size = parse_size_arg(args.size) if args.size is not None else None
    if args.tile < 0:
        raise CLIError(f"bad --tile {args.tile}: must be >= 0 (0 disables tiling)")
    overlap = DEFAULT_OVERLAP if args.tile_overlap is None else args.tile_overlap
    if overlap < 0:
        raise CLIError(f"bad --tile-overlap {overlap}: must be >= 0")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise CLIError(f"bad --max-pixels {args.max_pixels}: must be >= 1")
    if not args.model.strip():
        raise CLIError("bad --model '': give 'default', a checkpoint file or a registry name")
    if args.backend != "auto" and args.backend not in metasr.backends():
        raise CLIError(
            f"unknown --backend {args.backend!r}; choose from auto, {', '.join(metasr.backends())}"
        )
    device = device_arg(args.device)
    if args.half and device.type != "cuda":
        raise CLIError("--half needs a CUDA device (half precision on CPU is slower than float32)")
    files = expand_inputs(args.inputs)
    targets = plan_outputs(files, args.output)
    loaded = load_model(
        args.model,
        device=device,
        dtype=torch.float16 if args.half else torch.float32,
        backend=args.backend,
    )
    show = not args.quiet
    pairs = list(zip(files, targets, strict=True))
    if show and len(pairs) > 1:
        from tqdm.auto import tqdm

        bar = tqdm(pairs, desc="files", unit="file", disable=None)
        say = bar.write
    else:
        bar, say = pairs, print
    for src, dst in bar:
        raster = read_raster(src, max_pixels=args.max_pixels)
        check_writable(raster, dst)  # before the work: a format that cannot hold the result
        try:
            check_upscale_memory(
                loaded, raster.data.shape, scale, size, args.tile, overlap, args.tta
            )
            result = upscale_raster(
                loaded,
                raster,
                scale=scale,
                size=size,
                tile=args.tile,
                overlap=overlap,
                normalize=args.normalize,
                progress=show,
                tta=args.tta,
            )
        except RuntimeError as exc:  # torch.OutOfMemoryError (CUDA) is a RuntimeError too
            if not isinstance(exc, OutOfMemoryError) and "allocate" not in str(exc):
                raise
            # Exit 1 like every other out-of-memory end (docs/usage.md, Limits).
            raise ValueError(
                f"{src}: out of {device.type} memory; {_out_of_memory_hint(args.tile)}"
            ) from None
        except ValueError as exc:
            raise ValueError(f"{src}: {exc}") from exc
        try:
            check_finite_result(raster, result)
        except ValueError as exc:
            raise ValueError(f"{src}: {exc} ({_nonfinite_hint(loaded, raster)})") from None
        try:
            write_raster(dst, result)
        except OSError as exc:  # disk full, read-only folder, ...: atomic_write left no file
            if isinstance(exc, (FileNotFoundError, PermissionError)):
                raise
            raise CLIError(f"{dst}: cannot write: {exc.strerror or exc}") from None
        if show:
            (h, w), (H, W) = raster.shape, result.shape
            say(f"{src} -> {dst} ({h}x{w} -> {H}x{W})", file=sys.stdout)
    return 0
