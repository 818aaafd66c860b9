"""Optional dependencies: which extra provides which module, and the one "install this" error.

Every optional feature imports its package through :func:`require`, so a missing package ends
in the same one line everywhere (the CLI prints it without a traceback, exit status 1) and
``metasr info`` lists every extra from the same table. The table mirrors
``[project.optional-dependencies]`` of ``pyproject.toml`` (a test keeps the two in step).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingDependencyError", "install_hint", "require"]


class MissingDependencyError(ImportError, ValueError):
    """An optional package is not installed; the message names what to install.

    A :class:`ValueError` too, so that callers that treat bad requests as ``ValueError`` (and
    the CLI's one-line error path) handle it without knowing of it.
    """


#: extra → ((distribution, importable module), ...), in pyproject.toml's order.
EXTRAS: dict[str, tuple[tuple[str, str], ...]] = {
    "triton": (("triton", "triton"),),
    "train": (
        ("basicsr", "basicsr"),
        ("torchvision", "torchvision"),
        ("pyyaml", "yaml"),
        ("scikit-image", "skimage"),
        ("matplotlib", "matplotlib"),
    ),
    "climate": (
        ("xarray", "xarray"),
        ("netCDF4", "netCDF4"),
        ("dask", "dask"),
        ("distributed", "distributed"),
        ("zarr", "zarr"),
        ("scipy", "scipy"),
    ),
    "export": (("onnx", "onnx"), ("onnxruntime", "onnxruntime"), ("onnxscript", "onnxscript")),
    "web": (("gradio", "gradio"), ("matplotlib", "matplotlib")),
    "dev": (
        ("pytest", "pytest"),
        ("ruff", "ruff"),
        ("scikit-image", "skimage"),
        ("pyyaml", "yaml"),
        ("cfchecker", "cfchecker"),
        ("selenium", "selenium"),
    ),
}

#: Commands that install an extra where a plain ``pip install`` is not enough.
_SPECIAL = {
    "train": "pip install --no-build-isolation basicsr==1.4.2 && pip install 'metasr[train]'",
}


def install_hint(extra: str) -> str:
    """The command that installs ``extra`` (``pip install 'metasr[climate]'``)."""
    return _SPECIAL.get(extra, f"pip install 'metasr[{extra}]'")


def require(module: str, extra: str | None, purpose: str) -> ModuleType:
    """Import ``module`` for ``purpose`` or raise :class:`MissingDependencyError`.

    Args:
        module: the module to import (``"xarray"``, ``"PIL.Image"``).
        extra: the extra that provides it; ``None`` for a core dependency (the message then
            names the distribution to reinstall).
        purpose: what needs it (``"netCDF input"``): the message starts with it.

    Raises:
        MissingDependencyError: ``module`` cannot be imported; one line naming the install
            command.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if extra is None:
            hint = f"pip install {_CORE.get(top, top)} (a dependency of metasr)"
        else:
            hint = install_hint(extra)
        raise MissingDependencyError(
            f"{purpose} needs the {top!r} package ({exc.msg if hasattr(exc, 'msg') else exc}): "
            f"{hint}"
        ) from None


#: importable module → distribution, for core dependencies whose names differ.
_CORE = {"PIL": "Pillow", "png": "pypng"}
