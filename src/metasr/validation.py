"""Shared checks of API arguments: a wrong type is a ``TypeError``, a bad value a ``ValueError``.

PyTorch's convention: ``torch.zeros("3")`` is a ``TypeError``, ``torch.zeros(-1)`` a
``ValueError``/``RuntimeError``. Every public function of metasr checks its arguments with these
helpers, so the same mistake reads the same everywhere (``tile must be an integer, got 2.5``).

A wrong type raises :class:`ArgumentTypeError`, a ``TypeError``; the command line reports it in
one line with exit status 2 (a usage error), while any other ``TypeError`` (a bug) keeps its
traceback. Bad *data* read from a file (a checkpoint's metadata, an option file, a statistics
JSON) is a ``ValueError`` naming the file, whatever Python type the bad entry has: the caller
passed the right type (a path), the file holds the wrong thing.

Integers accept any :class:`numbers.Integral` (NumPy's included) and reals any
:class:`numbers.Real`; a ``bool`` is never a number here, although Python makes it an ``int``
(``tile=True`` is a mistake, not 1).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection

import numpy as np

__all__ = [
    "ArgumentTypeError",
    "check_bool",
    "check_choice",
    "check_int",
    "check_positive_float",
    "check_positive_int",
    "check_positive_ints",
    "check_ratio",
    "check_real",
    "check_str",
    "is_integer",
    "is_real",
]


class ArgumentTypeError(TypeError):
    """An argument of the wrong type (the command line prints it in one line, exit status 2)."""


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer (NumPy's included), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """Whether ``value`` is a real number (NumPy's included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _type_error(name: str, wanted: str, value: object) -> ArgumentTypeError:
    return ArgumentTypeError(f"{name} must be {wanted}, got {type(value).__name__} {value!r}")


def check_int(name: str, value: object, minimum: int | None = None) -> int:
    """``value`` as an ``int``, at least ``minimum`` when given.

    Raises:
        ArgumentTypeError: not an integer (a bool, a float, a string).
        ValueError: below ``minimum``.
    """
    if not is_integer(value):
        raise _type_error(name, "an integer", value)
    if minimum is not None and value < minimum:  # type: ignore[operator]
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def check_positive_int(name: str, value: object) -> int:
    """``value`` as an ``int`` ≥ 1.

    Raises:
        ArgumentTypeError: not an integer.
        ValueError: below 1 (the message says "must be a positive integer").
    """
    if not is_integer(value):
        raise _type_error(name, "a positive integer", value)
    if value < 1:  # type: ignore[operator]
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def check_positive_ints(name: str, value: object) -> list[int]:
    """``value`` (a list or tuple) as a list of ``int`` ≥ 1.

    Raises:
        ArgumentTypeError: not a list or tuple, or an item not an integer.
        ValueError: an item below 1.
    """
    if not isinstance(value, (list, tuple)):
        raise _type_error(name, "a list or tuple of positive integers", value)
    return [check_positive_int(f"{name}[{i}]", v) for i, v in enumerate(value)]


def check_real(name: str, value: object, finite: bool = True) -> float:
    """``value`` as a ``float`` (finite unless ``finite=False``).

    Raises:
        ArgumentTypeError: not a real number.
        ValueError: NaN or infinite (with ``finite``).
    """
    if not is_real(value):
        raise _type_error(name, "a real number", value)
    v = float(value)  # type: ignore[arg-type]
    if finite and not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def check_positive_float(name: str, value: object) -> float:
    """``value`` as a finite ``float`` > 0.

    Raises:
        ArgumentTypeError: not a real number.
        ValueError: not finite, or ≤ 0.
    """
    if not is_real(value):
        raise _type_error(name, "a positive number", value)
    v = float(value)  # type: ignore[arg-type]
    if not (v > 0.0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def check_ratio(name: str, value: object) -> float:
    """``value`` as a finite ``float`` ≥ 1 (a scale or coarsening factor).

    A one-element tensor counts as its number (a scale taken from a batch).

    Raises:
        ArgumentTypeError: not a real number.
        ValueError: not finite, or below 1.
    """
    if not is_real(value):
        numel = getattr(value, "numel", None)
        if callable(numel) and hasattr(value, "item") and numel() == 1:
            value = float(value.item())  # type: ignore[union-attr]
        else:
            raise _type_error(name, "a real number", value)
    r = float(value)  # type: ignore[arg-type]
    if not math.isfinite(r):
        raise ValueError(f"{name} must be finite, got {r}")
    if r < 1.0:
        raise ValueError(f"{name} must be >= 1, got {r}")
    return r


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is a ``bool`` (or NumPy's ``bool_``); ``1`` or ``"yes"`` are not.

    Raises:
        ArgumentTypeError: anything else.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise _type_error(name, "True or False", value)


def check_str(name: str, value: object) -> str:
    """``value`` if it is a ``str``.

    Raises:
        ArgumentTypeError: anything else.
    """
    if not isinstance(value, str):
        raise _type_error(name, "a string", value)
    return value


def check_choice(name: str, value: object, choices: Collection[str]) -> str:
    """``value`` if it is one of the strings ``choices``.

    Raises:
        ArgumentTypeError: not a string.
        ValueError: a string that is not one of ``choices`` (the message lists them).
    """
    check_str(name, value)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value  # type: ignore[return-value]
