"""Per-variable normalisation statistics of fields (issue 12, part 4).

:func:`compute_stats` gives the :class:`FieldStats` (mean, standard
deviation, units, grid) of one variable over every valid point of every leading index (time
steps, members…), weighted by cell area, so that statistics computed on one grid describe the
same field on another (a plain mean over a regular lat/lon grid over-counts the polar rows).
They are stored in a checkpoint with :func:`stats_metadata` or :func:`add_checkpoint_stats`
(``metasr climate-stats``), read back with :func:`metasr.checkpoints.checkpoint_stats`, and
applied by
:func:`metasr.climate.downscale_with_model`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoints import check_archive_size, load_checkpoint
from ..field_stats import STATS_KEY, FieldStats, stats_from_metadata, stats_metadata
from .grids import Grid
from .metrics import spatial_weights
from .regrid import check_field

__all__ = [
    "STATS_KEY",
    "FieldStats",
    "add_checkpoint_stats",
    "check_units",
    "compute_stats",
    "describe_grid",
    "same_units",
    "stats_metadata",
    "training_checkpoint_stats",
]

# Spellings of one unit that files use interchangeably (CF allows any UDUNITS spelling).
_UNIT_ALIASES = {
    "k": "K",
    "kelvin": "K",
    "degk": "K",
    "deg_k": "K",
    "degreesk": "K",
    "c": "degC",
    "degc": "degC",
    "deg_c": "degC",
    "celsius": "degC",
    "degree_celsius": "degC",
    "degrees_celsius": "degC",
    "m": "m",
    "meter": "m",
    "meters": "m",
    "metre": "m",
    "metres": "m",
}


def _canonical_units(units: str) -> str:
    key = units.strip().replace(" ", "")
    return _UNIT_ALIASES.get(key.lower(), key)


def same_units(a: str, b: str) -> bool:
    """Whether two unit strings name the same unit (``"K"``, ``"kelvin"``, ``"degK"``…)."""
    return _canonical_units(a) == _canonical_units(b)


def check_units(stats: FieldStats, units: str | None, where: str = "field") -> None:
    """Refuse a one-variable field whose ``units`` differ from the statistics'.

    Statistics with unknown units (``""``, given by hand) and a field without a ``units``
    attribute (``None``) are not compared.

    Raises:
        ValueError: the units differ.
    """
    expected = stats.units[0]
    if units is None or not expected:
        return
    if not same_units(units, expected):
        raise ValueError(
            f"{where} is in {units!r} but the model's statistics ({stats.variables[0]}) are in "
            f"{expected!r}: convert the field first (metasr does not convert units)"
        )


def describe_grid(grid: Grid) -> str:
    """``"145x192 lat -90…90 lon 0…358.125"``: the grid entry of :class:`FieldStats`."""
    h, w = grid.shape
    return f"{h}x{w} lat {grid.lat[0]:g}…{grid.lat[-1]:g} lon {grid.lon[0]:g}…{grid.lon[-1]:g}"


def compute_stats(
    field: Any,
    grid: Grid | None = None,
    *,
    variable: str | None = None,
    units: str | None = None,
) -> FieldStats:
    """Area-weighted mean and standard deviation of one variable.

    Args:
        field: an ``xarray.DataArray`` with 1-D lat/lon (its name, ``units`` attribute and
            grid are used unless given), or a ``(..., H, W)`` array on ``grid``. NaN marks
            missing values, which are left out.
        grid: the grid of an array (taken from a DataArray's coordinates otherwise).
        variable: the variable name (default: the DataArray's name, else ``"field"``).
        units: the units (default: the DataArray's ``units`` attribute, else ``""``: unknown).

    Returns:
        :class:`FieldStats` of one variable: ``mean = Σ a x / Σ a``, ``std = sqrt(Σ a (x −
        mean)² / Σ a)`` over every valid point of every leading index, ``a`` the cell area.

    Raises:
        ValueError: no valid point, a constant field (std 0: nothing to normalise by), or an
            array without a grid.
    """
    if hasattr(field, "dims") and hasattr(field, "attrs"):  # an xarray.DataArray
        from .io import as_field, grid_of

        da = as_field(field)
        grid = grid_of(da) if grid is None else grid
        variable = variable if variable is not None else str(da.name or "field")
        if units is None:
            units = str(da.attrs["units"]) if "units" in da.attrs else ""
        values = np.asarray(da.values, dtype=np.float64)
    else:
        if grid is None:
            raise ValueError("compute_stats of an array needs its grid=")
        values = np.asarray(field, dtype=np.float64)
    check_field(values, grid)
    valid = np.isfinite(values)
    w = np.where(valid, spatial_weights(grid, "area"), 0.0)
    total = w.sum()
    if total <= 0:
        raise ValueError(f"{variable or 'field'}: no valid value to compute statistics from")
    x = np.where(valid, values, 0.0)
    mean = float((w * x).sum() / total)
    std = float(np.sqrt((w * (x - mean) ** 2).sum() / total))
    if not std > 0:
        raise ValueError(f"{variable or 'field'} is constant ({mean:g}): its std is 0")
    return FieldStats((variable or "field",), (units or "",), (mean,), (std,), describe_grid(grid))


# --------------------------------------------------------------------------------------------
# the statistics stored with a checkpoint


def training_checkpoint_stats(path: str | os.PathLike) -> FieldStats | None:
    """The statistics a BasicSR training checkpoint (``net_g_*.pth`` of ``MetaSRModel``) stores,
    read without building its network (``None`` when it has none).

    ``MetaSRModel`` continues a pretrained field model with them when the options name none.

    Raises:
        ValueError: the file is not a checkpoint ``torch.load`` reads safely, or its entry is
            corrupt (the message names the file).
    """
    try:
        check_archive_size(Path(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as exc:
        # Not torch's text: it advises weights_only=False, i.e. running the file's code.
        raise ValueError(
            f"{path}: not a readable training checkpoint (it cannot be loaded safely: "
            f"{type(exc).__name__})"
        ) from None
    if not isinstance(obj, Mapping) or not isinstance(obj.get(STATS_KEY), str):
        return None
    return stats_from_metadata({STATS_KEY: obj[STATS_KEY]}, str(path), None)


def add_checkpoint_stats(
    path: str | os.PathLike, stats: FieldStats, output: str | os.PathLike | None = None
) -> Path:
    """Store ``stats`` in a metasr checkpoint (replacing any), written atomically.

    Args:
        path: a metasr ``.safetensors`` checkpoint.
        stats: one entry per input channel of its network.
        output: where to write (default: ``path`` itself).

    Returns:
        The written path.

    Raises:
        ValueError: ``path`` is not a metasr checkpoint, or ``stats`` counts another number of
            variables than the network's input channels.
    """
    from safetensors.torch import load_file, save_file

    from ..io import atomic_write

    loaded = load_checkpoint(path)  # validates the file and measures the network
    meta = {k: v for k, v in loaded.metadata.items()}
    meta.update(stats_metadata(stats))
    stats_from_metadata(meta, str(path), loaded.in_channels)
    state = load_file(str(path))
    target = Path(output) if output is not None else Path(path)
    atomic_write(target, lambda tmp: save_file(state, str(tmp), metadata=meta))
    return target
