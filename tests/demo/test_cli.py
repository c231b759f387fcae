"""``secagg demo`` option checks: every mistake is refused before a process starts or a folder is made."""

from __future__ import annotations

from pathlib import Path

import pytest

from secagg.cli import main
from secagg.demo.run import DEMO_POLICY


def _policy(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        rc = main(["demo", *argv])
    except SystemExit as exc:  # argparse usage errors
        rc = int(exc.code or 0)
    return rc, capsys.readouterr().err


def test_unknown_site_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pol = _policy(tmp_path, DEMO_POLICY)
    rc, err = _run(capsys, "--sites", "2", "--policy", f"site-3={pol}", "--out", str(tmp_path / "o"))
    assert rc == 2
    assert "unknown site 'site-3'" in err and "site-1, site-2" in err
    assert not (tmp_path / "o").exists()


def test_missing_policy_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(capsys, "--policy", f"site-1={tmp_path / 'nope.yaml'}")
    assert rc == 2
    assert "policy file for site-1 not found" in err


@pytest.mark.parametrize("value", ["site-1", "=x.yaml", "site-1="])
def test_policy_needs_site_equals_file(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(capsys, "--policy", value)
    assert rc == 2
    assert "expected SITE=FILE" in err


def test_same_site_twice_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pol = _policy(tmp_path, DEMO_POLICY)
    rc, err = _run(capsys, "--policy", f"site-1={pol}", "--policy", f"site-1={pol}")
    assert rc == 2
    assert "given twice for site-1" in err


def test_policy_must_trust_the_demo_submitter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pol = _policy(tmp_path, DEMO_POLICY.replace("submitter@demo", "admin@lead"))
    rc, err = _run(capsys, "--mode", "plain", "--policy", f"site-2={pol}", "--out", str(tmp_path / "o"))
    assert rc == 1
    assert "add submitter@demo to signers.submitters" in err
    assert not (tmp_path / "o").exists()


def test_policy_must_allow_the_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    he_only = "version: 1\nsigners: {submitters: [submitter@demo]}\nmodes: [he]\n"
    pol = _policy(tmp_path, he_only)
    rc, err = _run(capsys, "--mode", "plain", "--policy", f"site-1={pol}")
    assert rc == 1
    assert "does not allow mode plain" in err


def test_broken_policy_is_refused_with_its_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pol = _policy(tmp_path, DEMO_POLICY + "colour: blue\n")
    rc, err = _run(capsys, "--policy", f"site-1={pol}")
    assert rc == 1
    assert "colour" in err


def test_help_tells_what_a_user_policy_needs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "submitter@demo in signers.submitters" in text


def test_unknown_strategy_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(capsys, "--strategy", "fedsgd")
    assert rc == 2
    assert "invalid choice: 'fedsgd'" in err


def test_strategy_and_comparison_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(capsys, "--compare-strategies", "--strategy", "fedadam")
    assert rc == 2
    assert "exclude each other" in err


def test_comparison_and_sweep_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(capsys, "--compare-strategies", "--privacy-sweep")
    assert rc == 2
    assert "not allowed with argument" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mode", "mask", "--drop-site", "site-2"], "takes NAME@ROUND"),
        (["--mode", "mask", "--drop-site", "site-9@1"], "no site 'site-9'"),
        (["--mode", "he", "--drop-site", "site-2@1"], "use it with --mode mask"),
        (["--mode", "mask", "--sites", "2", "--drop-site", "site-2@1"], "at least 2 sites must stay"),
    ],
)
def test_drop_site_is_checked_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    rc, err = _run(capsys, *argv, "--out", str(tmp_path / "o"))
    assert rc == 2
    assert message in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sweep-sites", "3,10"], "go with --privacy-sweep"),
        (["--in-process"], "go with --privacy-sweep"),
        (["--privacy-sweep", "--repeats", "3"], "--repeats goes with --in-process"),
        (["--privacy-sweep", "--in-process", "--repeats", "0"], "--repeats must be between 1 and 20"),
        (["--privacy-sweep", "--sweep-sites", "3,20"], "between 2 and 16 (up to 20 with --in-process)"),
        (["--privacy-sweep", "--in-process", "--sweep-sites", "3,21"], "between 2 and 20; got 21"),
        (["--sites", "17"], "between 2 and 16"),
    ],
)
def test_sweep_site_counts_are_checked_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    rc, err = _run(capsys, *argv, "--out", str(tmp_path / "o"))
    assert rc == 2
    assert message in err
    assert not (tmp_path / "o").exists()


def test_sweep_sites_must_be_a_list_of_counts(capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(capsys, "--privacy-sweep", "--sweep-sites", "3,ten")
    assert rc == 2 and "expected site counts like 3,10,20" in err
