"""``metasr`` command line: ``metasr upscale|train|eval|bench|export|info|serve``.

Each subcommand lives in its own module exposing ``register(subparsers)``; the module is imported
only when the parser is built, and heavy imports happen inside the command itself. User mistakes
end in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence

__all__ = [
    "DEVICE_HELP",
    "MODEL_HELP",
    "CLIError",
    "device_arg",
    "main",
    "one_line",
    "parse_tile_arg",
]

#: Subcommand modules, in help order. Each defines ``register(subparsers)``.
_SUBCOMMAND_MODULES = (
    "upscale",
    "train",
    "eval",
    "climate_stats",
    "bench",
    "export",
    "info",
    "demo",
    "serve",
)


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


#: ``--model`` help, the same for every subcommand that loads a model.
MODEL_HELP = (
    "a bundled model: 'default' (photos, the default), 'default-v1' (the first photo model), "
    "'t2m' (near-surface temperature fields, kelvin); a metasr .safetensors checkpoint; a "
    "BasicSR net_g_*.pth written by metasr training; the official Meta-SR model_1000.pt; an "
    ".onnx file from 'metasr export' (onnxruntime); or a registry name (meta_rdn, meta_edsr, "
    "meta_swinir: random weights). The format is read from the file's content"
)

#: ``--device`` help, the same for every subcommand.
DEVICE_HELP = "auto (CUDA when present, else the CPU; the default), cpu or cuda[:N]"


def device_arg(name: str | None):
    """``--device``: ``auto`` (or ``None``: CUDA when available, else the CPU), ``cpu`` or
    ``cuda[:N]``.

    Raises:
        CLIError: a device this machine does not have, or one metasr does not run on.
    """
    import torch

    from ..checkpoints import resolve_device

    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = resolve_device(name)
    except ValueError as exc:
        raise CLIError(f"bad --device: {exc}") from None
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"bad --device {name!r}: use cpu or cuda[:N]")
    return dev


def parse_tile_arg(text: str) -> int | str:
    """``--tile``: ``auto`` or a whole number >= 0."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise CLIError(f"bad --tile {text!r}: give 'auto' or a whole number") from None
    if value < 0:
        raise CLIError(f"bad --tile {value}: must be >= 0 (0 disables tiling)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metasr",
        description="Magnification-arbitrary super-resolution with Meta-Upscale.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"metasr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _SUBCOMMAND_MODULES:
        if importlib.util.find_spec(f"{__name__}.{name}") is None:
            continue  # subcommand not part of this installation
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def one_line(message: object) -> str:
    """A possibly multi-line message as one line: the first line, then the others after ``;``.

    Backend refusals, for instance, are a header ending in ``:`` and one line per backend; all
    of them are the explanation, so none is dropped.
    """
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if not lines:
        return ""
    head, rest = lines[0], lines[1:]
    if not rest:
        return head
    return f"{head} {'; '.join(rest)}" if head.endswith(":") else "; ".join(lines)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the CLI: ``metasr: warning: TEXT``, one line, no source."""
    if category.__name__ == "DecompressionBombWarning":
        return  # Pillow's own guard: metasr.io refuses such files itself, with one message
    print(f"metasr: warning: {one_line(message)}", file=sys.stderr if file is None else file)


class _Terminated(BaseException):
    """Raised by the SIGTERM/SIGHUP handler so that ``finally`` and cleanup code run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame) -> None:
    raise _Terminated(signum)


@contextlib.contextmanager
def _terminate_as_exception() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into an exception while a command runs (as Python does SIGINT).

    ``timeout``, ``kill``, ``docker stop`` and Slurm send SIGTERM; the default action would end
    the process at once and leave a half-written temporary output behind. Only the main thread
    can install handlers; elsewhere (a caller's worker thread) the defaults stay.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = [getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    previous = {}
    for signum in wanted:
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue  # nohup and friends ignore SIGHUP on purpose: keep it ignored
        previous[signum] = signal.signal(signum, _raise_terminated)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (see "Limits" in docs/usage.md)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prefix = f"metasr {args.command}: error:"
    try:
        with warnings.catch_warnings(), _terminate_as_exception():
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"{prefix} {one_line(exc)}", file=sys.stderr)
        return 2
    except TypeError as exc:
        # An argument of the wrong type (metasr.validation.ArgumentTypeError; from an option
        # file, say): a usage error in one line. Any other TypeError is a bug: let it show.
        if type(exc).__name__ != "ArgumentTypeError":
            raise
        print(f"{prefix} {one_line(exc)}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        # Raised by the library for bad input (scale, size, shapes, paths): one line, no trace.
        print(f"{prefix} {one_line(exc) or type(exc).__name__}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as exc:
        # Host (MemoryError; NumPy's _ArrayMemoryError says how much it wanted) or device
        # (torch's OutOfMemoryError, a RuntimeError; named here to keep torch out of this
        # module) allocation failed. Any other RuntimeError is a bug: let it show.
        if not isinstance(exc, MemoryError) and type(exc).__name__ != "OutOfMemoryError":
            raise
        detail = one_line(exc)
        print(f"{prefix} out of memory{': ' + detail if detail else ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("metasr: interrupted", file=sys.stderr)
        return 130
    except _Terminated as exc:
        print(f"metasr: terminated by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum
