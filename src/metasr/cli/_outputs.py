"""Checks on the files a subcommand will write, made before any work (one place for all).

Every subcommand names its outputs (``-o``, ``--csv``, ``--json``, ``--plot``, ``--into``) and its
inputs (data files, ``--model``, ``--checkpoint``, ``--stats``, ``--target-grid``, ``--opt``)
and calls :func:`check_outputs` first: an output that is, or would replace, one of the inputs
(the same name, a symbolic link to it, or a hard link: compared by device and inode), that is a
folder, or that sits in a missing or read-only folder, ends the command in one line, exit 2,
before a model loads or a file is read. The writing itself goes through
:func:`metasr.io.atomic_write`, so an interrupted command leaves the previous file intact.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from . import CLIError

__all__ = ["check_output_file", "check_outputs", "refuse_same_names"]

PathLike = str | os.PathLike


def _keys(path: Path) -> list[object]:
    """What identifies the file ``path`` names: its absolute name and, if it exists, its
    device and inode (the same for a symbolic or hard link to it)."""
    keys: list[object] = [os.path.normcase(os.path.abspath(path))]
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # missing (yet), or a name the OS refuses
        return keys
    keys.append((st.st_dev, st.st_ino))
    return keys


def check_output_file(path: Path, flag: str, *, create_folders: bool = False) -> None:
    """Refuse a destination that cannot be written.

    Args:
        path: the file to be written (need not exist).
        flag: the option that named it (``-o``, ``--csv``), for the message.
        create_folders: missing folders will be created (``eval --csv res/x.csv``); then the
            nearest existing ancestor must be a writable folder.

    Raises:
        CLIError: a folder, a file below a file, a missing folder, or a read-only one.
    """
    if path.is_dir():
        raise CLIError(f"{flag} {path}: is a folder; give a file name")
    ancestor = path.parent if str(path.parent) else Path(".")
    if create_folders:
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise CLIError(f"{flag} {path}: {ancestor} is a file, not a folder")
    if not ancestor.is_dir():
        raise CLIError(f"{flag} {path}: folder {ancestor} does not exist")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {path}: folder {ancestor} is not writable")


def check_outputs(
    outputs: Mapping[str, PathLike | None] | Iterable[tuple[str, PathLike | None]],
    inputs: Iterable[PathLike | None],
) -> None:
    """Refuse outputs that land on an input or on each other.

    Args:
        outputs: ``flag -> path`` (or ``(flag, path)`` pairs: one flag may name several files,
            as ``-o`` does for a folder of inputs); ``None`` paths are skipped.
        inputs: every file the command reads; ``None`` and names that are not files (a
            registry model name, ``MEAN,STD``) are skipped.

    Raises:
        CLIError: ``"OUT: output would overwrite its input IN; choose another FLAG"``, or two
            outputs naming one file.
    """
    pairs = list(outputs.items()) if isinstance(outputs, Mapping) else list(outputs)
    pairs = [(flag, Path(p)) for flag, p in pairs if p is not None]
    read: dict[object, Path] = {}
    for p in inputs:
        if p is not None and str(p) and Path(p).is_file():
            for key in _keys(Path(p)):
                read.setdefault(key, Path(p))
    written: dict[object, tuple[str, Path]] = {}
    for flag, out in pairs:
        keys = _keys(out)
        for key in keys:
            if key in read:
                src = read[key]
                named = "" if os.path.abspath(src) == os.path.abspath(out) else f" {src}"
                raise CLIError(
                    f"{out}: output would overwrite its input{named}; choose another {flag}"
                )
        for key in keys:
            if key in written and written[key][0] != flag:
                raise CLIError(
                    f"{written[key][0]} and {flag} both name {out}; give different files"
                )
            written.setdefault(key, (flag, out))


def refuse_same_names(targets: Iterable[Path]) -> None:
    """Refuse output paths that repeat (inputs of one name from two folders, into one folder).

    Raises:
        CLIError: the second input would silently replace the first.
    """
    seen: set[str] = set()
    for target in targets:
        key = os.path.normcase(os.path.abspath(target))
        if key in seen:
            raise CLIError(
                f"several inputs are named {target.name!r}; they would overwrite each other"
            )
        seen.add(key)
