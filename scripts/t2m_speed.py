"""N96 → ERA5 per field: the climate model path of this tree against an older tree (issue 23).

The issue asks that the new path (canonical layout, per-sample normalisation, one value per
pole row, the conservation constraint) stay within +20 % of the path before it (commit
3b47247: normalise → network → de-normalise). The two trees cannot share a process (both are
``metasr``), so each measurement is a fresh process on one thread, and the trees alternate,
round after round, in one run; every process downscales the same GloSea4 field (written once
by this script) with ``ModelDownscaler`` (what ``metasr upscale --model`` runs per batch), once
to warm up (the first call also builds the constraint's matrices, cached for the following
fields of a file) and then ``--reps`` timed times. Medians over all timed calls::

    git worktree add --detach ../metasr-base 3b47247
    python scripts/t2m_speed.py --data datasets/climate --base ../metasr-base/src \\
        --model new:t2m=src --model new:t2m-v1=src --model old:t2m=../metasr-base/src
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

#: What one measuring process runs (it must work with the older tree's API too).
WORKER = """
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from metasr.checkpoints import load_model
from metasr.climate.grids import named_grid
from metasr.climate.model import ModelDownscaler, model_stats
x = np.load(sys.argv[1])
src, dst = named_grid("n96"), named_grid("era5")
loaded = load_model(sys.argv[2])
fn = ModelDownscaler(loaded, model_stats(loaded), batch_size=1)
t = time.perf_counter(); fn(x, src, dst); first = time.perf_counter() - t
times = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter(); y = fn(x, src, dst); times.append(time.perf_counter() - t)
print(json.dumps({"first": first, "times": times, "mean": float(y.mean())}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("datasets/climate"))
    p.add_argument("--model", action="append", required=True, metavar="LABEL=SRC",
                   help="LABEL ends with ':MODEL' (t2m, t2m-v1, a file); SRC the tree's src "
                   "folder")  # fmt: skip
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    from metasr.climate.training import temperature_sources

    field = temperature_sources(args.data, ["glosea4"])["glosea4"].fields[-1:]
    runs = {spec: {"first": [], "times": [], "mean": None} for spec in args.model}
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "field.npy"
        np.save(npy, field)
        for r in range(args.rounds):
            for spec in args.model:
                label, _, src = spec.partition("=")
                model = label.rsplit(":", 1)[-1]
                env = {**os.environ, "PYTHONPATH": str(Path(src).resolve()),
                       "OMP_NUM_THREADS": "1"}  # fmt: skip
                out = subprocess.run(
                    [sys.executable, "-c", WORKER, str(npy), model, str(args.reps)],
                    env=env, capture_output=True, text=True, check=True,
                )  # fmt: skip
                res = json.loads(out.stdout.strip().splitlines()[-1])
                runs[spec]["first"].append(res["first"])
                runs[spec]["times"] += res["times"]
                runs[spec]["mean"] = res["mean"]
                print(f"round {r} {label}: {[round(t, 3) for t in res['times']]}", flush=True)
    base = None
    for spec, r in runs.items():
        med = float(np.median(r["times"]))
        r["median"] = med
        base = base if base is not None else med
        print(f"{spec.partition('=')[0]}: median {med:.3f} s over {len(r['times'])} calls "
              f"(first call {np.median(r['first']):.3f} s), {med / base:.3f}x the first "
              f"listed; output mean {r['mean']:.4f} K")  # fmt: skip
    if args.json:
        from metasr.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
