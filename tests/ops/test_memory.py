"""Huge requests are refused before allocation, in one line (issue 10, items 1 and 11).

The huge-request tests run in a subprocess under ``RLIMIT_DATA`` of 3 GiB (never
``RLIMIT_AS``: it breaks CUDA builds of torch at import): a request that allocated first would
die there with a MemoryError or take long, so a quick one-line ``ValueError`` proves the refusal
came first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import metasr
from metasr import inference
from metasr.geometry import resolve_output_size
from metasr.ops.meta_upscale.dispatch import BACKENDS
from metasr.ops.meta_upscale.params import MLPParams

LIMIT = 3 << 30
TIME_LIMIT_S = 30.0

_PRELUDE = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_DATA, ({LIMIT}, {LIMIT}))
import torch, metasr
"""


def _run_limited(code: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    src = str(Path(metasr.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    proc.elapsed = time.monotonic() - start
    return proc


_API_CALL = """
try:
    {call}
except ValueError as exc:
    print(type(exc).__name__, str(exc).splitlines()[0])
    sys.exit(3)
print("no error")
"""


def _assert_refused(proc: subprocess.CompletedProcess, rc: int, *needles: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == rc, out
    assert "Traceback" not in out and "MemoryError" not in out, out
    assert proc.elapsed < TIME_LIMIT_S, proc.elapsed
    line = (proc.stderr if rc != 3 else proc.stdout).strip()
    assert len(line.splitlines()) == 1, line
    for needle in needles:
        assert needle in line, line
    return line


def test_meta_upsample_huge_scale_is_refused_before_allocating():
    code = _API_CALL.format(
        call="metasr.MetaUpsample(8, 3, hidden=16)(torch.randn(1, 8, 1, 1), scale=1e9)"
    )
    _assert_refused(_run_limited(code), 3, "ValueError", "exceeds the limit")


def test_network_huge_scale_is_refused_before_the_backbone():
    call = (
        "metasr.create_model('meta_edsr', n_resblocks=1, n_feats=8, hidden=16)"
        "(torch.rand(1, 3, 8, 8), scale=1e5)"
    )
    _assert_refused(_run_limited(_API_CALL.format(call=call)), 3, "exceeds the limit")


def test_network_output_over_free_memory_is_refused_with_the_estimate():
    # 9e8 pixels: under the pixel cap, but 10 GiB of float32 output alone.
    call = (
        "metasr.create_model('meta_edsr', n_resblocks=1, n_feats=8, hidden=16)"
        "(torch.rand(1, 3, 16, 16), size=(30000, 30000))"
    )
    line = _assert_refused(_run_limited(_API_CALL.format(call=call)), 3, "BackendUnavailableError")
    assert "GiB" in line and "output alone 10.1 GiB" in line


@pytest.fixture(scope="module")
def small_png(tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("limits") / "small.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


_CLI = """
from metasr.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    "request_args, needle",
    [(["--scale", "1e9"], "exceeds the limit"), (["--size", "8000x8000"], "GiB")],
)
def test_cli_huge_request_is_one_line(request_args, needle, tiny_checkpoint, small_png, tmp_path):
    pytest.importorskip("PIL")
    out = tmp_path / "o.png"
    args = ["upscale", str(small_png), "-o", str(out), "--model", str(tiny_checkpoint), "-q"]
    line = _assert_refused(_run_limited(_CLI, *args, *request_args), 1, needle)
    assert line.startswith("metasr upscale: error: ")
    assert not out.exists()


# ------------------------------------------------------------------- in-process refusals


def test_pixel_cap_is_configurable(monkeypatch):
    assert resolve_output_size(10, 10, scale=10)[:2] == (100, 100)
    monkeypatch.setenv("METASR_MAX_OUTPUT_PIXELS", "9999")
    with pytest.raises(ValueError, match="limit of 9999 pixels"):
        resolve_output_size(10, 10, scale=10)
    monkeypatch.setenv("METASR_MAX_OUTPUT_PIXELS", "lots")
    with pytest.raises(ValueError, match="METASR_MAX_OUTPUT_PIXELS"):
        resolve_output_size(10, 10, scale=10)


def test_overflowing_scale_is_a_value_error():
    # h·r is inf for a finite r; math.floor(inf) would raise OverflowError.
    with pytest.raises(ValueError, match="exceeds the limit"):
        resolve_output_size(3, 4, scale=1e308)


def test_every_backend_estimate_counts_the_output():
    phi = metasr.Pos2Weight(4, 3, 3, hidden=8)
    x = torch.zeros(2, 4, 5, 6)
    geom = metasr.geometry.build_geometry(5, 6, scale=(2.5, 3.0))
    params = MLPParams.from_module(phi, x.dtype)
    out = 2 * 3 * geom.H * geom.W * 4
    for name, backend in BACKENDS.items():
        if name == "triton" and backend.not_supported_reasons(device_type="cpu"):
            continue
        assert backend.estimate_bytes(x, params, geom) >= out, name


def test_refusal_first_line_names_the_estimate(monkeypatch):
    from metasr.ops.meta_upscale import dispatch

    monkeypatch.setattr(dispatch, "available_memory_bytes", lambda device: 1 << 20)
    up = metasr.MetaUpsample(8, 3, hidden=16)
    with pytest.raises(metasr.BackendUnavailableError) as info:
        up(torch.randn(1, 8, 32, 32), scale=100)  # 0.1 GiB of output
    first = str(info.value).splitlines()[0]
    assert "torch would need about" in first and "GiB" in first and "cpu has 0.0 GiB free" in first


def test_available_memory_respects_rlimit_data():
    code = """
from metasr.ops.memory import available_memory_bytes
print(available_memory_bytes(torch.device("cpu")))
"""
    proc = _run_limited(code)
    assert proc.returncode == 0, proc.stderr
    assert 0 < int(proc.stdout) < LIMIT


def test_cli_memory_error_is_one_line(monkeypatch, tiny_checkpoint, small_png, tmp_path, capsys):
    from metasr.cli import main

    def boom(*args, **kwargs):
        raise MemoryError("Unable to allocate 358. GiB for an array")

    monkeypatch.setattr(inference, "upscale_raster", boom)
    rc = main(
        ["upscale", str(small_png), "-o", str(tmp_path / "o.png"), "--scale", "2"]
        + ["--model", str(tiny_checkpoint), "-q"]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "out of memory" in err, err
