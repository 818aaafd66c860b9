"""Start-up: ``metasr --help`` and a ``--baseline`` netCDF run never import torch (issue 24).

Each check runs in a fresh interpreter, so modules imported by other tests do not count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

xr = pytest.importorskip("xarray")
pytest.importorskip("netCDF4")

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _modules_after(code: str, cwd: Path) -> dict:
    """Run ``code`` (which calls the CLI) in a fresh interpreter; its exit status and the
    heavy modules it imported."""
    probe = (
        "import json, sys\n"
        "from metasr.cli import main\n"
        f"{code}\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'PIL', 'triton') if m in sys.modules)\n"
        "print(json.dumps({'rc': rc, 'heavy': heavy}))\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_does_not_import_torch(tmp_path):
    got = _modules_after(
        "try:\n    rc = main(['--help'])\nexcept SystemExit as exc:\n    rc = exc.code",
        tmp_path,
    )
    assert got == {"rc": 0, "heavy": []}


def test_baseline_netcdf_run_does_not_import_torch(tmp_path):
    lat = np.linspace(-90, 90, 7)
    lon = np.arange(12) * 30.0
    da = xr.DataArray(
        np.random.default_rng(0).normal(280, 5, (2, 7, 12)).astype(np.float32),
        dims=("time", "lat", "lon"),
        coords={"time": [0.0, 1.0], "lat": lat, "lon": lon},
        name="tas",
        attrs={"units": "K"},
    )
    da.to_dataset().to_netcdf(tmp_path / "in.nc")
    got = _modules_after(
        "rc = main(['upscale', 'in.nc', '--var', 'tas', '--target-grid', '13x24', "
        "'--baseline', 'bilinear', '-o', 'out.nc', '-q'])",
        tmp_path,
    )
    assert got == {"rc": 0, "heavy": []}
    assert (tmp_path / "out.nc").is_file()


def test_import_metasr_is_light_and_names_still_resolve():
    code = (
        "import sys, metasr, metasr.climate\n"
        "before = 'torch' in sys.modules\n"
        "from metasr import MetaUpsample\n"
        "from metasr.climate import downscale_with_model\n"
        "print(before, 'torch' in sys.modules, MetaUpsample.__name__)\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "MetaUpsample"]
