"""``secagg privacy ledger``: output, JSON, and the exit-code contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secagg.cli import main
from secagg.privacy import Ledger, Spend
from secagg.privacy.ledger import FILENAME


@pytest.fixture()
def site_state(tmp_path: Path) -> Path:
    state = tmp_path / "state" / "site-1"
    with Ledger(state / FILENAME, "cohort-a", 5.0, 1e-5) as led:
        d = led.debit("job-7", 0, [Spend("svt", 0.75, 0.0)])
        led.mark_released(d)
        led.debit("job-7", 1, [Spend("gaussian", 1.0, 1e-5, 2.0, 1.0, 1)])
    with Ledger(state / FILENAME, "cohort-b", 1.0, 1e-5) as led:
        led.debit("job-8", 0, [Spend("svt", 1.0, 0.0)])
    return state


def test_json_output(workspace: Path, site_state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["privacy", "ledger", "--kit", str(workspace / "site-1"), "--state", str(site_state), "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["site"] == "site-1"
    assert report["ledger"] == str(site_state / FILENAME)
    a, b = report["datasets"]
    assert a["dataset"] == "cohort-a" and b["dataset"] == "cohort-b"
    assert a["budget"] == {"epsilon": 5.0, "delta": 1e-5}
    with Ledger(site_state / FILENAME, "cohort-a") as led:
        eps, delta, method = led.total()
    assert a["total"] == {"epsilon": eps, "delta": delta, "method": method}
    assert "basic composition" in method and "RDP" in method
    assert [e["status"] for e in a["entries"]] == ["released", "debited"]
    assert [e["mechanism"] for e in a["entries"]] == ["svt", "gaussian"]
    assert a["entries"][1]["noise_multiplier"] == 2.0 and a["entries"][0]["job"] == "job-7"
    assert a["exhausted"] is False and b["exhausted"] is True
    assert b["remaining"] == {"epsilon": 0.0, "delta": 1e-5}


def test_table_output_and_default_state(
    workspace: Path, site_state: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(site_state.parent.parent)  # ./state/site-1 is the default
    assert main(["privacy", "ledger", "--kit", str(workspace / "site-1")]) == 0
    out = capsys.readouterr().out
    assert "privacy ledger of site-1" in out
    assert "data set cohort-a" in out and "data set cohort-b  EXHAUSTED" in out
    assert "job-7" in out and "released" in out and "debited" in out
    assert "budget     eps=5" in out


def test_missing_ledger_exits_1_with_one_line(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["privacy", "ledger", "--kit", str(workspace / "site-2"), "--state", str(tmp_path / "nope")])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("secagg: config: no privacy ledger at ")
    assert not (tmp_path / "nope").exists()  # reading never creates


def test_wrong_kit_kind_exits_1(
    workspace: Path, site_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["privacy", "ledger", "--kit", str(workspace / "admin@lead"), "--state", str(site_state)])
    assert rc == 1
    assert "not a site kit" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["privacy", "ledger"], ["privacy"], ["privacy", "ledger", "--kit"]):
        with pytest.raises(SystemExit) as ei:
            main(argv)
        assert ei.value.code == 2
    assert "usage error" in capsys.readouterr().err


def test_corrupt_ledger_exits_1(workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / FILENAME).write_bytes(b"\x00garbage" * 200)
    rc = main(["privacy", "ledger", "--kit", str(workspace / "site-3"), "--state", str(tmp_path)])
    assert rc == 1
    assert capsys.readouterr().err.startswith("secagg: config: ")
