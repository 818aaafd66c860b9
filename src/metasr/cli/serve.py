"""``metasr serve``: a local web app (Gradio) for photos and netCDF fields.

Examples::

    metasr serve                                  # http://127.0.0.1:7860
    metasr serve --model my_run.safetensors --port 8080 --device cuda

Every request runs ``metasr upscale`` (:mod:`metasr.cli.web.jobs`), so the page refuses what the
command refuses, with the same one-line message. Uploads and results live in one temporary
folder, removed when the server stops. Needs ``pip install 'metasr[web]'``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

from . import DEVICE_HELP, CLIError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="local web app: photos and netCDF fields in the browser",
        description=(
            "Start a local web app: upscale photos by any scale per axis, to a size or to fit a "
            "box (before/after slider), and downscale netCDF fields onto a finer grid. Each "
            "request runs 'metasr upscale'. JSON endpoints: POST /api/upscale, /api/downscale."
        ),
        epilog="Needs pip install 'metasr[web]'. Details and a curl example: docs/usage.md.",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="CHECKPOINT",
        help="a checkpoint to offer beside the bundled models (repeat for several); the first "
        "is the Photos tab's default",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to "
        "the network, without any login)",
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        metavar="N",
        help="refuse inputs larger than N pixels, checked on the file header (default: "
        "metasr.io.MAX_PIXELS)",
    )
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    """The options, before anything heavy is imported."""
    from pathlib import Path

    if not 0 < args.port < 65536:
        raise CLIError(f"bad --port {args.port}: must be 1..65535")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise CLIError(f"bad --max-pixels {args.max_pixels}: must be >= 1")
    if args.device != "auto":  # auto needs no check, and importing torch would slow start-up
        from . import device_arg

        device_arg(args.device)
    for spec in args.model:
        if not spec.strip():
            raise CLIError("bad --model '': give a checkpoint file or a bundled model's name")
        from ..weights import BUNDLED

        if spec not in BUNDLED and not Path(spec).is_file():
            raise CLIError(f"bad --model {spec}: no such file")
    import importlib.util

    for module in ("gradio", "uvicorn", "fastapi"):
        if importlib.util.find_spec(module) is None:
            raise CLIError(f"metasr serve needs {module}: pip install 'metasr[web]'")
    _check_port(args.host, args.port)


def _check_port(host: str, port: int) -> None:
    """Refuse a port in use (or an address this machine does not have) at once, before the
    seconds of importing Gradio, with one line instead of the web server's log."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise CLIError(f"bad --host {host}: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def run(args: argparse.Namespace) -> int:
    _check(args)
    root = tempfile.mkdtemp(prefix="metasr-serve-")
    # Everything this process writes through tempfile, and Gradio's uploads and cache, goes
    # under root, which is removed on the way out; Gradio reads these before it is imported.
    os.environ["GRADIO_TEMP_DIR"] = os.path.join(root, "gradio")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    tempfile.tempdir = root
    started = time.perf_counter()
    try:
        import uvicorn

        from .web.app import ServeOptions, build_server, model_choices
        from .web.jobs import Workspace

        workspace = Workspace(root)
        models = model_choices([os.path.abspath(m) if os.path.isfile(m) else m for m in args.model])
        default = models[len(models) - len(args.model)] if args.model else "default"
        device = None if args.device == "auto" else args.device  # None: the CLI's own auto
        options = ServeOptions(models, default, device, args.max_pixels)
        app = build_server(workspace, options)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
        server = uvicorn.Server(config)
        url = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}"

        def announce() -> None:
            while not server.started and not server.should_exit:
                time.sleep(0.02)
            if server.started:
                took = time.perf_counter() - started
                print(f"metasr serve: ready at {url} ({took:.1f} s)", file=sys.stdout, flush=True)

        threading.Thread(target=announce, daemon=True).start()
        try:
            server.run()
        except SystemExit:  # uvicorn's own exit when it cannot bind (taken since the check)
            if server.started:
                raise
        if not server.started:
            raise CLIError(f"cannot listen on {args.host}:{args.port} (in use, or not allowed)")
    finally:
        tempfile.tempdir = None
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0
