"""``metasr.validation``: a wrong type is a ``TypeError``, a bad value a ``ValueError``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metasr.validation import (
    ArgumentTypeError,
    check_bool,
    check_choice,
    check_int,
    check_positive_float,
    check_positive_int,
    check_positive_ints,
    check_ratio,
    check_real,
    check_str,
)


def test_integers():
    assert check_int("n", np.int64(3)) == 3 and type(check_int("n", np.int64(3))) is int
    assert check_int("n", -2) == -2 and check_int("n", 0, minimum=0) == 0
    assert check_positive_int("n", np.uint8(7)) == 7
    for bad in (True, 2.0, "3", None, np.float32(1)):
        with pytest.raises(TypeError, match="n must be"):
            check_int("n", bad)
        with pytest.raises(ArgumentTypeError, match="n must be a positive integer"):
            check_positive_int("n", bad)
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        check_int("n", -1, minimum=0)
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        check_positive_int("n", 0)
    assert check_positive_ints("d", (2, np.int64(3))) == [2, 3]
    for bad in (5, "23", {2: 3}, None):
        with pytest.raises(ArgumentTypeError, match="d must be a list or tuple of positive"):
            check_positive_ints("d", bad)
    with pytest.raises(ArgumentTypeError, match=r"d\[1\] must be a positive integer"):
        check_positive_ints("d", [2, 2.5])
    with pytest.raises(ValueError, match=r"d\[0\] must be a positive integer, got 0"):
        check_positive_ints("d", [0])


def test_reals_and_ratios():
    assert check_real("x", np.float32(0.5)) == 0.5 and check_real("x", 3) == 3.0
    assert math.isinf(check_real("x", math.inf, finite=False))
    assert check_positive_float("x", 1e-9) == 1e-9
    assert check_ratio("r", 2) == 2.0 and check_ratio("r", torch.tensor([2.5])) == 2.5
    for bad in (False, "2", None, [2.0], torch.tensor([2.0, 3.0])):
        with pytest.raises(TypeError, match="must be a"):
            check_ratio("r", bad)
    with pytest.raises(TypeError):
        check_real("x", "1")
    with pytest.raises(TypeError):
        check_positive_float("x", True)
    for bad, fragment in ((math.nan, "finite"), (math.inf, "finite"), (0.5, ">= 1")):
        with pytest.raises(ValueError, match=fragment):
            check_ratio("r", bad)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="positive finite"):
            check_positive_float("x", bad)
    with pytest.raises(ValueError, match="finite"):
        check_real("x", math.nan)


def test_bools_strings_and_choices():
    assert check_bool("flag", True) is True and check_bool("flag", np.bool_(False)) is False
    for bad in (1, 0, "yes", None):
        with pytest.raises(TypeError, match="flag must be True or False"):
            check_bool("flag", bad)
    assert check_str("s", "a") == "a"
    with pytest.raises(TypeError, match="s must be a string, got int 3"):
        check_str("s", 3)
    assert check_choice("mode", "b", ("a", "b")) == "b"
    with pytest.raises(TypeError):
        check_choice("mode", 1, ("a", "b"))
    with pytest.raises(ValueError, match="mode must be one of 'a', 'b', got 'c'"):
        check_choice("mode", "c", ("a", "b"))


def test_type_errors_are_not_value_errors():
    # Callers that catch ValueError for bad values do not swallow a wrong type.
    with pytest.raises(TypeError) as info:
        check_positive_int("n", 2.5)
    assert not isinstance(info.value, ValueError)
