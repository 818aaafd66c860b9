"""Operators of metasr, one folder per op with one file per backend.

* :mod:`.meta_upscale`: Meta-Upscale (``naive`` spec, ``im2col``, ``torch``, ``triton``) and the
  dispatcher that picks a backend per call.
* :mod:`.meta_upscale.weights`: the contraction with given per-pixel weights
  (:func:`meta_upscale_weights`) and the chunked weights-first path for any predictor.
* :mod:`.memory`: free-memory probe, the out-of-memory exception of the installed torch, and the
  allocation every backend's output goes through.

Public here: the op itself, :func:`meta_upscale_weights` and the backend listing, as re-exported
by :mod:`metasr`.
"""

from __future__ import annotations

from .meta_upscale import meta_upscale
from .meta_upscale.dispatch import BackendUnavailableError, backends
from .meta_upscale.weights import meta_upscale_weights

__all__ = ["BackendUnavailableError", "backends", "meta_upscale", "meta_upscale_weights"]
