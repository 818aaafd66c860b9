"""Downscale fields with a loaded network: normalise → model → de-normalise, in batches.

:class:`ModelDownscaler` is a :data:`~metasr.climate.io.Downscaler` (``fn(filled, src_grid,
dst_grid)``), so it plugs into :func:`~metasr.climate.io.downscale` (fill-and-remask, attributes,
history) like any other function; :func:`downscale_with_model` is that call with the checks a
physical field needs (statistics present, units, variable count, a finer target grid).

A network whose ``forward`` takes ``coords`` (MetaRDN, MetaEDSR, MetaSwinIR) runs
with ``coords=CoordinateGrid(src.lat, src.lon, dst.lat, dst.lon)``: output rows and columns are
placed by latitude and longitude (an ERA5 target with pole rows gets its rows where they lie, not
by index ratio), whole or tiled (``tile > 0``: bands of rows of the coordinate geometry,
:func:`metasr.tiling.upscale` with ``coords``; the same output to float rounding). Networks
without ``coords`` and networks with the official code's arithmetic
(``arithmetic="official"``) run at ``size=dst_grid.shape``, placed by index ratio as for images.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..checkpoints import LoadedModel, checkpoint_stats
from ..geometry import CoordinateGrid
from ..inference import upscale_array
from ..tiling import DEFAULT_OVERLAP, upscale
from ..validation import check_int
from .grids import Grid, check_finer
from .stats import FieldStats, check_units

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "ModelDownscaler",
    "accepts_coords",
    "check_finer",
    "coordinate_grid",
    "downscale_with_model",
    "model_stats",
]


def model_stats(loaded: LoadedModel, stats: FieldStats | None = None) -> FieldStats:
    """The statistics a field model runs with: ``stats`` if given, else the checkpoint's.

    Raises:
        ValueError: none at all (a model without statistics is refused for physical fields),
            a network that does not map one variable to one, or statistics for another number
            of variables.
    """
    if loaded.in_channels != 1 or loaded.out_channels != 1:
        raise ValueError(
            f"model {loaded.name} maps {loaded.in_channels} to {loaded.out_channels} channels; "
            "fields are downscaled one variable at a time by a 1-variable (1 → 1 channel) model"
        )
    chosen = stats if stats is not None else checkpoint_stats(loaded)
    if chosen is None:
        raise ValueError(
            f"model {loaded.name} has no normalisation statistics for physical fields; give "
            "them (CLI: --stats MEAN,STD or a file from 'metasr climate-stats'; Python: "
            "stats=FieldStats(...)) or store them in the checkpoint (metasr climate-stats "
            "--checkpoint)"
        )
    if len(chosen.variables) != 1:
        raise ValueError(
            f"statistics for {len(chosen.variables)} variables "
            f"({', '.join(chosen.variables)}); a field is one variable"
        )
    return chosen


def accepts_coords(model: torch.nn.Module) -> bool:
    """Whether ``model.forward`` takes ``coords=`` (a :class:`~metasr.geometry.CoordinateGrid`)."""
    try:
        return "coords" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # a forward without a signature (a C++ extension)
        return False


def coordinate_grid(src: Grid, dst: Grid) -> CoordinateGrid:
    """The :class:`~metasr.geometry.CoordinateGrid` from ``src`` to ``dst``; longitude wraps
    when the source grid is periodic (global)."""
    return CoordinateGrid(
        tuple(src.lat.tolist()),
        tuple(src.lon.tolist()),
        tuple(dst.lat.tolist()),
        tuple(dst.lon.tolist()),
        periodic_lon=src.periodic,
    )


class ModelDownscaler:
    """A network as a :data:`~metasr.climate.io.Downscaler`.

    Args:
        loaded: a 1 → 1 channel model from :func:`metasr.checkpoints.load_model`.
        stats: its normalisation (:func:`model_stats`).
        batch_size: fields per forward pass.
        tile: LR tile size (0: whole fields), as ``metasr upscale --tile``.
        overlap: LR context around a tile.
        progress: tqdm bar over the tiles.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        stats: FieldStats,
        *,
        batch_size: int = 8,
        tile: int = 0,
        overlap: int = DEFAULT_OVERLAP,
        progress: bool = False,
    ) -> None:
        batch_size = check_int("batch_size", batch_size, minimum=1)
        self.loaded = loaded
        self.stats = model_stats(loaded, stats)
        self.batch_size = batch_size
        self.tile = tile
        self.overlap = overlap
        self.progress = progress
        self.__name__ = f"model {loaded.arch} ({Path(loaded.name).name})"

    def __call__(self, filled: np.ndarray, src: Grid, dst: Grid) -> np.ndarray:
        """Downscale finite fields.

        Args:
            filled: ``(N, h, w)`` finite values on ``src``, in the statistics' units.
            src: source grid.
            dst: target grid (the network runs with ``coords`` from ``src`` to ``dst`` when it
                takes them, else at ``size=dst.shape``).

        Returns:
            ``(N, H, W)`` float64 on ``dst``.
        """
        model = self.loaded.model
        # The official code's float32 arithmetic is an index-ratio grid: coords need exact
        # arithmetic.
        by_coords = accepts_coords(model) and getattr(model, "arithmetic", "exact") == "exact"
        coords = coordinate_grid(src, dst) if by_coords else None
        out = np.empty((filled.shape[0], *dst.shape), dtype=np.float64)
        for start in range(0, filled.shape[0], self.batch_size):
            # (B, h, w): B fields of the one variable, normalised as every field input is.
            z = self.stats.normalise(filled[start : start + self.batch_size])
            # (B, h, w) go through a 1-channel model as one batch of B one-channel fields.
            if coords is None:
                y = upscale_array(
                    self.loaded,
                    z,
                    size=dst.shape,
                    kind="field",
                    tile=self.tile,
                    overlap=self.overlap,
                    progress=self.progress,
                )
            else:
                y = self._run_coords(z, coords)
            out[start : start + y.shape[0]] = self.stats.denormalise(y)
        if not np.all(np.isfinite(out)):
            raise ValueError(
                f"model {self.loaded.name} produced NaN or infinite values (its weights, or "
                "statistics that do not fit the field?)"
            )
        return out

    def _run_coords(self, z: np.ndarray, coords: CoordinateGrid) -> np.ndarray:
        """The model on ``z`` ``(B, h, w)`` with ``coords``, whole or tiled: ``(B, H, W)``
        float32.

        The network checks the head's memory before its backbone runs (as with ``size=``).
        """
        model = self.loaded.model
        p = next(model.parameters())  # the device and dtype the model runs in
        x = torch.from_numpy(np.ascontiguousarray(z))[:, None].to(device=p.device, dtype=p.dtype)
        with torch.inference_mode():
            y = upscale(
                model,
                x,
                coords=coords,
                tile=self.tile,
                overlap=self.overlap,
                progress=self.progress,
            )
        return y[:, 0].float().cpu().numpy()


def downscale_with_model(
    da: xr.DataArray,
    loaded: LoadedModel,
    target: Grid | str | Path,
    *,
    stats: FieldStats | None = None,
    batch_size: int = 8,
    tile: int = 0,
    overlap: int = DEFAULT_OVERLAP,
    mask_threshold: float = 0.5,
    progress: bool = False,
) -> xr.DataArray:
    """Downscale a field with a network onto ``target``.

    Every leading index (time step, member…) is done, ``batch_size`` at a time; missing values
    are filled for the network and re-masked in the output (:func:`~metasr.climate.io.downscale`).

    Args:
        da: ``(..., lat, lon)`` DataArray with 1-D coordinates (as from
            :func:`~metasr.climate.io.read_field`).
        loaded: a 1 → 1 channel model.
        target: :class:`Grid`, grid name (``"era5"``, ``"n96"``, ``"HxW"``) or netCDF file.
        stats: normalisation; default the checkpoint's
            (:func:`metasr.checkpoints.checkpoint_stats`).
        batch_size, tile, overlap, progress: see :class:`ModelDownscaler`.
        mask_threshold: see :func:`~metasr.climate.io.downscale`.

    Returns:
        ``(..., H, W)`` DataArray on the target grid with ``da``'s name, attributes, leading
        coordinates and a new ``history`` line.

    Raises:
        ValueError: no statistics, units that differ from the statistics', another variable
            count, a target grid coarser than the source, and every bad field of
            :func:`~metasr.climate.io.as_field`.
    """
    from .io import as_field, downscale, grid_of, resolve_grid

    da = as_field(da)
    src, dst = grid_of(da), resolve_grid(target)
    check_finer(src, dst)
    chosen = model_stats(loaded, stats)
    units = da.attrs.get("units")
    if units is None and chosen.units[0]:
        warnings.warn(
            f"variable {da.name!r} has no units attribute; assuming the statistics' "
            f"{chosen.units[0]!r}",
            stacklevel=2,
        )
    check_units(chosen, None if units is None else str(units), f"variable {da.name!r}")
    fn = ModelDownscaler(
        loaded, chosen, batch_size=batch_size, tile=tile, overlap=overlap, progress=progress
    )
    return downscale(da, dst, fn, mask_threshold=mask_threshold)
