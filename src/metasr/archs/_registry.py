"""A small timm-like model registry: :func:`register_model`, :func:`create_model`,
:func:`list_models`.

An entry is a constructor (a class or a factory function) plus default keyword arguments, so one
class can be registered under several configurations::

    @register_model("meta_edsr_tiny", n_resblocks=6, n_feats=32, bicubic_residual=True)
    @register_model("meta_edsr")
    class MetaEDSR(nn.Module): ...

    model = create_model("meta_edsr", in_channels=1, out_channels=1)

**Size bound.** Arguments can come from a file (a checkpoint's metadata, an option file), and
``n_feats=10**6`` asks for terabytes. :func:`create_model` therefore builds the model on the
``meta`` device first (shapes only, no memory), counts its parameter and buffer elements, and
refuses with one ``ValueError`` a model above :data:`MAX_MODEL_ELEMENTS` elements,
:data:`MAX_MODEL_MODULES` modules, or more bytes than the machine has free; only then is it built
for real. The count stops the meta build as soon as a cap is passed, so even a request for
millions of blocks is refused within seconds, before any real allocation.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.modules import module as _module_hooks

from .._limits import MAX_MODEL_ELEMENTS, MAX_MODEL_MODULES
from ..modules import HEAD_OPTION_NAMES, fold_head_options
from ..ops.memory import available_memory_bytes
from ..validation import ArgumentTypeError, check_str

__all__ = [
    "MAX_MODEL_ELEMENTS",
    "MAX_MODEL_MODULES",
    "ModelEntry",
    "ModelSize",
    "build_bounded",
    "create_model",
    "list_models",
    "measure_model",
    "model_entry",
    "register_model",
]


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
    check_str("model name", name)
    key = name.strip().lower()
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, _REGISTRY, n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ValueError(
            f"unknown model {name!r}{hint}; registered models: {', '.join(list_models())}"
        )
    return _REGISTRY[key]


@dataclass(frozen=True)
class ModelSize:
    """What a model holds, measured on the ``meta`` device.

    Attributes:
        parameters: parameter elements.
        buffers: buffer elements (e.g. Swin's relative position index).
        nbytes: bytes of both in their dtypes when built.
        modules: number of modules, the model included.
    """

    parameters: int
    buffers: int
    nbytes: int
    modules: int

    @property
    def elements(self) -> int:
        """Parameter and buffer elements together."""
        return self.parameters + self.buffers


class _TooLarge(Exception):
    """Raised from a registration hook to stop a meta build that has passed a cap."""


@contextmanager
def _registration_counter(what: str) -> Iterator[None]:
    """Count, in this thread, the elements and modules registered while the block runs.

    The hooks are global to PyTorch; registrations from other threads are ignored.
    """
    thread = threading.get_ident()
    count = {"elements": 0, "modules": 0}

    def on_tensor(module: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
        if threading.get_ident() != thread or tensor is None:
            return
        count["elements"] += tensor.numel()
        if count["elements"] > MAX_MODEL_ELEMENTS:
            raise _TooLarge(
                f"{what} has more than {MAX_MODEL_ELEMENTS:,} parameter and buffer elements "
                f"(the limit, metasr._limits.MAX_MODEL_ELEMENTS)"
            )

    def on_module(module: nn.Module, name: str, submodule: nn.Module | None) -> None:
        if threading.get_ident() != thread or submodule is None:
            return
        count["modules"] += 1
        if count["modules"] > MAX_MODEL_MODULES:
            raise _TooLarge(
                f"{what} has more than {MAX_MODEL_MODULES:,} modules "
                f"(the limit, metasr._limits.MAX_MODEL_MODULES)"
            )

    handles = [
        _module_hooks.register_module_parameter_registration_hook(on_tensor),
        _module_hooks.register_module_buffer_registration_hook(on_tensor),
        _module_hooks.register_module_module_registration_hook(on_module),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def measure_model(build: Callable[[], nn.Module], what: str = "the model") -> ModelSize:
    """Build ``build()`` on the ``meta`` device (no memory) and measure it.

    Args:
        build: the constructor call, e.g. ``lambda: MetaRDN(G0=64)``.
        what: the model, as error messages name it.

    Raises:
        TypeError: the constructor refuses an argument of the wrong type
            (:class:`metasr.validation.ArgumentTypeError`, named with ``what``).
        ValueError: the model passes :data:`MAX_MODEL_ELEMENTS` or :data:`MAX_MODEL_MODULES`
            (found while building, so the build stops early), or the constructor refuses its
            arguments (a bad value, or a keyword it does not have).
    """
    try:
        with _registration_counter(what), torch.device("meta"):
            model = build()
    except _TooLarge as exc:
        raise ValueError(f"{exc}; refused before building it") from None
    except TypeError as exc:
        raise _named_call_error(exc, what) from exc
    params = {id(p): p for p in model.parameters()}.values()  # tied weights count once
    buffers = list(model.buffers())
    return ModelSize(
        parameters=sum(p.numel() for p in params),
        buffers=sum(b.numel() for b in buffers),
        nbytes=sum(t.numel() * t.element_size() for t in [*params, *buffers]),
        modules=sum(1 for _ in model.modules()),
    )


def _named_call_error(exc: TypeError, what: str) -> Exception:
    """A constructor's ``TypeError`` named with the model: a wrong argument type (metasr's
    validators, :class:`~metasr.validation.ArgumentTypeError`) stays a ``TypeError``; Python's
    own (a keyword the constructor does not have) is a bad argument, a ``ValueError``."""
    if isinstance(exc, ArgumentTypeError):
        return ArgumentTypeError(f"{what}: {exc}")
    return ValueError(f"{what}: {exc}")


def build_bounded(build: Callable[[], nn.Module], what: str = "the model") -> nn.Module:
    """``build()``, after :func:`measure_model` found it within the caps and the free memory.

    Raises:
        TypeError: the constructor refuses an argument of the wrong type.
        ValueError: the model is above a cap, needs more bytes than the CPU has available, or
            the constructor refuses its arguments (a bad value, a keyword it does not have).
    """
    size = measure_model(build, what)
    free = available_memory_bytes(torch.device("cpu"))
    if free is not None and size.nbytes > free:
        raise ValueError(
            f"{what} needs {size.nbytes / 2**30:.1f} GiB for {size.elements:,} parameter and "
            f"buffer elements; {free / 2**30:.1f} GiB of memory is available"
        )
    try:
        return build()
    except TypeError as exc:
        raise _named_call_error(exc, what) from exc


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; ``kwargs`` override the entry's defaults.

    Example:
        >>> m = create_model("meta_edsr", n_resblocks=2, n_feats=16)
        >>> m(torch.rand(1, 3, 8, 8) * 255, scale=(2.5, 3.0)).shape
        torch.Size([1, 3, 20, 24])

    A network's head options may be given flat (``hidden=64``, ``meta_kernel_size=3``, as
    option files and checkpoint metadata spell them) or as ``upsample=``: the flat ones are
    gathered into ``upsample`` (:func:`metasr.modules.fold_head_options`).

    The model is measured on the ``meta`` device first and refused when it passes
    :data:`MAX_MODEL_ELEMENTS` parameter and buffer elements, :data:`MAX_MODEL_MODULES` modules,
    or the free memory (:func:`build_bounded`).

    Raises:
        TypeError: ``name`` is not a string, or an argument has the wrong type (the
            constructors validate their arguments with :mod:`metasr.validation`).
        ValueError: for an unknown name, a keyword the constructor does not accept, an invalid
            value, or a model too large.
    """
    entry = model_entry(name)
    accepted = entry.accepted
    if accepted is not None and "upsample" in accepted:
        accepted = (*accepted, *HEAD_OPTION_NAMES)
    if accepted is not None:
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(
                f"create_model({entry.name!r}) got unexpected argument(s) {unknown}; "
                f"accepted: {', '.join(accepted)}"
            )
    merged = {**entry.defaults, **kwargs}
    if accepted is not None and "upsample" in accepted:
        merged = fold_head_options(merged)
    return build_bounded(lambda: entry.constructor(**merged), f"model {entry.name!r}")
