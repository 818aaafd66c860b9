"""Why a cell of the issue-23 table is lost: error maps and error per latitude (docs/climate.md).

For each chosen cell of ``scripts/t2m_table.py`` (default: the COADS cells and the Gaussian
N48/N24 cells) the held-out fields are coarsened and put back exactly as the table does, by the
model given and by ``bicubic`` and ``bicubic-conservative``; one small PNG per cell shows

* the model's RMSE over the cell's fields at every HR point (K),
* the same for the back-projected bicubic,
* their difference (model − back-projected bicubic: red where the model loses),
* the RMSE of each latitude row (cos-latitude weighting is constant along a row) for the model,
  bicubic and back-projected bicubic.

Each cell's RMSE south of 60°S, between and north of 60°N is printed (and written with
``--json``)::

    python scripts/t2m_maps.py --data datasets/climate --model v2=t2m -o docs/figures
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from t2m_table import cells, methods_for, predict  # noqa: E402

from metasr.climate.grids import Grid  # noqa: E402
from metasr.climate.regrid import regrid  # noqa: E402
from metasr.io import atomic_write, atomic_write_text  # noqa: E402

#: The cells the model lost in the table of iteration 1950 (docs/climate.md).
DEFAULT_CELLS = "COADS,Gaussian N48,Gaussian N24"

#: Latitude bands of the printed summary.
BANDS = {"south of 60S": (-90.0, -60.0), "60S-60N": (-60.0, 60.0), "north of 60N": (60.0, 90.0)}


def rmse_maps(pred: np.ndarray, hr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(N, H, W)`` prediction and truth → the RMSE over the fields at every point ``(H, W)``
    and per latitude row ``(H,)`` (NaN where nothing is valid)."""
    err2 = (pred - hr) ** 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows or points (land)
        return np.sqrt(np.nanmean(err2, axis=0)), np.sqrt(np.nanmean(err2, axis=(0, 2)))


def band_rmse(per_lat: np.ndarray, lat: np.ndarray) -> dict[str, float]:
    """The per-row RMSE averaged (mean square, cos-latitude weighted) in each of :data:`BANDS`."""
    w = np.cos(np.deg2rad(lat))
    out = {}
    for name, (lo, hi) in BANDS.items():
        rows = (lat >= lo) & (lat <= hi) & np.isfinite(per_lat)
        out[name] = float(np.sqrt(np.sum(w[rows] * per_lat[rows] ** 2) / np.sum(w[rows])))
    return out


def plot_cell(
    path: Path, label: str, grid: Grid, maps: dict[str, np.ndarray], per_lat: dict[str, np.ndarray]
) -> None:
    """The four panels of one cell into ``path`` (PNG, small)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, bc = next(iter(maps)), "bicubic-conservative"
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.2), dpi=64)
    lon_b, lat_b = grid.lon_bounds, grid.lat_bounds
    if lat_b[0] > lat_b[-1]:
        lat_b = lat_b[::-1]
    top = float(np.nanpercentile(np.concatenate([maps[model].ravel(), maps[bc].ravel()]), 99))

    def draw(ax, values, title, cmap, vmin, vmax):
        v = values[::-1] if grid.lat[0] > grid.lat[-1] else values
        m = ax.pcolormesh(lon_b, lat_b, v, cmap=cmap, vmin=vmin, vmax=vmax, shading="flat")
        ax.set_title(title, fontsize=9)
        ax.set_ylim(-90, 90)
        fig.colorbar(m, ax=ax, label="K", shrink=0.85)

    draw(axes[0, 0], maps[model], f"{model}: RMSE over the fields", "magma_r", 0, top)
    draw(axes[0, 1], maps[bc], "bicubic-conservative: RMSE", "magma_r", 0, top)
    diff = maps[model] - maps[bc]
    lim = float(np.nanpercentile(np.abs(diff), 99)) or 1.0
    draw(axes[1, 0], diff, f"{model} − bicubic-conservative (red: model worse)", "RdBu_r",
         -lim, lim)  # fmt: skip
    ax = axes[1, 1]
    for name, values in per_lat.items():
        ax.plot(grid.lat, values, label=name, lw=1.2)
    ax.set_xlabel("latitude")
    ax.set_ylabel("RMSE per row (K)")
    ax.set_xlim(-90, 90)
    ax.legend(fontsize=8)
    ax.set_title("RMSE per latitude row", fontsize=9)
    fig.suptitle(label, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    # A 64-colour palette keeps each figure near 60 KB (they live in the repository).
    from PIL import Image

    buf.seek(0)
    image = Image.open(buf).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", optimize=True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("datasets/climate"))
    p.add_argument("--model", required=True, metavar="NAME=CHECKPOINT", help="one model")
    p.add_argument("--only", default=DEFAULT_CELLS,
                   help="cells whose label contains one of these (comma-separated)")  # fmt: skip
    p.add_argument("-o", "--output", type=Path, required=True, help="folder of the PNGs")
    p.add_argument("--json", type=Path, help="per-band RMSE of every cell")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    methods = methods_for([args.model])
    model = next(iter(methods))
    chosen = {model: methods[model], "bicubic": "bicubic",
              "bicubic-conservative": methods["bicubic-conservative"]}  # fmt: skip
    args.output.mkdir(parents=True, exist_ok=True)
    summary = []
    for label, hr, grid, lr_grid, _flip in cells(args.data):
        if not any(part in label for part in args.only.split(",")):
            continue
        lr = regrid(hr, grid, lr_grid, "conservative")
        maps, per_lat = {}, {}
        for name, how in chosen.items():
            maps[name], per_lat[name] = rmse_maps(predict(how, lr, lr_grid, grid), hr)
        slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
        path = args.output / f"t2m_errors_{slug}.png"
        plot_cell(path, label, grid, maps, per_lat)
        row = {"cell": label, "figure": path.name,
               "bands": {n: band_rmse(v, grid.lat) for n, v in per_lat.items()}}  # fmt: skip
        summary.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        atomic_write_text(args.json, json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
