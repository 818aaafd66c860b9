"""Issue 25, item 9: every Python block of README.md and docs/*.md runs as written, except those
marked ``<!-- docs-test: skip, REASON -->`` on the line before (they need files a reader brings:
netCDF data, a published checkpoint); each such mark must give its reason."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- docs-test: (?P<mark>[^>]*?) -->\n)?```python\n(?P<code>.*?)```", re.S)


def _blocks() -> list:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for m in BLOCK.finditer(text):
            line = text[: m.start("code")].count("\n")
            ident = f"{doc.relative_to(ROOT)}:{line}"
            found.append(pytest.param(m.group("mark"), m.group("code"), id=ident))
    return found


BLOCKS = _blocks()


def test_there_are_blocks_and_most_run():
    marks = [p.values[0] for p in BLOCKS]
    assert len(BLOCKS) >= 8
    assert sum(m is None for m in marks) > len(BLOCKS) / 2


@pytest.mark.parametrize(("mark", "code"), BLOCKS)
def test_block_runs_as_written(mark, code, tmp_path, monkeypatch):
    if mark is not None:
        assert re.fullmatch(r"skip, \S.{9,}", mark), f"a skip mark needs a reason: {mark!r}"
        pytest.skip(mark)
    monkeypatch.chdir(tmp_path)  # whatever a block writes lands here
    monkeypatch.setenv("PYTHONHASHSEED", os.environ.get("PYTHONHASHSEED", "0"))
    exec(compile(code, "<docs block>", "exec"), {"__name__": "__docs__"})


def test_no_stale_references():
    training = (ROOT / "docs/training.md").read_text()
    assert "draft" not in training.splitlines()[0].lower()
    assert not re.search(r"\bissues? \d+", training), "internal issue numbers in training.md"
    for doc in DOCS:
        assert "DESIGN.md" not in doc.read_text(), f"{doc.name} cites DESIGN.md (docs/design.md)"
    # the README states the durations and memory a newcomer plans for
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "4 minutes" in readme and "11 GiB" in readme


def test_training_doc_says_where_the_benchmark_sets_come_from():
    training = (ROOT / "docs/training.md").read_text()
    for name in ("DIV2K", "Set5", "Set14", "B100", "Urban100"):
        assert name in training
    # every dataroot of the benchmark options appears in the documented layout
    opts = (ROOT / "options/test/MetaRDN_benchmarks.yml").read_text()
    for root in re.findall(r"dataroot_gt: (\S+)", opts):
        assert root.removeprefix("datasets/") in training, root
