"""Networks from BasicSR option dicts and BasicSR checkpoints, without importing BasicSR.

BasicSR describes a network as ``network_g: {type: MetaEDSR, n_feats: 64, ...}``. The same dict
builds the metasr network here (:func:`build_network`), and :class:`MetaSRModel` stores it in
every checkpoint it saves under ``"metasr_network"`` next to BasicSR's ``"params"``, so
``metasr eval --model net_g_latest.pth`` needs no option file (:func:`load_basicsr_checkpoint`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "ARCH_NAMES",
    "NETWORK_KEY",
    "build_network",
    "load_basicsr_checkpoint",
    "network_value_range",
]

#: The metasr networks that BasicSR option files can name (``network_g.type``).
ARCH_NAMES = ("MetaRDN", "MetaEDSR", "MetaSwinIR")

#: Checkpoint entry holding the ``network_g`` options (plain dict).
NETWORK_KEY = "metasr_network"


def build_network(opt: Mapping[str, Any]) -> nn.Module:
    """The metasr network described by ``opt`` (``type`` plus constructor arguments).

    ``type`` is one of :data:`ARCH_NAMES` or any name of :func:`metasr.list_models`.
    """
    kwargs = dict(opt)
    name = kwargs.pop("type", None)
    if not isinstance(name, str):
        raise ValueError(f"network options need a 'type' (one of {', '.join(ARCH_NAMES)})")
    from .. import archs

    cls = getattr(archs, name, None) if name in ARCH_NAMES else None
    if isinstance(cls, type) and issubclass(cls, nn.Module):
        return cls(**kwargs)
    if name in archs.list_models():
        return archs.create_model(name, **kwargs)
    raise ValueError(
        f"unknown network type {name!r}; metasr provides {', '.join(ARCH_NAMES)} "
        f"and {', '.join(archs.list_models())}"
    )


def network_value_range(net: nn.Module) -> float:
    """What an image in 0..1 is multiplied by before ``net`` (and the output divided by).

    The network's ``input_range`` (``img_range`` for MetaRDN/MetaEDSR, which take
    ``[0, img_range]``; 1 for MetaSwinIR). BasicSR data is in 0..1, so :class:`MetaSRModel`
    scales by this; networks that are not metasr's are taken to work in 0..1.
    """
    return float(getattr(net, "input_range", 1.0))


def load_basicsr_checkpoint(
    path: str | os.PathLike,
    network_opt: Mapping[str, Any] | None = None,
    param_key: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A network with the weights of a BasicSR checkpoint (``net_g_*.pth``).

    Args:
        path: ``.pth`` file holding ``{"params": state_dict, ...}`` (``params_ema`` preferred
            when present and ``param_key`` is None).
        network_opt: ``network_g`` options; default: the file's ``metasr_network`` entry.
        param_key: which state dict to load.

    Returns:
        ``(network in eval mode, network options used)``.

    Raises:
        ValueError: the file is not such a checkpoint, or has no network options and none were
            given.
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise ValueError(f"{path}: cannot read as a BasicSR checkpoint ({exc})") from None
    keys = [k for k in ("params_ema", "params") if isinstance(ckpt, dict) and k in ckpt]
    if not keys:
        raise ValueError(f"{path}: not a BasicSR network checkpoint (no 'params' entry)")
    key = param_key or keys[0]
    if key not in ckpt:
        raise ValueError(f"{path}: no {key!r} entry (has {', '.join(keys)})")
    opt = dict(network_opt) if network_opt is not None else ckpt.get(NETWORK_KEY)
    if opt is None:
        raise ValueError(
            f"{path} does not record its network; pass the training option file (--opt X.yml)"
        )
    net = build_network(opt)
    state = {k.removeprefix("module."): v for k, v in ckpt[key].items()}
    net.load_state_dict(state)
    return net.eval(), dict(opt)
