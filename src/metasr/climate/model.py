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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..checkpoints import LoadedModel, checkpoint_stats
from ..geometry import CoordinateGrid, UpscaleRequest
from ..inference import upscale_array
from ..tiling import DEFAULT_OVERLAP, upscale
from ..validation import check_int
from .card import ModelCard, model_card
from .constraint import broadcast_masks, conserve_masked, constraint_for, pole_rows
from .grids import Grid, check_finer
from .layout import canonical_layout, target_layout
from .stats import FieldStats, check_units

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "REGIONAL_PAD",
    "ModelDownscaler",
    "field_forward",
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
        periodic_lon=src.periodic_lon,
    )


#: LR columns replicated on each side of a regional source before the network (more than the
#: receptive field of the bundled networks, 19 columns), so that a network built with
#: ``periodic_lon`` wraps one replicated edge onto the other and never the region's east edge
#: onto its west edge.
REGIONAL_PAD = 24

#: Values of ``field_forward(constraint=...)`` and of a model card's ``constraint``.
CONSTRAINTS = ("smooth", "min-change", "none")

# A field whose area-weighted standard deviation is below this (in its units) is normalised by
# this instead (a constant field must not divide by zero).
_MIN_STD = 1e-3


@contextmanager
def regional_call(model: torch.nn.Module, coords: CoordinateGrid) -> Iterator[None]:
    """Run ``model`` on a regional (non-periodic) ``coords`` whatever ``periodic_lon`` it was
    built with: its head and bicubic residual stop wrapping for the call (``periodic_lon`` is
    off meanwhile); its backbone convolutions still wrap, but only the replicated columns that
    :func:`field_forward` pads on both sides (``REGIONAL_PAD`` > the receptive field) meet."""
    # The network and its head each hold the flag; the backbone's convolutions do not read it.
    wrapping = [m for m in model.modules() if getattr(m, "periodic_lon", False) is True]
    if coords.periodic_lon or not wrapping:
        yield
        return
    for m in wrapping:
        m.periodic_lon = False
    try:
        yield
    finally:
        for m in wrapping:
            m.periodic_lon = True


def _area_weights(grid: Grid) -> np.ndarray:
    w = grid.cell_areas()
    return w / w.sum()


def _extend(coord: np.ndarray, n: int) -> np.ndarray:
    """``coord`` with ``n`` more points on each side at its end spacings."""
    if n == 0:
        return coord
    k = np.arange(n, 0, -1, dtype=np.float64)
    d0, d1 = coord[1] - coord[0], coord[-1] - coord[-2]
    return np.concatenate([coord[0] - k * d0, coord, coord[-1] + k[::-1] * d1])


def field_forward(
    run: Callable[[torch.Tensor, CoordinateGrid], torch.Tensor],
    x: torch.Tensor,
    src: Grid,
    dst: Grid,
    *,
    normalisation: str = "per-sample",
    stats: FieldStats | None = None,
    constraint: str = "smooth",
    pad: int = REGIONAL_PAD,
    dst_valid: np.ndarray | None = None,
    src_valid: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One differentiable field step, the same in training and inference.

    canonical layout (:mod:`metasr.climate.layout`) → normalisation → (regional: ``pad``
    replicated LR columns each side, target extended to match) → ``run`` → crop → one value
    per pole row → conservation constraint
    (:class:`~metasr.climate.constraint.ConservativeConstraint`)
    → de-normalisation → the target's own order.

    Args:
        run: ``run(z, coords)``: ``z`` ``(B, 1, h', w')`` normalised canonical input →
            ``(B, 1, H', W')`` on ``coords``' target (a network call, whole or tiled).
        x: ``(B, h, w)`` finite values on ``src`` (physical units).
        src, dst: the input's and the output's grids, any storage order.
        normalisation: ``"per-sample"`` (each field by its own area-weighted mean and std) or
            ``"dataset"`` (``stats``).
        stats: the dataset statistics for ``"dataset"``.
        constraint: the conservation constraint: ``"smooth"`` (the correction spread by bicubic
            interpolation, the limit of back-projection), ``"min-change"`` (the area-weighted
            minimum change) or ``"none"``.
        pad: LR columns replicated at each edge of a regional (non-periodic) source.
        dst_valid: ``(H, W)`` or ``(B, H, W)`` bool in ``dst``'s order, the valid target
            cells (a masked target: SST, land missing): the constraint then conserves over
            them (:class:`~metasr.climate.constraint.MaskedConservativeConstraint`;
            inference only, not differentiable). Default: whole cells.
        src_valid: ``(h, w)`` or ``(B, h, w)`` bool, the inputs that are data (not filled):
            only those are constrained with ``dst_valid``. Default: all.

    Returns:
        ``(y, mean, std)``: ``y`` ``(B, H, W)`` in physical units on ``dst`` in its order, and
        the ``(B, 1, 1)`` mean and std used (a training loss compares in normalised units).
    """
    ls = canonical_layout(src)
    ld = target_layout(dst, ls)
    sg, dg = ls.grid, ld.grid
    xc = ls.apply(x)
    if normalisation == "per-sample":
        w = torch.as_tensor(_area_weights(sg), dtype=xc.dtype, device=xc.device)
        mean = (xc * w).sum(dim=(-2, -1), keepdim=True)
        std = ((xc - mean) ** 2 * w).sum(dim=(-2, -1), keepdim=True).sqrt().clamp_min(_MIN_STD)
        mean, std = mean.detach(), std.detach()
    elif normalisation == "dataset":
        if stats is None:
            raise ValueError("normalisation 'dataset' needs the model's statistics")
        mean = torch.full((x.shape[0], 1, 1), stats.mean[0], dtype=xc.dtype, device=xc.device)
        std = torch.full((x.shape[0], 1, 1), stats.std[0], dtype=xc.dtype, device=xc.device)
    else:
        raise ValueError(f"normalisation must be 'per-sample' or 'dataset', got {normalisation!r}")
    z = (xc - mean) / std
    p = q = 0
    src_lon, dst_lon = sg.lon, dg.lon
    if not sg.periodic_lon and sg.shape[1] > 1:
        # Replicate the region's edges; the target grows by as many of its own columns as
        # cover the padding, and is cropped back after the network. The padded source stays
        # under 360° (a nearly global region gets less padding).
        d_src = max(sg.lon[1] - sg.lon[0], sg.lon[-1] - sg.lon[-2])
        span = sg.lon_bounds[-1] - sg.lon_bounds[0]
        p = int(min(pad, max(0.0, np.floor((360.0 - span) / (2 * d_src)) - 1)))
        if p:
            src_lon = _extend(sg.lon, p)
            if dg.shape[1] > 1:
                d_dst = min(dg.lon[1] - dg.lon[0], dg.lon[-1] - dg.lon[-2])
                q = int(np.ceil(p * d_src / d_dst)) + 1
                dst_lon = _extend(dg.lon, q)
                if dst_lon[-1] - dst_lon[0] >= 360.0 - 1e-6:  # a target (nearly) global
                    q, dst_lon = 0, dg.lon
    z_in = z[:, None]
    if p:
        z_in = torch.nn.functional.pad(z_in, (p, p, 0, 0), mode="replicate")
    coords = CoordinateGrid(
        tuple(sg.lat.tolist()),
        tuple(src_lon.tolist()),
        tuple(dg.lat.tolist()),
        tuple(dst_lon.tolist()),
        periodic_lon=bool(sg.periodic_lon),
    )
    y = run(z_in, coords)[:, 0]
    if q:
        y = y[..., q : q + dg.shape[1]]
    poles = pole_rows(dg)
    if poles.any():
        # One value per pole row: its longitude-weighted mean (a pole is one point).
        wl = torch.as_tensor(np.diff(dg.lon_bounds) / 360.0, dtype=y.dtype, device=y.device)
        mask = torch.as_tensor(poles, device=y.device)[:, None]
        y = torch.where(mask, (y * wl).sum(dim=-1, keepdim=True), y)
    if constraint not in CONSTRAINTS:
        raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {constraint!r}")
    if constraint != "none" and dst_valid is None:
        con = constraint_for(sg, dg, poles, constraint == "smooth")
        y = con(y.to(z.dtype), z)
    elif constraint != "none":
        if y.requires_grad:
            raise ValueError(
                "dst_valid (the masked constraint) is for inference: not differentiable"
            )
        dv, sv = broadcast_masks(dst_valid, src_valid, x.shape[0], src, dst)
        dv, sv = ld.apply(dv), None if sv is None else ls.apply(sv)
        yc = conserve_masked(
            y.detach().cpu().double().numpy(), z.detach().cpu().double().numpy(), sg, dg, dv,
            sv, poles, constraint == "smooth",
        )  # fmt: skip
        y = torch.as_tensor(yc, dtype=z.dtype, device=y.device)
    return ld.restore(y * std + mean), mean, std


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
        self.card: ModelCard | None = model_card(loaded)
        self.batch_size = batch_size
        self.tile = tile
        self.overlap = overlap
        self.progress = progress
        self.__name__ = f"model {loaded.arch} ({Path(loaded.name).name})"

    def __call__(
        self,
        filled: np.ndarray,
        src: Grid,
        dst: Grid,
        *,
        src_valid: np.ndarray | None = None,
        dst_valid: np.ndarray | None = None,
    ) -> np.ndarray:
        """Downscale finite fields.

        Args:
            filled: ``(N, h, w)`` finite values on ``src``, in the statistics' units.
            src: source grid.
            dst: target grid (the network runs with ``coords`` from ``src`` to ``dst`` when it
                takes them, else at ``size=dst.shape``).
            src_valid, dst_valid: ``(h, w)``/``(H, W)`` or one per field: the inputs that are
                data and the valid target cells; with ``dst_valid`` the card's constraint
                conserves over the valid target cells (:func:`field_forward`). A model without
                a constraint (no card, or no coordinates) ignores them.

        Returns:
            ``(N, H, W)`` float64 on ``dst``.
        """
        model = self.loaded.model
        # The official code's float32 arithmetic is an index-ratio grid: coords need exact
        # arithmetic.
        by_coords = accepts_coords(model) and getattr(model, "arithmetic", "exact") == "exact"
        n = filled.shape[0]
        out = np.empty((n, *dst.shape), dtype=np.float64)
        if dst_valid is not None:
            dst_valid, src_valid = broadcast_masks(dst_valid, src_valid, n, src, dst)
        for start in range(0, n, self.batch_size):
            chunk = filled[start : start + self.batch_size]
            if by_coords:
                part = slice(start, start + self.batch_size)
                masks = (
                    (None, None)
                    if dst_valid is None
                    else (dst_valid[part], None if src_valid is None else src_valid[part])
                )
                y = self._run_pipeline(chunk, src, dst, *masks)
            else:
                # (B, h, w): B fields of the one variable, normalised as every field input is.
                z = self.stats.normalise(chunk)
                # (B, h, w) go through a 1-channel model as one batch of B one-channel fields.
                y = upscale_array(
                    self.loaded,
                    z,
                    UpscaleRequest(size=dst.shape),
                    kind="field",
                    tile=self.tile,
                    overlap=self.overlap,
                    progress=self.progress,
                )
                y = self.stats.denormalise(y)
            out[start : start + y.shape[0]] = y
        if not np.all(np.isfinite(out)):
            raise ValueError(
                f"model {self.loaded.name} produced NaN or infinite values (its weights, or "
                "statistics that do not fit the field?)"
            )
        return out

    def _run_pipeline(
        self,
        chunk: np.ndarray,
        src: Grid,
        dst: Grid,
        dst_valid: np.ndarray | None = None,
        src_valid: np.ndarray | None = None,
    ) -> np.ndarray:
        """:func:`field_forward` with the card's normalisation and constraint (a model without
        a card: its dataset statistics, no constraint); ``(B, h, w)`` → ``(B, H, W)`` float64."""
        card = self.card
        x = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float64))
        with torch.inference_mode():
            y, _, _ = field_forward(
                lambda z, coords: self._run_coords(z[:, 0].numpy(), coords),
                x,
                src,
                dst,
                normalisation=card.normalisation if card else "dataset",
                stats=self.stats,
                constraint=card.constraint if card is not None else "none",
                dst_valid=dst_valid,
                src_valid=src_valid,
            )
        return y.numpy()

    def _run_coords(self, z: np.ndarray, coords: CoordinateGrid) -> torch.Tensor:
        """The model on ``z`` ``(B, h, w)`` with ``coords``, whole or tiled: ``(B, 1, H, W)``
        float64 on the CPU.

        The network checks the head's memory before its backbone runs (as with ``size=``).
        """
        model = self.loaded.model
        p = next(model.parameters())  # the device and dtype the model runs in
        x = torch.from_numpy(np.ascontiguousarray(z))[:, None].to(device=p.device, dtype=p.dtype)
        with torch.inference_mode(), regional_call(model, coords):
            y = upscale(
                model,
                x,
                UpscaleRequest(coords=coords),
                tile=self.tile,
                overlap=self.overlap,
                progress=self.progress,
            )
        return y.double().cpu()


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
