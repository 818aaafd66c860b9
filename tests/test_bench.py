"""`metasr bench` runs end to end on a tiny problem (the numbers themselves live in docs)."""

from __future__ import annotations

import json

import pytest

from metasr import bench
from metasr.cli import main


@pytest.fixture
def tiny_config(monkeypatch):
    cfg = bench.BenchConfig((1, 4, 8, 8), {"scale": (2.5, 3)}, 2, ("fwd", "fwdbwd"), "tiny", 3, 16)
    monkeypatch.setitem(bench.CONFIGS, "tiny", cfg)
    return cfg


def test_worker_measures_every_backend(tiny_config):
    for backend in ("im2col", "torch", "torch:features_first", "naive"):
        for mode in ("fwd", "fwdbwd"):
            spec = {
                "config": "tiny",
                "mode": mode,
                "backend": backend,
                "dtype": "float32",
                "device": "cpu",
                "min_runs": 2,
                "max_runs": 3,
                "min_time_s": 0.0,
                "slow_s": 1e9,  # never fall back to a single run, however loaded the machine
            }
            r = bench._worker(spec)
            assert r["ok"], r
            assert r["median_ms"] > 0 and r["runs"] >= 2 and r["peak_mib"] >= 0


def test_worker_reports_unavailable_backend(tiny_config, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    spec = {
        "config": "tiny",
        "mode": "fwd",
        "backend": "triton",
        "dtype": "float32",
        "device": "cpu",
        "min_runs": 1,
        "max_runs": 1,
        "min_time_s": 0.0,
        "slow_s": 5.0,
    }
    r = bench._worker(spec)
    assert not r["ok"] and r["error"].startswith("triton:")


def test_cli_bench_subprocess_and_outputs(tmp_path, capsys):
    # div2k-x4 with the torch backend only: real subprocess workers, JSON and CSV written.
    out = tmp_path / "r.json"
    code = main(
        [
            "bench",
            "--config",
            "div2k-x4",
            "--backends",
            "torch",
            "--json",
            str(out),
            "--csv",
            str(tmp_path / "r.csv"),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["machine"]["torch"] and report["machine"]["commit"]
    (r,) = report["results"]
    assert r["ok"] and r["backend"] == "torch" and r["config"] == "div2k-x4"
    assert "| div2k-x4 | fwd | float32 | torch |" in capsys.readouterr().out
    assert (tmp_path / "r.csv").read_text().startswith("config,mode,backend")


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--config", "nope"],
        ["bench", "--backends", "magic"],
        ["bench", "--device", "tpu"],
        ["bench", "--dtype", "int8"],
    ],
)
def test_cli_bench_bad_arguments(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metasr bench: error:")
