"""Results of the relief recipe (issue 12, part 8): the original use case on a real field.

ETOPO5 relief on ERA5's 721×1440 grid (every 3rd point of the 1/12° file, exactly ERA5's grid)
is conservatively coarsened to 96×144 (×7.51 vertically, ×10 horizontally) and put back on the
ERA5 grid by nearest/bilinear/bicubic/conservative regridding and, with ``--model``, by a network
checkpoint. Scoring is ``metasr eval``'s protocol (:func:`metasr.climate.evaluate_fields`):
latitude-weighted RMSE, MAE, bias, Pearson correlation and conservation RMSE, on the whole
globe and, with ``--score-bands``, on given latitude bands only (those a model did not train on).
Writes a markdown table (stdout and ``--markdown``), a zonal power spectrum figure and a map
figure (input, truth, bicubic, conservative, model; globe and a zoomed region).

    python scripts/climate_results.py relief --data datasets/climate --figures docs/figures
    python scripts/climate_results.py relief --model relief.safetensors \\
        --score-bands not:alt:15:odd --markdown relief.md

``--score-bands``: ``lat0:lat1,lat0:lat1,...`` or ``alt:WIDTH[:even|odd]``, the bands
``[-90 + k·WIDTH, -90 + (k+1)·WIDTH]`` for even (or odd) ``k`` (``alt:15:even`` is
−90…−75, −60…−45, …; ``alt:15:odd`` the others), ends included: the same pairs a training
option's ``hr_lat_bands`` takes. Prefixed with ``not:``, every latitude *outside* those bands is
scored: ``--score-bands not:alt:15:odd`` scores exactly the rows a model trained with
``hr_lat_bands`` = ``alt:15:odd`` never saw (``options/train/MetaEDSR_relief_era5.yml``), the
band edges being training rows.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metasr import climate as mc
from metasr.climate.figures import plot_field_maps, zoom_box

BASELINES = ("nearest", "bilinear", "bicubic", "conservative")
COLUMNS = ("rmse", "mae", "bias", "pearson", "conservation_rmse")


def parse_bands(spec: str) -> list[tuple[float, float]]:
    """Latitude bands from ``lat0:lat1,...`` or ``alt:WIDTH[:even|odd]`` (module docstring).

    Raises:
        ValueError: a malformed spec.
    """
    text = spec.strip()
    if text.startswith("alt:"):
        parts = text.split(":")
        parity = parts[2] if len(parts) == 3 else "even"
        try:
            width = float(parts[1])
        except (IndexError, ValueError):
            width = 0.0
        if len(parts) > 3 or parity not in ("even", "odd") or not 0 < width <= 90:
            raise ValueError(f"bad bands {spec!r}: alt:WIDTH[:even|odd] with 0 < WIDTH <= 90")
        n = int(np.ceil(180.0 / width - 1e-9))
        start = 0 if parity == "even" else 1
        return [(-90.0 + k * width, min(-90.0 + (k + 1) * width, 90.0)) for k in range(start, n, 2)]
    bands = []
    for item in text.split(","):
        try:
            a, b = (float(v) for v in item.split(":"))
        except ValueError:
            raise ValueError(f"bad band {item!r} in {spec!r}: lat0:lat1") from None
        if not (-90 <= a <= 90 and -90 <= b <= 90) or a == b:
            raise ValueError(f"bad band {item!r}: two different latitudes in -90..90")
        bands.append((min(a, b), max(a, b)))
    return bands


@dataclass
class Relief:
    """ETOPO5 relief on ERA5's grid (``truth``) and the native 1/12° field it samples."""

    truth: np.ndarray
    grid: mc.Grid
    native: np.ndarray
    native_grid: mc.Grid
    units: str


def parse_score_bands(spec: str) -> tuple[list[tuple[float, float]], bool]:
    """``--score-bands``: the bands, and whether the latitudes *outside* them are scored
    (``not:`` prefix)."""
    text = spec.strip()
    outside = text.startswith("not:")
    return parse_bands(text[4:] if outside else text), outside


def relief_on_era5(data: str | Path) -> Relief:
    """ETOPO5 relief on ERA5's 721×1440 grid (every 3rd point, north first) and at 1/12°.

    Raises:
        ValueError: the file does not give exactly ERA5's grid.
    """
    from metasr.climate.sources import read_etopo5

    da = read_etopo5(Path(data) / "etopo5.cdf")
    sub = da.isel(lat=slice(None, None, 3), lon=slice(None, None, 3))
    sub = sub.isel(lat=slice(None, None, -1))  # ETOPO5 runs south → north; ERA5 north → south
    era5 = mc.named_grid("era5")
    if not mc.grid_of(sub).same_as(era5):
        raise ValueError(f"every 3rd ETOPO5 point is {mc.grid_of(sub)!r}, not ERA5's {era5!r}")
    return Relief(
        sub.values.astype(np.float64),
        era5,
        da.values.astype(np.float64),
        mc.grid_of(da),
        str(da.attrs.get("units", "m")),
    )


@dataclass
class Run:
    """What :func:`run_recipe` measured: summary rows, and the fields for the figures."""

    rows: list[dict[str, Any]]
    setting: str
    fields: dict[str, np.ndarray] = field(default_factory=dict)
    lr_grid: mc.Grid | None = None


def run_recipe(
    truth: np.ndarray,
    grid: mc.Grid,
    lr_size: tuple[int, int],
    model: mc.ModelDownscaler | None = None,
    model_name: str = "model",
    bands: list[tuple[float, float]] | None = None,
    weights: str = "coslat",
    source: tuple[np.ndarray, mc.Grid] | None = None,
    outside: bool = False,
) -> Run:
    """Coarsen ``truth`` (or ``source``) to ``lr_size`` and score the model and the baselines
    on ``grid`` against ``truth``.

    Args:
        truth: ``(H, W)`` on ``grid``.
        lr_size: the coarse ``(h, w)``.
        source: a finer original ``truth`` samples, coarsened instead of it
            (:func:`metasr.climate.evaluate_fields`' ``sources``).
        model: a downscaler (e.g. :class:`metasr.climate.ModelDownscaler`) or ``None``.
        bands: also score only these latitude bands (:func:`metasr.climate.latitude_band_mask`)
            or, with ``outside``, only the latitudes outside them.

    Returns:
        A :class:`Run`: rows of :func:`metasr.climate.summarize_fields` (with ``scope``
        ``"globe"``, and ``"bands"`` when ``bands`` are given) and every prediction.
    """
    setting = mc.LRSize(*lr_size)
    keep: dict[tuple[str, str], np.ndarray] = {}
    fields = [("relief", truth[None], grid)]
    rows = mc.evaluate_fields(
        fields,
        [setting],
        model,
        BASELINES,
        model_name=model_name,
        weights=weights,
        keep=keep,
        sources=[source],
    )
    summary = [dict(r, scope="globe") for r in mc.summarize_fields(rows)]
    if bands:
        # The same predictions scored on the bands only (the protocol is deterministic; the
        # model is not run twice: its kept output stands in for it).
        mask = mc.latitude_band_mask(grid, bands)
        mask = ~mask if outside else mask
        if not mask.any():
            raise ValueError(f"no latitude of the grid lies outside the bands {bands}")
        lr = keep[(setting.label, "input")]
        lr_grid = mc.coarse_grid(grid, lr_size)
        for name in [model_name] * (model is not None) + list(BASELINES):
            scores = mc.score_field(
                keep[(setting.label, name)], truth[None], grid, lr, lr_grid, weights, mask
            )
            row = {"setting": setting.label, "method": name, "scope": "bands"}
            row.update({k: float(v[0]) for k, v in scores.items()})
            summary.append(row)
    out = Run(summary, setting.label, lr_grid=mc.coarse_grid(grid, lr_size))
    for (label, name), values in keep.items():
        if label == setting.label:
            out.fields[name] = values[0]
    return out


def provenance() -> str:
    """Machine, date and commit of a measurement, as one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{cpu}, {os.cpu_count()} cores; {date}; commit {commit}"


def markdown(
    rows: list[dict[str, Any]], units: str, bands: list | None = None, outside: bool = False
) -> str:
    """The rows as markdown tables, one per scope."""
    out = []
    for scope in ("globe", "bands"):
        these = [r for r in rows if r["scope"] == scope]
        if not these:
            continue
        where = (
            "whole globe"
            if scope == "globe"
            else ("latitudes outside the bands " if outside else "latitude bands ")
            + ", ".join(f"{a:g}…{b:g}" for a, b in bands or [])
        )
        out.append(f"Scored on the {where} (cos-latitude weights):\n")
        out.append(
            f"| method | RMSE ({units}) | MAE ({units}) | bias ({units}) | Pearson "
            f"| conservation RMSE ({units}) |"
        )
        out.append("|---|---|---|---|---|---|")
        for r in these:
            out.append(
                f"| {r['method']} | {r['rmse']:.1f} | {r['mae']:.1f} | {r['bias']:+.2f} "
                f"| {r['pearson']:.4f} | {r['conservation_rmse']:.1f} |"
            )
        out.append("")
    return "\n".join(out)


def figures(
    run: Run,
    truth: np.ndarray,
    grid: mc.Grid,
    out: Path,
    stem: str,
    *,
    zoom: str,
    model_name: str | None,
    units: str,
    cmap: str,
) -> list[Path]:
    """The zonal spectra and map figures of a run, as ``{stem}_spectra.png`` and
    ``{stem}_maps.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    names = ([model_name] if model_name else []) + list(BASELINES)
    spectra = {"truth": mc.zonal_power_spectrum(truth, grid)}
    for name in names:
        spectra[name] = mc.zonal_power_spectrum(run.fields[name], grid)
    # Piecewise-constant outputs (nearest, conservative) have exact nulls at multiples of the
    # coarse grid's wavenumber; drawn at a floor (1e-3 of the truth's smallest power) they do
    # not squash the rest of the plot.
    floor = 1e-3 * float(spectra["truth"][1][1:].min())
    spectra = {k: (wn, np.maximum(p, floor)) for k, (wn, p) in spectra.items()}
    spec_path = mc.plot_zonal_spectra(
        spectra,
        out / f"{stem}_spectra.png",
        title=f"zonal power spectrum, {run.setting} → {grid.shape[0]}x{grid.shape[1]}",
    )
    panels = [("input", run.fields["input"], run.lr_grid), ("truth", truth, grid)]
    panels += [(n, run.fields[n], grid) for n in ("bicubic", "conservative")]
    if model_name:
        panels.append((model_name, run.fields[model_name], grid))
    map_path = plot_field_maps(
        panels,
        out / f"{stem}_maps.png",
        zoom=zoom_box(zoom),
        units=units,
        cmap=cmap,
        reference=1,  # the truth sets the colour scales
    )
    return [spec_path, map_path]


def load_downscaler(
    path: str, tile: int, device: str, stats: str | None = None
) -> tuple[mc.ModelDownscaler, str]:
    """A checkpoint (or registry name) as a downscaler with its statistics, or with those of
    the JSON file ``stats`` (from ``metasr climate-stats -o``)."""
    from metasr.checkpoints import load_model
    from metasr.climate.stats import FieldStats

    loaded = load_model(path, device=device)
    given = FieldStats.from_json(Path(stats).read_text()) if stats is not None else None
    return mc.ModelDownscaler(loaded, mc.model_stats(loaded, given), tile=tile), Path(path).stem


def cmd_relief(args: argparse.Namespace) -> int:
    relief = relief_on_era5(args.data)
    truth, grid, units = relief.truth, relief.grid, relief.units
    source = (relief.native, relief.native_grid) if args.coarsen_from == "native" else None
    bands, outside = parse_score_bands(args.score_bands) if args.score_bands else (None, False)
    h, w = (int(v) for v in args.lr_size.lower().split("x"))
    model, name = (None, None)
    if args.model:
        model, name = load_downscaler(args.model, args.tile, args.device, args.stats)
        mc.check_units(model.stats, units, "ETOPO5 relief")
    run = run_recipe(
        truth, grid, (h, w), model, name or "model", bands, source=source, outside=outside
    )
    origin = "1/12° ETOPO5" if source is not None else "the ERA5-grid field"
    text = (
        f"ETOPO5 relief: {origin} conservatively coarsened to {h}x{w}, put back on ERA5's "
        f"{grid.shape[0]}x{grid.shape[1]} grid and compared with every 3rd ETOPO5 point"
        f"\n\n{provenance()}\n\n{markdown(run.rows, 'm', bands, outside)}"
    )
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"provenance": provenance(), "rows": run.rows}, indent=1)
        )
    if args.figures:
        for p in figures(
            run,
            truth,
            grid,
            Path(args.figures),
            args.stem,
            zoom=args.zoom,
            model_name=name,
            units=f"relief ({units})",
            cmap="terrain",
        ):
            print(f"wrote {p} ({p.stat().st_size // 1024} KB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="recipe", required=True)
    p = sub.add_parser("relief", help="ETOPO5 relief, 96x144 -> ERA5 721x1440")
    p.add_argument("--data", default="datasets/climate", help="folder of make climate-data")
    p.add_argument("--model", help="checkpoint of a relief model (with field_stats in metres)")
    p.add_argument("--lr-size", default="96x144", help="coarse grid HxW (default 96x144)")
    p.add_argument(
        "--coarsen-from",
        choices=("native", "era5"),
        default="native",
        help="coarsen the 1/12° file (default: a coarse cell is the true area mean) or the "
        "ERA5-grid field (as field training pairs are made)",
    )
    p.add_argument("--score-bands", help="also score only these latitude bands (see --help)")
    p.add_argument("--tile", type=int, default=0, help="LR rows per tile for the model")
    p.add_argument(
        "--stats", help="statistics JSON (metasr climate-stats -o) for a model without them"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--markdown", help="write the tables here too")
    p.add_argument("--json", help="write the rows as JSON")
    p.add_argument("--figures", help="folder for the spectra and map PNGs")
    p.add_argument("--stem", default="relief", help="file name stem of the figures")
    p.add_argument("--zoom", default="himalaya", help="zoom box: name or lat0,lat1,lon0,lon1")
    args = parser.parse_args(argv)
    try:
        return cmd_relief(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
