"""Bridges to training frameworks. Nothing here is imported by ``import metasr``.

* :mod:`metasr.integrations.basicsr`: registers metasr's networks, datasets, metrics and
  :class:`~metasr.integrations.basicsr.MetaSRModel` into BasicSR (needs ``metasr[train]``).
"""
