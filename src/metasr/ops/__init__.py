"""Operators of metasr, one folder per op with one file per backend.

* :mod:`.meta_upscale`: Meta-Upscale (``naive`` spec, ``im2col``, ``torch``, ``triton``) and the
  dispatcher that picks a backend per call.
* :mod:`.memory`: free-memory probe, the out-of-memory exception of the installed torch, and the
  allocation every backend's output goes through.

Public here: the op itself and the backend listing, as re-exported by :mod:`metasr`.
"""

from __future__ import annotations

from .meta_upscale import meta_upscale
from .meta_upscale._dispatch import BackendUnavailableError, backends

__all__ = ["BackendUnavailableError", "backends", "meta_upscale"]
