"""Score downscaling of fields with climate metrics against regridding baselines.

The protocol (``metasr eval --data fields.nc --var t2m``): each high-resolution field (every
leading index of every file) is conservatively coarsened (:func:`~metasr.climate.data.coarsen`)
at each ratio or to each LR size; the model and each baseline put the coarse field back on the
field's own grid; the result is scored on that grid against the original with
latitude-weighted RMSE, MAE and bias, Pearson correlation
(:mod:`~metasr.climate.metrics`), and the conservation error (the output conservatively
coarsened back onto the LR grid minus the LR input), reported as its weighted RMS on the LR
grid. Missing values are filled for the model and re-masked
(:func:`~metasr.climate.regrid.apply_downscaler`); the baselines are NaN-aware themselves.

A ``mask`` restricts the scores on the target grid to some points (e.g. the latitude bands a
model was not trained on, :func:`latitude_band_mask`); the conservation error stays a score of
the whole coarse grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.scales import Scale, format_scale, to_scale
from .constraint import bicubic_conservative
from .data import coarsen
from .grids import Grid
from .io import Downscaler
from .metrics import (
    conservation_error,
    pearson_correlation,
    weighted_bias,
    weighted_mae,
    weighted_rmse,
)
from .regrid import METHODS, apply_downscaler, regrid

#: Baseline names :func:`evaluate_fields` accepts: the regridding methods and
#: ``"bicubic-conservative"`` (bicubic + back-projection,
#: :func:`~metasr.climate.constraint.bicubic_conservative`).
BASELINES = (*METHODS, "bicubic-conservative")

__all__ = [
    "FIELD_COLUMNS",
    "LRSize",
    "evaluate_fields",
    "latitude_band_mask",
    "score_field",
    "summarize_fields",
]

FIELD_COLUMNS = ("rmse", "mae", "bias", "pearson", "conservation_rmse")
"""Scores of each row, in table order."""


@dataclass(frozen=True)
class LRSize:
    """A setting given as the coarse grid's size ``h × w`` (label ``"lr96x144"``)."""

    h: int
    w: int

    @property
    def label(self) -> str:
        return f"lr{self.h}x{self.w}"


def latitude_band_mask(grid: Grid, bands: Sequence[tuple[float, float]]) -> np.ndarray:
    """``(H, 1)`` bool: the rows of ``grid`` whose latitude lies in any ``[lat0, lat1]`` of
    ``bands`` (ends included, either order), e.g. held-out latitude bands.

    Raises:
        ValueError: no band, a band that is not two finite latitudes, or no row in any band.
    """
    pairs = [tuple(b) for b in bands]
    if not pairs:
        raise ValueError("give at least one latitude band [lat0, lat1]")
    rows = np.zeros(grid.shape[0], dtype=bool)
    for band in pairs:
        if len(band) != 2 or not all(np.isfinite(float(v)) for v in band):
            raise ValueError(f"a latitude band is two finite latitudes [lat0, lat1], got {band!r}")
        lo, hi = sorted(float(v) for v in band)
        rows |= (grid.lat >= lo - 1e-9) & (grid.lat <= hi + 1e-9)
    if not rows.any():
        raise ValueError(f"latitude bands {pairs} contain no row of the {grid.shape} grid")
    return rows[:, None]


def score_field(
    pred: Any,
    target: Any,
    grid: Grid,
    lr: Any,
    lr_grid: Grid,
    weights: str = "coslat",
    mask: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every score of :data:`FIELD_COLUMNS`, one value per leading index.

    Args:
        pred, target: ``(N, H, W)`` on ``grid``.
        lr: ``(N, h, w)``: the coarse input on ``lr_grid``.
        weights: ``"coslat"`` or ``"area"`` (:func:`~metasr.climate.metrics.spatial_weights`).
        mask: bool, broadcastable to ``(H, W)``: only these points are scored (the metrics
            leave out NaN points); ``None``: all. Not applied to ``conservation_rmse``.
    """
    err = conservation_error(pred, grid, lr, lr_grid)
    if mask is not None:
        target = np.where(np.broadcast_to(mask, grid.shape), target, np.nan)
    return {
        "rmse": np.atleast_1d(weighted_rmse(pred, target, grid, weights)),
        "mae": np.atleast_1d(weighted_mae(pred, target, grid, weights)),
        "bias": np.atleast_1d(weighted_bias(pred, target, grid, weights)),
        "pearson": np.atleast_1d(pearson_correlation(pred, target, grid, weights)),
        "conservation_rmse": np.atleast_1d(
            weighted_rmse(err, np.zeros_like(err), lr_grid, weights)
        ),
    }


def evaluate_fields(
    fields: Sequence[tuple[str, np.ndarray, Grid]],
    settings: Sequence[object],
    model: Downscaler | None = None,
    baselines: Sequence[str] = METHODS,
    *,
    model_name: str = "model",
    weights: str = "coslat",
    mask: np.ndarray | None = None,
    keep: dict[tuple[str, str], np.ndarray] | None = None,
    sources: Sequence[tuple[np.ndarray, Grid] | None] | None = None,
) -> list[dict[str, Any]]:
    """Per-field scores of the model and the baselines at each setting.

    Args:
        fields: ``(name, values, grid)`` with ``values`` ``(..., H, W)`` on ``grid`` (every
            leading index is one field).
        settings: ratios (``2``, ``(2, 3)``, ``"2x3"``) or :class:`LRSize`.
        model: a downscaling function (e.g. :class:`~metasr.climate.model.ModelDownscaler`), or
            ``None`` for baselines only.
        baselines: names of :data:`BASELINES`.
        model_name: the model's ``method`` label.
        weights: ``"coslat"`` or ``"area"``.
        mask: bool, broadcastable to every field's ``(H, W)``: only these points are scored
            (e.g. :func:`latitude_band_mask` of held-out bands); see :func:`score_field`.
        keep: if given, receives every prediction, ``(N, H, W)`` float64 under the key
            ``(setting, method)``, and the coarse input ``(N, h, w)`` under
            ``(setting, "input")`` (the last field's, when there are several), for figures.
        sources: one entry per field: ``None``, or ``(values, grid)`` of a finer original the
            field samples (ETOPO5's 1/12° relief for its every-3rd-point ERA5 field), which is
            coarsened instead of the field, so a coarse cell is the area mean of the original.
            The coarse grid is still the one the setting gives for the field's grid.

    Returns:
        One row per field × setting × method: ``name``, ``index`` (the flat leading index),
        ``setting``, ``method``, ``lr_size`` and the scores of :data:`FIELD_COLUMNS`.

    Raises:
        ValueError: an unknown baseline, nothing to evaluate, a bad setting.
    """
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINES)}")
    if model is None and not baselines:
        raise ValueError("nothing to evaluate: give a model or at least one baseline")
    parsed: list[tuple[str, dict[str, Any]]] = []
    for spec in settings:
        if isinstance(spec, LRSize):
            parsed.append((spec.label, {"size": (spec.h, spec.w)}))
        else:
            scale: Scale = to_scale(spec)
            parsed.append((format_scale(scale), {"scale": scale}))
    methods: list[tuple[str, Downscaler | str]] = []
    if model is not None:
        methods.append((model_name, model))
    methods += [(b, bicubic_conservative if b == "bicubic-conservative" else b) for b in baselines]
    if sources is not None and len(sources) != len(fields):
        raise ValueError(f"{len(sources)} sources for {len(fields)} fields")
    rows: list[dict[str, Any]] = []
    for n, (name, values, grid) in enumerate(fields):
        hr = np.asarray(values, dtype=np.float64).reshape(-1, *grid.shape)
        source = sources[n] if sources is not None else None
        for label, how in parsed:
            lr, lr_grid = coarsen(hr, grid, **how)
            if source is not None:
                src_values = np.asarray(source[0], dtype=np.float64).reshape(-1, *source[1].shape)
                lr, _ = coarsen(src_values, source[1], target=lr_grid)
            for method_name, method in methods:
                if isinstance(method, str):
                    pred = regrid(lr, lr_grid, grid, method)
                else:
                    pred = apply_downscaler(method, lr, lr_grid, grid)
                if keep is not None:
                    keep[(label, method_name)] = pred
                    keep[(label, "input")] = lr
                scores = score_field(pred, hr, grid, lr, lr_grid, weights, mask)
                for i in range(hr.shape[0]):
                    row: dict[str, Any] = {
                        "name": name,
                        "index": i,
                        "setting": label,
                        "method": method_name,
                        "lr_size": f"{lr_grid.shape[0]}x{lr_grid.shape[1]}",
                    }
                    row.update({k: float(v[i]) for k, v in scores.items()})
                    rows.append(row)
    return rows


def summarize_fields(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean of each score over fields, per setting and method (in first-seen order)."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["setting"], r["method"]), []).append(r)
    out = []
    for (setting, method), members in groups.items():
        row: dict[str, Any] = {
            "setting": setting,
            "method": method,
            "lr_size": members[0]["lr_size"],
            "fields": len(members),
        }
        row.update({k: float(np.mean([m[k] for m in members])) for k in FIELD_COLUMNS})
        out.append(row)
    return out
