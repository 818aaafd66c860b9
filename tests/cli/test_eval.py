"""``metasr eval``: its arguments and output destinations are checked before any evaluation."""

from __future__ import annotations

import pytest

from helpers import run_cli, single_line


@pytest.mark.parametrize(
    ("device", "fragment"),
    [("tpu", "--device: unknown device 'tpu'"), ("cuda:99", "--device: device 'cuda:99'")],
)
def test_eval_device_is_checked_first(hr_dir, capsys, monkeypatch, device, fragment):
    monkeypatch.setattr("metasr.checkpoints.load_model", _must_not_run)
    code, _, err = run_cli(
        capsys, "eval", "--model", "default", "--data", hr_dir, "--device", device
    )
    assert code == 2 and fragment in single_line(err)


def _must_not_run(*args, **kwargs):
    raise AssertionError("the evaluation started before the arguments were checked")


# ------------------------------------------------ output destinations (issue 10, item 6)


@pytest.mark.parametrize("flag", ["--csv", "--json", "--plot"])
def test_eval_outputs_are_checked_before_the_evaluation(tmp_path, hr_dir, capsys, monkeypatch,
                                                         flag):  # fmt: skip
    monkeypatch.setattr("metasr.evaluate.evaluate", _must_not_run)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("x")
    base = ["eval", "--model", "bicubic", "--data", hr_dir, "--scales", "2"]
    code, _, err = run_cli(capsys, *base, flag, tmp_path / "folder")
    assert code == 2 and "is a folder; give a file name" in single_line(err)
    code, _, err = run_cli(capsys, *base, flag, tmp_path / "file.txt" / "sub" / "r.out")
    assert code == 2 and "file.txt is a file, not a folder" in single_line(err)
