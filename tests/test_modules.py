"""The head's modules (metasr.modules): MetaUpsample and Pos2Weight take NumPy integers and
arrays, and refuse a wrong type with a TypeError, a bad value with a ValueError."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import metasr


def test_numpy_integers_are_accepted_and_bools_refused():
    up = metasr.MetaUpsample(np.int64(4), np.int32(3), kernel_size=np.int64(3), hidden=np.int16(8))
    assert type(up.phi.in_channels) is int and up.phi.meta_block[2].out_features == 9 * 4 * 3
    for kwargs in (dict(kernel_size=True), dict(hidden=True), dict(in_channels=True)):
        args = {"in_channels": 4, "out_channels": 3} | kwargs
        with pytest.raises(TypeError, match="integer"):
            metasr.Pos2Weight(**args)
    with pytest.raises(TypeError, match="backend must be a string"):
        metasr.MetaUpsample(4, 3, backend=3)
    with pytest.raises(ValueError, match="unknown backend"):
        metasr.MetaUpsample(4, 3, backend="bogus")
    with pytest.raises(ValueError, match="arithmetic"):
        metasr.MetaUpsample(4, 3, arithmetic="fast")
    with pytest.raises(TypeError, match="pos_encoding must be a string"):
        metasr.Pos2Weight(4, 3, pos_encoding=["asymmetric"])


@pytest.mark.parametrize(
    "size",
    [np.array([9, 10]), torch.tensor([9, 10]), torch.Size([9, 10]), (np.int64(9), np.int32(10))],
)
def test_size_accepts_arrays_and_numpy_ints(size):
    up = metasr.MetaUpsample(2, 1, hidden=4)
    assert up(torch.randn(1, 2, 3, 4), size=size).shape == (1, 1, 9, 10)


@pytest.mark.parametrize(
    ("size", "error"),
    [
        (np.array([9.0, 10.0]), TypeError),  # float sizes: a wrong type
        (torch.tensor([9.0, 10.0]), TypeError),
        ("9x10", TypeError),  # the CLI's spelling is not a size here
        (np.array([[9, 10]]), ValueError),  # integers, but not a pair
        ((9, 10, 11), ValueError),
    ],
)
def test_bad_sizes_are_refused(size, error):
    up = metasr.MetaUpsample(2, 1, hidden=4)
    with pytest.raises(error, match="size"):
        up(torch.randn(1, 2, 3, 4), size=size)


#: A wrong type for each option of the head (Pos2Weight, and MetaUpsample, which builds it).
WRONG_HEAD_TYPES = [
    ({"hidden": 16.0}, "hidden must be a positive integer"),
    ({"hidden_layers": 1.5}, "hidden_layers must be a positive integer"),
    ({"activation": None}, "activation must be a string"),
    ({"encoding": 1}, "encoding must be a string"),
    ({"fourier_features": "32"}, "fourier_features must be a positive integer"),
    ({"fourier_scale": True}, "fourier_scale must be a positive number"),
    ({"kernel_size": 3.0}, "kernel_size must be a positive odd integer"),
    ({"pos_encoding": 4}, "pos_encoding must be a string"),
]


@pytest.mark.parametrize("kwargs, match", WRONG_HEAD_TYPES)
@pytest.mark.parametrize("module", ["Pos2Weight", "MetaUpsample"])
def test_wrong_head_option_types_are_type_errors(module, kwargs, match):
    with pytest.raises(TypeError, match=match):
        getattr(metasr, module)(3, 2, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"arithmetic": 0}, "arithmetic must be a string"),
        ({"periodic_lon": "yes"}, "periodic_lon must be True or False"),
        ({"backend": 1}, "backend must be a string"),
    ],
)
def test_wrong_meta_upsample_types_are_type_errors(kwargs, match):
    with pytest.raises(TypeError, match=match):
        metasr.MetaUpsample(3, 2, **kwargs)
