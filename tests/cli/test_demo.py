"""Issue 25, item 7: ``metasr demo`` (in the package, so in the wheel) writes what ``make demo``
writes; ``make demo`` installs metasr's core dependencies only; the LICENSE matches the
metadata and goes into the wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from metasr.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_metasr_demo_writes_the_four_files(tmp_path, capsys):
    assert (
        main(["demo", "--out", str(tmp_path / "d"), "--scale", "1.5x1.2", "--device", "cpu"]) == 0
    )
    names = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert names == ["bicubic.png", "comparison.png", "input.png", "metasr.png"]
    from PIL import Image

    with Image.open(tmp_path / "d" / "metasr.png") as im:
        assert im.size == (240, 240)  # 160x200 sample at x1.5 vertical, x1.2 horizontal
    assert "wrote" in capsys.readouterr().out


def test_make_demo_runs_metasr_demo_with_core_dependencies_only(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = tmp_path / "venv"
    proc = subprocess.run(["make", "-n", "demo", f"VENV={venv}"], cwd=ROOT, capture_output=True,
                          text=True, check=True)  # fmt: skip
    lines = proc.stdout.splitlines()
    installs = [ln for ln in lines if " install " in ln]
    assert installs and all("[" not in ln and "basicsr" not in ln for ln in installs), installs
    assert any(ln.endswith("metasr demo --out demo_out") for ln in lines), lines


def test_license_matches_metadata():
    text = (ROOT / "LICENSE").read_text()
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == {"text": "MIT"} and text.startswith("MIT License")
    assert meta["authors"][0]["name"] in text


@pytest.mark.slow
def test_wheel_has_demo_weights_and_license(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src_copy"  # build outside the checkout: no build/ or egg-info left there
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(src)], check=True)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("metasr-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for want in ("metasr/demo.py", "metasr/cli/demo.py", "metasr/assets/chelsea_crop.png",
                 "metasr/weights/default.safetensors"):  # fmt: skip
        assert want in names
    assert any(n.endswith("/LICENSE") for n in names)
