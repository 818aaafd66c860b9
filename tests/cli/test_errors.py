"""How ``metasr`` reports a wrong argument type: one line, exit status 2; a bug keeps its trace."""

from __future__ import annotations

import pytest

from metasr.cli import info, main
from metasr.validation import ArgumentTypeError, check_positive_int


def test_argument_type_error_is_one_line_and_exit_2(monkeypatch, capsys):
    def run(args):
        check_positive_int("tile", 2.5)  # as an option file's value would reach the API

    monkeypatch.setattr(info, "run", run)
    assert main(["info"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "metasr info: error: tile must be a positive integer, got float 2.5"


def test_other_type_errors_are_bugs_and_keep_their_traceback(monkeypatch):
    def run(args):
        return None + 1  # type: ignore[operator]

    monkeypatch.setattr(info, "run", run)
    with pytest.raises(TypeError) as exc:
        main(["info"])
    assert not isinstance(exc.value, ArgumentTypeError)
