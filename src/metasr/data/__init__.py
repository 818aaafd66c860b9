"""Arbitrary-scale training and evaluation data.

* :mod:`~metasr.data.resize`: MATLAB-compatible bicubic ``imresize`` with a scale per axis.
* :mod:`~metasr.data.scales`: scale distributions (one ``(r_v, r_h)`` per batch), parsing and
  labels, Meta-SR's and ArbSR's standard scale sets.
* :mod:`~metasr.data.datasets`: :class:`ArbitraryScaleDataset` (random crops, one scale per
  batch), :class:`ArbitraryScaleTestDataset` (whole images × scales), :class:`ScaleBatchSampler`.
* :mod:`~metasr.data.files`: :func:`read_image`, :func:`read_sample`, :func:`write_image`,
  :func:`list_files`: data files as tensors, read by :mod:`metasr.io`, the one image/array
  reader (also used by ``metasr upscale``).

Needs only torch and numpy to import; Pillow is loaded when an image is read.
"""

from __future__ import annotations

from .datasets import (
    ArbitraryScaleDataset,
    ArbitraryScaleTestDataset,
    BatchSpec,
    ScaleBatchSampler,
    bicubic_pair,
)
from .files import list_files, read_array, read_image, read_sample, write_image
from .resize import imresize, resize_matrix
from .scales import (
    ARBSR_ASYMMETRIC_SCALES,
    META_SR_SCALES,
    ScaleSampler,
    build_scale_sampler,
    format_scale,
    lq_size_for,
    parse_scale_list,
    parse_scale_spec,
    parse_size_list,
    parse_size_spec,
    to_scale,
)

__all__ = [
    "ARBSR_ASYMMETRIC_SCALES",
    "META_SR_SCALES",
    "ArbitraryScaleDataset",
    "ArbitraryScaleTestDataset",
    "BatchSpec",
    "ScaleBatchSampler",
    "ScaleSampler",
    "bicubic_pair",
    "build_scale_sampler",
    "format_scale",
    "imresize",
    "list_files",
    "lq_size_for",
    "parse_scale_list",
    "parse_scale_spec",
    "parse_size_list",
    "parse_size_spec",
    "read_array",
    "read_image",
    "read_sample",
    "resize_matrix",
    "to_scale",
    "write_image",
]
