"""The held-out table of docs/climate.md (issue 23): each cell's lat-weighted RMSE and bias.

For every cell (a held-out source, a coarse layout and ratio) the HR fields are coarsened
conservatively to the LR layout and put back on the HR grid by each method: the models given
(``--model NAME=CHECKPOINT``, repeatable; ``NAME:noconstraint`` also runs a carded model with
its constraint off), ``bicubic``, ``bicubic-conservative`` (bicubic + back-projection) and
``conservative``. Scores are cos-latitude-weighted over the valid HR cells, per field, then
averaged over the cell's fields (mean RMSE, mean bias). Also reported per model: the largest
conservation error on covered LR cells, and in the JSON the RMSE per latitude row (the
"why" of a cell that is not won).

    python scripts/t2m_table.py --data datasets/climate --model t2m-v1=t2m-v1 \\
        --model v2=experiments/MetaEDSR_t2m_v2/MetaEDSR_t2m_v2.safetensors \\
        --json out.json --markdown out.md

``--cells aux`` scores the sources fold "aux" holds out instead (air_temp, OSTIA, North
America: :func:`aux_cells`), e.g. with ``--model aux=<fold aux export> --model t2m=t2m``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from metasr.checkpoints import load_model
from metasr.climate.card import ModelCard
from metasr.climate.constraint import ConservativeConstraint, bicubic_conservative, pole_rows
from metasr.climate.grids import Grid, gaussian_grid, regular_grid
from metasr.climate.metrics import weighted_bias, weighted_rmse
from metasr.climate.model import ModelDownscaler, model_stats
from metasr.climate.regrid import apply_downscaler, regrid
from metasr.climate.training import Source, glosea4_split, temperature_sources
from metasr.io import atomic_write_text

HELD_OUT = ["ensemble_011", "ensemble_012", "ensemble_013"]


def _flip(grid: Grid) -> Grid:
    return Grid.from_coords(grid.lat[::-1], grid.lon, lat_bounds=grid.lat_bounds[::-1])


def _crop(
    grid: Grid, lat: tuple[float, float], lon: tuple[float, float]
) -> tuple[Grid, np.ndarray, np.ndarray]:
    """Europe-like regional crop of a 0..360 global grid, returned with −180..180 longitudes."""
    rows = np.flatnonzero((grid.lat >= lat[0]) & (grid.lat <= lat[1]))
    lon180 = np.where(grid.lon >= 180, grid.lon - 360, grid.lon)
    cols = np.flatnonzero((lon180 >= lon[0]) & (lon180 <= lon[1]))
    cols = cols[np.argsort(lon180[cols])]
    lb = np.where(grid.lon_bounds >= 180 - 1e-9, grid.lon_bounds - 360, grid.lon_bounds)
    lo = lb[cols]
    hi = lo + np.diff(grid.lon_bounds)[cols]
    lat_b = grid.lat_bounds[rows[0] : rows[-1] + 2]
    sub = Grid.from_coords(
        grid.lat[rows], lon180[cols], lat_bounds=lat_b, lon_bounds=np.concatenate([lo, hi[-1:]])
    )
    return sub, rows, cols


def _regional_lr(grid: Grid, h: int, w: int) -> Grid:
    lat_e = np.linspace(grid.lat_bounds[0], grid.lat_bounds[-1], h + 1)
    lon_e = np.linspace(grid.lon_bounds[0], grid.lon_bounds[-1], w + 1)
    return Grid.from_coords(0.5 * (lat_e[1:] + lat_e[:-1]), 0.5 * (lon_e[1:] + lon_e[:-1]),
                            lat_bounds=lat_e, lon_bounds=lon_e)  # fmt: skip


def cells(data: Path) -> list[tuple[str, np.ndarray, Grid, Grid, bool]]:
    """``(label, hr, hr_grid, lr_grid, flip_input)`` of every table cell."""
    src = temperature_sources(data, ["glosea4", "hadgem2", "coads_airt"])
    _, g4 = glosea4_split(src["glosea4"], HELD_OUT)
    n96 = g4.grid
    out = []
    for label, lr in (
        ("GloSea4 held-out, pole rows x2", regular_grid(73, 96, north_first=False)),
        ("GloSea4 held-out, pole rows x4", regular_grid(37, 48, north_first=False)),
        ("GloSea4 held-out, pole rows 2x3", regular_grid(73, 64, north_first=False)),
        ("GloSea4 held-out, no pole rows 72x96", regular_grid(72, 96, pole_rows=False)),
        ("GloSea4 held-out, Gaussian N48 (96x192)", gaussian_grid(96, 192)),
        ("GloSea4 held-out, Gaussian N24 (48x96)", gaussian_grid(48, 96)),
    ):
        out.append((label, g4.fields, n96, lr, False))
    out.append(
        (
            "GloSea4 held-out x2 stored north->south",
            g4.fields,
            n96,
            regular_grid(73, 96, north_first=False),
            True,
        )
    )
    had = src["hadgem2"]
    out.append(
        (
            "HadGEM2 (held out) x2",
            had.fields,
            had.grid,
            regular_grid(73, 96, north_first=False),
            False,
        )
    )
    out.append(
        (
            "HadGEM2 (held out) x4",
            had.fields,
            had.grid,
            regular_grid(37, 48, north_first=False),
            False,
        )
    )
    co = src["coads_airt"]
    for label, (h, w) in (
        ("COADS air temp. (held out) x2, 45x90", (45, 90)),
        ("COADS air temp. (held out) x4, 22x45", (22, 45)),
    ):
        edges = np.linspace(-90, 90, h + 1)
        lr = Grid.from_coords(
            0.5 * (edges[1:] + edges[:-1]), co.grid.lon_bounds[0] + (np.arange(w) + 0.5) * 360 / w
        )
        out.append((label, co.fields, co.grid, lr, False))
    eu, rows, cols = _crop(n96, (35.0, 70.0), (-10.0, 40.0))
    hr_eu = g4.fields[:, rows][:, :, cols]
    out.append(
        (
            "GloSea4 held-out, Europe crop x2 (regional)",
            hr_eu,
            eu,
            _regional_lr(eu, eu.shape[0] // 2, eu.shape[1] // 2),
            False,
        )
    )
    return out


def _pole_lr(grid: Grid, ratio: int) -> Grid:
    """A pole-row global grid ``ratio`` times coarser than the pole-row ``grid``, stored in
    the same latitude order (``(H − 1)/ratio + 1`` rows, ``W/ratio`` columns)."""
    return regular_grid((grid.shape[0] - 1) // ratio + 1, grid.shape[1] // ratio,
                        north_first=bool(grid.lat[0] > grid.lat[-1]))  # fmt: skip


def aux_cells(src: dict[str, Source]) -> list[tuple[str, np.ndarray, Grid, Grid, bool]]:
    """The cells of the sources fold "aux" holds out (same tuples as :func:`cells`).

    * ``air_temp`` (73×96, pole rows, stored north first): pole-row grids ×2 and ×4, north
      first as the source.
    * ``ostia`` (18×432 tropical band, land missing; global in longitude, regional in
      latitude): ×2 in both axes (9×216) and ×2 in latitude × ×4 in longitude (9×108). The
      band has only 18 rows, so latitude stays at ×2 (×4 leaves 4.5 rows: not nested, and 4
      rows is below what a 3×3 convolution stack sees of a field); its long axis takes the ×4.
    * ``north_america`` (regional 37×49): even subdivisions of the domain into about half and
      a quarter of the rows and columns (18×24, 9×12; ×2.06 × ×2.04 and ×4.1 × ×4.1).

    Args:
        src: the three sources by name (:func:`~metasr.climate.training.temperature_sources`).
    """
    out = []
    air = src["air_temp"]
    for r in (2, 4):
        out.append((f"air_temp (held out by aux) x{r}", air.fields, air.grid,
                    _pole_lr(air.grid, r), False))  # fmt: skip
    ost = src["ostia"]
    H, W = ost.grid.shape
    for rv, rh in ((2, 2), (2, 4)):
        lr = _regional_lr(ost.grid, H // rv, W // rh)
        out.append((f"OSTIA SST (held out by aux) {rv}x{rh}", ost.fields, ost.grid, lr, False))
    na = src["north_america"]
    H, W = na.grid.shape
    for r in (2, 4):
        lr = _regional_lr(na.grid, H // r, W // r)
        out.append((f"North America (held out by aux) x{r} (regional)", na.fields, na.grid,
                    lr, False))  # fmt: skip
    return out


#: The cell sets of ``--cells``: fold "main"'s held-out sources, fold "aux"'s.
CELL_SETS = {
    "main": cells,
    "aux": lambda data: aux_cells(
        temperature_sources(data, ["air_temp", "ostia", "north_america"])
    ),
}


def predict(
    how: object, lr: np.ndarray, lr_grid: Grid, grid: Grid, target_valid: np.ndarray | None = None
) -> np.ndarray:
    """``lr`` ``(N, h, w)`` on ``lr_grid`` put on ``grid`` by ``how``: a regridding method's
    name (NaN-aware by itself) or a downscaler (missing values filled, output re-masked; with
    ``target_valid`` ``(N, H, W)``, masked by it and constrained over its valid cells)."""
    if isinstance(how, str):
        return regrid(lr, lr_grid, grid, how)
    return apply_downscaler(how, lr, lr_grid, grid, target_valid=target_valid)  # type: ignore[arg-type]


def methods_for(specs: list[str], variants: bool = False) -> dict[str, object]:
    """``NAME=CHECKPOINT`` models (with ``variants``: also the other constraints) and the
    three baselines, by name."""
    methods: dict[str, object] = {}
    for spec in specs:
        name, _, ckpt = spec.partition("=")
        loaded = load_model(ckpt)
        fn = ModelDownscaler(loaded, model_stats(loaded), batch_size=6)
        methods[name] = fn
        if fn.card is None and variants:
            # A model from before issue 23 (dataset statistics) with the smooth constraint added.
            alt = ModelDownscaler(loaded, model_stats(loaded), batch_size=6)
            alt.card = ModelCard("air_temperature", "K", normalisation="dataset")
            methods[f"{name} (constraint smooth)"] = alt
            # Its own weights normalised per sample (the normalisation choice, measured alone).
            for constraint in ("none", "smooth"):
                alt = ModelDownscaler(loaded, model_stats(loaded), batch_size=6)
                alt.card = ModelCard("air_temperature", "K", constraint=constraint)
                methods[f"{name} (per-sample, constraint {constraint})"] = alt
        if fn.card is not None and variants:
            # The same weights with the other constraints (what the constraint costs and gains).
            for other in ("smooth", "min-change", "none"):
                if other != fn.card.constraint:
                    alt = ModelDownscaler(loaded, model_stats(loaded), batch_size=6)
                    alt.card = dataclasses.replace(fn.card, constraint=other)
                    methods[f"{name} (constraint {other})"] = alt
    methods["bicubic"] = "bicubic"
    methods["bicubic-conservative"] = bicubic_conservative
    methods["conservative"] = "conservative"
    return methods


def _score(pred: np.ndarray, hr: np.ndarray, grid: Grid) -> tuple[float, float]:
    return float(np.mean(weighted_rmse(pred, hr, grid))), float(
        np.mean(weighted_bias(pred, hr, grid))
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("datasets/climate"))
    p.add_argument("--model", action="append", default=[], metavar="NAME=CHECKPOINT")
    p.add_argument("--variants", action="store_true",
                   help="also run each model with the other constraints")  # fmt: skip
    p.add_argument(
        "--cells", choices=sorted(CELL_SETS), default="main",
        help="main (default): the sources fold main holds out; aux: fold aux's",
    )  # fmt: skip
    p.add_argument("--target-mask", action="store_true",
                   help="masked cells: also each model and bicubic-conservative with the HR's "
                   "mask as the target mask")  # fmt: skip
    p.add_argument(
        "--only", help="only the cells whose label contains one of these (comma-separated)"
    )
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    methods = methods_for(args.model, args.variants)
    todo = [
        cell
        for cell in CELL_SETS[args.cells](args.data)
        if not args.only or any(part in cell[0] for part in args.only.split(","))
    ]
    rows = score_cells(todo, methods, args.target_mask)
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
    if args.markdown:
        names = list(dict.fromkeys(k for r in rows for k, v in r.items() if isinstance(v, dict)))
        atomic_write_text(args.markdown, markdown(rows, names))
    return 0


def score_cells(
    todo: list[tuple[str, np.ndarray, Grid, Grid, bool]],
    methods: dict[str, object],
    target_mask: bool = False,
) -> list[dict]:
    """Score every method on every cell (see the module docstring); one JSON line per cell
    on stdout as it is done. With ``target_mask``, a cell with missing HR values also runs
    each model and ``bicubic-conservative`` with the HR's own mask as the target mask
    (``NAME + target mask``: conservation over the valid HR cells); its ``conservation`` is
    then the largest error of the NaN-aware coarsening of the masked output."""
    rows = []
    for label, hr, grid, lr_grid, flip in todo:
        runs = [(name, how, None) for name, how in methods.items()]
        if target_mask and np.isnan(hr).any():
            runs += [(f"{name} + target mask", how, np.isfinite(hr))
                     for name, how in methods.items() if not isinstance(how, str)]  # fmt: skip
        lr = regrid(hr, grid, lr_grid, "conservative")
        in_grid, lr_in = (_flip(lr_grid), lr[:, ::-1]) if flip else (lr_grid, lr)
        con = ConservativeConstraint(lr_grid, grid, frozen_rows=pole_rows(grid))
        row = {
            "cell": label,
            "lr": f"{lr_grid.shape[0]}x{lr_grid.shape[1]}",
            "hr": f"{grid.shape[0]}x{grid.shape[1]}",
            "n": int(hr.shape[0]),
        }
        for name, how, valid in runs:
            t0 = time.perf_counter()
            pred = predict(how, lr_in, in_grid, grid, valid)
            rmse, bias = _score(pred, hr, grid)
            if valid is not None:
                back = regrid(pred, grid, lr_grid, "conservative")  # over the valid cells
                # LR cells with under 1e-6 of valid area are left out, as the constraint leaves
                # them: the regridder gives a value to a cell that a valid HR cell overlaps by
                # a rounding sliver (1e-11 of a cell on the OSTIA band).
                part = regrid(valid.astype(np.float64), grid, lr_grid, "conservative")
                ok = np.isfinite(back) & np.isfinite(lr) & (part > 1e-6)
                cons = float(np.max(np.abs(back - lr)[ok]))
            elif np.isfinite(pred).all() and np.isfinite(lr).all():
                cons = con.error(pred, lr)  # whole cells: only meaningful for complete fields
            else:
                cons = float("nan")
            with np.errstate(invalid="ignore"):
                per_lat = np.sqrt(np.nanmean((pred - hr) ** 2, axis=(0, 2)))
            row[name] = {"rmse": rmse, "bias": bias, "conservation": cons,
                         "seconds": time.perf_counter() - t0,
                         "rmse_per_latitude": [round(float(v), 4) for v in per_lat]}  # fmt: skip
        row["latitudes"] = [round(float(v), 4) for v in grid.lat]
        rows.append(row)
        print(
            json.dumps(
                {
                    k: (
                        {kk: vv for kk, vv in v.items() if kk != "rmse_per_latitude"}
                        if isinstance(v, dict)
                        else v
                    )
                    for k, v in row.items()
                }
            ),
            flush=True,
        )
    return rows


def markdown(rows: list[dict], names: list[str]) -> str:
    """The table of ``rows`` (from :func:`score_cells`) as Markdown, one column per method."""
    lines = ["| cell | LR | " + " | ".join(f"{n} RMSE (bias)" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]  # fmt: skip
    for r in rows:
        cells = [f"{r[n]['rmse']:.3f} ({r[n]['bias']:+.3f})" if n in r else "" for n in names]
        lines.append(f"| {r['cell']} | {r['lr']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
