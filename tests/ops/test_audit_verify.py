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


G = "0" * 64


@pytest.mark.parametrize(
    "extra",
    ['"x":NaN', '"x":1e400', '"x":1152921504606846976', '"x":' + "[" * 100_000 + "]" * 100_000],
    ids=["nan", "inf", "bigint", "deep"],
)
def test_a_line_rfc8785_cannot_encode_is_an_integrity_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str
) -> None:
    """Audit 18 (G1): NaN, 1e400 and 2^60 ended in rfc8785's FloatDomainError / IntegerDomainError
    tracebacks, deep nesting in RecursionError; a tampered line is an integrity failure naming it."""
    lines = _log(tmp_path)
    lines[3] = '{"event":"e","hash":"h","prev":"' + G + '","seq":4,' + extra + "}\n"
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(lines))
    code = main(["audit", "verify", str(path)])
    cap = capsys.readouterr()
    assert code == 1 and cap.err == f"secagg: integrity: {path}:4: not an audit record\n"


def test_a_line_past_the_record_cap_is_refused_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit 18 (G2): a 300 MB single-line log was read whole (745 MB); lines are now read bounded."""
    from secagg import auditlog

    lines = _log(tmp_path)
    monkeypatch.setattr(auditlog, "MAX_RECORD_BYTES", 4096)
    lines[2] = '{"pad":"' + "x" * 10_000 + '"}\n'
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(lines))
    code = main(["audit", "verify", str(path)])
    cap = capsys.readouterr()
    assert code == 1
    assert cap.err == f"secagg: integrity: {path}:3: not an audit record (line longer than 4096 bytes)\n"
    lines[2] = lines[2][:4095] + "\n"  # exactly at the cap (with its newline): judged as a record
    path.write_text("".join(lines))
    main(["audit", "verify", str(path)])
    assert "audit.jsonl:3: not an audit record\n" in capsys.readouterr().err
