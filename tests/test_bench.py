"""`metasr bench` runs end to end on a tiny problem (the numbers themselves live in docs)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from metasr import bench
from metasr.cli import main


@pytest.fixture
def tiny_config(monkeypatch):
    cfg = bench.BenchConfig((1, 4, 8, 8), {"scale": (2.5, 3)}, 2, ("fwd", "fwdbwd"), "tiny", 3, 16)
    monkeypatch.setitem(bench.CONFIGS, "tiny", cfg)
    return cfg


def test_worker_measures_every_backend(tiny_config):
    for backend in (
        "im2col",
        "torch",
        "torch:features_first",
        "torch:grouped",
        "naive",
        "compiled:torch",
    ):
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


def test_model_config_times_the_bundled_network(monkeypatch):
    # A bundled-model config (issue 27) on a tiny input: inference and a training step, and a
    # backend the heads cannot take is reported, not raised.
    cfg = bench.BenchConfig(
        (1, 3, 12, 12), {"scale": 3.7}, 3, ("fwd", "fwdbwd"), "m", model="default"
    )
    monkeypatch.setitem(bench.CONFIGS, "tiny-model", cfg)
    spec = {
        "config": "tiny-model",
        "dtype": "float32",
        "device": "cpu",
        "min_runs": 1,
        "max_runs": 1,
        "min_time_s": 0.0,
        "slow_s": 1e9,
    }
    for mode in ("fwd", "fwdbwd"):
        r = bench._worker({**spec, "mode": mode, "backend": "torch"})
        assert r["ok"] and r["median_ms"] > 0, r
    r = bench._worker({**spec, "mode": "fwd", "backend": "torch:grouped"})
    assert not r["ok"] and r["error"].startswith("torch:grouped:")


def test_many_phase_configs_exist():
    names = {"phases-x2.3", "phases-x3.7", "phases-2.37x3.13", "phases-1.13x3.91", "phases-x4"}
    assert names <= set(bench.CONFIGS)
    # Forward and training step, op alone and the bundled models, at every scale of issue 27.
    for s in ("x4", "x2.3", "x3.7", "2.37x3.13", "1.13x3.91"):
        for prefix in ("phases", "batch16", "model-default", "model-t2m"):
            assert bench.CONFIGS[f"{prefix}-{s}"].modes == ("fwd", "fwdbwd")
    assert bench.CONFIGS["model-t2m-x3.7"].model == "t2m"
    assert bench.CONFIGS["model-default-x2"].model == "default"


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
        ["bench", "--backends", "compiled:magic"],
        ["bench", "--device", "tpu"],
        ["bench", "--dtype", "int8"],
        ["bench", "--timeout", "-1"],
        ["bench", "--timeout", "nan"],
        ["bench", "--baseline", "foo"],
        ["bench", "--backends", "torch", "--baseline", "im2col"],
        ["bench", "--json", "/nonexistent-dir/r.json"],
        ["bench", "--csv", "."],
    ],
)
def test_cli_bench_bad_arguments(argv, capsys, monkeypatch):
    # Refused before anything is measured.
    monkeypatch.setattr(bench, "run_benchmarks", lambda *a, **k: pytest.fail("benchmark ran"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metasr bench: error:")


def test_worker_peak_memory_reflects_the_allocation():
    # In a fresh process (as the runner measures), im2col's peak must cover its predicted weight
    # tensor, H*W*k*k*Cin*Cout float32 = 128*128*9*16*3*4 B = 27 MiB, and the torch backend,
    # which never holds it, must stay well below. A measurement stuck at 0 fails here.
    code = (
        "import json, sys; from metasr import bench\n"
        "bench.CONFIGS['mem'] = bench.BenchConfig((1, 16, 32, 32), {'scale': 4}, 3, ('fwd',), "
        "'mem', 3, 16)\n"
        "spec = dict(config='mem', mode='fwd', backend=sys.argv[1], dtype='float32', "
        "device='cpu', min_runs=1, max_runs=1, min_time_s=0.0, slow_s=1e9)\n"
        "print(json.dumps(bench._worker(spec)))\n"
    )
    peaks = {}
    for backend in ("im2col", "torch"):
        out = subprocess.run(
            [sys.executable, "-c", code, backend], capture_output=True, text=True, check=True
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        assert r["ok"], r
        peaks[backend] = r["peak_mib"]
    weights_mib = 128 * 128 * 9 * 16 * 3 * 4 / 2**20
    assert peaks["im2col"] >= 0.9 * weights_mib, peaks
    assert peaks["torch"] < peaks["im2col"] / 3, peaks


def test_known_variants():
    names = ("naive", "im2col", "torch")
    assert bench.is_known_variant("compiled:torch", names)
    assert bench.is_known_variant("torch:per_phase", names)
    assert not bench.is_known_variant("compiled:torch:per_phase", names)
    assert not bench.is_known_variant("compiled:", names)


def test_memory_ratio_reads_both_ways():
    # A backend that needs more memory than the baseline was shown as "1/0".
    assert bench._fmt_memory_ratio(34, 2352) == "1/69"
    assert bench._fmt_memory_ratio(88, 34) == "2.6×"
    assert bench._fmt_memory_ratio(0, 34) == ""


@pytest.mark.parametrize("predictor", ["deep", "gelu3"])
def test_worker_runs_other_predictors(monkeypatch, predictor):
    cfg = bench.BenchConfig(
        (1, 4, 8, 8), {"scale": (2.5, 3)}, 2, ("fwd", "fwdbwd"), "tiny", 3, 16, predictor
    )
    monkeypatch.setitem(bench.CONFIGS, "tiny-phi", cfg)
    variants = ["im2col", "torch", "torch:per_phase", *bench.WEIGHTS_VARIANTS]
    variants.append("torch:features_first")
    for backend in variants:
        spec = {
            "config": "tiny-phi",
            "mode": "fwdbwd",
            "backend": backend,
            "dtype": "float32",
            "device": "cpu",
            "min_runs": 1,
            "max_runs": 1,
            "min_time_s": 0.0,
            "slow_s": 1e9,
        }
        r = bench._worker(spec)
        if predictor == "deep" and backend == "torch:features_first":
            assert not r["ok"] and "linear" in r["error"]
        else:
            assert r["ok"], r
