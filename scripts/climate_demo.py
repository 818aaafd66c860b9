"""`make climate-demo` (issue 12, part 10): real fields downscaled to ERA5's grid, netCDF and PNG.

Two fields from the data of ``make climate-data`` go onto ERA5's 721×1440 0.25° grid:

* **temperature**: one month of a GloSea4 ensemble member the bundled ``t2m`` model never saw in
  training (``ensemble_011``, January 2012; N96, 145×192, kelvin), by the model (``--model``,
  default ``t2m``) and by bicubic and conservative regridding;
* **relief**: ETOPO5 conservatively coarsened to 96×144 (the original use case's grid), by
  bicubic and conservative regridding, and by a relief model when ``--relief-model`` is given
  (scored against the true relief on ERA5's grid).

For each field it writes the input and every result as CF netCDF (``metasr.climate.write_field``:
target coordinates, units, history) and one PNG comparing them (globe and a zoom), into
``--out`` (default ``demo_out/climate``)::

    python scripts/climate_demo.py --data datasets/climate --out demo_out/climate --model t2m
    python scripts/climate_demo.py --relief-model relief.safetensors

Each result is what ``metasr upscale FIELD.nc --target-grid era5 [--model M | --baseline B]``
writes (the same functions: :func:`metasr.climate.downscale_with_model`,
:func:`metasr.climate.downscale`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from metasr import climate as mc
from metasr.climate.figures import plot_field_maps, zoom_box

if TYPE_CHECKING:
    import xarray as xr

    from metasr.checkpoints import LoadedModel

BASELINES = ("bicubic", "conservative")
HELD_OUT_MEMBER = "ensemble_011"  # held out of the t2m model's training (MetaEDSR_t2m.yml)


def as_dataarray(values: np.ndarray, grid: mc.Grid, name: str, units: str, long_name: str):
    """A ``(lat, lon)`` DataArray of ``values`` on ``grid`` with CF attributes (needs xarray)."""
    import xarray as xr

    return xr.DataArray(
        np.asarray(values, dtype=np.float32),
        dims=("lat", "lon"),
        coords={
            "lat": ("lat", grid.lat, {"units": "degrees_north"}),
            "lon": ("lon", grid.lon, {"units": "degrees_east"}),
        },
        name=name,
        attrs={"units": units, "long_name": long_name},
    )


def demo_field(
    da: xr.DataArray,
    target: mc.Grid | str,
    models: dict[str, LoadedModel],
    out: Path,
    stem: str,
    *,
    truth: np.ndarray | None = None,
    zoom: str = "himalaya",
    cmap: str = "viridis",
    tile: int = 0,
    history: str = "scripts/climate_demo.py",
) -> dict[str, Any]:
    """Downscale one field by the baselines and ``models``, write netCDF files and a PNG.

    Args:
        da: the ``(lat, lon)`` input field with units.
        target: the target grid (a :class:`~metasr.climate.Grid` or a name such as ``"era5"``).
        models: label → loaded 1 → 1 channel model with statistics (may be empty).
        out: output folder (created).
        stem: file name stem: ``{stem}_input.nc``, ``{stem}_{label}.nc``, ``{stem}.png``.
        truth: the true field on ``target``, drawn and scored (cos-latitude RMSE) when given.
        zoom: zoom box of the figure (:func:`metasr.climate.figures.zoom_box`).
        tile: LR rows per tile for the models (0: whole fields).

    Returns:
        ``{"files": [paths], "rmse": {label: float}}`` (``rmse`` empty without ``truth``).
    """
    out.mkdir(parents=True, exist_ok=True)
    dst = mc.resolve_grid(target)
    files = [mc.write_field(da, out / f"{stem}_input.nc", history=history)]
    results = {b: mc.downscale(da, dst, b) for b in BASELINES}
    for label, loaded in models.items():
        results[label] = mc.downscale_with_model(da, loaded, dst, tile=tile)
    for label, res in results.items():
        files.append(mc.write_field(res, out / f"{stem}_{label}.nc", history=history))
    units = str(da.attrs.get("units", ""))
    panels = [("input", da.values, mc.grid_of(da))]
    rmse: dict[str, float] = {}
    if truth is not None:
        panels.append(("truth", truth, dst))
        rmse = {k: float(mc.weighted_rmse(v.values, truth, dst)) for k, v in results.items()}
    panels += [(label, res.values, dst) for label, res in results.items()]
    files.append(
        plot_field_maps(
            panels,
            out / f"{stem}.png",
            zoom=zoom_box(zoom),
            title=f"{da.name}: {da.shape[0]}x{da.shape[1]} → {dst.shape[0]}x{dst.shape[1]}",
            units=f"{da.name} ({units})",
            cmap=cmap,
            reference=1 if truth is not None else 0,  # the truth, else the input
        )
    )
    return {"files": files, "rmse": rmse}


def held_out_temperature(data: Path, member: str, month: int):
    """One GloSea4 surface temperature field (K, N96) as a DataArray."""
    from metasr.climate.sources import read_glosea4

    g = read_glosea4(data / "glosea4")
    if member not in g.members:
        raise ValueError(f"GloSea4 member {member!r} not found; members: {', '.join(g.members)}")
    m = g.members.index(member)
    year, mon = g.months[month]
    da = as_dataarray(g.data[m, month], g.grid, "surface_temperature", "K", "surface temperature")
    da.attrs["source"] = f"GloSea4 {member}, monthly mean {year}-{mon:02d} (iris-sample-data)"
    return da


def coarse_relief(data: Path, lr_size: tuple[int, int]):
    """ETOPO5 conservatively coarsened from 1/12° to ``lr_size`` (ERA5's layout), as a
    DataArray, and the true relief on ERA5's grid."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from climate_results import relief_on_era5

    relief = relief_on_era5(data)
    lr_grid = mc.coarse_grid(relief.grid, lr_size)
    lr, _ = mc.coarsen(relief.native, relief.native_grid, target=lr_grid)
    da = as_dataarray(lr, lr_grid, "relief", relief.units, "relief of the surface of the earth")
    da.attrs["source"] = "ETOPO5 (ferret-datasets), conservative area mean"
    return da, relief.truth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="datasets/climate", help="folder of make climate-data")
    parser.add_argument("--out", default="demo_out/climate", help="output folder")
    parser.add_argument("--model", default="t2m", help="temperature model (name or checkpoint)")
    parser.add_argument("--relief-model", help="relief model checkpoint (optional)")
    parser.add_argument("--member", default=HELD_OUT_MEMBER, help="GloSea4 member")
    parser.add_argument("--month", type=int, default=-1, help="month index (default the last)")
    parser.add_argument("--target-grid", default="era5", help="target grid (default era5)")
    parser.add_argument("--tile", type=int, default=0, help="LR rows per tile for the models")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from metasr.checkpoints import load_model

    data, out = Path(args.data), Path(args.out)
    try:
        t2m = load_model(args.model, device=args.device)
        relief_models = {}
        if args.relief_model:
            relief_models["model"] = load_model(args.relief_model, device=args.device)
        history = "scripts/climate_demo.py " + " ".join(argv if argv is not None else sys.argv[1:])
        temp = held_out_temperature(data, args.member, args.month)
        done = demo_field(temp, args.target_grid, {"model": t2m}, out, "t2m", zoom="himalaya",
                          cmap="RdYlBu_r", tile=args.tile, history=history)  # fmt: skip
        relief, truth = coarse_relief(data, (96, 144))
        # The true relief is on ERA5's grid: scored and drawn only for that target.
        on_era5 = mc.resolve_grid(args.target_grid).same_as(mc.named_grid("era5"))
        done_r = demo_field(relief, args.target_grid, relief_models, out, "relief",
                            truth=truth if on_era5 else None, zoom="himalaya", cmap="terrain",
                            tile=args.tile, history=history)  # fmt: skip
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"temperature: {temp.attrs['source']}, model {args.model}")
    print(f"relief: 96x144 -> {args.target_grid}" + ("" if relief_models else " (baselines only)"))
    for label, value in done_r["rmse"].items():
        print(f"  relief {label}: latitude-weighted RMSE {value:.1f} m against ETOPO5")
    for p in done["files"] + done_r["files"]:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
