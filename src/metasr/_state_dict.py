"""The one place that turns whatever a trainer saved into a plain ``{name: tensor}`` state dict.

Trainers nest the weights in a dict (BasicSR: ``{"params": ..., "params_ema": ...}``; many
others: ``state_dict``, ``model``, ``net``, ``network``) and ``nn.DataParallel`` /
``DistributedDataParallel`` prefix every name with ``module.``. :func:`clean_state_dict` undoes
both. It imports only torch, so the architectures (``metasr.archs``) and the checkpoint loaders
(``metasr.checkpoints``) can both use it without an upward import.

:func:`describe_mismatch` and :func:`non_finite_tensors` say, in one line each, why weights do not
fit a network and which tensors hold NaN or infinity.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = [
    "WRAPPER_KEYS",
    "clean_state_dict",
    "describe_mismatch",
    "is_state_dict",
    "non_finite_tensors",
]

#: Entries that may hold the weights, in order of preference. ``params_ema`` comes before
#: ``params``: when BasicSR trains with an exponential moving average it validates with the EMA
#: network and saves both, and the EMA weights are the ones its tools use for inference.
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net", "network")

_PREFIX = "module."


def is_state_dict(obj: object) -> bool:
    """Whether ``obj`` is a non-empty mapping of names to tensors."""
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def clean_state_dict(
    obj: object, param_key: str | None = None
) -> tuple[dict[str, torch.Tensor], str | None]:
    """The raw state dict in ``obj`` and the entry it came from.

    Args:
        obj: a state dict, or a dict wrapping one under one of :data:`WRAPPER_KEYS` (one level;
            the first present in that order wins, so ``params_ema`` over ``params``).
        param_key: take this entry instead of searching (``"params"`` for the non-EMA weights).

    Returns:
        ``(state_dict, key)``: names with any leading ``module.`` removed; ``key`` is ``None``
        when ``obj`` itself was the state dict.

    Raises:
        ValueError: ``obj`` is not a mapping, ``param_key`` is missing or not a state dict, or
            neither ``obj`` nor any wrapper entry is a mapping of tensors.
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a state_dict (a dict of tensors), got {type(obj).__name__}")
    if param_key is not None:
        if not is_state_dict(obj.get(param_key)):
            present = [k for k in WRAPPER_KEYS if is_state_dict(obj.get(k))]
            raise ValueError(
                f"no state dict under {param_key!r} (found: {', '.join(present) or 'none'})"
            )
        sd, key = obj[param_key], param_key
    elif is_state_dict(obj):
        sd, key = obj, None
    else:
        key = next((k for k in WRAPPER_KEYS if is_state_dict(obj.get(k))), None)
        if key is None:
            raise ValueError(
                "neither a state_dict of tensors nor a dict wrapping one under "
                f"{', '.join(map(repr, WRAPPER_KEYS))}; top-level keys: "
                f"{sorted(map(str, obj))[:10]}"
            )
        sd = obj[key]
    return {k.removeprefix(_PREFIX): v for k, v in sd.items()}, key


def _examples(names: list[str], limit: int) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown}, ..." if len(names) > limit else shown


def describe_mismatch(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], limit: int = 3
) -> str | None:
    """Why ``given`` does not load into a network whose state dict is ``expected``, or None.

    A state dict of another architecture differs in hundreds of names; the description counts
    them and names only the first ``limit`` of each kind, so it stays one line.

    Args:
        expected: the network's ``state_dict()`` (tensors on any device, ``meta`` included).
        given: the state dict to load.
        limit: names shown per kind of difference.

    Returns:
        ``"312 missing (a, b, c, ...); 280 unexpected (...); 2 of another shape (name: file
        (64, 3, 3, 3), network (32, 3, 3, 3))"``, with only the kinds that occur, or None when
        every name and shape agrees.
    """
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    reshaped = [
        f"{k}: file {tuple(given[k].shape)}, network {tuple(expected[k].shape)}"
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_examples(missing, limit)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_examples(unexpected, limit)})")
    if reshaped:
        parts.append(f"{len(reshaped)} of another shape ({_examples(reshaped, limit)})")
    return "; ".join(parts) or None


def non_finite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state`` that hold NaN or infinity, in order."""
    return [
        k
        for k, v in state.items()
        if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())
    ]
