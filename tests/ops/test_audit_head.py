"""The signed audit head: ``audit verify`` notices what the chain alone cannot (issue #18).

Removing the last lines, keeping only the first, emptying the file and rewriting the chain after a
deletion all passed as "hash chain intact" before the head existed; each is refused here with one line
and exit 1. A crash between the append and the head update is accepted and named."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.auditlog import GENESIS, AuditLog, _digest, head_path, make_head, verify_audit
from secagg.cli import main
from secagg.errors import IntegrityError
from secagg.provision.ca import issue_cert, make_ca
from secagg.provision.identity import cert_pem
from tests.hostile_files import within

Node = tuple[ec.EllipticCurvePrivateKey, bytes, ec.EllipticCurvePrivateKey, bytes]
Cap = pytest.CaptureFixture[str]


@pytest.fixture(scope="module")
def node() -> Node:
    """Two nodes of one project: site-1 (writes the log) and site-2 (another key)."""
    ca_key, ca = make_ca("p", days=1)
    k1, c1 = issue_cert(ca_key, ca, name="site-1", org="o1", role="site", days=1)
    k2, c2 = issue_cert(ca_key, ca, name="site-2", org="o2", role="site", days=1)
    return k1, cert_pem(c1), k2, cert_pem(c2)


def _log(tmp: Path, key: ec.EllipticCurvePrivateKey | None = None, n: int = 6) -> Path:
    path = tmp / "audit.jsonl"
    log = AuditLog(path, key=key, node="site-1" if key is not None else None)
    for i in range(n):
        log.append("round_completed", job="j", round=i + 1)
    return path


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["audit", "verify", *argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def _rechain(records: list[dict[str, Any]]) -> str:
    """What an editor with write access but no key does: recompute every seq, prev and hash."""
    out, prev = [], GENESIS
    for i, rec in enumerate(records, start=1):
        rec = {k: v for k, v in rec.items() if k != "hash"} | {"seq": i, "prev": prev}
        rec["hash"] = prev = _digest(rec)
        out.append(json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n")
    return "".join(out)


def test_signed_log_verifies_against_its_cert(tmp_path: Path, node: Node, capsys: Cap) -> None:
    key, pem, _, _ = node
    path = _log(tmp_path, key)
    (tmp_path / "c.pem").write_bytes(pem)
    code, out, err = _cli(capsys, str(path), "--cert", str(tmp_path / "c.pem"))
    assert code == 0 and err == ""
    assert "6 records, hash chain intact, head signed by site-1, signature verified" in out
    head = json.loads(head_path(path).read_text())
    assert head["seq"] == head["count"] == 6 and head["node"] == "site-1" and head["signature"]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no temp left behind


@pytest.mark.parametrize(
    ("cut", "says"),
    [
        (lambda ls: ls[:-2], "truncated: 4 records, its head records 6 (2 missing at the end)"),
        (lambda ls: ls[:1], "truncated: 1 records, its head records 6"),
        (lambda ls: [], "log is empty but its head records 6 records: the file was emptied"),
    ],
    ids=["last-lines-removed", "only-first-kept", "emptied"],
)
def test_cut_short_is_refused(
    tmp_path: Path, capsys: Cap, cut: Callable[[list[str]], list[str]], says: str
) -> None:
    path = _log(tmp_path)
    path.write_text("".join(cut(_lines(path))))
    code, out, err = _cli(capsys, str(path))
    assert code == 1 and out == ""
    assert says in err and len(err.strip().splitlines()) == 1


def test_rewritten_chain_after_deleting_lines_is_refused(tmp_path: Path, capsys: Cap) -> None:
    path = _log(tmp_path)
    records = [json.loads(line) for line in _lines(path)]
    del records[2]  # drop one line, then recompute the chain so that it is intact again ...
    records.append({"event": "round_completed", "job": "j", "round": 99, "time": "x"})  # ... same count
    path.write_text(_rechain(records))
    code, _, err = _cli(capsys, str(path))
    assert code == 1 and "head hash mismatch at record 6: the chain was rewritten" in err


def test_rewritten_chain_with_a_forged_unsigned_head_fails_the_cert_check(
    tmp_path: Path, node, capsys
) -> None:
    key, pem, _, _ = node
    path = _log(tmp_path, key)
    records = [json.loads(line) for line in _lines(path)][:3]
    path.write_text(_rechain(records))
    last = json.loads(_lines(path)[-1])
    head_path(path).write_text(json.dumps(make_head(3, last["hash"], node="site-1", key=None)))
    (tmp_path / "c.pem").write_bytes(pem)
    assert _cli(capsys, str(path))[0] == 0  # consistent, and plainly unsigned ...
    code, _, err = _cli(capsys, str(path), "--cert", str(tmp_path / "c.pem"))
    assert code == 1 and "head is unsigned" in err  # ... which the node's certificate refuses


def test_head_signed_by_another_key_is_refused(tmp_path: Path, node: Node, capsys: Cap) -> None:
    key, pem, other_key, _ = node
    path = _log(tmp_path, key, n=3)
    last = json.loads(_lines(path)[-1])
    head_path(path).write_text(json.dumps(make_head(3, last["hash"], node="site-1", key=other_key)))
    (tmp_path / "c.pem").write_bytes(pem)
    code, _, err = _cli(capsys, str(path), "--cert", str(tmp_path / "c.pem"))
    assert code == 1 and "signed by another key" in err


def test_tampered_signature_is_refused(tmp_path: Path, node: Node, capsys: Cap) -> None:
    key, pem, _, _ = node
    path = _log(tmp_path, key, n=3)
    head = json.loads(head_path(path).read_text())
    forged = make_head(3, head["hash"], node="site-1", key=key)
    forged["signature"] = make_head(2, head["hash"], node="site-1", key=key)["signature"]  # another body
    head_path(path).write_text(json.dumps(forged))
    (tmp_path / "c.pem").write_bytes(pem)
    code, _, err = _cli(capsys, str(path), "--cert", str(tmp_path / "c.pem"))
    assert code == 1 and "head signature does not verify against the certificate of site-1" in err


def test_wrong_node_cert_is_refused(tmp_path: Path, node: Node, capsys: Cap) -> None:
    key, _, _, other_pem = node
    path = _log(tmp_path, key, n=2)
    (tmp_path / "c2.pem").write_bytes(other_pem)
    code, _, err = _cli(capsys, str(path), "--cert", str(tmp_path / "c2.pem"))
    assert code == 1 and "signed by another key" in err


def test_signed_head_without_cert_says_unchecked(tmp_path: Path, node: Node, capsys: Cap) -> None:
    path = _log(tmp_path, node[0], n=2)
    code, out, _ = _cli(capsys, str(path))
    assert code == 0 and "signature not checked: give --cert or --kit" in out


def test_unsigned_head_is_said_plainly(tmp_path: Path, capsys: Cap) -> None:
    path = _log(tmp_path, n=2)
    code, out, _ = _cli(capsys, str(path))
    assert code == 0 and "2 records, hash chain intact, head unsigned" in out
    assert json.loads(head_path(path).read_text())["signature"] is None


def test_missing_head_refused_unless_allowed(tmp_path: Path, capsys: Cap) -> None:
    path = _log(tmp_path, n=2)
    head_path(path).unlink()
    code, out, err = _cli(capsys, str(path))
    assert code == 1 and out == "" and "no audit head audit.jsonl.head" in err
    assert "--allow-missing-head" in err
    code, out, _ = _cli(capsys, str(path), "--allow-missing-head")
    assert code == 0 and "no head (truncation not checked)" in out


def test_crash_between_append_and_head_update_is_accepted_and_named(tmp_path: Path, capsys: Cap) -> None:
    path = _log(tmp_path, n=3)
    old_head = head_path(path).read_bytes()
    AuditLog(path).append("round_completed", job="j", round=4)
    head_path(path).write_bytes(old_head)  # as if the process died after the line's fsync
    code, out, _ = _cli(capsys, str(path))
    assert code == 0
    assert "4 records" in out and "head one line behind (crash between append and head update)" in out
    # two lines past the head is not a crash this order of writes can leave
    AuditLog(path).append("round_completed", job="j", round=5)
    head_path(path).write_bytes(old_head)
    code, _, err = _cli(capsys, str(path))
    assert code == 1 and "2 lines appended with no head update" in err


def test_one_line_ahead_that_does_not_chain_is_refused(tmp_path: Path, capsys: Cap) -> None:
    path = _log(tmp_path, n=3)
    lines = _lines(path)
    rec = json.loads(lines[-1])
    rec["seq"], rec["round"] = 4, 4  # a fourth line that claims to follow but does not chain
    path.write_text("".join(lines) + json.dumps(rec) + "\n")
    code, _, err = _cli(capsys, str(path))
    assert code == 1 and "audit.jsonl:4: chain broken" in err


def test_reopen_after_crash_resigns_and_reopen_after_truncation_refuses(tmp_path: Path, node: Node) -> None:
    key = node[0]
    path = _log(tmp_path, key, n=3)
    old_head = head_path(path).read_bytes()
    AuditLog(path, key=key, node="site-1").append("round_completed", job="j", round=4)
    head_path(path).write_bytes(old_head)
    AuditLog(path, key=key, node="site-1")  # restart: the head catches up with the durable line
    report = verify_audit(path)
    assert report.records == 4 and not report.behind and report.head == "signed-unchecked"
    path.write_text("".join(_lines(path)[:2]))
    with pytest.raises(IntegrityError, match="disagrees with its head"):
        AuditLog(path, key=key, node="site-1")  # a restart never re-anchors a truncated log
    assert json.loads(head_path(path).read_text())["seq"] == 4


def test_old_log_without_head_gets_one_and_says_so_in_the_log(tmp_path: Path) -> None:
    path = _log(tmp_path, n=2)
    head_path(path).unlink()
    AuditLog(path)
    last = json.loads(_lines(path)[-1])
    assert last["event"] == "audit_head_created" and last["since_seq"] == 2
    assert verify_audit(path).records == 3


def test_kit_option_checks_against_the_kits_cert(tmp_path: Path, workspace: Path, capsys: Cap) -> None:
    from secagg.provision.kit import load_kit

    kit = load_kit(workspace / "site-1")
    path = tmp_path / "audit.jsonl"
    AuditLog(path, key=kit.private_key, node=kit.name).append("job_admitted", job="j")
    code, out, _ = _cli(capsys, str(path), "--kit", str(workspace / "site-1"))
    assert code == 0 and "head signed by site-1, signature verified" in out
    code, _, err = _cli(capsys, str(path), "--kit", str(workspace / "site-2"))
    assert code == 1 and "signed by another key" in err


def test_usage_errors_exit_2(tmp_path: Path, capsys: Cap) -> None:
    path = _log(tmp_path, n=1)
    with pytest.raises(SystemExit) as exc:
        main(["audit", "verify", str(path), "--cert", "a", "--kit", "b"])
    assert exc.value.code == 2
    capsys.readouterr()


def test_aggregator_signs_its_head_with_its_kit_key(tmp_path: Path, workspace: Path) -> None:
    """The call site passes the kit's key: the aggregator's own log verifies against its certificate."""
    from secagg.aggregator.federation import Federation
    from secagg.provision.kit import load_kit

    kit = load_kit(workspace / "aggregator")
    fed = Federation(kit, tmp_path / "state")
    fed.audit.append("aggregator_started")
    report = verify_audit(fed.audit.path, cert=kit.cert)
    assert report.head == "signed" and report.node == kit.name and report.records == 1


def test_a_field_named_like_a_chain_key_is_refused(tmp_path: Path) -> None:
    """``seq=`` as an event field once replaced the record's own sequence number and broke the log."""
    log = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(TypeError, match="reserved"):
        log.append("site_audit_head", seq=5)
    log.append("job_done", job="j")
    assert verify_audit(tmp_path / "audit.jsonl").records == 1


def test_a_head_temp_left_by_a_crash_is_removed_on_open(tmp_path: Path) -> None:
    path = _log(tmp_path, n=1)
    stale = tmp_path / ".audit.jsonl.head.abc123.tmp"
    stale.write_text("{")  # kill -9 between the temp write and the rename
    AuditLog(path)
    assert not stale.exists() and verify_audit(path).records == 1


@pytest.mark.parametrize(
    ("make", "code", "words"),
    [
        (lambda p: __import__("os").mkfifo(p), "not_a_file", "is a named pipe (FIFO), not an audit head"),
        (lambda p: p.symlink_to("/dev/zero"), "not_a_file", "is a device, not an audit head"),
        (lambda p: p.mkdir(), "not_a_file", "is a directory, not an audit head"),
    ],
)
def test_a_head_that_is_no_file_is_named_not_read(
    tmp_path: Path, capsys: Cap, make: Callable[[Path], None], code: str, words: str
) -> None:
    """A FIFO head hung ``audit verify`` forever; /dev/zero as the head grew to gigabytes (audit 18, G2)."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"")
    make(head_path(path))
    rc, _, err = within(5, lambda: _cli(capsys, str(path)))
    assert rc == 1 and err == f"secagg: {code}: {head_path(path)}: {words}\n"


def test_an_oversized_head_is_refused_without_reading_it(tmp_path: Path, capsys: Cap) -> None:
    """A 300 MB head was read whole (430 MB) before "too large to be one"; now its size refuses it."""
    import tracemalloc

    path = _log(tmp_path, n=1)
    with head_path(path).open("r+b") as fh:
        fh.truncate(64 << 20)  # sparse: nothing on disk
    rc, _, err = _cli(capsys, str(path))
    assert rc == 1 and err == f"secagg: integrity: {head_path(path)}: audit head is too large to be one\n"
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError, match="too large to be one"):
            verify_audit(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_start_up_refuses_a_head_or_log_that_is_no_file(tmp_path: Path) -> None:
    """The aggregator and agent open their own log (``AuditLog``) at start: a FIFO head or log must
    refuse by kind, not hang the start (or, for the log, block the first append)."""
    import os

    from secagg.userfile import UserFileError

    path = _log(tmp_path, n=1)
    head_path(path).unlink()
    os.mkfifo(head_path(path))
    with pytest.raises(UserFileError, match="is a named pipe \\(FIFO\\), not an audit head") as info:
        within(5, lambda: AuditLog(path))
    assert info.value.code == "not_a_file"
    fifo_log = tmp_path / "other.jsonl"
    os.mkfifo(fifo_log)
    with pytest.raises(UserFileError, match="is a named pipe \\(FIFO\\), not an audit log") as info:
        within(5, lambda: AuditLog(fifo_log))
    assert info.value.code == "not_a_file"


@pytest.mark.parametrize(
    "extra",
    ['"x":NaN', '"x":1e400', '"x":1152921504606846976', '"x":' + "[" * 100_000 + "]" * 100_000],
    ids=["nan", "inf", "bigint", "deep"],
)
def test_start_up_refuses_a_tampered_last_line(tmp_path: Path, extra: str) -> None:
    """Reopening a log whose last line RFC 8785 cannot encode (or json cannot nest) is an integrity
    failure naming the line, not a traceback that ends the start."""
    path = _log(tmp_path, n=2)
    rec = json.loads(_lines(path)[-1])
    line = json.dumps(rec, sort_keys=True, separators=(",", ":"))[:-1] + "," + extra + "}\n"
    path.write_text("".join(_lines(path)[:-1]) + line)
    with pytest.raises(IntegrityError) as info:
        AuditLog(path)
    assert str(info.value) == f"{path}:2: last line is not an audit record; run secagg audit verify"


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: __import__("os").mkfifo(p), "is a named pipe (FIFO)"),
        (lambda p: p.symlink_to("/dev/null"), "is a device"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
    ids=["fifo", "device", "dir"],
)
def test_a_cert_that_is_no_file_is_named_for_what_it_is(
    tmp_path: Path, capsys: Cap, make: Callable[[Path], None], words: str
) -> None:
    """``--cert /dev/null`` said "no such certificate file" (audit 18, G3): name the kind."""
    path = _log(tmp_path, n=1)
    cert = tmp_path / "cert.pem"
    make(cert)
    rc, _, err = within(5, lambda: _cli(capsys, str(path), "--cert", str(cert)))
    assert rc == 1 and err == f"secagg: not_a_file: {cert}: {words}, not a certificate file\n"
    rc, _, err = _cli(capsys, str(path), "--cert", str(tmp_path / "none.pem"))
    assert rc == 1 and err == f"secagg: file_missing: {tmp_path / 'none.pem'}: no such certificate file\n"
