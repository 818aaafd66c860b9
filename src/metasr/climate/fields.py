"""Training and validation pairs for gridded fields (issue 12, part 6): one trainer, new data.

:class:`FieldDataset` (BasicSR name ``MetaSRFieldDataset``) and :class:`FieldTestDataset`
(``MetaSRFieldTestDataset``) give the BasicSR trainer (:class:`MetaSRModel`) what the photo
datasets give it, for latitude/longitude fields:

* **Sources** (option ``source``): ``netcdf`` (``dataroot_gt`` files or folders, ``var``; every
  leading index — time, member — is one field), ``glosea4`` (the GloSea4 PP folder of ``make
  climate-data``; ``members`` selects ensemble members, so train and held-out sets split by
  member), ``etopo5`` (``etopo5.cdf``; ``grid: era5`` takes every 3rd point, exactly ERA5's
  721×1440 grid, or ``native`` for the 1/12° grid). All fields of one dataset share one grid.
* **Pairs**: the LR is the conservative area average of the HR (:func:`metasr.climate.coarsen`)
  at the batch's ratio ``(r_v, r_h)`` (or ``coarsen_method: bicubic``), so a coarse cell holds
  what a coarse model's grid box means.
* **Crops**: ``lq_patch_size: null`` trains on whole fields (LR ``floor(H/r_v) × floor(W/r_h)``
  on :func:`~metasr.climate.coarse_grid`, pole rows kept as at inference); an integer ``p`` (or
  ``[min, max]``) trains on **full-width latitude bands**: ``floor(p·r_v)`` HR rows × every
  column, coarsened to ``p`` rows × ``floor(W/r_h)`` columns. Longitude is never cropped: the
  network is periodic in longitude, and a cut would put a false seam into the data.
* **Held-out bands**: ``hr_lat_bands: [[lat0, lat1], ...]`` restricts the HR rows a band may
  use to those latitudes (a band never straddles a row outside them), so the other latitudes
  stay unseen for scoring. Needs band crops.
* **Coordinates**: each sample carries ``lq_lat``/``lq_lon``/``gt_lat``/``gt_lon`` (float64)
  and ``periodic_lon``; the model calls the network with
  ``coords=CoordinateGrid(lq_lat, lq_lon, gt_lat, gt_lon, periodic_lon)`` instead of ``scale``.
  One :class:`~metasr.data.datasets.BatchSpec` per batch fixes the ratio, the LR band height
  and the band's position (``spec.offset``), so all samples of a batch share one coordinate
  grid — the fields differ, not the geometry.
* **Values** are physical (K, m): the model normalises them with the training set's
  :class:`~metasr.climate.FieldStats` (:func:`field_stats_for`), which it also stores in
  every checkpoint. Why the model and not the dataset: the statistics belong to the network
  (``metasr upscale`` applies the checkpoint's), and validation fields must be normalised with
  the *training* statistics, which a separately built validation dataset does not know.

Sample dict: ``lq`` ``(1, h, w)`` float32, ``gt`` ``(1, H, W)`` float32, ``scale`` float64
``(2,)`` (the batch's nominal ratio), ``lq_lat (h,)``, ``lq_lon (w,)``, ``gt_lat (H,)``,
``gt_lon (W,)`` float64, ``periodic_lon`` bool, ``lq_path``/``gt_path`` (the field's name, e.g.
``ensemble_003/2011-08``).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.datasets import BatchSpec, SpecBatchedDataset, parse_patch_range
from ..data.scales import Scale, build_scale_sampler, parse_scale_list, to_scale
from .data import COARSEN_METHODS, coarse_size, coarsen
from .grids import Grid
from .stats import FieldStats, compute_stats

__all__ = [
    "FIELD_SOURCES",
    "FieldDataset",
    "FieldSource",
    "FieldTestDataset",
    "field_stats_for",
    "load_field_source",
    "stats_from_option",
]

FIELD_SOURCES = ("netcdf", "glosea4", "etopo5")
"""Values of the ``source`` option."""

#: The default training ratios: ×2 … ×8 per axis, half of the batches asymmetric.
DEFAULT_FIELD_SCALES = {"type": "uniform", "min": 2.0, "max": 8.0, "p_symmetric": 0.5}


class FieldSource(NamedTuple):
    """High-resolution fields of one dataset: ``fields`` ``(N, H, W)`` float64 on ``grid``."""

    fields: np.ndarray
    grid: Grid
    variable: str
    units: str
    names: list[str]


def _source_key(opt: Mapping[str, Any]) -> str:
    keys = ("source", "dataroot_gt", "var", "members", "grid")
    return json.dumps({k: opt.get(k) for k in keys}, sort_keys=True, default=str)


_SOURCES: dict[str, FieldSource] = {}


def load_field_source(opt: Mapping[str, Any]) -> FieldSource:
    """Read the fields an option dict names (see the module docstring); memoised per process.

    The trainer reads the training source twice (dataset and statistics): the second is free.

    Raises:
        ValueError: unknown source, missing ``dataroot_gt``/``var``, unknown members, fields on
            different grids.
    """
    key = _source_key(opt)
    if key not in _SOURCES:
        _SOURCES[key] = _read_source(opt)
    return _SOURCES[key]


def _read_source(opt: Mapping[str, Any]) -> FieldSource:
    source = opt.get("source", "netcdf")
    root = opt.get("dataroot_gt")
    if source not in FIELD_SOURCES:
        raise ValueError(f"field source {source!r} is not one of {FIELD_SOURCES}")
    if not root:
        raise ValueError("field dataset option 'dataroot_gt' (file or folder) is required")
    if source == "glosea4":
        from .sources import read_glosea4

        g = read_glosea4(root)
        wanted = opt.get("members")
        names = g.members if wanted is None else [_member_name(m, g.members) for m in wanted]
        index = [g.members.index(n) for n in names]
        fields = g.data[index].reshape(-1, *g.grid.shape).astype(np.float64)
        labels = [f"{n}/{y:04d}-{m:02d}" for n in names for (y, m) in g.months]
        return FieldSource(fields, g.grid, "surface_temperature", "K", labels)
    if source == "etopo5":
        from .io import grid_of
        from .sources import read_etopo5

        da = read_etopo5(root)
        which = opt.get("grid", "era5")
        if which == "era5":
            # Every 3rd ETOPO5 point, north first, is exactly ERA5's 721×1440 grid.
            da = da.isel(lat=slice(None, None, -3), lon=slice(None, None, 3))
        elif which != "native":
            raise ValueError(f"etopo5 grid must be 'era5' or 'native', got {which!r}")
        return FieldSource(
            np.asarray(da.values, dtype=np.float64)[None], grid_of(da), "relief", "m", ["etopo5"]
        )
    from .io import grid_of, read_field

    var = opt.get("var")
    if not var:
        raise ValueError("a netcdf field dataset needs 'var' (the variable name)")
    files: list[Path] = []
    for r in root if isinstance(root, (list, tuple)) else [root]:
        p = Path(r)
        files.extend(sorted(p.glob("*.nc")) if p.is_dir() else [p])
    if not files:
        raise ValueError(f"no .nc files in {root}")
    stacks, names, grid, units = [], [], None, None
    for f in files:
        da = read_field(f, var)
        g = grid_of(da)
        if grid is None:
            grid, units = g, str(da.attrs.get("units", ""))
        elif not g.same_as(grid):
            raise ValueError(f"{f}: grid {g} differs from {files[0]}'s {grid}; use one grid")
        values = np.asarray(da.values, dtype=np.float64).reshape(-1, *g.shape)
        stacks.append(values)
        names.extend(f"{f.stem}/{i}" for i in range(values.shape[0]))
    return FieldSource(np.concatenate(stacks), grid, str(var), units or "", names)  # type: ignore[arg-type]


def _member_name(m: object, members: Sequence[str]) -> str:
    name = f"ensemble_{m:03d}" if isinstance(m, int) else str(m)
    if name not in members:
        raise ValueError(f"GloSea4 member {m!r} not found; members: {', '.join(members)}")
    return name


def _band_rows(grid: Grid, bands: object) -> np.ndarray | None:
    """``(H,)`` bool: rows whose latitude lies in any ``[lat0, lat1]`` of ``bands`` (None: all)."""
    if bands is None:
        return None
    try:
        pairs = [(float(a), float(b)) for a, b in bands]  # type: ignore[union-attr, misc]
    except (TypeError, ValueError):
        raise ValueError(
            f"hr_lat_bands must be a list of [lat0, lat1] pairs, got {bands!r}"
        ) from None
    rows = np.zeros(grid.shape[0], dtype=bool)
    for a, b in pairs:
        lo, hi = min(a, b), max(a, b)
        rows |= (grid.lat >= lo - 1e-9) & (grid.lat <= hi + 1e-9)
    if not rows.any():
        raise ValueError(f"hr_lat_bands {bands!r} contain no row of the grid")
    return rows


def stats_from_option(value: object) -> FieldStats | None:
    """``stats`` option: ``None``/``"auto"`` (None: compute), a dict, or a JSON file path."""
    if value is None or value == "auto":
        return None
    if isinstance(value, Mapping):
        return FieldStats(
            (str(value.get("variable", "field")),),
            (str(value.get("units", "")),),
            (float(value["mean"]),),
            (float(value["std"]),),
            str(value.get("grid", "")),
        )
    return FieldStats.from_json(Path(str(value)).read_text())


def field_stats_for(opt: Mapping[str, Any]) -> FieldStats:
    """Normalisation statistics of a training field dataset's options.

    The ``stats`` option if given, else the cell-area-weighted mean and standard deviation
    (:func:`metasr.climate.compute_stats`) over every field of the source, on the rows that
    ``hr_lat_bands`` allows (held-out latitudes do not inform the statistics either).
    """
    given = stats_from_option(opt.get("stats"))
    if given is not None:
        return given
    src = load_field_source(opt)
    rows = _band_rows(src.grid, opt.get("hr_lat_bands"))
    fields = src.fields if rows is None else np.where(rows[:, None], src.fields, np.nan)
    return compute_stats(fields, src.grid, variable=src.variable, units=src.units)


def _sub_grid(grid: Grid, top: int, rows: int) -> Grid:
    """Rows ``top … top+rows−1`` of ``grid`` with their exact cell bounds."""
    return Grid.from_coords(
        grid.lat[top : top + rows],
        grid.lon,
        lat_bounds=grid.lat_bounds[top : top + rows + 1],
        lon_bounds=grid.lon_bounds,
    )


def _sample_dict(
    lq: np.ndarray, lq_grid: Grid, gt: np.ndarray, gt_grid: Grid, scale: Scale, name: str
) -> dict[str, Any]:
    return {
        "lq": torch.from_numpy(np.ascontiguousarray(lq, dtype=np.float32))[None],
        "gt": torch.from_numpy(np.ascontiguousarray(gt, dtype=np.float32))[None],
        "scale": torch.tensor(scale, dtype=torch.float64),
        "lq_lat": torch.from_numpy(lq_grid.lat.copy()),
        "lq_lon": torch.from_numpy(lq_grid.lon.copy()),
        "gt_lat": torch.from_numpy(gt_grid.lat.copy()),
        "gt_lon": torch.from_numpy(gt_grid.lon.copy()),
        "periodic_lon": bool(gt_grid.periodic_lon),
        "lq_path": name,
        "gt_path": name,
    }


def _check_trainable(source: FieldSource) -> None:
    """Refuse training fields with missing values (the loss, then every weight, would turn
    NaN) or without any variation (nothing to learn; a standard deviation of 0 cannot
    normalise them).

    Raises:
        ValueError: how many values are missing, or the constant value.
    """
    fields = source.fields
    missing = int(np.count_nonzero(~np.isfinite(fields)))
    if missing:
        raise ValueError(
            f"the training fields of {source.variable!r} hold {missing:,} missing (NaN) values "
            f"of {fields.size:,}: the loss would be NaN; train on complete fields (fill or "
            "crop the missing cells first)"
        )
    if fields.size and float(fields.max()) == float(fields.min()):
        raise ValueError(
            f"the training fields of {source.variable!r} are constant ({float(fields.min()):g} "
            "everywhere): nothing to learn, and a standard deviation of 0 cannot normalise them"
        )


class _FieldBase(Dataset):
    kind = "field"

    def __init__(self, opt: Mapping[str, Any]) -> None:
        self.opt = dict(opt)
        self.source = load_field_source(self.opt)
        self.grid = self.source.grid
        if np.isnan(self.source.fields).all(axis=(-2, -1)).any():
            raise ValueError("a field of the dataset is all NaN")
        self.method = self.opt.get("coarsen_method", "conservative")
        if self.method not in COARSEN_METHODS:
            raise ValueError(
                f"coarsen_method must be one of {COARSEN_METHODS}, got {self.method!r}"
            )

    def _whole(self, index: int, scale: Scale) -> dict[str, Any]:
        hr = self.source.fields[index]
        lq, lq_grid = coarsen(hr, self.grid, scale, method=self.method)
        return _sample_dict(lq, lq_grid, hr, self.grid, scale, self.source.names[index])


class FieldDataset(SpecBatchedDataset, _FieldBase):
    """Training pairs of fields, one ratio (and band) per batch; options in the module docstring.

    Options: ``source``, ``dataroot_gt``, ``var``, ``members``, ``grid`` (which fields);
    ``scale_sampler`` (default ×2…×8 per axis, half asymmetric); ``lq_patch_size`` (LR band
    rows, ``[min, max]``, or null for whole fields); ``hr_lat_bands``; ``coarsen_method``;
    ``stats`` (``auto`` or ``{mean, std, units, variable}`` or a JSON file: read by the model,
    see :func:`field_stats_for`). Flips and rotations are not offered: they are not symmetries
    of the globe (a flipped latitude swaps hemispheres, a flipped longitude reverses rotation).
    """

    def __init__(self, opt: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        merged = dict(opt or {})
        merged.update(kwargs)
        super().__init__(merged)
        self.scale_sampler = build_scale_sampler(
            self.opt.get("scale_sampler", DEFAULT_FIELD_SCALES)
        )
        self.patch_range = parse_patch_range(
            self.opt.get("lq_patch_size"),
            2,
            "'lq_patch_size' (LR band rows) must be an integer >= 2, [min, max] or null",
        )
        self.rows = _band_rows(self.grid, self.opt.get("hr_lat_bands"))
        if self.rows is not None and self.patch_range is None:
            raise ValueError(
                "hr_lat_bands needs band crops (lq_patch_size): a whole field contains the "
                "held-out rows"
            )
        # Check the largest ratio fits (a clear error now rather than at some iteration).
        max_scale = getattr(self.scale_sampler, "max_scale", None)
        if max_scale is not None:
            coarse_size(self.grid.shape, max_scale)
        _check_trainable(self.source)

    def __len__(self) -> int:
        return self.source.fields.shape[0]

    def draw_spec(self, rng: random.Random | None = None) -> BatchSpec:
        """The ratio, LR band rows and band position (``offset`` in [0, 1)) of one batch."""
        rng = rng or random
        scale = self.scale_sampler.sample(rng)
        patch = None if self.patch_range is None else rng.randint(*self.patch_range)
        return BatchSpec(scale=scale, lq_patch=patch, offset=rng.random())

    def band_tops(self, hr_rows: int) -> list[int]:
        """First HR rows of every band of ``hr_rows`` rows inside the allowed rows."""
        n = self.grid.shape[0]
        if hr_rows > n:
            return []
        if self.rows is None:
            return list(range(n - hr_rows + 1))
        ok = np.concatenate([[0], np.cumsum(self.rows)])
        return [t for t in range(n - hr_rows + 1) if ok[t + hr_rows] - ok[t] == hr_rows]

    def sample(self, index: int, spec: BatchSpec) -> dict[str, Any]:
        """Field ``index`` at ``spec``: the whole field, or the band ``spec`` places."""
        if spec.lq_patch is None:
            return self._whole(index, spec.scale)
        r_v, r_h = spec.scale
        p = int(spec.lq_patch)
        hr_rows = math.floor(p * r_v + 1e-6)
        tops = self.band_tops(hr_rows)
        if not tops:
            raise ValueError(
                f"no band of {hr_rows} HR rows (LR {p} rows at ×{r_v:g}) fits in the allowed "
                "rows; lower lq_patch_size or the vertical ratios, or widen hr_lat_bands"
            )
        offset = spec.offset if spec.offset is not None else 0.0
        top = tops[min(int(offset * len(tops)), len(tops) - 1)]
        band_grid = _sub_grid(self.grid, top, hr_rows)
        hr = self.source.fields[index, top : top + hr_rows]
        w = coarse_size(self.grid.shape, (1.0, r_h))[1]
        lq, lq_grid = coarsen(hr, band_grid, size=(p, w), method=self.method)
        return _sample_dict(lq, lq_grid, hr, band_grid, spec.scale, self.source.names[index])


class FieldTestDataset(_FieldBase):
    """Whole held-out fields × a list of ratios (one item per field×ratio, ratio by ratio).

    Options: the source options of :class:`FieldDataset`, ``coarsen_method``, and ``scales``
    (list or string, e.g. ``"2,4,2x3,7.5104x10"``; default ``[2, 4, [2, 3]]``).
    """

    def __init__(self, opt: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        merged = dict(opt or {})
        merged.update(kwargs)
        super().__init__(merged)
        scales = self.opt.get("scales", [2, 4, [2, 3]])
        if isinstance(scales, str):
            self.scales = parse_scale_list(scales)
        else:
            self.scales = [to_scale(s) for s in (scales if isinstance(scales, list) else [scales])]
        if not self.scales:
            raise ValueError("'scales' must list at least one ratio")
        for s in self.scales:
            coarse_size(self.grid.shape, s)

    def __len__(self) -> int:
        return self.source.fields.shape[0] * len(self.scales)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        n = self.source.fields.shape[0]
        return self._whole(index % n, self.scales[index // n])
