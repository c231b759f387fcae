"""The aggregator's state disk full mid-round (issue #18): a clear error, nothing half-written (the
audit log keeps no torn line, the round no half state), and the job goes on once space returns."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from secagg.aggregator.federation import Federation
from secagg.aggregator.rounds import Phase
from secagg.auditlog import AuditLog, verify_audit
from secagg.bundle import to_safetensors
from secagg.errors import StorageFull, is_storage_full
from secagg.provision.kit import load_kit
from tests.aggregator.conftest import chunks, header, open_uploads, update, write_job

GOOD = to_safetensors(update(0.1))


def _full(*_: Any, **__: Any) -> Any:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_leaves_no_torn_audit_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append("first")
    before = log.path.read_bytes()
    real_write = os.write

    def half_then_full(fd: int, data: Any) -> int:  # the line gets in halfway, then the disk is full
        if len(data) > 20:
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(StorageFull) as err:
        log.append("second")
    assert err.value.code == "storage_full"
    monkeypatch.undo()
    assert log.path.read_bytes() == before  # cut back: no torn line
    # the head cannot be replaced: the line that went in is cut back too, the log agrees with its head
    from secagg import auditlog

    monkeypatch.setattr(auditlog, "_write_atomic", _full)
    with pytest.raises(StorageFull):
        log.append("third")
    monkeypatch.undo()
    assert log.path.read_bytes() == before
    log.append("after")  # space is back
    assert verify_audit(log.path).records == 2
    assert AuditLog(tmp_path / "audit.jsonl").append("reopened")["seq"] == 3


def test_the_round_waits_for_space_and_then_completes(tmp_path: Path, workspace: Path) -> None:
    fed = Federation(load_kit(workspace / "aggregator"), tmp_path / "state")
    job_id = fed.submit(write_job(tmp_path / "job", rounds=1), "tester")
    cur = open_uploads(fed)
    assert fed.mode is not None
    real_combine = fed.mode.combine
    fed.mode.combine = _full  # type: ignore[method-assign]
    for site in ("site-1", "site-2"):
        fed.accept_upload(site, header(fed, GOOD), chunks(GOOD))
    with pytest.raises(StorageFull):
        fed.step()  # the combination cannot be written: a pause, not a failure
    job = fed.job
    assert job is not None and job.state == "running" and job.current is cur
    assert cur.phase == Phase.UPLOAD and set(cur.uploads) == {"site-1", "site-2"}
    assert fed.store.job(job_id).state == "running"  # type: ignore[union-attr]
    fed.mode.combine = real_combine  # type: ignore[method-assign]
    fed.step()  # space is back
    assert job.completed == 1 and [r.round for r in fed.store.rounds(job_id)] == [1]
    fed.store.close()


def test_a_ready_or_upload_that_cannot_be_logged_is_not_counted(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = Federation(load_kit(workspace / "aggregator"), tmp_path / "state")
    fed.submit(write_job(tmp_path / "job", rounds=1), "tester")
    cur = open_uploads(fed)
    real_append = fed.audit.append

    def full_for_uploads(event: str, **fields: Any) -> Any:
        if event == "upload_accepted":
            raise StorageFull("the disk is full")
        return real_append(event, **fields)

    monkeypatch.setattr(fed.audit, "append", full_for_uploads)
    with pytest.raises(StorageFull):
        fed.accept_upload("site-1", header(fed, GOOD), chunks(GOOD))
    assert cur.uploads == {}
    assert not [p for p in (tmp_path / "state" / "spool").rglob("*") if p.is_file()]
    monkeypatch.undo()
    fed.accept_upload("site-1", header(fed, GOOD), chunks(GOOD))  # the site's retry is accepted
    assert set(cur.uploads) == {"site-1"}
    fed.store.close()


def test_storage_full_is_recognised_in_each_form() -> None:
    import sqlite3

    assert is_storage_full(OSError(errno.ENOSPC, "x"))
    assert is_storage_full(sqlite3.OperationalError("database or disk is full"))
    assert is_storage_full(StorageFull("x"))
    assert not is_storage_full(OSError(errno.EACCES, "x"))


def test_a_refusal_that_cannot_be_audited_for_a_full_disk_is_one_line_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging
    from types import SimpleNamespace

    from secagg.aggregator.service import FederationService
    from secagg.errors import UpdateRejected

    class Aborted(Exception):
        pass

    class Context:
        trailing: Any = None

        def set_trailing_metadata(self, md: Any) -> None:
            self.trailing = md

        def abort(self, status: Any, details: str) -> None:
            raise Aborted(status, details)

    fed = SimpleNamespace(kit=None, audit=SimpleNamespace(append=_full))
    svc = FederationService(fed)  # type: ignore[arg-type]
    ctx = Context()
    with caplog.at_level(logging.INFO, logger="secagg.aggregator"), pytest.raises(Aborted) as err:
        svc._refuse(ctx, "site-1", UpdateRejected("round 2 is not accepting uploads now", code="late"))  # type: ignore[arg-type]
    assert "late" in str(err.value) and ctx.trailing  # the site still gets its specific refusal
    lines = [r for r in caplog.records if r.name.startswith("secagg.aggregator")]
    assert [(r.levelno, r.exc_info) for r in lines] == [(logging.WARNING, None)]
    assert "the state disk is full" in lines[0].getMessage()
