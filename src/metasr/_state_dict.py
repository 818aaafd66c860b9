"""The one place that turns whatever a trainer saved into a plain ``{name: tensor}`` state dict.

Trainers nest the weights in a dict (BasicSR: ``{"params": ..., "params_ema": ...}``; many
others: ``state_dict``, ``model``, ``net``, ``network``) and ``nn.DataParallel`` /
``DistributedDataParallel`` prefix every name with ``module.``. :func:`clean_state_dict` undoes
both. It imports only torch, so the architectures (``metasr.archs``) and the checkpoint loaders
(``metasr.checkpoints``) can both use it without an upward import.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["WRAPPER_KEYS", "clean_state_dict", "is_state_dict"]

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
