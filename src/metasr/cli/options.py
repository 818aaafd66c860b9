"""BasicSR option files (YAML), read once for ``metasr train``/``test`` and ``metasr eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import CLIError

__all__ = ["INSTALL_HINT", "load_options"]

#: How to install what training and option files need.
INSTALL_HINT = "pip install --no-build-isolation basicsr==1.4.2 && pip install 'metasr[train]'"


def load_options(path_str: str) -> dict[str, Any]:
    """The mapping of options in the YAML file ``path_str``.

    Raises:
        CLIError: the file is missing, PyYAML is not installed, or it is not a YAML mapping.
    """
    path = Path(path_str)
    if path.is_dir():
        raise CLIError(f"{path}: is a folder, not an option file")
    if not path.is_file():
        raise CLIError(f"option file not found: {path}")
    try:
        import yaml
    except ImportError:
        raise CLIError(f"reading option files needs PyYAML: {INSTALL_HINT}") from None
    try:
        opt = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CLIError(f"{path}: not a text (YAML) option file") from None
    except yaml.YAMLError as exc:
        raise CLIError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(opt, dict):
        raise CLIError(f"{path}: expected a mapping of options at the top level")
    return opt
