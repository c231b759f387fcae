"""Append-only, hash-chained JSONL audit log, anchored by a signed head kept beside it.

Each line is a JSON object with ``seq``, ``time``, ``event``, the event's fields, ``prev`` (the previous
line's hash) and ``hash`` = SHA-256 over the canonical JSON (RFC 8785) of the line without ``hash``.
Editing, removing or reordering a line breaks the chain at that line, which ``verify_log`` names.
Lines are fsynced: an auditor must be able to rely on what a crash left behind.

The chain alone cannot tell a log cut short (last lines removed, the file emptied, or the chain
recomputed after deleting lines) from a shorter honest one. So every append also replaces the
**head**, ``<log>.head`` (``audit.jsonl.head``): one JSON object with the last ``seq`` and ``hash``, the
record ``count``, the ``node`` that writes the log and its ``key_id`` (SHA-256 of the public key, DER
SPKI), and an ECDSA P-384 / SHA-384 ``signature`` by the node's certificate key over a fixed context
string and the RFC 8785 JSON of the other fields. A log without a key (tests, tools) still gets a head,
with ``signature`` null, and ``audit verify`` says it is unsigned.

Order of writes, and what a crash leaves: (1) the line is appended and fsynced, (2) the head is written
to a temporary file in the same folder, fsynced, renamed over the old head, and the folder fsynced. A
crash between (1) and (2) leaves the log exactly one line ahead of its head. ``verify_audit`` accepts
that case only when the extra line chains onto the line the head names (the chain check guarantees it)
and reports it as "head one line behind (crash between append and head update)"; anything else (the
log shorter than its head, another hash at the head's position, two or more lines past the head) is
refused. The limit this implies, by design: whoever can write the file can append one chained line
that no head vouches for, and the report says so. Reopening the log after such a crash re-signs the
head over the extra line; reopening a log that disagrees with its head in any other way refuses, so a
restart never re-anchors a truncated log.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from secagg import userfile
from secagg.errors import IntegrityError, StorageFull, is_storage_full
from secagg.events import Event
from secagg.reasons import Reason

GENESIS = "0" * 64
#: domain separation: a node's signature over a head can never be replayed as anything else it signs
HEAD_CONTEXT = b"secagg audit head v1\n"
HEAD_ALGORITHM = "ecdsa-p384-sha384"
HEAD_SUFFIX = ".head"
#: a head is a few hundred bytes; refuse to parse anything much larger
_MAX_HEAD_BYTES = 64 * 1024
#: the longest line a reader accepts. The largest records the project writes carry a list of site
#: names (HE recipients, a job's sites): at most ``MAX_SITES`` (100,000) names of at most 63 characters,
#: under 7 MB as JSON; twice that and more is no record of ours, and refusing it bounds a reader's memory
MAX_RECORD_BYTES = 16 << 20
#: keys every record has; an event's fields may not use them
_RESERVED = frozenset({"seq", "time", "event", "prev", "hash"})


def _digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(rfc8785.dumps(record)).hexdigest()


def head_path(log: Path) -> Path:
    """Where the head of ``log`` lives: beside it, ``<name>.head``."""
    return log.with_name(log.name + HEAD_SUFFIX)


def key_id(key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 (hex) of a public key's DER SubjectPublicKeyInfo: names the key that signed a head."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _head_message(body: dict[str, Any]) -> bytes:
    return HEAD_CONTEXT + rfc8785.dumps(body)


def make_head(
    seq: int, last_hash: str, *, node: str | None, key: ec.EllipticCurvePrivateKey | None
) -> dict[str, Any]:
    """The head document for a log whose last record is ``seq`` / ``last_hash``; signed when ``key``."""
    body: dict[str, Any] = {
        "version": 1,
        "seq": seq,
        "hash": last_hash,
        "count": seq,
        "node": node,
        "key_id": key_id(key.public_key()) if key is not None else None,
        "algorithm": HEAD_ALGORITHM if key is not None else None,
    }
    sig = key.sign(_head_message(body), ec.ECDSA(hashes.SHA384())) if key is not None else None
    return {**body, "signature": base64.b64encode(sig).decode() if sig is not None else None}


def _write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename over ``path``, fsync the folder; no temp left behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.write(fd, data)
            os.fchmod(fd, 0o600)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # not every platform/filesystem lets a folder be fsynced
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def read_head(path: Path) -> dict[str, Any]:
    """Parse a head file; raise :class:`IntegrityError` naming what is wrong with it.

    A FIFO, directory or device in its place is refused by kind (a FIFO would hang the read,
    ``/dev/zero`` fill memory), and never more than the limit plus one byte is read."""
    try:
        raw = userfile.read_file(path, _MAX_HEAD_BYTES, "audit head")
    except userfile.UserFileError as exc:
        if exc.code == Reason.FILE_TOO_LARGE:
            raise IntegrityError(f"{path}: audit head is too large to be one") from None
        raise
    return parse_head(raw, str(path))


def parse_head(raw: bytes, where: str) -> dict[str, Any]:
    """A head document from bytes (a file, or what a site relayed); ``where`` prefixes any error."""
    if len(raw) > _MAX_HEAD_BYTES:
        raise IntegrityError(f"{where}: audit head is too large to be one")
    try:
        head = json.loads(raw)
    except (ValueError, RecursionError):
        raise IntegrityError(f"{where}: audit head is not JSON") from None
    if not isinstance(head, dict):
        raise IntegrityError(f"{where}: audit head is not a JSON object")
    seq, count, h = head.get("seq"), head.get("count"), head.get("hash")
    if head.get("version") != 1:
        raise IntegrityError(f"{where}: audit head version {head.get('version')!r} is not 1")
    if type(seq) is not int or seq < 0 or count != seq or not isinstance(h, str):
        raise IntegrityError(f"{where}: audit head has no valid seq, count and hash")
    return head


@dataclass
class _Walk:
    """What a walk of the chain found: the record count and the hash of every record by seq."""

    count: int = 0
    last: str = GENESIS
    #: the hash of the line before the last (GENESIS when there is at most one line)
    before_last: str = GENESIS


@dataclass
class AuditReport:
    """Outcome of :func:`verify_audit`: the chain is intact and agrees with its head (or, where
    ``head`` is ``"missing"``, there was none and the caller allowed that)."""

    records: int
    #: ``"signed"`` (signature verified), ``"signed-unchecked"`` (signed, no certificate given),
    #: ``"unsigned"``, or ``"missing"``
    head: str
    node: str | None = None
    #: ``True`` when the log is exactly one chained line past its head (a crash between append and head)
    behind: bool = False
    notes: list[str] = field(default_factory=list)


class AuditLog:
    """``key`` (the node's certificate key) and ``node`` (its name) sign the head; without a key the
    head is written unsigned."""

    def __init__(
        self, path: Path, *, key: ec.EllipticCurvePrivateKey | None = None, node: str | None = None
    ) -> None:
        self.path = path
        self.head_path = head_path(path)
        self._key, self._node = key, node
        self._lock = threading.Lock()
        #: called with each record after it is durable (metrics, live log streaming); must not raise
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{self.head_path.name}.*.tmp"):  # a crash while writing the head
            with contextlib.suppress(OSError):
                stale.unlink()
        self._seq, self._prev, before_last = self._tail()
        self._open_head(before_last)

    def _tail(self) -> tuple[int, str, str]:
        """The last record's seq, hash and prev. The log is read like ``audit verify`` reads it (a
        regular file only, each line bounded); a last line that is no record refuses the start."""
        if not self.path.exists():
            return 0, GENESIS, GENESIS
        last = None
        for lineno, raw in _lines(self.path):
            if raw.strip():
                last = lineno, raw
        if last is None:
            return 0, GENESIS, GENESIS
        where = f"{self.path}:{last[0]}"
        try:
            record, claimed, _ = _record(last[1], where)
        except IntegrityError:
            record, claimed = {}, None
        seq, prev = record.get("seq"), record.get("prev")
        if type(seq) is not int or not isinstance(claimed, str) or not isinstance(prev, str):
            raise IntegrityError(f"{where}: last line is not an audit record; run secagg audit verify")
        return seq, claimed, prev

    def _open_head(self, before_last: str) -> None:
        """Reconcile the head with the log found on disk, before anything is appended.

        Agreeing head: nothing to do. Head one line behind, naming the line before the last: a crash
        between append and head update; re-sign the head over the last line. No head over a non-empty
        log (a log written before heads existed, or a deleted head): write one and record in the log
        itself where the head began, so an auditor sees it. Anything else refuses: re-signing would
        erase the evidence of a truncated or rewritten log."""
        if not self.head_path.exists():
            if self._seq == 0:
                return
            self._write_head()
            self.append(Event.AUDIT_HEAD_CREATED, since_seq=self._seq)
            return
        head = read_head(self.head_path)
        if head["seq"] == self._seq and _same(head["hash"], self._prev):
            return
        if head["seq"] == self._seq - 1 and _same(head["hash"], before_last):
            self._write_head()
            return
        raise IntegrityError(
            f"{self.path}: log ({self._seq} records) disagrees with its head ({head['seq']} records); "
            "it was truncated or rewritten: run secagg audit verify"
        )

    def head(self) -> dict[str, Any]:
        """The current head (what ``<log>.head`` holds): what a site relays to the aggregator at the
        end of a job, so that the aggregator's own log anchors how far the site's log reached."""
        with self._lock:
            return make_head(self._seq, self._prev, node=self._node, key=self._key)

    def _write_head(self) -> None:
        head = make_head(self._seq, self._prev, node=self._node, key=self._key)
        _write_atomic(self.head_path, json.dumps(head, sort_keys=True, indent=1).encode() + b"\n")

    def _append_line(self, data: bytes, record: dict[str, Any]) -> None:
        """Write one line and the head, all or nothing: if either cannot be written (a full disk), the
        log is cut back to where it was, so it never holds a torn line or runs ahead of its head by
        more than the one line a crash can leave. Raises ``StorageFull`` for want of space."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
                seq, prev = self._seq, self._prev
                self._seq, self._prev = record["seq"], record["hash"]
                try:
                    self._write_head()
                except BaseException:
                    self._seq, self._prev = seq, prev
                    raise
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                    os.fsync(fd)
                if is_storage_full(exc):
                    raise StorageFull(f"{self.path}: the disk is full; nothing was logged") from None
                raise
        finally:
            os.close(fd)

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Invariant 6: every admission decision, refusal and round is in an append-only, hash-chained
        audit log. Each line carries the SHA-256 of the previous one (RFC 8785 canonical JSON) and is
        fsynced before this returns, so a record the caller acted on survives a crash; then the signed
        head is replaced (atomically), so a log cut short afterwards no longer matches it."""
        clash = _RESERVED & fields.keys()
        if clash:  # a field named like the chain's own would silently replace it and break the log
            raise TypeError(f"audit field names {sorted(clash)} are reserved")
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
            self._append_line(line.encode(), record)
        for listener in list(self.listeners):
            with contextlib.suppress(Exception):  # observers must never break the audit trail
                listener(record)
        return record


def _same(a: object, b: str) -> bool:
    return isinstance(a, str) and hmac.compare_digest(a.encode(), b.encode())


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """The log's lines with their numbers, each read bounded: a line over :data:`MAX_RECORD_BYTES`
    is refused naming it, so a hostile single-line log cannot make the reader hold it whole."""
    with userfile.open_file(path, "audit log") as fh:
        lineno = 0
        while raw := fh.readline(MAX_RECORD_BYTES + 1):
            lineno += 1
            if len(raw) > MAX_RECORD_BYTES and not raw.endswith(b"\n"):
                raise IntegrityError(
                    f"{path}:{lineno}: not an audit record (line longer than {MAX_RECORD_BYTES} bytes)"
                )
            yield lineno, raw


def _record(raw: bytes, where: str) -> tuple[dict[str, Any], str, str]:
    """A line as (record without ``hash``, its claimed hash, the hash recomputed); anything that is
    not a JSON object with a ``hash``, or that RFC 8785 cannot encode (NaN, 1e400, an integer past
    2^53, nesting too deep to walk), is not a record the project wrote: an integrity failure."""
    try:
        record = json.loads(raw)
        claimed = record.pop("hash")
        return record, claimed, _digest(record)
    except (ValueError, KeyError, AttributeError, TypeError, RecursionError, rfc8785.CanonicalizationError):
        raise IntegrityError(f"{where}: not an audit record") from None


def _walk(path: Path) -> _Walk:
    """Check the whole chain; raise naming the first bad line."""
    w = _Walk()
    for lineno, raw in _lines(path):
        if not raw.strip():
            raise IntegrityError(f"{path}:{lineno}: empty line inside the log")
        record, claimed, digest = _record(raw, f"{path}:{lineno}")
        if record.get("prev") != w.last:
            raise IntegrityError(f"{path}:{lineno}: chain broken (line removed, inserted or reordered)")
        if record.get("seq") != w.count + 1:
            raise IntegrityError(f"{path}:{lineno}: sequence number {record.get('seq')} != {w.count + 1}")
        if digest != claimed:
            raise IntegrityError(f"{path}:{lineno}: record hash mismatch (line edited)")
        w.before_last, w.last, w.count = w.last, claimed, w.count + 1
    return w


def verify_log(path: Path) -> int:
    """Check the whole chain; return the number of records or raise naming the first bad line.

    The chain alone does not notice lines removed at the end: :func:`verify_audit` checks the head too."""
    return _walk(path).count


def check_head_signature(head: dict[str, Any], cert: x509.Certificate, *, where: str = "audit head") -> None:
    """Raise :class:`IntegrityError` unless ``head`` is signed by ``cert``'s key for the node ``cert``
    names (its CN). ``where`` prefixes the message (the head file, or the relaying site)."""
    if head.get("signature") is None:
        raise IntegrityError(f"{where}: head is unsigned; it cannot be checked against the certificate")
    _check_signature(head, where, cert)


def _check_signature(head: dict[str, Any], hpath: Path | str, cert: x509.Certificate) -> None:
    pub = cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise IntegrityError(f"{hpath}: the certificate's key is not an EC key")
    if head.get("algorithm") != HEAD_ALGORITHM:
        raise IntegrityError(f"{hpath}: unknown head signature algorithm {head.get('algorithm')!r}")
    if not _same(head.get("key_id"), key_id(pub)):
        raise IntegrityError(f"{hpath}: head was signed by another key than the certificate's")
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = cns[0].value if len(cns) == 1 else None
    cn = value.decode() if isinstance(value, bytes) else value
    if cn is not None and head.get("node") != cn:
        raise IntegrityError(f"{hpath}: head names node {head.get('node')!r}, the certificate is {cn!r}")
    try:
        sig = base64.b64decode(str(head["signature"]), validate=True)
    except (binascii.Error, ValueError):
        raise IntegrityError(f"{hpath}: head signature is not base64") from None
    body = {k: v for k, v in head.items() if k != "signature"}
    try:
        pub.verify(sig, _head_message(body), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise IntegrityError(
            f"{hpath}: head signature does not verify against the certificate of {cn or '?'}"
        ) from None


def verify_audit(
    path: Path, *, cert: x509.Certificate | None = None, allow_missing_head: bool = False
) -> AuditReport:
    """Check the chain of ``path`` and that it agrees with its head; raise :class:`IntegrityError`
    naming the first problem (see the module docstring for the one case accepted after a crash).

    With ``cert``, the head must be signed by that certificate's key for the node it names; without,
    a signature is reported as not checked."""
    hpath = head_path(path)
    if not path.is_file() and hpath.is_file():
        raise IntegrityError(f"{path}: audit log is missing but its head {hpath.name} exists (log deleted)")
    walk = _walk(path)
    if not hpath.exists():
        if allow_missing_head:
            return AuditReport(walk.count, "missing", notes=["no head: truncation not checked"])
        raise IntegrityError(
            f"{path}: no audit head {hpath.name}: lines removed at the end cannot be detected "
            "(--allow-missing-head for a log written before heads)"
        )
    head = read_head(hpath)
    seq = head["seq"]
    report = AuditReport(walk.count, "unsigned", node=head.get("node"))
    if seq == walk.count:
        if not _same(head["hash"], walk.last):
            raise IntegrityError(f"{path}: head hash mismatch at record {seq}: the chain was rewritten")
    elif seq == walk.count - 1:
        if not _same(head["hash"], walk.before_last):
            raise IntegrityError(f"{path}: head hash mismatch at record {seq}: the chain was rewritten")
        report.behind = True
        report.notes.append("head one line behind (crash between append and head update)")
    elif walk.count == 0:
        raise IntegrityError(f"{path}: log is empty but its head records {seq} records: the file was emptied")
    elif seq > walk.count:
        raise IntegrityError(
            f"{path}: truncated: {walk.count} records, its head records {seq} "
            f"({seq - walk.count} missing at the end)"
        )
    else:
        raise IntegrityError(
            f"{path}: {walk.count} records but its head records {seq}: "
            f"{walk.count - seq} lines appended with no head update"
        )
    signed = head.get("signature") is not None
    if cert is not None:
        check_head_signature(head, cert, where=str(hpath))
        report.head = "signed"
    elif signed:
        report.head = "signed-unchecked"
        report.notes.append("head signature not checked (give --cert or --kit)")
    else:
        report.notes.append("head is unsigned (the log was written without a key)")
    return report
