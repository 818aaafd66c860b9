"""A small timm-like model registry: :func:`register_model`, :func:`create_model`,
:func:`list_models`.

An entry is a constructor (a class or a factory function) plus default keyword arguments, so one
class can be registered under several configurations::

    @register_model("meta_edsr_tiny", n_resblocks=6, n_feats=32, bicubic_residual=True)
    @register_model("meta_edsr")
    class MetaEDSR(nn.Module): ...

    model = create_model("meta_edsr", in_channels=1, out_channels=1)
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

__all__ = ["ModelEntry", "create_model", "list_models", "model_entry", "register_model"]

T = TypeVar("T", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelEntry:
    """One registered model configuration.

    Attributes:
        name: registry name (lower case, e.g. ``"meta_rdn"``).
        constructor: class or factory function that builds the model.
        defaults: keyword arguments applied before the caller's (the caller's win).
        accepted: keyword arguments the constructor accepts, or ``None`` if it takes ``**kwargs``.
    """

    name: str
    constructor: Callable[..., nn.Module]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    accepted: tuple[str, ...] | None = None


_REGISTRY: dict[str, ModelEntry] = {}


def _accepted_kwargs(constructor: Callable[..., nn.Module]) -> tuple[str, ...] | None:
    params = inspect.signature(constructor).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return tuple(
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )


def register_model(name: str | None = None, **defaults: Any) -> Callable[[T], T]:
    """Decorator registering a model class or factory under ``name`` (default: its lower-cased
    ``__name__``) with default keyword arguments. Decorators can be stacked.

    Raises:
        ValueError: if the name is taken or a default is not an argument of the constructor.
    """

    def decorate(constructor: T) -> T:
        key = (name or constructor.__name__).lower()
        if key in _REGISTRY:
            raise ValueError(f"model name {key!r} is already registered")
        accepted = _accepted_kwargs(constructor)
        if accepted is not None:
            unknown = sorted(set(defaults) - set(accepted))
            if unknown:
                raise ValueError(
                    f"register_model({key!r}): {constructor.__name__} has no argument(s) {unknown}"
                )
        _REGISTRY[key] = ModelEntry(key, constructor, dict(defaults), accepted)
        return constructor

    return decorate


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registry names, optionally filtered by a shell-style pattern (``"meta_edsr*"``)."""
    names = sorted(_REGISTRY)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern.lower())]
    return names


def model_entry(name: str) -> ModelEntry:
    """The :class:`ModelEntry` of ``name``.

    Raises:
        ValueError: for an unknown name; the message lists the registered names and close matches.
    """
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, _REGISTRY, n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ValueError(
            f"unknown model {name!r}{hint}; registered models: {', '.join(list_models())}"
        )
    return _REGISTRY[key]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; ``kwargs`` override the entry's defaults.

    Example:
        >>> m = create_model("meta_edsr", n_resblocks=2, n_feats=16)
        >>> m(torch.rand(1, 3, 8, 8) * 255, scale=(2.5, 3.0)).shape
        torch.Size([1, 3, 20, 24])

    Raises:
        ValueError: for an unknown name, a keyword the constructor does not accept, or an invalid
            value (the constructors validate their arguments).
    """
    entry = model_entry(name)
    if entry.accepted is not None:
        unknown = sorted(set(kwargs) - set(entry.accepted))
        if unknown:
            raise ValueError(
                f"create_model({entry.name!r}) got unexpected argument(s) {unknown}; "
                f"accepted: {', '.join(entry.accepted)}"
            )
    return entry.constructor(**{**entry.defaults, **kwargs})
