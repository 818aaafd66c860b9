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
import warnings
from collections.abc import Sequence
from pathlib import Path

from . import DEVICE_HELP, MODEL_HELP, CLIError, device_arg, parse_tile_arg

__all__ = ["parse_scale_arg", "register"]


def parse_scale_arg(text: str) -> tuple[float, float]:
    """``--scale``: one scale of :mod:`metasr.data.scales`' grammar (``2.5``, ``3.5x2``)."""
    from ..data.scales import parse_scale_spec

    try:
        return parse_scale_spec(text)
    except ValueError as exc:
        raise CLIError(f"bad --scale: {exc}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "upscale",
        help="upscale images or arrays by any scale",
        description=(
            "Upscale images (PNG, JPEG, BMP, TIFF, WebP; 8/16-bit; gray, RGB, RGBA) and .npy "
            "arrays by any scale per axis, or to a size. Images keep their bit depth; arrays "
            "(and float TIFF) keep their dtype; a field model's stored statistics normalise "
            "them (as for netCDF), other models get the values unchanged."
        ),
        epilog="Conventions and examples: docs/usage.md.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders or glob patterns")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output file (one input) or folder (created if needed; outputs keep the inputs' "
        "names, with --suffix and --ext)",
    )
    batch = p.add_argument_group("batch output")
    batch.add_argument(
        "--overwrite",
        action="store_true",
        help="replace outputs that exist (default: images are skipped, with a warning, so that a "
        "re-run continues an interrupted batch and never replaces a file silently; an existing "
        "netCDF/Zarr output is refused)",
    )
    batch.add_argument(
        "--suffix",
        default="",
        metavar="TEXT",
        help="added to each output's name in an output folder (photo.png -> photo_x2.png with "
        "--suffix _x2)",
    )
    batch.add_argument(
        "--ext",
        "--format",
        dest="ext",
        choices=sorted(EXTENSIONS),
        default=None,
        help="output format in an output folder (default: the input's)",
    )
    batch.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="take the images in sub-folders of folder inputs too; the output folder mirrors them",
    )
    batch.add_argument(
        "--quality",
        type=int,
        default=None,
        metavar="Q",
        help="JPEG/WebP quality 1..100 (default: JPEG 95, WebP lossless)",
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
        help=MODEL_HELP,
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--half", action="store_true", help="float16 weights and activations (CUDA)")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "auto"),
        default="fp32",
        help="CPU inference precision: fp32 (default), bf16 (bfloat16 autocast), auto (bf16 "
        "where the CPU has native bfloat16, else fp32); measured cost in docs/benchmarks.md",
    )
    p.add_argument(
        "--tile",
        default="auto",
        metavar="N|auto",
        help="'auto' (default): the whole input when it fits in free memory, else the largest "
        "tiles that fit (and tiles of 512 for outputs over 2 megapixels, so that the progress "
        "bar moves); 0: whole; N: tiles of N×N input pixels. A periodic model (netCDF "
        "fields) is cut in full-width bands of N rows; netCDF input takes auto as 0",
    )
    p.add_argument(
        "--tile-overlap",
        type=int,
        default=None,
        metavar="M",
        help="input pixels of context around each tile (default: the network's receptive "
        "field, e.g. 30 for the bundled model)",
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
    nc.add_argument(
        "--var",
        metavar="NAME[,NAME...]",
        help="the variables to downscale (comma-separated; all on one grid, each by the same "
        "--baseline, or by the model when its statistics' units fit)",
    )
    nc.add_argument(
        "--baseline",
        choices=("nearest", "bilinear", "bicubic", "conservative", "bicubic-conservative"),
        help="write this regridding instead of running a model (bicubic-conservative: bicubic "
        "then back-projection until the conservative coarsening equals the input)",
    )
    nc.add_argument(
        "--target-mask",
        metavar="FILE[:VAR]",
        help="the target's own mask: a netCDF file on the target grid whose VAR (default: its "
        "only variable) is missing where the output must be (land for SST); the output is "
        "missing exactly there, and the model's or bicubic-conservative's constraint conserves "
        "over the valid target cells",
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
    nc.add_argument(
        "--chunk",
        type=int,
        default=None,
        metavar="N",
        help="time steps (first leading dim) read, downscaled and written at a time (default: "
        "from the free memory); peak memory grows with N, not with the file",
    )
    nc.add_argument(
        "--no-decode-times",
        action="store_true",
        help="keep the time axis as raw numbers (done anyway, with a warning, when it cannot be "
        "decoded)",
    )
    p.set_defaults(func=run)


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _is_input(path: Path) -> bool:
    """A supported file a folder or glob contributes (hidden and temporary files are not)."""
    from ..io import SUFFIXES

    # Hidden files include the temporary outputs of a killed run: atomic_write names them
    # ".STEM.TOKEN.SUFFIX" (metasr.io.is_temporary_name), so they are never inputs.
    hidden = path.name.startswith(".")
    return not hidden and path.suffix.lower() in SUFFIXES and path.is_file()


def _walk(folder: Path, recursive: bool, skip: Path | None) -> list[Path]:
    """The supported files of ``folder`` (and of its sub-folders, hidden ones excepted, when
    ``recursive``), sorted; nothing under ``skip`` (the output folder: a re-run must not take
    its own earlier results as inputs)."""
    if not recursive:
        return sorted(f for f in folder.iterdir() if _is_input(f))
    found = []
    for root, dirs, names in os.walk(folder):
        here = Path(root)
        if skip is not None and os.path.abspath(here) == os.path.abspath(skip):
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(here / n for n in sorted(names) if _is_input(here / n))
    return found


def expand_input_names(
    items: list[str], recursive: bool = False, skip: Path | None = None
) -> list[tuple[Path, Path]]:
    """Each input file with the name its output takes in an output folder, in order.

    The name is the file's name, or with ``recursive`` its path below the folder it was found
    in (so ``-o`` mirrors the sub-folders). Paths are kept as given (symbolic links are not
    resolved), so each output is named after the name the user gave; the same path named twice
    is read once. Folders and globs skip hidden files, which include the temporary files of an
    interrupted run.

    Raises:
        FileNotFoundError: a name that is missing, a folder or glob without supported files.
        ValueError: a file named explicitly with an unsupported suffix.
    """
    from ..io import SUFFIXES, format_of, missing_reason

    files: list[tuple[Path, Path]] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = _walk(path, recursive, skip)
            if not found:
                where = "folder tree" if recursive else "folder"
                raise FileNotFoundError(
                    f"{item}: {where} has no supported files ({', '.join(SUFFIXES)})"
                )
            files.extend((f, f.relative_to(path) if recursive else Path(f.name)) for f in found)
        elif path.is_file():
            format_of(path)  # an unsupported suffix given by name is an error, not skipped
            files.append((path, Path(path.name)))
        elif _has_magic(item):
            found = sorted(Path(f) for f in glob.glob(item) if _is_input(Path(f)))
            if not found:
                raise FileNotFoundError(f"{item}: no supported files match")
            files.extend((f, Path(f.name)) for f in found)
        else:
            raise FileNotFoundError(f"{item}: {missing_reason(path)}")
    seen: set[str] = set()
    unique: list[tuple[Path, Path]] = []
    for f, name in files:
        key = os.path.abspath(f)  # not resolve(): two links to one blob are two inputs
        if key not in seen:
            seen.add(key)
            unique.append((f, name))
    return unique


def expand_inputs(items: list[str]) -> list[Path]:
    """The input files of :func:`expand_input_names` (folders not walked recursively)."""
    return [f for f, _ in expand_input_names(items)]


#: ``--ext`` choices → the suffix written.
EXTENSIONS = {
    "png": ".png",
    "jpg": ".jpg",
    "jpeg": ".jpg",
    "webp": ".webp",
    "bmp": ".bmp",
    "tif": ".tif",
    "tiff": ".tif",
    "npy": ".npy",
}


def is_folder_output(output: str, count: int) -> bool:
    """Whether ``-o`` names a folder: an existing one, several inputs, a name ending in ``/``
    or a name without a suffix."""
    out = Path(output)
    return out.is_dir() or count > 1 or output.endswith(("/", os.sep)) or not out.suffix


def plan_outputs(
    files: list[Path] | list[tuple[Path, Path]],
    output: str,
    suffix: str = "",
    ext: str | None = None,
    also_read: Sequence[str] = (),
) -> list[Path]:
    """The output path of each input (``(file, name)`` pairs from :func:`expand_input_names`,
    or files); nothing is created here. No output may be an input or ``also_read`` (the
    model file): same name, symbolic or hard link (:func:`._outputs.check_outputs`).

    In an output folder each output is named ``STEM + suffix + (ext or the input's suffix)``.

    Raises:
        CLIError: outputs that would collide or overwrite their input, ``-o`` a file where a
            folder is needed (or the reverse), ``--suffix``/``--ext`` with a file output.
    """
    from ..io import format_of
    from ._outputs import check_outputs

    pairs = [f if isinstance(f, tuple) else (f, Path(f.name)) for f in files]
    out = Path(output)
    if is_folder_output(output, len(pairs)):
        if out.exists() and not out.is_dir():
            raise CLIError(f"output {output} is not a folder")
        if len(pairs) > 1 and out.suffix and not out.exists() and not output.endswith("/"):
            raise CLIError(
                f"several inputs need an output folder; {output} looks like a file name "
                "(end it with / to make a folder of that name)"
            )
        if any(sep in suffix for sep in ("/", os.sep)):
            raise CLIError(f"bad --suffix {suffix!r}: a name part, not a path")
        new_ext = None if ext is None else EXTENSIONS[ext]
        targets = [
            out / name.parent / f"{name.stem}{suffix}{new_ext or name.suffix}" for _, name in pairs
        ]
        keys = [os.path.normcase(str(t)) for t in targets]
        dupes = sorted({str(t) for t, k in zip(targets, keys, strict=True) if keys.count(k) > 1})
        if dupes:
            raise CLIError(
                f"several inputs would be written to {dupes[0]}; they would overwrite each other"
            )
    else:
        if suffix or ext is not None:
            raise CLIError("--suffix and --ext name the files in an output folder; -o FILE "
                           "names the one output itself")  # fmt: skip
        if out.parent.exists() and not out.parent.is_dir():
            raise CLIError(f"output folder {out.parent} is a file, not a folder")
        targets = [out]
    check_outputs([("-o", t) for t in targets], [*(src for src, _ in pairs), *also_read])
    for t in targets:
        format_of(t)
    return targets


def _out_of_memory_hint(tile: int | str) -> str:
    """What to suggest after running out of memory with ``--tile tile``."""
    if tile == 0 or tile == "auto":
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
    for flag in ("target_grid", "var", "baseline", "stats", "target_mask"):
        if getattr(args, flag) is not None:
            raise CLIError(f"--{flag.replace('_', '-')} is for netCDF (.nc) inputs")
    if args.scale is None and args.size is None:
        raise CLIError("give --scale or --size")
    return _run_rasters(args)


def _run_rasters(args: argparse.Namespace) -> int:
    import torch

    from ..api import run_checked
    from ..checkpoints import load_model
    from ..data.scales import parse_request
    from ..io import check_finite_result, check_writable, format_of, read_raster, write_raster
    from ..ops.memory import OutOfMemoryError
    from ._netcdf import check_run_options

    args.tile = parse_tile_arg(str(args.tile))
    check_run_options(args)
    overlap = args.tile_overlap
    device = device_arg(args.device)
    if args.half and device.type != "cuda":
        raise CLIError("--half needs a CUDA device (half precision on CPU is slower than float32)")
    if args.precision == "bf16" and device.type != "cpu":
        raise CLIError("--precision bf16 is for CPU inference; on CUDA use --half")
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise CLIError(f"bad --quality {args.quality}: must be 1..100")
    try:
        # The one request of the run, handed down as it is to every file's network call.
        request = parse_request(args.scale, args.size)
    except ValueError as exc:
        raise CLIError(f"bad --{'scale' if args.scale is not None else 'size'}: {exc}") from None
    skip = Path(args.output) if args.recursive else None
    named = expand_input_names(args.inputs, args.recursive, skip)
    targets = plan_outputs(named, args.output, args.suffix, args.ext, [args.model])
    files = [f for f, _ in named]
    if args.quality is not None:
        lossless = sorted({t.suffix for t in targets if format_of(t) not in ("jpeg", "webp")})
        if lossless:
            raise CLIError(f"--quality is for JPEG and WebP outputs, not {', '.join(lossless)}")
    pairs = []
    for src, dst in zip(files, targets, strict=True):
        if dst.exists() and not args.overwrite:
            warnings.warn(f"{dst} exists: skipped (--overwrite replaces it)", stacklevel=1)
        else:
            pairs.append((src, dst))
    if not pairs:
        return 0
    loaded = load_model(
        args.model,
        device=device,
        dtype=torch.float16 if args.half else torch.float32,
        backend=args.backend,
    )
    for dst in {dst.parent for _, dst in pairs}:
        dst.mkdir(parents=True, exist_ok=True)  # after every check: a refusal creates nothing
    show = not args.quiet
    if show and len(pairs) > 1:
        from tqdm.auto import tqdm

        bar = tqdm(pairs, desc="files", unit="file", disable=None)
        say = bar.write
    else:
        bar, say = pairs, print
    for src, dst in bar:
        raster = read_raster(src, max_pixels=args.max_pixels)
        check_writable(raster, dst)  # before the work: a format that cannot hold the result
        tile = args.tile
        try:
            result, tile = run_checked(
                loaded,
                raster,
                request,
                tile=args.tile,
                overlap=overlap,
                normalize=args.normalize,
                progress=show,
                tta=args.tta,
                check_finite=False,  # below, with a hint at the cause
                precision=args.precision,
            )
        except RuntimeError as exc:  # torch.OutOfMemoryError (CUDA) is a RuntimeError too
            if not isinstance(exc, OutOfMemoryError) and "allocate" not in str(exc):
                raise
            # Exit 1 like every other out-of-memory end (docs/usage.md, Limits).
            raise ValueError(
                f"{src}: out of {device.type} memory; {_out_of_memory_hint(tile)}"
            ) from None
        except ValueError as exc:
            raise ValueError(f"{src}: {exc}") from exc
        try:
            check_finite_result(raster, result)
        except ValueError as exc:
            raise ValueError(f"{src}: {exc} ({_nonfinite_hint(loaded, raster)})") from None
        try:
            write_raster(dst, result, quality=args.quality)
        except OSError as exc:  # disk full, read-only folder, ...: atomic_write left no file
            if isinstance(exc, (FileNotFoundError, PermissionError)):
                raise
            raise CLIError(f"{dst}: cannot write: {exc.strerror or exc}") from None
        if show:
            (h, w), (H, W) = raster.shape, result.shape
            say(f"{src} -> {dst} ({h}x{w} -> {H}x{W})", file=sys.stdout)
    return 0
