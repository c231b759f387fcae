"""The CLI's exit code is the reason registry's, also for a code that arrived from the aggregator."""

from __future__ import annotations

import argparse

import pytest

from secagg import cli
from secagg.aggregator.admin_client import AdminError
from secagg.errors import SecaggError


def _run_raising(monkeypatch: pytest.MonkeyPatch, exc: SecaggError) -> int:
    parser = argparse.ArgumentParser()
    parser.set_defaults(func=lambda _args: (_ for _ in ()).throw(exc))
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    return cli.main([])


@pytest.mark.parametrize(
    ("code", "expected"),
    [("usage", 2), ("forbidden", 1), ("ok", 1), ("no_such_code_anywhere", 1)],
)
def test_an_admin_error_exits_with_its_registered_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], code: str, expected: int
) -> None:
    assert _run_raising(monkeypatch, AdminError("the aggregator said no", code=code)) == expected
    err = capsys.readouterr().err
    assert err == f"secagg: {code}: the aggregator said no\n"


def test_an_unregistered_code_keeps_the_class_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    class Odd(SecaggError):
        exit_code = 2
        code = "not_in_the_table"

    assert _run_raising(monkeypatch, Odd("x")) == 2
