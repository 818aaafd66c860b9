"""Climate downscaling on latitude/longitude grids.

* :mod:`~metasr.climate.grids`: :class:`Grid` (1-D lat/lon, cell bounds, areas), named grids
  (``"era5"``, ``"n96"``, ``"HxW"``), Gaussian grids.
* :mod:`~metasr.climate.regrid`: nearest/bilinear/bicubic/first-order conservative baselines,
  periodic in longitude and NaN-aware; fill-and-remask helpers.
* :mod:`~metasr.climate.metrics`: latitude-weighted RMSE/MAE/bias, Pearson, ACC, zonal power
  spectrum, conservation error.
* :mod:`~metasr.climate.data`: coarsening at any ratio (conservative or bicubic), static
  predictors (orography, land-sea mask, latitude).
* :mod:`~metasr.climate.pp`: a numpy reader for unpacked UM PP files.
* :mod:`~metasr.climate.io`: netCDF as ``xarray.DataArray``, and whole files lazily
  (``open_fields`` → ``downscale_dataset`` → ``write_dataset``: dask chunks, CF metadata kept,
  netCDF or Zarr); needs ``pip install metasr[climate]`` (imported only when called).
* :mod:`~metasr.climate.sources`: readers of what ``make climate-data`` fetches (ETOPO5 relief,
  GloSea4 temperatures).
* :mod:`~metasr.climate.stats`: per-variable normalisation statistics (:class:`FieldStats`).
* :mod:`~metasr.climate.model`: :func:`downscale_with_model`, a loaded network on fields
  (normalise → model → de-normalise, batched, fill-and-remask).
* :mod:`~metasr.climate.layout`, :mod:`~metasr.climate.constraint`, :mod:`~metasr.climate.card`
  (issue 23): the canonical grid layout, the conservation constraint (and the
  ``bicubic-conservative`` baseline), the model card a field model carries;
  :func:`field_forward` is the one differentiable field step of training and inference.
* :mod:`~metasr.climate.evaluate`: climate scores of a model against regridding baselines.
* :mod:`~metasr.climate.fields`: training pairs of fields for ``metasr train``
  (``MetaSRFieldDataset``/``MetaSRFieldTestDataset``: conservative coarsening at random per-axis
  ratios, full-width latitude bands, coordinates in the batch); not imported here (it needs
  torch's ``Dataset`` and the photo data's scale samplers).

Only :mod:`~metasr.climate.io` (and what calls it) needs the ``climate`` extra. The grids,
regridding baselines, metrics and netCDF I/O need numpy only (``import metasr.climate`` does not
import torch); the model, statistics and evaluation names load torch when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .card import ModelCard, model_card
from .constraint import ConservativeConstraint, MaskedConservativeConstraint, bicubic_conservative
from .data import coarse_size, coarsen, latitude_channel, static_predictors, with_static_channels
from .grids import Grid, check_finer, coarse_grid, gaussian_grid, named_grid, regular_grid
from .io import (
    as_field,
    downscale,
    downscale_dataset,
    grid_dataset,
    grid_of,
    open_fields,
    read_field,
    read_target_mask,
    resolve_grid,
    write_dataset,
    write_field,
)
from .layout import canonical_layout
from .metrics import (
    anomaly_correlation,
    conservation_error,
    global_mean,
    pearson_correlation,
    plot_zonal_spectra,
    spatial_weights,
    weighted_bias,
    weighted_mae,
    weighted_rmse,
    zonal_power_spectrum,
)
from .pp import PPField, read_pp
from .regrid import (
    METHODS,
    apply_downscaler,
    axis_weights,
    fill_missing,
    inside_source,
    regrid,
    regrid_mask,
)

if TYPE_CHECKING:
    from .evaluate import (
        FIELD_COLUMNS,
        LRSize,
        evaluate_fields,
        latitude_band_mask,
        score_field,
        summarize_fields,
    )
    from .model import ModelDownscaler, downscale_with_model, field_forward, model_stats
    from .stats import FieldStats, check_units, compute_stats, describe_grid, same_units

# The names whose modules import torch load on first use (PEP 562), so that the regridding
# baselines (`metasr upscale x.nc --baseline ...`) run without importing torch.
_LAZY = {
    **dict.fromkeys(
        (
            "FIELD_COLUMNS",
            "LRSize",
            "evaluate_fields",
            "latitude_band_mask",
            "score_field",
            "summarize_fields",
        ),
        ".evaluate",
    ),
    **dict.fromkeys(
        ("ModelDownscaler", "downscale_with_model", "field_forward", "model_stats"), ".model"
    ),
    **dict.fromkeys(
        ("FieldStats", "check_units", "compute_stats", "describe_grid", "same_units"), ".stats"
    ),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "FIELD_COLUMNS",
    "METHODS",
    "ConservativeConstraint",
    "MaskedConservativeConstraint",
    "ModelCard",
    "FieldStats",
    "Grid",
    "LRSize",
    "ModelDownscaler",
    "PPField",
    "anomaly_correlation",
    "apply_downscaler",
    "as_field",
    "axis_weights",
    "bicubic_conservative",
    "canonical_layout",
    "check_finer",
    "check_units",
    "coarse_grid",
    "coarse_size",
    "coarsen",
    "compute_stats",
    "conservation_error",
    "describe_grid",
    "downscale",
    "downscale_dataset",
    "downscale_with_model",
    "evaluate_fields",
    "field_forward",
    "fill_missing",
    "gaussian_grid",
    "inside_source",
    "global_mean",
    "grid_dataset",
    "grid_of",
    "latitude_band_mask",
    "latitude_channel",
    "model_card",
    "model_stats",
    "named_grid",
    "open_fields",
    "pearson_correlation",
    "plot_zonal_spectra",
    "read_field",
    "read_pp",
    "read_target_mask",
    "regrid",
    "regrid_mask",
    "regular_grid",
    "resolve_grid",
    "same_units",
    "score_field",
    "spatial_weights",
    "static_predictors",
    "summarize_fields",
    "weighted_bias",
    "weighted_mae",
    "weighted_rmse",
    "with_static_channels",
    "write_dataset",
    "write_field",
    "zonal_power_spectrum",
]
