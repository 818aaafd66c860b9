"""Deprecated alias of the BasicSR checkpoint names now in :mod:`metasr.checkpoints`.

Building a network from ``network_g`` options and loading ``net_g_*.pth`` files are checkpoint
formats like the others, so they moved next to them (one release of this alias).
"""

from __future__ import annotations

import warnings

from ..checkpoints import (
    ARCH_NAMES,
    NETWORK_KEY,
    build_network,
    load_basicsr_checkpoint,
    network_value_range,
)

__all__ = [
    "ARCH_NAMES",
    "NETWORK_KEY",
    "build_network",
    "load_basicsr_checkpoint",
    "network_value_range",
]

warnings.warn(
    "metasr.integrations.checkpoints is deprecated and will be removed in the next release: "
    "import ARCH_NAMES, NETWORK_KEY, build_network, load_basicsr_checkpoint and "
    "network_value_range from metasr.checkpoints",
    DeprecationWarning,
    stacklevel=2,
)
