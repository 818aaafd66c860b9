"""The page and the HTTP endpoints of ``metasr serve`` (Gradio and FastAPI).

Two tabs: **Photos** (images by any scale per axis, an exact size, or the largest size inside a
box; a before/after slider of bicubic against the model at the same size) and **Fields**
(netCDF variables onto ``era5``, ``n96``, ``HxW`` or an uploaded grid; maps and zonal means).
Both run ``metasr upscale`` through :mod:`metasr.cli.web.jobs`. Beside the page, two JSON-error
endpoints take a file and return the result (documented in docs/usage.md)::

    curl -sf -F file=@photo.png -F scale=3.5x2 http://127.0.0.1:7860/api/upscale -o big.png
    curl -sf -F file=@t2m.nc -F var=t2m -F target_grid=era5 -F model=t2m \\
        http://127.0.0.1:7860/api/downscale -o t2m_era5.nc

Gradio and FastAPI are imported only here (``pip install 'metasr[web]'``).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# FastAPI reads the endpoints' annotations at run time, from this module's names.
from fastapi import Request

from .jobs import (
    BASELINES,
    IMAGE_SUFFIXES,
    JobError,
    Workspace,
    downscale_field,
    field_info,
    upscale_photos,
)

__all__ = ["ServeOptions", "build_blocks", "build_server"]

#: Largest upload, page or endpoint, in bytes; the pixel limit is checked on the header after.
MAX_UPLOAD_BYTES = 1 << 30
NETCDF_TYPES = [".nc", ".nc4", ".cdf", ".netcdf"]


@dataclass
class ServeOptions:
    """What ``metasr serve`` was started with.

    Attributes:
        models: model choices: the bundled models, then the checkpoints given with --model.
        default_model: the Photos tab's first choice.
        device: ``--device`` for every run (None: the CLI's default).
        max_pixels: ``--max-pixels`` for every run (None: the CLI's default).
    """

    models: list[str]
    default_model: str = "default"
    device: str | None = None
    max_pixels: int | None = None


def _status(message: str = "", error: bool = False) -> str:
    """The one-line status under a Run button, as HTML (the message's text exactly)."""
    if not message:
        return ""
    kind = "metasr-error" if error else "metasr-ok"
    return f'<p class="{kind}">{html.escape(message)}</p>'


def _scale_text(v: float, h: float) -> str:
    """``--scale`` text from the two numbers: ``3.5x2`` (``:g`` drops a needless ``.0``)."""
    return f"{float(v):g}x{float(h):g}"


def _hw(height: Any, width: Any, what: str) -> tuple[int, int]:
    try:
        h, w = int(height), int(width)
    except (TypeError, ValueError):
        raise JobError(f"metasr serve: error: give the {what} height and width") from None
    return h, w


def _upload_pairs(files: Any) -> list[tuple[str, str]]:
    """Gradio's uploaded files (paths, or objects with ``.name``) as (path, original name)."""
    if files is None:
        return []
    items = files if isinstance(files, list) else [files]
    pairs = []
    for item in items:
        path = str(getattr(item, "path", None) or getattr(item, "name", None) or item)
        original = getattr(item, "orig_name", None) or Path(path).name
        pairs.append((path, original))
    return pairs


def build_blocks(workspace: Workspace, options: ServeOptions):
    """The Gradio page (two tabs).

    Returns:
        A ``gradio.Blocks``, not launched.
    """
    import gradio as gr

    photo_models = list(options.models)
    field_methods = [*options.models, *[f"baseline: {b}" for b in BASELINES]]
    field_default = "t2m" if "t2m" in options.models else field_methods[0]

    with gr.Blocks(title="metasr", analytics_enabled=False, delete_cache=(1800, 3600)) as blocks:
        gr.Markdown(
            "# metasr: any-scale super-resolution\n"
            "Any scale per axis (3.5 × 2), an exact size, or the largest size inside a box; "
            "netCDF fields onto a finer grid. Each run is `metasr upscale`."
        )
        with gr.Tab("Photos", id="photos", elem_id="tab-photos"):
            with gr.Row():
                with gr.Column(scale=1):
                    files = gr.File(
                        label="Images (one or several)",
                        file_count="multiple",
                        file_types=list(IMAGE_SUFFIXES),
                        elem_id="photo-files",
                    )
                    mode = gr.Radio(
                        [
                            ("Scale per axis", "scale"),
                            ("Exact size", "size"),
                            ("Fit inside", "fit"),
                        ],
                        value="scale",
                        label="Output",
                        elem_id="photo-mode",
                    )
                    with gr.Row():
                        scale_v = gr.Number(
                            2.0, label="Vertical scale", minimum=1, elem_id="scale-v"
                        )
                        scale_h = gr.Number(
                            2.0, label="Horizontal scale", minimum=1, elem_id="scale-h"
                        )
                    lock = gr.Checkbox(True, label="Lock (same scale on both axes)", elem_id="lock")
                    with gr.Row():
                        height = gr.Number(None, label="Height (px)", precision=0, elem_id="size-h")
                        width = gr.Number(None, label="Width (px)", precision=0, elem_id="size-w")
                    model = gr.Dropdown(
                        photo_models,
                        value=options.default_model,
                        label="Model",
                        elem_id="photo-model",
                    )
                    with gr.Row():
                        tile = gr.Number(
                            0, label="Tile (input px; 0: whole)", precision=0, elem_id="photo-tile"
                        )
                        tta = gr.Checkbox(
                            False,
                            label="Test-time augmentation (about 8x slower)",
                            elem_id="photo-tta",
                        )
                    run_photos = gr.Button("Upscale", variant="primary", elem_id="photo-run")
                    photo_status = gr.HTML(elem_id="photo-status")
                with gr.Column(scale=2):
                    slider = gr.ImageSlider(
                        label="Bicubic (left) | model (right), same size",
                        type="numpy",
                        format="png",
                        elem_id="photo-slider",
                        max_height=640,
                    )
                    shown = gr.Dropdown([], label="Show result", elem_id="photo-shown")
                    download = gr.File(
                        label="Download", interactive=False, elem_id="photo-download"
                    )
            previews = gr.State({})

        with gr.Tab("Fields", id="fields", elem_id="tab-fields"):
            with gr.Row():
                with gr.Column(scale=1):
                    nc = gr.File(label="netCDF file", file_types=NETCDF_TYPES, elem_id="field-file")
                    var = gr.Dropdown([], label="Variable", elem_id="field-var")
                    step = gr.Slider(
                        0, 1, value=0, step=1, label="Time step shown", elem_id="field-step"
                    )
                    grid_kind = gr.Radio(
                        [
                            ("ERA5 0.25° (721x1440)", "era5"),
                            ("N96 (145x192)", "n96"),
                            ("H x W", "hxw"),
                            ("Grid file", "file"),
                        ],
                        value="era5",
                        label="Target grid",
                        elem_id="field-grid",
                    )
                    grid_hw = gr.Textbox(label="H x W", placeholder="96x144", elem_id="field-hw")
                    grid_file = gr.File(
                        label="Grid file (its lat/lon)",
                        height=110,
                        file_types=NETCDF_TYPES,
                        elem_id="field-gridfile",
                    )
                    method = gr.Dropdown(
                        field_methods,
                        value=field_default,
                        label="Model or baseline",
                        elem_id="field-method",
                    )
                    run_fields = gr.Button("Downscale", variant="primary", elem_id="field-run")
                    field_status = gr.HTML(elem_id="field-status")
                with gr.Column(scale=2):
                    figure = gr.Image(
                        label="Input and result (one colour scale), zonal means",
                        show_label=False,  # the label would hide the first map's title
                        type="filepath",
                        format="png",
                        elem_id="field-figure",
                    )
                    field_download = gr.File(
                        label="Download (CF netCDF)", interactive=False, elem_id="field-download"
                    )

        # -- Photos: the lock keeps both scales equal (user input only, so no event loop).
        def follow(value, locked, other):
            return value if locked else other

        scale_v.input(follow, [scale_v, lock, scale_h], scale_h, api_name=False)
        scale_h.input(follow, [scale_h, lock, scale_v], scale_v, api_name=False)

        def do_photos(files, mode, v, h, height, width, model, tile, tta, progress=gr.Progress()):  # noqa: B008 (Gradio injects it)
            try:
                kwargs: dict[str, Any] = {}
                if mode == "scale":
                    if v is None or h is None:
                        raise JobError("metasr serve: error: give both scales")
                    kwargs["scale"] = _scale_text(v, h)
                elif mode == "size":
                    kwargs["size"] = "{}x{}".format(*_hw(height, width, "output"))
                else:
                    kwargs["fit"] = _hw(height, width, "box")
                results, out = upscale_photos(
                    _upload_pairs(files),
                    workspace,
                    model=model,
                    tile=int(tile or 0),
                    tta=bool(tta),
                    device=options.device,
                    max_pixels=options.max_pixels,
                    progress=lambda f, what: progress(f, desc=what),
                    **kwargs,
                )
            except JobError as exc:
                return _status(str(exc), True), None, None, {}, gr.update(choices=[], value=None)
            store = {}
            for r in results:
                (h0, w0), (H, W) = r.in_shape, r.out_shape
                crop = " (centre crop shown)" if r.cropped else ""
                store[r.name] = (
                    (r.before, r.after),
                    f"{r.name}: {h0}x{w0} -> {H}x{W} in {r.seconds:.2f} s{crop}",
                )
            first = results[0].name
            lines = "; ".join(text for _, text in store.values())
            return (
                _status(lines),
                store[first][0],
                str(out),
                store,
                gr.update(choices=list(store), value=first),
            )

        run_photos.click(
            do_photos,
            [files, mode, scale_v, scale_h, height, width, model, tile, tta],
            [photo_status, slider, download, previews, shown],
            api_name="upscale_photos",
            concurrency_limit=1,
        )

        def show(name, store):
            return store[name][0] if name in store else None

        shown.input(show, [shown, previews], slider, api_name=False)

        # -- Fields
        def on_file(upload):
            pairs = _upload_pairs(upload)
            if not pairs:
                return gr.update(choices=[], value=None), gr.update(maximum=1, value=0), ""
            try:
                info = field_info(pairs[0][0], pairs[0][1], options.max_pixels)
            except JobError as exc:
                return (
                    gr.update(choices=[], value=None),
                    gr.update(maximum=1, value=0),
                    _status(str(exc), True),
                )
            first = info.variables[0]
            return (
                gr.update(choices=info.variables, value=first),
                gr.update(maximum=max(info.steps(first) - 1, 1), value=0),
                _status(
                    "; ".join(
                        f"{v}: " + " x ".join(f"{d} {s}" for d, s in info.shapes[v].items())
                        for v in info.variables
                    )
                ),
            )

        nc.change(on_file, nc, [var, step, field_status], api_name=False)

        def on_var(upload, name):
            pairs = _upload_pairs(upload)
            if not pairs or not name:
                return gr.update()
            try:
                info = field_info(pairs[0][0], pairs[0][1], options.max_pixels)
            except JobError:
                return gr.update()
            if name not in info.shapes:
                return gr.update()
            return gr.update(maximum=max(info.steps(name) - 1, 1), value=0)

        var.input(on_var, [nc, var], step, api_name=False)

        def do_fields(upload, name, step_value, kind, hw, gfile, chosen, progress=gr.Progress()):  # noqa: B008 (Gradio injects it)
            pairs = _upload_pairs(upload)
            try:
                if not pairs:
                    raise JobError("metasr serve: error: upload a netCDF file first")
                if not name:
                    raise JobError("metasr serve: error: choose a variable")
                grid_pairs = _upload_pairs(gfile)
                if kind == "file" and not grid_pairs:
                    raise JobError("metasr serve: error: upload a grid file, or pick another grid")
                target = {"hxw": (hw or "").strip(), "file": ""}.get(kind, kind)
                baseline = chosen.split(": ", 1)[1] if chosen.startswith("baseline: ") else None
                progress(0.1, desc="downscaling")
                result = downscale_field(
                    pairs[0][0],
                    pairs[0][1],
                    workspace,
                    var=name,
                    target_grid=target,
                    grid_file=grid_pairs[0] if kind == "file" else None,
                    model=None if baseline else chosen,
                    baseline=baseline,
                    step=int(step_value or 0),
                    device=options.device,
                    max_pixels=options.max_pixels,
                )
            except JobError as exc:
                return _status(str(exc), True), None, None
            (h, w), (H, W) = result.in_shape, result.out_shape
            text = f"{name}: {h}x{w} -> {H}x{W} ({chosen}) in {result.seconds:.2f} s"
            return _status(text), str(result.figure), str(result.path)

        run_fields.click(
            do_fields,
            [nc, var, step, grid_kind, grid_hw, grid_file, method],
            [field_status, figure, field_download],
            api_name="downscale_field",
            concurrency_limit=1,
        )
    return blocks


def build_server(workspace: Workspace, options: ServeOptions):
    """The FastAPI application: ``/api/health``, ``/api/upscale``, ``/api/downscale`` and the
    Gradio page at ``/``.

    ``/api/upscale`` takes a multipart ``file`` and one of ``scale`` (``3.5x2``), ``size``
    (``HxW``) or ``fit`` (``HxW``), with optional ``model``, ``tile``, ``tta`` (``1``), and
    answers the PNG. ``/api/downscale`` takes ``file``, ``var``, ``target_grid`` (or a
    ``grid_file`` part) and ``model`` or ``baseline``, and answers the netCDF file. A refused
    request answers status 400 and ``{"error": "<the CLI's one-line message>"}``; an upload over
    :data:`MAX_UPLOAD_BYTES`, 413.
    """
    import gradio as gr
    from fastapi import FastAPI
    from fastapi.responses import FileResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="metasr", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "models": options.models}

    async def form_of(request: Request) -> tuple[Any, list[Any]]:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_UPLOAD_BYTES:
            raise JobError(f"metasr serve: error: upload over {MAX_UPLOAD_BYTES:,} bytes")
        form = await request.form(max_files=2, max_fields=16)
        return form, [form.get(k) for k in ("file", "grid_file")]

    def saved(part: Any, job_files: list[Path]) -> tuple[str, str] | None:
        """A multipart file part as (path in the workspace, its name)."""
        if part is None or isinstance(part, str):
            return None
        from .jobs import safe_name

        folder = workspace.job()
        path = folder / safe_name(part.filename or "upload")
        with open(path, "wb") as out:
            while chunk := part.file.read(1 << 20):
                out.write(chunk)
        job_files.append(folder)
        return str(path), part.filename or "upload"

    def answer_error(exc: JobError) -> JSONResponse:
        code = 413 if "upload over" in str(exc) else 400
        return JSONResponse({"error": str(exc)}, status_code=code)

    @app.post("/api/upscale")
    async def api_upscale(request: Request):
        try:
            form, (part, _) = await form_of(request)
            upload = saved(part, [])
            if upload is None:
                raise JobError("metasr serve: error: send the image as the multipart part 'file'")
            given = {k: form.get(k) for k in ("scale", "size", "fit") if form.get(k)}
            if len(given) != 1:
                raise JobError("metasr serve: error: give one of scale, size or fit")
            kwargs: dict[str, Any] = dict(given)
            if "fit" in kwargs:
                from ...data.scales import parse_size_spec

                try:
                    kwargs["fit"] = parse_size_spec(str(kwargs["fit"]))
                except ValueError as exc:
                    raise JobError(f"metasr serve: error: bad fit: {exc}") from None
            results, out = await run_in_threadpool(
                upscale_photos,
                [upload],
                workspace,
                model=str(form.get("model") or options.default_model),
                tile=int(form.get("tile") or 0),
                tta=str(form.get("tta") or "0").lower() in ("1", "true", "yes", "on"),
                device=options.device,
                max_pixels=options.max_pixels,
                **kwargs,
            )
        except JobError as exc:
            return answer_error(exc)
        except ValueError as exc:  # tile not a number
            return JSONResponse({"error": f"metasr serve: error: {exc}"}, status_code=400)
        return FileResponse(out, media_type="image/png", filename=out.name)

    @app.post("/api/downscale")
    async def api_downscale(request: Request):
        try:
            form, (part, grid_part) = await form_of(request)
            upload = saved(part, [])
            if upload is None:
                raise JobError("metasr serve: error: send the netCDF file as the part 'file'")
            grid_upload = saved(grid_part, [])
            target = str(form.get("target_grid") or "")
            if not target and grid_upload is None:
                raise JobError("metasr serve: error: give target_grid or a grid_file part")
            result = await run_in_threadpool(
                downscale_field,
                upload[0],
                upload[1],
                workspace,
                var=str(form.get("var") or ""),
                target_grid=target,
                grid_file=grid_upload,
                model=str(form["model"]) if form.get("model") else None,
                baseline=str(form["baseline"]) if form.get("baseline") else None,
                device=options.device,
                max_pixels=options.max_pixels,
            )
        except JobError as exc:
            return answer_error(exc)
        return FileResponse(
            result.path, media_type="application/x-netcdf", filename=result.path.name
        )

    blocks = build_blocks(workspace, options)
    return gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        allowed_paths=[str(workspace.root)],
        max_file_size=MAX_UPLOAD_BYTES,
        ssr_mode=False,
        footer_links=["api"],
    )


def model_choices(checkpoints: Sequence[str]) -> list[str]:
    """The bundled models' names, then the checkpoints given at start (in order, once each)."""
    from ...weights import BUNDLED

    return list(dict.fromkeys([*BUNDLED, *checkpoints]))
