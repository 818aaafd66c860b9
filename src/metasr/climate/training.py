"""Training of the transferable temperature model (issue 23): many sources, random layouts.

* :func:`temperature_sources` reads every 2-D near-surface/low-level temperature field that
  ``make climate-data`` fetches, in kelvin, NaN where missing: ``glosea4`` (surface
  temperature, 13 members × 6 months, N96), ``hadgem2`` (1.5 m air temperature, 3 annual
  means, N96), ``air_temp`` (air temperature, one 73×96 field), ``ostia`` (OSTIA SST, a
  tropical band 18×432, 54 months, land missing), ``north_america`` (1.5 m air temperature,
  two scenarios × 240 years, regional 37×49), ``coads_airt`` and ``coads_sst`` (COADS marine
  air temperature and SST climatology, 12 months, 2°, land missing, converted from °C).
* :func:`sample_batch` draws one batch: a source, its fields, a random layout (whole global,
  regional crop, or regridded to a grid without pole rows or a Gaussian grid; LR with or
  without pole rows or Gaussian) and random per-axis ratios ×1.5…×10; the LR is the
  conservative coarsening of the HR.
* :func:`train` runs :func:`~metasr.climate.model.field_forward` (canonical layout,
  per-sample normalisation, regional padding, constraint) with an L1 loss in normalised units
  on the valid HR cells, and checkpoints every ``save_every`` iterations (atomic), so an
  interrupted run continues where it stopped.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .grids import Grid, gaussian_grid, regular_grid
from .model import field_forward, regional_call
from .regrid import fill_missing, regrid

__all__ = [
    "Source",
    "TrainConfig",
    "fold_sources",
    "sample_batch",
    "temperature_sources",
    "train",
]


class Source(NamedTuple):
    """Fields of one source: ``fields`` ``(N, H, W)`` float64 kelvin (NaN missing) on ``grid``."""

    fields: np.ndarray
    grid: Grid
    variable: str
    names: list[str]


def _netcdf(path: Path, var: str, offset: float = 0.0) -> tuple[np.ndarray, Grid]:
    import xarray as xr

    # decode_times=False: COADS's "hours since 0000-01-01" is not decodable without cftime.
    with xr.open_dataset(path, decode_times=False) as ds:
        da = ds[var]
        lat_name, lon_name = da.dims[-2], da.dims[-1]
        values = np.asarray(da.values, dtype=np.float64).reshape(-1, da.shape[-2], da.shape[-1])
        grid = Grid.from_coords(ds[lat_name].values, ds[lon_name].values)
    return values + offset, grid


def temperature_sources(root: str | Path, which: Sequence[str] | None = None) -> dict[str, Source]:
    """Read the temperature sources under ``root`` (the folder of ``make climate-data``).

    Args:
        root: data folder.
        which: source names to read (default all; see the module docstring). ``glosea4``
            members are named ``glosea4:ensemble_NNN`` in :attr:`Source.names`.

    Raises:
        ValueError: an unknown source name.
        FileNotFoundError: a source's file is missing (run ``make climate-data``).
    """
    from .pp import read_pp
    from .sources import read_glosea4

    root = Path(root)
    known = ("glosea4", "hadgem2", "air_temp", "ostia", "north_america", "coads_airt", "coads_sst")
    which = list(known if which is None else which)
    bad = [w for w in which if w not in known]
    if bad:
        raise ValueError(f"unknown temperature sources {bad}; known: {known}")
    out: dict[str, Source] = {}
    for name in which:
        if name == "glosea4":
            g = read_glosea4(root / "glosea4")
            names = [f"{m}/{y:04d}-{mo:02d}" for m in g.members for (y, mo) in g.months]
            out[name] = Source(
                g.data.reshape(-1, *g.grid.shape).astype(np.float64), g.grid,
                "surface_temperature", names,
            )  # fmt: skip
        elif name == "hadgem2":
            files = ("pre-industrial", "A1B.2098", "E1.2098")
            fields = [read_pp(root / "hadgem2" / f"{f}.pp")[0] for f in files]
            out[name] = Source(
                np.stack([f.data for f in fields]).astype(np.float64), fields[0].grid,
                "air_temperature (1.5 m)", list(files),
            )  # fmt: skip
        elif name == "air_temp":
            (f,) = read_pp(root / "other" / "air_temp.pp")[:1]
            out[name] = Source(
                f.data[None].astype(np.float64), f.grid, "air_temperature", ["air_temp"]
            )
        elif name == "ostia":
            v, g = _netcdf(root / "other" / "ostia_monthly.nc", "surface_temperature")
            out[name] = Source(
                v, g, "sea_surface_temperature", [f"ostia/{i}" for i in range(len(v))]
            )
        elif name == "north_america":
            parts = [
                _netcdf(root / "other" / f"{s}_north_america.nc", "air_temperature")
                for s in ("A1B", "E1")
            ]
            v = np.concatenate([p[0] for p in parts])
            names = [f"{s}/{i}" for s in ("A1B", "E1") for i in range(len(parts[0][0]))]
            out[name] = Source(v, parts[0][1], "air_temperature (1.5 m)", names)
        else:
            var = "AIRT" if name == "coads_airt" else "SST"
            v, g = _netcdf(root / "coads_climatology.cdf", var, offset=273.15)
            out[name] = Source(
                v,
                g,
                f"COADS {var} (converted from degC)",
                [f"{var}/{m + 1:02d}" for m in range(len(v))],
            )
    return out


def glosea4_split(source: Source, held_out: Sequence[str]) -> tuple[Source, Source]:
    """GloSea4 split by member: ``(train, held_out)``."""
    keep = np.array([not any(n.startswith(m + "/") for m in held_out) for n in source.names])
    pick = lambda mask: Source(  # noqa: E731
        source.fields[mask], source.grid, source.variable,
        [n for n, k in zip(source.names, mask, strict=True) if k],
    )  # fmt: skip
    return pick(keep), pick(~keep)


def _sub_grid(grid: Grid, rows: slice, cols: np.ndarray) -> Grid:
    """Rows ``rows`` and the contiguous (possibly wrapping) columns ``cols`` of ``grid``."""
    lon = grid.lon[cols].copy()
    lo = grid.lon_bounds[cols].copy()
    hi = grid.lon_bounds[cols + 1].copy()
    wrap = np.concatenate([[False], np.diff(cols) < 0]).cumsum() > 0
    lon[wrap] += 360.0
    lo[wrap] += 360.0
    hi[wrap] += 360.0
    lat_b = grid.lat_bounds[rows.start : rows.stop + 1]
    return Grid.from_coords(
        grid.lat[rows], lon, lat_bounds=lat_b, lon_bounds=np.concatenate([lo, hi[-1:]])
    )


def _lr_grid(hr: Grid, h: int, w: int, rng: random.Random) -> Grid:
    """A coarse grid over ``hr``'s area: global ones of a random kind, regional ones regular."""
    if hr.periodic_lon and abs(hr.lat_bounds[0]) > 89.99 and abs(hr.lat_bounds[-1]) > 89.99:
        kind = rng.choice(["pole", "nopole", "gauss"])
        if kind == "gauss" and h >= 4:
            return gaussian_grid(h, w)
        return regular_grid(h, w, pole_rows=kind == "pole", north_first=rng.random() < 0.5)
    lat_e = np.linspace(hr.lat_bounds[0], hr.lat_bounds[-1], h + 1)
    lon_e = np.linspace(hr.lon_bounds[0], hr.lon_bounds[-1], w + 1)
    return Grid.from_coords(
        0.5 * (lat_e[1:] + lat_e[:-1]), 0.5 * (lon_e[1:] + lon_e[:-1]),
        lat_bounds=lat_e, lon_bounds=lon_e,
    )  # fmt: skip


class Batch(NamedTuple):
    """One training batch: ``lr`` ``(B, h, w)`` filled, ``hr`` ``(B, H, W)`` (NaN missing)."""

    lr: np.ndarray
    lr_grid: Grid
    hr: np.ndarray
    hr_grid: Grid
    source: str


def sample_batch(
    sources: dict[str, Source],
    rng: random.Random,
    batch_size: int = 4,
    ratio: tuple[float, float] = (1.5, 10.0),
    max_hr_cells: int = 145 * 192,
) -> Batch:
    """A random batch (see the module docstring); all fields of it share one layout."""
    name = rng.choice(sorted(sources))
    src = sources[name]
    idx = [rng.randrange(len(src.fields)) for _ in range(batch_size)]
    hr, grid = src.fields[idx], src.grid
    H, W = grid.shape
    choice = rng.random()
    if choice < 0.45 and min(H, W) >= 24:
        # A regional crop: a random box of rows and (possibly wrapping) columns.
        hh = rng.randint(min(24, H), min(H, 72))
        ww = rng.randint(min(24, W), min(W, 96))
        top = rng.randrange(H - hh + 1)
        left = rng.randrange(W) if grid.periodic_lon else rng.randrange(W - ww + 1)
        cols = (left + np.arange(ww)) % W
        if ww == W and grid.periodic_lon:
            cols = np.arange(W)
        grid = _sub_grid(grid, slice(top, top + hh), cols)
        hr = hr[:, top : top + hh][:, :, cols]
    elif choice < 0.7 and grid.periodic_lon and grid.has_pole_rows:
        # The same fields conservatively regridded to a global grid of another kind.
        h2 = max(16, int(H * rng.uniform(0.55, 1.0)) // 2 * 2)
        w2 = max(16, int(W * rng.uniform(0.55, 1.0)))
        new = gaussian_grid(h2, w2) if rng.random() < 0.5 else regular_grid(h2, w2, pole_rows=False)
        hr, grid = regrid(hr, grid, new, "conservative"), new
    H, W = grid.shape
    if H * W > max_hr_cells:
        raise ValueError(f"HR {H}x{W} above max_hr_cells")
    r_v = rng.uniform(*ratio)
    r_h = r_v if rng.random() < 0.5 else rng.uniform(*ratio)
    h = max(4, round(H / r_v))
    w = max(4, round(W / r_h))
    lr_grid = _lr_grid(grid, min(h, H), min(w, W), rng)
    lr = regrid(hr, grid, lr_grid, "conservative")
    if np.isnan(lr).all(axis=(-2, -1)).any():
        return sample_batch(sources, rng, batch_size, ratio, max_hr_cells)
    lr, _ = fill_missing(lr, lr_grid)
    return Batch(lr, lr_grid, hr, grid, name)


class TrainConfig(NamedTuple):
    """What :func:`train` runs (stored in the run folder as ``config.json``)."""

    sources: list[str]
    held_out_members: list[str]
    iterations: int
    batch_size: int = 4
    lr: float = 2e-4
    ratio: tuple[float, float] = (1.5, 10.0)
    seed: int = 0
    save_every: int = 50
    init: str | None = "t2m-v1"
    constraint: str = "smooth"
    #: Whole sources this fold never trains on (leave-one-source-out); refused in ``sources``.
    held_out_sources: Sequence[str] = ()


def fold_sources(config: TrainConfig, sources: dict[str, Source]) -> dict[str, Source]:
    """The sources a fold trains on: ``sources`` less the held-out ones, GloSea4 less its
    held-out members.

    Raises:
        ValueError: a source is both in ``config.sources`` and in ``config.held_out_sources``
            (the option file contradicts itself), or no source is left to train on.
    """
    held = set(config.held_out_sources)
    both = sorted(held & set(config.sources))
    if both:
        raise ValueError(f"sources {both} are both trained on and held out")
    out = {k: v for k, v in sources.items() if k not in held}
    if "glosea4" in out:
        out["glosea4"], _ = glosea4_split(out["glosea4"], config.held_out_members)
    if not out:
        raise ValueError("no training source left after the held-out ones")
    return out


def network_kwargs() -> dict[str, Any]:
    """The architecture of the bundled t2m models (same size and speed as t2m-v1)."""
    return {
        "in_channels": 1, "out_channels": 1, "n_resblocks": 8, "n_feats": 64, "hidden": 128,
        "img_range": 1.0, "mean": 0.0, "bicubic_residual": True, "periodic_lon": True,
    }  # fmt: skip


def _run_net(net: torch.nn.Module):  # noqa: ANN202
    def run(z: torch.Tensor, coords: Any) -> torch.Tensor:
        with regional_call(net, coords):
            return net(z.float(), coords=coords)

    return run


def batch_loss(net: torch.nn.Module, batch: Batch, constraint: str = "smooth") -> torch.Tensor:
    """L1 in normalised units over the valid HR cells of ``batch``."""
    x = torch.from_numpy(batch.lr).float()
    gt = torch.from_numpy(batch.hr).float()
    y, _, std = field_forward(_run_net(net), x, batch.lr_grid, batch.hr_grid, constraint=constraint)
    valid = torch.isfinite(gt)
    diff = (y - torch.nan_to_num(gt)) / std
    return diff.abs()[valid].mean()


def train(
    config: TrainConfig,
    data: str | Path,
    out: str | Path,
    *,
    minutes: float | None = None,
    log: Any = print,
    sources: dict[str, Source] | None = None,
) -> int:
    """Train (or continue) the run in ``out``; returns the iteration reached.

    ``out/state.pt`` holds the network, optimiser, iteration and random states; it is
    rewritten atomically every ``save_every`` iterations and at the end, so a run killed at
    any time continues from its last save. ``minutes`` stops early (saving) after that long.
    ``sources`` replaces reading ``config.sources`` from ``data`` (tests).
    """
    from .. import create_model
    from ..checkpoints import load_model
    from ..io import atomic_write, atomic_write_text

    read = temperature_sources(data, config.sources) if sources is None else dict(sources)
    all_sources = fold_sources(config, read)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(config._asdict(), indent=1) + "\n")
    torch.manual_seed(config.seed)
    net = create_model("meta_edsr", **network_kwargs())
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    state_path = out / "state.pt"
    it = 0
    rng = random.Random(config.seed)
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        it = int(state["iteration"])
        rng.setstate(state["rng"])
        log(f"resumed from {state_path} at iteration {it}")
    elif config.init:
        net.load_state_dict(load_model(config.init).model.state_dict())
        log(f"initialised from {config.init}")
    net.train()

    def save() -> None:
        state = {
            "net": net.state_dict(),
            "opt": opt.state_dict(),
            "iteration": it,
            "rng": rng.getstate(),
        }
        atomic_write(state_path, lambda tmp: torch.save(state, tmp))

    t0 = time.monotonic()
    recent: list[float] = []
    while it < config.iterations:
        batch = sample_batch(all_sources, rng, config.batch_size, config.ratio)
        loss = batch_loss(net, batch, config.constraint)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        it += 1
        recent.append(loss.item())
        if it % 10 == 0:
            elapsed = time.monotonic() - t0
            log(f"iter {it} loss {np.mean(recent):.4f} ({batch.source} {batch.lr_grid.shape}->"
                f"{batch.hr_grid.shape}) {elapsed:.0f}s")  # fmt: skip
            recent = []
        if it % config.save_every == 0:
            save()
        if minutes is not None and time.monotonic() - t0 > 60 * minutes:
            break
        if not math.isfinite(recent[-1] if recent else 0.0):
            raise RuntimeError(f"loss is not finite at iteration {it}")
    save()
    return it
