"""``metasr`` command line: ``metasr upscale|train|test|eval|bench|info``.

Each subcommand lives in its own module exposing ``register(subparsers)``; the module is imported
only when the parser is built, and heavy imports happen inside the command itself. User mistakes
end in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["CLIError", "main"]

#: Subcommand modules, in help order. Each defines ``register(subparsers)``.
_SUBCOMMAND_MODULES = ("upscale", "train", "eval", "bench", "export", "info")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metasr",
        description="Magnification-arbitrary super-resolution with Meta-Upscale.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _SUBCOMMAND_MODULES:
        if importlib.util.find_spec(f"{__name__}.{name}") is None:
            continue  # subcommand not part of this installation
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"metasr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        # Raised by the library for bad input (scale, size, shapes, paths): one line, no trace.
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"metasr {args.command}: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("metasr: interrupted", file=sys.stderr)
        return 130
