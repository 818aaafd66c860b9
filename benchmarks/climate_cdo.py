"""metasr vs CDO on real files: GloSea4 N96 surface temperature → the ERA5 0.25° grid.

Measures, one process at a time, each run a fresh ``metasr upscale`` / ``cdo`` process under
``/usr/bin/time`` (wall time, peak RSS), the output written to disk and deleted after:

- bilinear and conservative regridding of 234 fields, metasr (``--baseline``) and CDO
  (``remapbil``/``remapcon`` onto the same target cells), medians of ``--repeats`` runs;
- the model path (``--model``, default the bundled t2m model) on ``--model-fields`` counts
  (the network is ~10 s a field on one loaded core, so fewer fields than the baselines);
- peak memory of the bilinear baseline for 234 and 2340 fields, the 2340-field run under a
  2 GB ``RLIMIT_DATA`` cap (it must complete).

Inputs: the 78 GloSea4 fields (13 members × 6 months, ``make climate-data`` or
``python -m tools.climate_data DEST``), repeated to 234 and 2340 time steps, float32
netCDF. CDO is installed with apt when missing (``apt-get install -y cdo``); the tests do not
need it. Every command runs with ``nice -n 10`` and one thread (``OMP_NUM_THREADS=1``; CDO
without ``-P``), as the machine is shared.

Usage::

    python benchmarks/climate_cdo.py --data /work/data/climate --work /work/runs/climate_cdo
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RLIMIT_BYTES = 2 * 1000**3  # the 2 GB cap


def ensure_cdo() -> str:
    """The ``cdo`` executable, installed with apt when missing."""
    exe = shutil.which("cdo")
    if exe is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "cdo"], check=True)
        exe = shutil.which("cdo")
    if exe is None:
        raise SystemExit("cdo is not available (apt-get install -y cdo failed)")
    return exe


def make_inputs(data: Path, work: Path, counts: list[int]) -> dict[int, Path]:
    """``n96_N.nc`` for every count: the GloSea4 fields repeated to N time steps."""
    import xarray as xr

    from metasr.climate.sources import read_glosea4

    g = read_glosea4(data / "glosea4")
    fields = g.data.reshape(-1, *g.grid.shape).astype(np.float32)
    out = {}
    for n in counts:
        path = work / f"n96_{n}.nc"
        out[n] = path
        if path.exists():
            continue
        reps = -(-n // fields.shape[0])
        data_n = np.concatenate([fields] * reps)[:n]
        ds = xr.Dataset(
            {"tas": (("time", "lat", "lon"), data_n, {"units": "K",
                                                     "standard_name": "air_temperature"})},
            coords={
                "time": ("time", np.arange(n, dtype=np.float64),
                         {"units": "days since 2011-08-01", "calendar": "360_day"}),
                "lat": ("lat", g.grid.lat, {"units": "degrees_north",
                                            "standard_name": "latitude"}),
                "lon": ("lon", g.grid.lon, {"units": "degrees_east",
                                            "standard_name": "longitude"}),
            },
        )  # fmt: skip
        enc = {v: {"_FillValue": None} for v in ("time", "lat", "lon")}
        ds.to_netcdf(path, encoding=enc)
    return out


def make_target(work: Path) -> Path:
    """The ERA5 grid with metasr's cell bounds, as a CDO target (the same cells for both)."""
    from metasr.climate import grid_dataset, named_grid

    path = work / "era5_target.nc"
    if not path.exists():
        grid_dataset(named_grid("era5")).to_netcdf(path)
    return path


def _cap() -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (RLIMIT_BYTES, RLIMIT_BYTES))


def timed(cmd: list[str], out: Path, *, cap: bool = False) -> dict[str, float | int]:
    """Run ``cmd`` under nice and /usr/bin/time; wall seconds, peak RSS (MB), exit status."""
    for p in (out,):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}  # fmt: skip
    full = ["/usr/bin/time", "-f", "%e %M", "nice", "-n", "10", *cmd]
    t0 = time.perf_counter()
    done = subprocess.run(
        full, env=env, capture_output=True, text=True, preexec_fn=_cap if cap else None
    )
    wall = time.perf_counter() - t0
    last = done.stderr.strip().splitlines()[-1].split()
    result = {"wall_s": round(float(last[0]) if done.returncode == 0 else wall, 2),
              "peak_rss_mb": round(int(last[1]) / 1024, 1), "rc": done.returncode}  # fmt: skip
    if done.returncode != 0:
        result["error"] = done.stderr.strip().splitlines()[-6:]
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    print(" ".join(cmd[-8:]), "->", result, flush=True)
    return result


def metasr_cmd(src: Path, out: Path, *how: str) -> list[str]:
    return [sys.executable, "-m", "metasr", "upscale", str(src), "--var", "tas",
            "--target-grid", "era5", "-o", str(out), "-q", *how]  # fmt: skip


def _first_line(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def median_of(runs: list[dict]) -> dict[str, float]:
    return {
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
        "runs": len(runs),
        "rc": max(r["rc"] for r in runs),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("/work/data/climate"))
    p.add_argument("--work", type=Path, default=Path("/work/runs/climate_cdo"))
    p.add_argument("--fields", type=int, default=234)
    p.add_argument("--many", type=int, default=2340, help="the long run (memory, 2 GB cap)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default=str(ROOT / "src/metasr/weights/t2m.safetensors"))
    p.add_argument("--model-fields", default="6,24", help="field counts of the model runs")
    p.add_argument("--skip", default="", help="comma list of parts to skip: base,model,many")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    args.work.mkdir(parents=True, exist_ok=True)
    cdo = ensure_cdo()
    model_counts = [int(n) for n in args.model_fields.split(",") if n]
    inputs = make_inputs(args.data, args.work, [args.fields, args.many, *model_counts])
    target = make_target(args.work)
    out_nc = args.work / "out.nc"
    results: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),  # fmt: skip
        "cdo": _first_line([cdo, "-V"]),
        "machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start",
    }
    src = inputs[args.fields]
    if "base" not in skip:
        for method, op in (("bilinear", "remapbil"), ("conservative", "remapcon")):
            ours, theirs = [], []
            for _ in range(args.repeats):  # side by side, alternating
                ours.append(timed(metasr_cmd(src, out_nc, "--baseline", method), out_nc))
                theirs.append(timed([cdo, "-s", f"{op},{target}", str(src), str(out_nc)], out_nc))
            results[f"{method}_{args.fields}_metasr"] = median_of(ours)
            results[f"{method}_{args.fields}_cdo"] = median_of(theirs)
    if "model" not in skip:
        for n in model_counts:
            run = timed(metasr_cmd(inputs[n], out_nc, "--model", args.model, "--device", "cpu"),
                        out_nc)  # fmt: skip
            results[f"model_{n}"] = run
    if "many" not in skip:
        many = inputs[args.many]
        # The cap changes nothing unless it is hit (the default chunk is 4 steps either way),
        # so this one run gives the 2340-field peak memory too.
        results[f"bilinear_{args.many}_metasr_2GB_cap"] = timed(
            metasr_cmd(many, out_nc, "--baseline", "bilinear"), out_nc, cap=True
        )
    (args.work / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
