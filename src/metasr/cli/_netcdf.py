"""The netCDF branches of ``metasr upscale`` and ``metasr eval`` (fields on lat/lon grids).

``metasr upscale in.nc --var t2m --target-grid era5 -o out.nc`` reads one variable with its
coordinates (:func:`metasr.climate.read_field`), downscales every time step and other leading
index, with a model (normalised by the checkpoint's statistics, or ``--stats``) or a
``--baseline`` regridding, and writes CF-style netCDF (:func:`metasr.climate.write_field`).
``metasr eval --data fields.nc --var t2m`` scores a model against regridding baselines with the
climate metrics (:mod:`metasr.climate.evaluate`).

Everything is read and checked before anything is written: a bad variable, grid, unit, model or
statistic ends in one line and no output file.
"""

from __future__ import annotations

import argparse
import glob
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import CLIError, parse_tile_arg

__all__ = [
    "NETCDF_SUFFIXES",
    "is_netcdf",
    "netcdf_inputs",
    "parse_stats_arg",
    "run_eval_fields",
    "run_upscale_netcdf",
]

#: Suffixes read as netCDF by ``upscale`` and ``eval``.
NETCDF_SUFFIXES = (".nc", ".nc4", ".cdf", ".netcdf")


def is_netcdf(path: str | os.PathLike) -> bool:
    """Whether a name has a netCDF suffix."""
    return Path(path).suffix.lower() in NETCDF_SUFFIXES


def netcdf_inputs(items: list[str]) -> bool:
    """Whether the ``upscale`` inputs are netCDF files (all of them).

    Raises:
        CLIError: netCDF files mixed with images or arrays.
    """
    flags = [is_netcdf(item) for item in items]
    if any(flags) and not all(flags):
        raise CLIError("netCDF inputs cannot be mixed with images or arrays in one command")
    return bool(flags) and all(flags)


def _expand(items: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in items:
        if any(c in item for c in "*?["):
            found = sorted(Path(f) for f in glob.glob(item) if Path(f).is_file())
            if not found:
                raise FileNotFoundError(f"{item}: no files match")
            files.extend(found)
        elif Path(item).is_file():
            files.append(Path(item))
        else:
            from ..io import missing_reason

            raise FileNotFoundError(f"{item}: {missing_reason(Path(item))}")
    return list(dict.fromkeys(files))


def _outputs(
    files: list[Path], output: str, overwrite: bool = False, also_read: Sequence[str | None] = ()
) -> list[Path]:
    """The output of each input. Refused: two inputs of one name into one folder, an output
    that is an input or one of ``also_read`` (model, statistics, target-grid file; the same
    name, a symbolic or a hard link), an existing output without ``overwrite``."""
    from ._outputs import check_outputs, refuse_same_names

    out = Path(output)
    zarr = out.suffix.lower() == ".zarr"
    if out.is_dir() and not zarr:
        targets = [out / f.name for f in files]
        refuse_same_names(targets)
    elif len(files) > 1:
        raise CLIError(f"several inputs need an existing output folder; {output} is not one")
    else:
        if not out.parent.is_dir():
            raise CLIError(f"output folder {out.parent} does not exist")
        if not (is_netcdf(out) or zarr):
            raise CLIError(
                f"output {output}: netCDF input is written as netCDF (.nc) or Zarr (.zarr)"
            )
        targets = [out]
    check_outputs([("-o", t) for t in targets], [*files, *also_read])
    for dst in targets:
        if (dst.exists() or dst.is_symlink()) and not overwrite:
            raise CLIError(f"{dst} exists; pass --overwrite to replace it")
    return targets


def parse_stats_arg(text: str):
    """``--stats``: ``MEAN,STD`` (units unknown: not checked) or a JSON file written by
    ``metasr climate-stats``."""
    from ..climate.stats import FieldStats

    path = Path(text)
    if path.is_file():
        try:
            return FieldStats.from_json(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise CLIError(f"bad --stats file {text}: {exc}") from None
    parts = text.split(",")
    try:
        mean, std = (float(p) for p in parts)
        return FieldStats(("field",), ("",), (mean,), (std,), "given with --stats")
    except ValueError as exc:
        detail = "" if len(parts) != 2 else f": {exc}"
        raise CLIError(
            f"bad --stats {text!r}: give MEAN,STD (std > 0) or a stats file{detail}"
        ) from None


def _naming(exc: ValueError, path: Path) -> ValueError:
    """``exc`` with the file name in front (once)."""
    text = str(exc)
    return ValueError(text if str(path) in text else f"{path}: {text}")


def _command_line(args: argparse.Namespace, src: Path) -> str:
    """The ``history`` line: this input's command (the process's argv may be another program's)."""
    words = [str(src), "--var", args.var, "--target-grid", args.target_grid, "-o", args.output]
    words += ["--no-decode-times"] if args.no_decode_times else []
    words += ["--baseline", args.baseline] if args.baseline else ["--model", args.model]
    if args.stats is not None and not args.baseline:
        words += ["--stats", args.stats]
    if getattr(args, "target_mask", None) is not None:
        words += ["--target-mask", args.target_mask]
    return "metasr upscale " + " ".join(shlex.quote(str(w)) for w in words)


def check_run_options(args: argparse.Namespace) -> None:
    """The options ``upscale`` shares between images and netCDF, checked before any file is
    read or model loaded (usage errors, exit 2, the same words on both paths; ``--tile`` is
    :func:`.upscale.parse_tile_arg`'s)."""
    if args.tile_overlap is not None and args.tile_overlap < 0:
        raise CLIError(f"bad --tile-overlap {args.tile_overlap}: must be >= 0")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise CLIError(f"bad --max-pixels {args.max_pixels}: must be >= 1")
    if not args.model.strip():
        raise CLIError("bad --model '': give 'default', a checkpoint file or a registry name")
    if args.backend != "auto":
        import metasr  # torch: only when a backend is named

        if args.backend not in metasr.backends():
            raise CLIError(
                f"unknown --backend {args.backend!r}; choose from auto, "
                f"{', '.join(metasr.backends())}"
            )


def _refuse_image_options(args: argparse.Namespace) -> None:
    if args.scale is not None or args.size is not None:
        raise CLIError(
            "netCDF input takes --target-grid (a grid name, HxW or a .nc file), not --scale/--size"
        )
    if args.normalize != "none":
        raise CLIError("--normalize is for arrays; netCDF fields use the model's statistics")


def run_upscale_netcdf(args: argparse.Namespace) -> int:
    """``metasr upscale`` on netCDF inputs (see the module docstring)."""
    from .. import climate as mc
    from ..climate import io as cio

    _refuse_image_options(args)
    if not args.var:
        raise CLIError("netCDF input needs --var NAME[,NAME...] (the variables to downscale)")
    variables = list(dict.fromkeys(v.strip() for v in args.var.split(",") if v.strip()))
    if not variables:
        raise CLIError(f"bad --var {args.var!r}: give variable names, comma-separated")
    if args.target_grid is None:
        raise CLIError("netCDF input needs --target-grid (era5, n96, HxW or a .nc file)")
    if args.batch_size < 1:
        raise CLIError(f"bad --batch-size {args.batch_size}: must be >= 1")
    tile = parse_tile_arg(str(args.tile))
    tile = 0 if tile == "auto" else tile  # fields: whole unless asked (--tile N)
    check_run_options(args)
    if args.tta:
        raise CLIError(
            "--tta is for images and arrays: flips and transposes of a lat/lon field are not "
            "the same field (a transpose swaps latitude and longitude)"
        )
    if args.chunk is not None and args.chunk < 1:
        raise CLIError(f"bad --chunk {args.chunk}: must be >= 1")
    stats = parse_stats_arg(args.stats) if args.stats is not None else None
    if args.baseline is not None and args.stats is not None:
        raise CLIError("--stats is for a model; a --baseline needs no statistics")
    files = _expand(args.inputs)
    mask_spec = getattr(args, "target_mask", None)
    mask_file = None
    if mask_spec is not None:
        mask_file = mask_spec if Path(mask_spec).exists() else mask_spec.rpartition(":")[0]
    also_read = [args.model, args.stats, args.target_grid, mask_file or None]
    targets = _outputs(files, args.output, args.overwrite, also_read)
    try:
        dst = mc.resolve_grid(args.target_grid)
    except ValueError as exc:
        raise CLIError(f"bad --target-grid: {exc}") from None
    target_mask = None
    if mask_spec is not None:
        try:
            target_mask = cio.read_target_mask(mask_spec, dst)
        except (ValueError, OSError) as exc:
            raise CLIError(f"bad --target-mask: {exc}") from None
    method: Any = args.baseline
    card = None
    if method == "bicubic-conservative":
        from ..climate.constraint import bicubic_conservative

        method = bicubic_conservative
    elif method is None:
        # torch only for a model: a --baseline run never imports it (start-up time).
        import torch

        from ..checkpoints import load_model
        from ..tiling import DEFAULT_OVERLAP
        from . import device_arg

        overlap = DEFAULT_OVERLAP if args.tile_overlap is None else args.tile_overlap
        device = device_arg(args.device)
        if args.half and device.type != "cuda":
            raise CLIError("--half needs a CUDA device")
        loaded = load_model(
            args.model,
            device=device,
            dtype=torch.float16 if args.half else torch.float32,
            backend=args.backend,
        )
        chosen = mc.model_stats(loaded, stats)
        method = mc.ModelDownscaler(
            loaded,
            chosen,
            batch_size=args.batch_size,
            tile=tile,
            overlap=overlap,
            progress=not args.quiet,
        )
        card = method.card
    # Check every input first (metadata, then one lazy pass for "all missing"): a bad one must
    # not leave the others written.
    jobs = []
    try:
        for src in files:
            try:
                ds = cio.open_fields(src, variables, decode_times=not args.no_decode_times)
                jobs.append((src, ds))
                grid = cio.grid_of(ds, variables[0])
                mc.check_finer(grid, dst)
                if args.max_pixels is not None and grid.shape[0] * grid.shape[1] > args.max_pixels:
                    h, w = grid.shape
                    raise ValueError(f"{h}x{w} grid is over --max-pixels {args.max_pixels}")
                if card is not None:
                    ds = _check_card(ds, variables, card, grid, dst, args.strict, src)
                elif args.baseline is None:  # a model without a card (no torch import here)
                    for v in variables:
                        units = ds[v].attrs.get("units")
                        mc.check_units(
                            method.stats, None if units is None else str(units), f"variable {v!r}"
                        )
                first = ds[variables[0]]
                lead = [d for d in first.dims if d not in cio.grid_names(ds, variables).dims]
                per_step = len(variables) * int(np.prod([first.sizes[d] for d in lead[1:]]))
                chunk = args.chunk or cio.default_chunk(grid, dst, per_step)
                ds = cio.chunk_fields(ds, variables, chunk)
                jobs[-1] = (src, ds)
                for v in variables:
                    cio.check_some_valid(ds[v])
            except ValueError as exc:
                raise _naming(exc, src) from None
        import dask

        for (src, ds), dst_path in zip(jobs, targets, strict=True):
            try:
                out = cio.downscale_dataset(
                    ds, variables, dst, method, history=_command_line(args, src),
                    target_mask=target_mask,
                )  # fmt: skip
            except ValueError as exc:
                raise _naming(exc, src) from None
            if card is not None:
                for v in variables:
                    out[v].attrs["metasr_model"] = str(args.model)
                    out[v].attrs["metasr_model_card"] = card.summary()
            # One chunk at a time: peak memory is one chunk's, whatever the file's length.
            with dask.config.set(scheduler="synchronous"):
                cio.write_dataset(out, dst_path, overwrite=args.overwrite, sources=files)
            if not args.quiet:
                grid, first = cio.grid_of(ds, variables[0]), ds[variables[0]]
                (h, w), (H, W) = grid.shape, dst.shape
                n = int(first.size // (h * w))
                what = f"{args.baseline} regridding" if args.baseline else "model"
                names = ", ".join(variables)
                print(
                    f"{src} -> {dst_path} ({names}: {n} x {h}x{w} -> {H}x{W}, {what})",
                    file=sys.stdout,
                )
    finally:
        for _, ds in jobs:
            ds.close()
    return 0


def _check_card(ds: Any, variables: list[str], card: Any, grid: Any, dst: Any, strict: bool,
                src: Path) -> Any:  # fmt: skip
    """The model card's checks of every variable (issue 23): one warning line per finding
    (``--strict``: refused), a temperature in degrees Celsius converted to the card's kelvin."""
    from ..climate.card import check_input

    for v in variables:
        da = ds[v]
        units = da.attrs.get("units")
        lead = {d: 0 for d in da.dims[:-2]}
        # Missing values in the first field stand for the file (one field read, not all).
        masked = bool(np.isnan(np.asarray(da.isel(lead).values)).any())
        offset, warns = check_input(
            card, grid, dst, None if units is None else str(units), masked, strict=strict
        )
        for line in warns:
            print(f"warning: {src}: {v}: {line}", file=sys.stderr)
        if offset:
            ds[v] = (da + offset).assign_attrs({**da.attrs, "units": card.units})
    return ds


def field_data(args: argparse.Namespace) -> bool:
    """Whether ``metasr eval`` scores netCDF fields: ``--var`` given or ``--data`` netCDF."""
    data = Path(args.data)
    if data.is_dir():
        return args.var is not None or any(is_netcdf(p) for p in data.iterdir())
    return args.var is not None or is_netcdf(data)


def run_eval_fields(args: argparse.Namespace) -> int:
    """``metasr eval`` on netCDF fields: climate metrics against regridding baselines."""

    from .. import climate as mc
    from ..checkpoints import load_model
    from ..climate.evaluate import BASELINES
    from ..data.scales import parse_scale_list, parse_size_list
    from ..evaluate import write_results
    from ..metrics import format_table

    if not args.var:
        raise CLIError("netCDF data needs --var NAME (the variable to score)")
    if args.opt or args.plot:
        raise CLIError("--opt and --plot are for image data, not netCDF fields")
    if args.tta:
        raise CLIError(
            "--tta is for image data: a flipped or transposed lat/lon field is not the same field"
        )
    baselines = [b for b in (args.baselines or "").split(",") if b]
    if args.bicubic and "bicubic" not in baselines:
        baselines.append("bicubic")
    for b in baselines:
        if b not in BASELINES:
            raise CLIError(
                f"unknown baseline {b!r} in --baselines; choose from {', '.join(BASELINES)}"
            )
    settings: list[object] = []
    try:
        if args.scales is not None or args.lq_size is None:
            settings += parse_scale_list(args.scales if args.scales is not None else "2,3,4")
        if args.lq_size is not None:
            settings += [mc.LRSize(h, w) for h, w in parse_size_list(args.lq_size)]
    except ValueError as exc:
        raise CLIError(f"bad --scales/--lq-size: {exc}") from None
    stats = parse_stats_arg(args.stats) if args.stats is not None else None
    model = None
    name = args.model
    if args.model in BASELINES:
        if args.model not in baselines:
            baselines.insert(0, args.model)
    else:
        loaded = load_model(args.model, device=args.device, backend=args.backend)
        model = mc.ModelDownscaler(loaded, mc.model_stats(loaded, stats))
    data = Path(args.data)
    if data.is_dir():
        files = sorted(p for p in data.iterdir() if is_netcdf(p) and not p.name.startswith("."))
        if not files:
            raise FileNotFoundError(
                f"--data {data}: no netCDF files ({', '.join(NETCDF_SUFFIXES)})"
            )
    elif data.is_file():
        files = [data]
    else:
        raise FileNotFoundError(f"--data {data}: no such file or folder")
    fields = []
    for path in files:
        try:
            da = mc.read_field(path, args.var)
            if model is not None:
                units = da.attrs.get("units")
                mc.check_units(
                    model.stats, None if units is None else str(units), f"variable {args.var!r}"
                )
        except ValueError as exc:
            raise _naming(exc, path) from None
        fields.append((path.name, da.values, mc.grid_of(da)))
    per_field = mc.evaluate_fields(
        fields, settings, model, baselines, model_name=name, weights=args.weights
    )
    rows = mc.summarize_fields(per_field)
    cols = ["setting", "method", "lr_size", "fields", *mc.FIELD_COLUMNS]
    print(f"model: {name}   data: {args.data}   variable: {args.var}   weights: {args.weights}")
    print(format_table(rows, cols))
    header = {"model": name, "data": str(args.data), "variable": args.var}
    header["weights"] = args.weights
    write_results(rows, cols, args.csv, args.json, header, per_field=per_field)
    return 0
