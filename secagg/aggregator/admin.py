"""The admin console's server side: who may do what to which job, decided from the mTLS certificate.

Role (OU) and org (O) come from the admin's verified certificate, never from a request field; a job
belongs to the admin who submitted it (its org is that admin's org), as recorded in the store's
``submitter`` column. The project's authorization table (copied into the aggregator kit at
provisioning) says, per role and action, whether the admin may act on ``any`` job, their ``org``'s
jobs, only their ``own``, or ``none``. Every command, allowed or refused, leaves an audit line naming
the admin, so a refusal cannot go unnoticed and an allowed abort cannot go unattributed.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from secagg.aggregator.evaluation import download_files
from secagg.aggregator.hub import FederationHub
from secagg.aggregator.modes import mode_class
from secagg.aggregator.rounds import JobState
from secagg.aggregator.rpc import MAX_NAME, abort, caller, seconds_field
from secagg.aggregator.store import JobRow
from secagg.errors import ConfigError, IdentityError, PolicyRefusal, SecaggError, UsageError
from secagg.events import TERMINAL, Event
from secagg.metrics import CONNECTED_WITHIN_S
from secagg.provision.identity import Identity
from secagg.provision.project import Authorization, RolePermissions
from secagg.reasons import Reason
from secagg.transport.chunks import copy_payload, encode_stream, read_header
from secagg.transport.generated import secagg_pb2 as pb

#: ``logs --follow`` is bounded so that a forgotten console cannot hold a server thread for ever
MAX_FOLLOW_S = 600.0
MAX_PACKAGE_BYTES = 256 * 1024 * 1024
_PIECE = 1 << 22
_TERMINAL_EVENTS = TERMINAL
#: refusals by the authorization table (audited as ``admin_refused``; other failures ``admin_failed``)
_REFUSALS = frozenset({Reason.FORBIDDEN, Reason.NOT_ADMIN})
#: what an admin hears when no job is named and the current one is missing or not theirs to see
NO_CURRENT_JOB = "no current job that you may see"
_SUBMITTER = re.compile(r"^(?P<name>\S+) \((?P<role>\S+) of (?P<org>.*)\)$")


@dataclass(frozen=True)
class JobOwner:
    """Who a job belongs to, for scoping: the submitting admin's name and org."""

    name: str
    org: str


def describe(ident: Identity) -> str:
    """The ``submitter`` text stored with a job; same shape as ``SignerInfo.describe``."""
    return f"{ident.name} ({ident.role} of {ident.org})"


def job_owner(submitter: str) -> JobOwner:
    """Parse a stored ``submitter``; a sigstore signer has no project org, so only ``any`` scope reaches
    its jobs."""
    m = _SUBMITTER.match(submitter)
    if m is None:
        return JobOwner(name=submitter, org="")
    return JobOwner(name=m["name"], org=m["org"])


def permissions(table: Authorization, ident: Identity) -> RolePermissions:
    perms = table.for_role(ident.role)
    if perms is None:
        raise PolicyRefusal(
            f"{ident.name} has role {ident.role!r}, which is not an admin role", code=Reason.NOT_ADMIN
        )
    return perms


def in_scope(scope: str, ident: Identity, owner: JobOwner | None) -> bool:
    """Pure decision: may an admin with this ``scope`` act on a job of ``owner`` (None: no job)?"""
    if scope == "none":
        return False
    if scope == "any" or owner is None:
        return True
    if scope == "org":
        return bool(owner.org) and owner.org == ident.org
    return scope == "own" and owner.name == ident.name


def authorize(
    table: Authorization, ident: Identity, action: str, owner: JobOwner | None, job_id: str = ""
) -> None:
    """Raise :class:`PolicyRefusal` (code ``forbidden``) unless the table lets ``ident`` do ``action``."""
    scope: str = getattr(permissions(table, ident), action)
    if in_scope(scope, ident, owner):
        return
    who = describe(ident)
    if scope == "none":
        raise PolicyRefusal(f"{who} may not {action} (role {ident.role})", code=Reason.FORBIDDEN)
    assert owner is not None
    limit = f"jobs of org {ident.org}" if scope == "org" else "jobs they submitted"
    raise PolicyRefusal(
        f"{who} may {action} only {limit}; job {job_id} belongs to {owner.name} of org {owner.org or '?'}",
        code=Reason.FORBIDDEN,
    )


Reply = tuple[dict[str, Any], Iterable[bytes]]


class AdminConsole:
    """Serves ``Admin`` and ``AdminUpload`` for a :class:`FederationHub`; one per server."""

    def __init__(self, fed: FederationHub) -> None:
        self.fed = fed
        self.table = Authorization.model_validate(fed.kit.config.authorization or {})
        #: whether the caller is still there; a follower of an idle log must notice a disconnect
        #: between lines, since a cancelled stream only stops the generator at its next yield
        self._active: Callable[[], bool] = lambda: True

    # ------------------------------------------------------------------ gRPC entry points
    def handle(self, request: pb.AdminRequest, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        ident = self._identity(context)
        self._active = context.is_active
        command, job_id = request.command[:MAX_NAME], request.job_id
        try:
            if len(job_id) > MAX_NAME:  # an audit line must not carry whatever a request sends
                job_id = job_id[:MAX_NAME]
                raise UsageError(f"job id longer than {MAX_NAME} characters")
            handler = self._COMMANDS.get(command)
            if handler is None:
                raise UsageError(f"unknown admin command {command!r}")
            header, payload = handler(self, ident, job_id, request.payload)
        except SecaggError as exc:
            self._fail(context, ident, command, job_id, exc)
        except Exception as exc:  # noqa: BLE001 - a specific status and an audit line, never UNKNOWN
            self._fail(context, ident, command, job_id, _internal(exc))
        yield from encode_stream({"command": command, **header}, payload)

    def handle_upload(
        self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext
    ) -> Iterator[pb.Chunk]:
        ident = self._identity(context)
        command = "submit"
        try:
            head = read_header(request_iterator)
            if head.get("command") != "submit":
                command = str(head.get("command"))
                raise UsageError(f"AdminUpload carries only 'submit', not {command!r}")
            job_id = self._submit(ident, request_iterator)
        except SecaggError as exc:
            self._fail(context, ident, command, "", exc)
        except (ValueError, RecursionError) as exc:  # a header that does not parse
            self._fail(
                context, ident, command, "", UsageError(f"submit request does not parse: {str(exc)[:500]}")
            )
        except Exception as exc:  # noqa: BLE001 - a specific status and an audit line, never UNKNOWN
            self._fail(context, ident, command, "", _internal(exc))
        yield from encode_stream({"command": "submit", "job_id": job_id}, [])

    # ------------------------------------------------------------------ identity, audit, errors
    def _identity(self, context: grpc.ServicerContext) -> Identity:
        try:
            ident = caller(context, self.fed.kit)
        except IdentityError as exc:
            self.fed.audit.append(Event.ADMIN_REFUSED, code=exc.code, reason=str(exc))
            abort(context, exc.code, str(exc))
        return ident

    def _audit(self, event: str, ident: Identity, command: str, job_id: str, **fields: Any) -> None:
        self.fed.audit.append(
            event,
            admin=ident.name,
            org=ident.org,
            role=ident.role,
            command=command,
            job=job_id or None,
            **fields,
        )

    def _allow(self, ident: Identity, action: str, owner: JobOwner | None, job_id: str) -> None:
        """Authorize and audit the decision either way."""
        try:
            authorize(self.table, ident, action, owner, job_id)
        except PolicyRefusal as exc:
            self._audit(Event.ADMIN_REFUSED, ident, action, job_id, code=exc.code, reason=str(exc))
            raise _Audited(exc) from None
        self._audit(Event.ADMIN_COMMAND, ident, action, job_id)

    def _fail(
        self, context: grpc.ServicerContext, ident: Identity, command: str, job_id: str, exc: SecaggError
    ) -> None:
        if isinstance(exc, _Audited):
            exc = exc.inner
        else:
            event = Event.ADMIN_REFUSED if exc.code in _REFUSALS else Event.ADMIN_FAILED
            self._audit(event, ident, command, job_id, code=exc.code, reason=str(exc))
        abort(context, exc.code, str(exc))

    def _allowed_job(self, ident: Identity, action: str, job_id: str) -> tuple[str, JobRow]:
        """Resolve ``job_id`` ('' = the current job) to an id and its row, authorized and audited
        (:meth:`_allow`), or answer "no job".

        The role is checked first: a certificate that is no admin role, or whose role may not do
        ``action`` at all, is refused before any lookup, so it cannot learn which job ids exist from
        a ``no_such_job`` answer. A job outside the admin's ``own`` or ``org`` scope then answers
        exactly as a job that does not exist (issue #18's audit, G5: "belongs to alice of org O"
        told a lead of another org that the id was real, and whose it was); the audit log keeps
        the truth, as an ``admin_refused`` line."""
        if getattr(permissions(self.table, ident), action) == "none":
            authorize(self.table, ident, action, None, job_id)
        named = bool(job_id)
        if not named:
            job = self.fed.job
            if job is None:
                raise _no_job(NO_CURRENT_JOB)
            job_id = job.job_id
        hidden = _no_job(f"no job {job_id} that you may see" if named else NO_CURRENT_JOB)
        row = self.fed.store.job(job_id)
        if row is None:
            raise hidden
        try:
            self._allow(ident, action, job_owner(row.submitter), job_id)
        except _Audited:
            raise _Audited(hidden) from None
        return job_id, row

    # ------------------------------------------------------------------ commands
    def _status(self, ident: Identity, job_id: str, _payload: bytes) -> Reply:
        try:
            if job_id or self.fed.job is not None:
                job_id, _ = self._allowed_job(ident, "status", job_id)
            else:
                self._allow(ident, "status", None, "")
        except _Audited as exc:
            if job_id or exc.code != Reason.NO_SUCH_JOB:
                raise
            self._allow(ident, "status", None, "")  # the current job is not theirs: the sites, as with none
        now = time.time()
        beats = dict(self.fed.heartbeats)
        sites = []
        for site in self.fed.sites:
            seen = beats.get(site)
            sites.append(
                {
                    "site": site,
                    "last_heartbeat": _iso(seen) if seen else None,
                    "seconds_ago": round(now - seen, 1) if seen else None,
                    "connected": seen is not None and now - seen <= CONNECTED_WITHIN_S,
                }
            )
        info = self._job_info(job_id) if job_id else None
        declined = self.fed.store.declined(job_id) if job_id else []
        for d in declined:
            d["time"] = _iso(d["time"])
        return {"job": info, "sites": sites, "declined": declined}, []

    def _job_info(self, job_id: str) -> dict[str, Any]:
        row = self.fed.store.job(job_id)
        assert row is not None
        spec = json.loads(row.spec_json)
        owner = job_owner(row.submitter)
        info: dict[str, Any] = {
            "job_id": job_id,
            "name": row.name,
            "state": row.state,
            "mode": spec.get("mode"),
            "rounds": spec.get("rounds"),
            "completed": len(self.fed.store.rounds(job_id)),
            "submitter": row.submitter,
            "org": owner.org,
            "reason": row.reason,
        }
        job = self.fed.live_job(job_id)
        if job is not None:
            info["state"] = job.state
            info["completed"] = job.completed
            cur = job.current
            if cur is not None:
                info.update(round=cur.round, attempt=cur.attempt, phase=cur.phase, ready=sorted(cur.ready))
        return info

    def _list(self, ident: Identity, _job_id: str, _payload: bytes) -> Reply:
        self._allow(ident, "list", None, "")
        scope = permissions(self.table, ident).list
        jobs = []
        position = 0
        for row in self.fed.store.jobs():
            position += row.state == JobState.QUEUED  # the order queued jobs start in, from 1
            if in_scope(scope, ident, job_owner(row.submitter)):
                info = self._job_info(row.job_id)
                info.update(created=_iso(row.created), finished=_iso(row.finished) if row.finished else None)
                if row.state == JobState.QUEUED:
                    info["queue_position"] = position
                jobs.append(info)
        running = sum(1 for j in jobs if j["state"] in (JobState.RUNNING, JobState.FINALIZING))
        queued = sum(1 for j in jobs if j["state"] == JobState.QUEUED)
        return {"jobs": jobs, "max_jobs": self.fed.max_jobs, "running": running, "queued": queued}, []

    def _abort(self, ident: Identity, job_id: str, _payload: bytes) -> Reply:
        if not job_id:
            raise UsageError("abort needs a job id")
        job_id, _ = self._allowed_job(ident, "abort", job_id)
        self.fed.abort(job_id, by=describe(ident))  # one running job (the others go on), or a queued one
        return {"job_id": job_id, "state": "aborted"}, []

    def _download(self, ident: Identity, job_id: str, _payload: bytes) -> Reply:
        job_id, row = self._allowed_job(ident, "download", job_id)
        mode = json.loads(row.spec_json).get("mode")
        rounds = self.fed.store.rounds(job_id)
        if not rounds:
            raise ConfigError(f"job {job_id} has no completed round to download yet")
        # the mode says which files make its result (he: every round's encrypted sum, and how to read them)
        files = mode_class(str(mode)).download(job_id, rounds)
        files += download_files(self.fed.state_dir / "jobs" / job_id)  # evaluation: cross_site's matrix
        files.append(("audit.jsonl", b"".join(self._job_lines(job_id))))
        sizes = [{"name": n, "bytes": len(f) if isinstance(f, bytes) else f.stat().st_size} for n, f in files]
        header = {
            "job_id": job_id,
            "mode": mode,
            "state": row.state,
            "rounds_completed": rounds[-1].round,
            "files": sizes,
        }
        return header, _file_pieces([f for _, f in files])

    def _logs(self, ident: Identity, job_id: str, payload: bytes) -> Reply:
        job_id, _ = self._allowed_job(ident, "logs", job_id)
        follow = _follow_seconds(payload)
        return {"job_id": job_id, "follow": follow}, self._stream_logs(job_id, follow)

    def _job_lines(self, job_id: str) -> Iterator[bytes]:
        path = self.fed.audit.path
        if not path.exists():
            return
        with path.open("rb") as fh:
            for raw in fh:
                try:
                    if json.loads(raw).get("job") == job_id:
                        yield raw
                except ValueError:
                    continue

    def _stream_logs(self, job_id: str, follow: float) -> Iterator[bytes]:
        """The job's audit lines so far, then (for ``follow`` seconds, or until the job ends) new ones.

        The listener is registered before the file is read, and lines are de-duplicated by ``seq``, so
        no line falls into the gap between the two."""
        q: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=10_000)

        def listen(record: dict[str, Any]) -> None:
            if record.get("job") == job_id:
                q.put_nowait(record)

        listeners: list[Callable[[dict[str, Any]], None]] = self.fed.audit.listeners
        if follow > 0:
            listeners.append(listen)
        try:
            last, ended = 0, False
            for raw in self._job_lines(job_id):
                record = json.loads(raw)
                last = max(last, int(record.get("seq", 0)))
                ended = ended or record.get("event") in _TERMINAL_EVENTS
                yield raw
            deadline = time.monotonic() + follow
            while follow > 0 and not ended and not self.fed.stopping and self._active():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    record = q.get(timeout=min(left, 0.5))
                except queue.Empty:
                    continue
                if int(record.get("seq", 0)) <= last:
                    continue
                last = int(record["seq"])
                ended = record.get("event") in _TERMINAL_EVENTS
                yield (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
        finally:
            if listen in listeners:
                listeners.remove(listen)

    def _submit(self, ident: Identity, chunks: Iterator[pb.Chunk]) -> str:
        from secagg.jobs.job import verify_job
        from secagg.jobs.signer import require_submitter

        self._allow(ident, "submit", None, "")
        scratch = Path(tempfile.mkdtemp(prefix="secagg-admin-"))
        try:
            pkg = scratch / "package.tar.gz"
            with pkg.open("wb") as fh:
                copy_payload(chunks, fh, max_bytes=MAX_PACKAGE_BYTES)
            job = verify_job(pkg, self.fed.kit.ca_cert, dest=scratch / "pkg", max_bytes=MAX_PACKAGE_BYTES)
            require_submitter(job.signers, "the job")
            job_id = self.fed.submit(job.root, describe(ident), source=pkg)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self._audit(
            Event.ADMIN_SUBMITTED, ident, "submit", job_id, signers=[s.describe() for s in job.signers]
        )
        return job_id

    _COMMANDS: dict[str, Callable[[AdminConsole, Identity, str, bytes], Reply]] = {
        "status": _status,
        "list": _list,
        "abort": _abort,
        "download": _download,
        "logs": _logs,
    }


class _Audited(SecaggError):
    """A refusal already written to the audit log (so ``_fail`` does not write it twice)."""

    def __init__(self, inner: SecaggError) -> None:
        super().__init__(str(inner))
        self.inner = inner
        self.code = inner.code


def _internal(exc: Exception) -> SecaggError:
    """An unexpected failure of an admin command, as a refusal with the registered ``internal`` code."""
    import logging

    logging.getLogger(__name__).error("admin command failed", exc_info=exc)
    err = SecaggError(f"the aggregator failed: {type(exc).__name__}: {str(exc)[:500]}")
    err.code = Reason.INTERNAL
    return err


def _follow_seconds(payload: bytes) -> float:
    """The ``logs`` payload ``{"follow": seconds}``, clamped to 0..``MAX_FOLLOW_S`` (NaN: 0).

    A follow that is not a number (an object, a list: issue #18's RPC fuzzing found these ended in an
    ``internal`` refusal), or a payload that is not a JSON object or nests past the stack, is a usage
    error like any other bad admin request."""
    bad = UsageError('logs payload must be JSON like {"follow": seconds}')
    try:
        obj = json.loads(payload or b"{}")
        value = obj.get("follow", 0.0) if isinstance(obj, dict) else None
        if isinstance(value, str):
            value = float(value)  # "30" is what it always was: a number
    except (ValueError, RecursionError):
        raise bad from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad
    if isinstance(value, int):  # an integer past float's range is simply long
        return float(min(max(value, 0), MAX_FOLLOW_S))
    return seconds_field(value, hi=MAX_FOLLOW_S)


def _no_job(message: str) -> SecaggError:
    exc = ConfigError(message)
    exc.code = Reason.NO_SUCH_JOB
    return exc


def _iso(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


def _file_pieces(files: Iterable[Path | bytes]) -> Iterator[bytes]:
    for f in files:
        if isinstance(f, bytes):
            yield f
            continue
        with f.open("rb") as fh:
            while piece := fh.read(_PIECE):
                yield piece
