"""Append-only, hash-chained JSONL audit log.

Each line is a JSON object with ``seq``, ``time``, ``event``, the event's fields, ``prev`` (the previous
line's hash) and ``hash`` = SHA-256 over the canonical JSON (RFC 8785) of the line without ``hash``.
Editing, removing or reordering a line breaks the chain at that line, which ``verify_log`` names.
Lines are fsynced: an auditor must be able to rely on what a crash left behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rfc8785

from secagg.errors import IntegrityError

GENESIS = "0" * 64


def _digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(rfc8785.dumps(record)).hexdigest()


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        #: called with each record after it is durable (metrics, live log streaming); must not raise
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        self._seq, self._prev = self._tail()

    def _tail(self) -> tuple[int, str]:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0, GENESIS
        last = None
        with self.path.open("rb") as fh:
            for line in fh:
                if line.strip():
                    last = line
        if last is None:
            return 0, GENESIS
        try:
            record = json.loads(last)
            return int(record["seq"]), str(record["hash"])
        except (ValueError, KeyError) as exc:
            raise IntegrityError(
                f"{self.path}: last line is not an audit record ({exc}); run audit verify"
            ) from None

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Invariant 6: every admission decision, refusal and round is in an append-only, hash-chained
        audit log. Each line carries the SHA-256 of the previous one (RFC 8785 canonical JSON) and is
        fsynced before this returns, so a record the caller acted on survives a crash."""
        with self._lock:
            record: dict[str, Any] = {
                "seq": self._seq + 1,
                "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                "event": event,
                **{k: v for k, v in fields.items() if v is not None},
                "prev": self._prev,
            }
            record["hash"] = _digest(record)
            line = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self._seq, self._prev = record["seq"], record["hash"]
        for listener in list(self.listeners):
            with contextlib.suppress(Exception):  # observers must never break the audit trail
                listener(record)
        return record


def verify_log(path: Path) -> int:
    """Check the whole chain; return the number of records or raise naming the first bad line."""
    prev, seq = GENESIS, 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                raise IntegrityError(f"{path}:{lineno}: empty line inside the log")
            try:
                record = json.loads(raw)
                claimed = record.pop("hash")
            except (ValueError, KeyError, AttributeError):
                raise IntegrityError(f"{path}:{lineno}: not an audit record") from None
            if record.get("prev") != prev:
                raise IntegrityError(f"{path}:{lineno}: chain broken (line removed, inserted or reordered)")
            if record.get("seq") != seq + 1:
                raise IntegrityError(f"{path}:{lineno}: sequence number {record.get('seq')} != {seq + 1}")
            if _digest(record) != claimed:
                raise IntegrityError(f"{path}:{lineno}: record hash mismatch (line edited)")
            prev, seq = claimed, seq + 1
    return seq
