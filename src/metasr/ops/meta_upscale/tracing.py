"""Which tracer, if any, is running the current call: eager, ``torch.compile`` or export."""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["tracing_mode"]


def tracing_mode() -> Literal["export", "compile"] | None:
    """``"export"`` under ``torch.export`` (and the ONNX exporter built on it), ``"compile"``
    under ``torch.compile``, ``None`` in eager mode.

    The ``torch.compiler`` queries appeared in torch 2.3 (``is_compiling``) and 2.5
    (``is_exporting``); older versions, which cannot run the custom op anyway, count as eager.
    """
    compiler = getattr(torch, "compiler", None)
    is_exporting = getattr(compiler, "is_exporting", None)
    if is_exporting is not None and is_exporting():
        return "export"
    is_compiling = getattr(compiler, "is_compiling", None)
    if is_compiling is not None and is_compiling():
        return "compile"
    return None
