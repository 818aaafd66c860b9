"""The work behind ``metasr serve``, without Gradio: each request runs ``metasr upscale``.

A request from the page or the JSON endpoint becomes the argument list of ``metasr upscale`` and
is run by the CLI's own :func:`metasr.cli.main` in this process, so the web app has exactly the
command line's validation, limits, messages and output bytes: a PNG downloaded from the page is
the file ``metasr upscale in.png --scale 3.5x2 -o out.png`` writes. A failed run raises
:class:`JobError` carrying the CLI's one-line message (with the server's folder names taken
out), never a traceback.

Every file lives in a job folder under the server's temporary root (:class:`Workspace`), which
the server removes when it stops; job folders older than an hour go earlier.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "BASELINES",
    "IMAGE_SUFFIXES",
    "FieldInfo",
    "FieldResult",
    "JobError",
    "PhotoResult",
    "Workspace",
    "downscale_field",
    "field_info",
    "fit_size",
    "run_upscale",
    "upscale_photos",
]

#: Image files the Photos tab takes (``.npy`` arrays and netCDF fields go elsewhere).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: The regridding baselines of ``metasr upscale --baseline`` (netCDF fields).
BASELINES = ("nearest", "bilinear", "bicubic", "conservative")
#: Previews (the before/after slider) show whole results up to this many pixels, else the
#: centre PREVIEW_CROP × PREVIEW_CROP: a 100-megapixel PNG would not fit in the page.
PREVIEW_PIXELS = 4_000_000
PREVIEW_CROP = 1024
#: Job folders older than this are removed when a new job starts.
JOB_MAX_AGE_S = 3600.0

# One ``metasr upscale`` at a time: the CLI's output streams are redirected while it runs, and
# a 2-core machine gains nothing from two models at once.
_LOCK = threading.Lock()
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class JobError(ValueError):
    """A request ``metasr upscale`` refused: ``str(exc)`` is its one-line message."""


class Workspace:
    """The server's temporary root and its job folders (one per request).

    Args:
        root: an existing folder owned by the server (removed by :meth:`cleanup`).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._count = 0
        self._count_lock = threading.Lock()

    def job(self) -> Path:
        """A new empty job folder; job folders older than :data:`JOB_MAX_AGE_S` go first."""
        now = time.time()
        for old in self.root.glob("job-*"):
            with contextlib.suppress(OSError):
                if now - old.stat().st_mtime > JOB_MAX_AGE_S:
                    shutil.rmtree(old, ignore_errors=True)
        with self._count_lock:
            self._count += 1
            n = self._count
        return Path(tempfile.mkdtemp(prefix=f"job-{n:05d}-", dir=self.root))

    def cleanup(self) -> None:
        """Remove the root and everything in it."""
        shutil.rmtree(self.root, ignore_errors=True)


def safe_name(name: str, default: str = "upload") -> str:
    """A file name safe to create in a job folder (the basename, odd characters as ``_``)."""
    base = _SAFE_NAME.sub("_", Path(str(name)).name).lstrip(".")
    return base or default


def take_upload(src: str | os.PathLike, job: Path, name: str | None = None) -> Path:
    """Copy an uploaded file into ``job`` under its own (sanitised) name."""
    dst = job / safe_name(name or Path(src).name)
    shutil.copyfile(src, dst)
    return dst


def run_upscale(argv: Sequence[str], job: Path | None = None) -> str:
    """Run ``metasr upscale ARGV`` in this process; its standard output on success.

    Args:
        argv: the arguments after ``upscale``; write options as ``--opt=value`` so that no value
            can pass for an option.
        job: the request's folder; its path is taken out of messages (the page shows the
            uploaded names, not the server's folders).

    Raises:
        JobError: the CLI's one-line error (exit status 1 or 2), or, for a failure the CLI does
            not expect (a bug), one line naming the exception; the traceback goes to the
            server's log only.
    """
    from .. import main

    out, err = io.StringIO(), io.StringIO()
    with _LOCK, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(["upscale", *argv])
        except SystemExit as exc:  # argparse: a value it cannot parse
            status = exc.code if isinstance(exc.code, int) else 2
        except Exception as exc:  # a bug, not the user's mistake: log it, show one line
            import traceback

            traceback.print_exc(file=sys.__stderr__)
            raise JobError(f"metasr upscale: internal error: {type(exc).__name__}: {exc}") from None
    if status == 0:
        return out.getvalue()
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln]
    message = (errors or lines or [f"metasr upscale: failed (exit status {status})"])[-1]
    if job is not None:
        message = message.replace(f"{job}{os.sep}", "").replace(str(job), ".")
    raise JobError(message.strip())


# --------------------------------------------------------------------------------------------
# photos


@dataclass
class PhotoResult:
    """One upscaled image.

    Attributes:
        name: the uploaded file's name.
        path: the PNG ``metasr upscale`` wrote (bit depth kept).
        in_shape, out_shape: ``(H, W)`` of the input and the result.
        seconds: wall time of the ``metasr upscale`` run (model loading included).
        before, after: ``(h, w, 3)`` uint8 previews at the result's size (or its centre crop):
            bicubic (MATLAB's ``imresize``) and the model.
        cropped: the previews are the centre crop, not the whole result.
    """

    name: str
    path: Path
    in_shape: tuple[int, int]
    out_shape: tuple[int, int]
    seconds: float
    before: np.ndarray
    after: np.ndarray
    cropped: bool


def fit_size(shape: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """The largest size with ``shape``'s aspect ratio inside ``box`` (``(H, W)`` both).

    Each side is ``floor`` of the common factor times the input side, at least 1; a box smaller
    than the image gives a size ``metasr upscale`` refuses with its own message.
    """
    (h, w), (bh, bw) = shape, box
    r = min(bh / h, bw / w)
    # The side that set the factor is exactly the box's, whatever the rounding of r·side.
    height = bh if bh / h <= bw / w else max(1, int(np.floor(h * r + 1e-9)))
    width = bw if bw / w <= bh / h else max(1, int(np.floor(w * r + 1e-9)))
    return height, width


def _preview(data: np.ndarray, crop: tuple[slice, slice] | None) -> np.ndarray:
    """``(C, H, W)`` float in 0..1 → ``(h, w, 3)`` uint8 for the page (gray repeated)."""
    if crop is not None:
        data = data[:, crop[0], crop[1]]
    img = np.clip(np.rint(np.asarray(data, np.float64) * 255.0), 0, 255).astype(np.uint8)
    img = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img[:3]
    return np.ascontiguousarray(img.transpose(1, 2, 0))


def _centre_crop(shape: tuple[int, int]) -> tuple[slice, slice] | None:
    H, W = shape
    if H * W <= PREVIEW_PIXELS:
        return None
    ch, cw = min(H, PREVIEW_CROP), min(W, PREVIEW_CROP)
    top, left = (H - ch) // 2, (W - cw) // 2
    return slice(top, top + ch), slice(left, left + cw)


def upscale_photos(
    uploads: Sequence[tuple[str | os.PathLike, str]],
    workspace: Workspace,
    *,
    scale: str | None = None,
    size: str | None = None,
    fit: tuple[int, int] | None = None,
    model: str = "default",
    tile: int = 0,
    tta: bool = False,
    device: str | None = None,
    max_pixels: int | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> tuple[list[PhotoResult], Path]:
    """Upscale images as ``metasr upscale`` does, one run per image.

    Args:
        uploads: ``(file, name)`` pairs: the uploaded file and the name the user gave it.
        workspace: where the job folder goes.
        scale: ``--scale`` text (``"3.5x2"``); or
        size: ``--size`` text (``"1080x1920"``); or
        fit: ``(H, W)``: the largest size of the image's aspect ratio inside it.
        model, tile, tta, device, max_pixels: as ``metasr upscale``'s options.
        progress: called with (fraction done, what) before each image.

    Returns:
        The results in upload order and the file to download: the PNG for one image, a zip of
        all of them for several.

    Raises:
        JobError: the first refused image (the CLI's one-line message); nothing is returned.
    """
    from ...data.resize import imresize
    from ...io import atomic_write, read_raster

    if not uploads:
        raise JobError("metasr serve: error: upload one or more images first")
    if sum(x is not None for x in (scale, size, fit)) != 1:
        raise JobError("metasr serve: error: give one of scale, size or fit")
    job = workspace.job()
    inputs: list[tuple[Path, str]] = []
    for src, name in uploads:
        if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            raise JobError(
                f"metasr serve: error: {safe_name(name)}: not an image file "
                f"(the Photos tab takes {', '.join(IMAGE_SUFFIXES)})"
            )
        inputs.append((take_upload(src, job, name), name))
    names = [p.name for p, _ in inputs]
    if len(set(names)) != len(names):
        raise JobError("metasr serve: error: several uploads have the same name")
    common = [f"--model={model}", f"--tile={int(tile)}", "--quiet"]
    common += ["--tta"] if tta else []
    common += [f"--device={device}"] if device else []
    common += [f"--max-pixels={int(max_pixels)}"] if max_pixels is not None else []
    results: list[PhotoResult] = []
    for i, (path, name) in enumerate(inputs):
        if progress is not None:
            progress(i / len(inputs), f"{name} ({i + 1} of {len(inputs)})")
        try:  # the CLI's reader: the pixel limit is checked on the header before decoding
            source = read_raster(path, max_pixels=max_pixels)
        except (ValueError, FileNotFoundError) as exc:
            raise JobError(_as_cli_line(exc, job)) from None
        if fit is not None:
            h_out, w_out = fit_size(source.shape, fit)
            what = [f"--size={h_out}x{w_out}"]
        else:
            what = [f"--scale={scale}"] if scale is not None else [f"--size={size}"]
        dst = job / "out" / f"{path.stem}.png"
        dst.parent.mkdir(exist_ok=True)
        start = time.perf_counter()
        run_upscale([str(path), f"--output={dst}", *what, *common], job)
        seconds = time.perf_counter() - start
        result = read_raster(dst, max_pixels=2**62)
        crop = _centre_crop(result.shape)
        (h, w), (H, W) = source.shape, result.shape
        # Bicubic at the result's size, with the factor the request named (MATLAB imresize).
        factor = (H / h, W / w) if scale is None else _scale_pair(scale)
        before = imresize(source.data.astype(np.float32), scale=factor, size=(H, W))
        results.append(
            PhotoResult(
                name=name,
                path=dst,
                in_shape=(h, w),
                out_shape=(H, W),
                seconds=seconds,
                before=_preview(before, crop),
                after=_preview(result.data, crop),
                cropped=crop is not None,
            )
        )
    if progress is not None:
        progress(1.0, "done")
    if len(results) == 1:
        return results, results[0].path

    def write_zip(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:  # PNGs are compressed
            for r in results:
                zf.write(r.path, r.path.name)

    bundle = job / "metasr_upscaled.zip"
    atomic_write(bundle, write_zip)
    return results, bundle


def _scale_pair(text: str) -> tuple[float, float]:
    """``--scale`` text as the CLI reads it (it has accepted ``text`` by now)."""
    from ..upscale import parse_scale_arg

    return parse_scale_arg(text)


def _as_cli_line(exc: BaseException, job: Path) -> str:
    """A library error as the CLI prints it (``metasr upscale: error: ...``), one line."""
    from .. import one_line

    text = one_line(exc).replace(f"{job}{os.sep}", "").replace(str(job), ".")
    return f"metasr upscale: error: {text}"


# --------------------------------------------------------------------------------------------
# fields


@dataclass
class FieldInfo:
    """What the Fields tab offers for one netCDF file (read from its header only).

    Attributes:
        variables: names of the variables with at least two dimensions, in file order.
        shapes: each variable's dimension sizes, ``{name: {dim: size}}``.
    """

    variables: list[str]
    shapes: dict[str, dict[str, int]] = field(default_factory=dict)

    def steps(self, var: str) -> int:
        """How many 2-D fields ``var`` holds (product of the leading dimensions)."""
        sizes = list(self.shapes[var].values())
        return int(np.prod(sizes[:-2])) if len(sizes) > 2 else 1


def field_info(path: str | os.PathLike, name: str, max_pixels: int | None = None) -> FieldInfo:
    """The variables of an uploaded netCDF file, from its header (no data is read).

    Raises:
        JobError: not a readable netCDF file, no variable on a grid, or a grid over the pixel
            limit (checked here, before any values are read).
    """
    from ...io import MAX_PIXELS

    try:
        import xarray as xr
    except ImportError:
        raise JobError(
            "metasr serve: error: netCDF needs the climate extra: pip install 'metasr[climate]'"
        ) from None
    shown = safe_name(name)
    try:
        with xr.open_dataset(path, decode_times=False) as ds:
            shapes = {
                str(n): {str(d): int(s) for d, s in zip(v.dims, v.shape, strict=True)}
                for n, v in ds.data_vars.items()
                if v.ndim >= 2
            }
    except Exception as exc:  # netCDF4/HDF5 raise many kinds for a file that is not netCDF
        raise JobError(f"metasr upscale: error: {shown}: cannot read as netCDF: {exc}") from None
    if not shapes:
        raise JobError(f"metasr upscale: error: {shown}: no variable with two or more dimensions")
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    for var, dims in shapes.items():
        h, w = list(dims.values())[-2:]
        if h * w > limit:
            raise JobError(
                f"metasr upscale: error: {shown}: variable {var!r} is a {h}x{w} grid, over the "
                f"limit of {limit:,} pixels (raise it with metasr serve --max-pixels if trusted)"
            )
    return FieldInfo(list(shapes), shapes)


@dataclass
class FieldResult:
    """One downscaled netCDF variable.

    Attributes:
        path: the CF netCDF file ``metasr upscale`` wrote.
        figure: PNG of the input and result maps (one colour scale) and their zonal means.
        in_shape, out_shape: ``(lat, lon)`` sizes.
        seconds: wall time of the ``metasr upscale`` run.
    """

    path: Path
    figure: Path
    in_shape: tuple[int, int]
    out_shape: tuple[int, int]
    seconds: float


def downscale_field(
    upload: str | os.PathLike,
    name: str,
    workspace: Workspace,
    *,
    var: str,
    target_grid: str,
    grid_file: tuple[str | os.PathLike, str] | None = None,
    model: str | None = None,
    baseline: str | None = None,
    step: int = 0,
    tile: int = 0,
    device: str | None = None,
    max_pixels: int | None = None,
) -> FieldResult:
    """Downscale one variable of a netCDF file as ``metasr upscale in.nc --var ...`` does.

    Args:
        upload, name: the uploaded file and the name the user gave it.
        var: the variable.
        target_grid: ``era5``, ``n96``, ``HxW``; ignored when ``grid_file`` is given.
        grid_file: ``(file, name)`` of an uploaded netCDF file whose lat/lon define the grid.
        model: a model for ``--model``; or
        baseline: a regridding for ``--baseline``.
        step: which 2-D field (over the leading dimensions, flattened) the figure shows; the
            file holds all of them.
        tile, device, max_pixels: as ``metasr upscale``'s options.

    Raises:
        JobError: the CLI's one-line message.
    """
    if (model is None) == (baseline is None):
        raise JobError("metasr serve: error: choose a model or a baseline")
    info = field_info(upload, name, max_pixels)  # header checks before the CLI loads the values
    if var in info.shapes and not 0 <= step < info.steps(var):
        raise JobError(
            f"metasr serve: error: time step {step} is out of range 0..{info.steps(var) - 1}"
        )
    job = workspace.job()
    src = take_upload(upload, job, name)
    if Path(src).suffix.lower() not in (".nc", ".nc4", ".cdf", ".netcdf"):
        src = src.rename(src.with_name(src.name + ".nc"))
    grid = target_grid
    if grid_file is not None:
        (job / "grid").mkdir()  # its own folder: the grid file may share the input's name
        grid = str(take_upload(grid_file[0], job / "grid", grid_file[1]))
    label = "grid" if grid_file is not None else safe_name(target_grid.strip())
    dst = job / "out" / f"{src.stem}_{label}.nc"
    dst.parent.mkdir(exist_ok=True)
    argv = [str(src), f"--var={var}", f"--target-grid={grid}", f"--output={dst}", "--quiet"]
    argv += [f"--baseline={baseline}"] if baseline is not None else [f"--model={model}"]
    argv += [f"--tile={int(tile)}"] if tile else []
    argv += [f"--device={device}"] if device and baseline is None else []
    argv += [f"--max-pixels={int(max_pixels)}"] if max_pixels is not None else []
    start = time.perf_counter()
    run_upscale(argv, job)
    seconds = time.perf_counter() - start
    from ... import climate as mc

    before, after = mc.read_field(src, var), mc.read_field(dst, var)
    what = f"{var} ({before.attrs.get('units', 'no units')}), step {step}"
    method = f"baseline {baseline}" if baseline is not None else f"model {model}"
    figure = field_figure(before, after, step, job / "out" / "figure.png", what, method)
    return FieldResult(
        dst,
        figure,
        tuple(mc.grid_of(before).shape),
        tuple(mc.grid_of(after).shape),
        seconds,
    )


def field_figure(before, after, step: int, path: Path, what: str, method: str) -> Path:
    """Input and result maps on one colour scale, and their zonal means, as a PNG.

    Args:
        before, after: ``(..., lat, lon)`` DataArrays (input and result).
        step: index into the flattened leading dimensions.
        path: where the PNG goes (through the atomic writer).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...io import atomic_write

    def plane(da) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = da.shape[-2:]
        values = np.asarray(da.values, np.float64).reshape(-1, h, w)[step]
        return values, np.asarray(da["lat"].values), np.asarray(da["lon"].values)

    (a, lat_a, lon_a), (b, lat_b, lon_b) = plane(before), plane(after)
    both = np.concatenate([a[np.isfinite(a)], b[np.isfinite(b)]])
    vmin, vmax = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    fig = plt.figure(figsize=(11, 3.6), dpi=90, layout="constrained")
    grid = fig.add_gridspec(1, 3, width_ratios=(1, 1, 0.55))
    image = None
    for k, (values, lat, lon, title) in enumerate(
        [
            (a, lat_a, lon_a, f"input {a.shape[0]}x{a.shape[1]}"),
            (b, lat_b, lon_b, f"{method} {b.shape[0]}x{b.shape[1]}"),
        ]
    ):
        ax = fig.add_subplot(grid[0, k])
        # pcolormesh on the cell centres: latitude order (north or south first) is kept right.
        image = ax.pcolormesh(lon, lat, values, vmin=vmin, vmax=vmax, shading="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("longitude")
        ax.set_ylabel("latitude" if k == 0 else "")
    fig.colorbar(image, ax=fig.axes[:2], shrink=0.85, label=what)
    ax = fig.add_subplot(grid[0, 2])
    with np.errstate(all="ignore"), _quiet_nanmean():
        ax.plot(np.nanmean(a, axis=1), lat_a, "o-", ms=3, label="input")
        ax.plot(np.nanmean(b, axis=1), lat_b, "-", label="result")
    ax.set_title("zonal mean", fontsize=9)
    ax.set_xlabel(what.split(",")[0])
    ax.legend(fontsize=8)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


@contextlib.contextmanager
def _quiet_nanmean():
    """``np.nanmean`` of an all-NaN row (land in an ocean field) is NaN: no warning wanted."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
