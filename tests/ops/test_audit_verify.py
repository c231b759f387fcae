"""``secagg audit verify``: a log with one line edited, removed or reordered fails at that line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from secagg.auditlog import AuditLog
from secagg.cli import main


def _log(tmp_path: Path) -> list[str]:
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(6):
        log.append("round_completed", job="j", round=i + 1, seconds=0.5)
    return (tmp_path / "audit.jsonl").read_text().splitlines(keepends=True)


def _verify(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["audit", "verify", str(path)])
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def test_intact_log_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _log(tmp_path)
    code, out = _verify(tmp_path / "audit.jsonl", capsys)
    assert code == 0 and "6 records" in out


def test_edited_line_fails_at_that_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = _log(tmp_path)
    rec = json.loads(lines[2])
    rec["seconds"] = 0.25  # a quiet edit that keeps the JSON valid and the chain fields intact
    lines[2] = json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n"
    (tmp_path / "audit.jsonl").write_text("".join(lines))
    code, out = _verify(tmp_path / "audit.jsonl", capsys)
    assert code == 1
    assert "audit.jsonl:3:" in out and "edited" in out
    assert len(out.strip().splitlines()) == 1


def test_removed_line_fails_at_that_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = _log(tmp_path)
    del lines[3]
    (tmp_path / "audit.jsonl").write_text("".join(lines))
    code, out = _verify(tmp_path / "audit.jsonl", capsys)
    assert code == 1 and "audit.jsonl:4:" in out and "chain broken" in out


def test_reordered_lines_fail_at_the_first_moved_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _log(tmp_path)
    lines[1], lines[2] = lines[2], lines[1]
    (tmp_path / "audit.jsonl").write_text("".join(lines))
    code, out = _verify(tmp_path / "audit.jsonl", capsys)
    assert code == 1 and "audit.jsonl:2:" in out


def test_removed_last_line_is_not_detectable_by_the_chain_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Truncating the tail leaves a valid shorter chain; the signed head beside it tells it."""
    from secagg.auditlog import verify_log

    lines = _log(tmp_path)
    (tmp_path / "audit.jsonl").write_text("".join(lines[:-1]))
    assert verify_log(tmp_path / "audit.jsonl") == 5
    code, out = _verify(tmp_path / "audit.jsonl", capsys)
    assert code == 1 and "truncated: 5 records, its head records 6" in out


@pytest.mark.parametrize(
    ("make", "code", "words"),
    [
        (lambda p: p.mkdir(), "not_a_file", "is a directory, not an audit log"),
        (lambda p: os.mkfifo(p), "not_a_file", "is a named pipe (FIFO), not an audit log"),
        (lambda p: p.symlink_to("/dev/null"), "not_a_file", "is a device, not an audit log"),
        (lambda p: None, "file_missing", "no such audit log"),
    ],
)
def test_a_path_that_is_no_log_is_named_for_what_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make, code: str, words: str
) -> None:
    """#18 (weak messages): a directory, FIFO or device was "no such file" / "is not a file"."""
    path = tmp_path / "audit.jsonl"
    make(path)
    rc, out = _verify(path, capsys)
    assert rc == 1
    assert out == f"secagg: {code}: {path}: {words}\n"
