"""RELIABILITY.md F12: an upload the aggregator refused as a transient loss (its disk full:
``storage_full``, ``UNAVAILABLE``) is sent again in the same attempt, the same bytes, until it is
taken, the attempt is over, or the job stops; never protected anew, so never debited twice.

The first tests drive the mode's upload path (:func:`secagg.agent.modes.base.upload`) against a fake
relay; the last ones run real site agents against an in-process aggregator whose state disk is full
for the first upload, in ``plain`` (with a privacy budget: one debit per round) and ``mask`` (the
masking phases reach their threshold in the same attempt)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import yaml

from secagg.agent import resend
from secagg.agent.modes.base import ModeContext, Outgoing, upload
from secagg.agent.relay import RoundMovedOn
from secagg.agent.state import SiteState
from secagg.auditlog import AuditLog
from secagg.reasons import METADATA_KEY


class _Err(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, reason: str, details: str) -> None:
        self._code, self._reason, self._details = code, reason, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((METADATA_KEY, self._reason),)


FULL = _Err(grpc.StatusCode.UNAVAILABLE, "storage_full", "storage_full: the aggregator's state disk is full")
LATE = _Err(grpc.StatusCode.FAILED_PRECONDITION, "late", "late: round 2 is not accepting uploads now")
DUPLICATE = _Err(grpc.StatusCode.ALREADY_EXISTS, "duplicate_upload", "site-1 already uploaded in round 2")
BAD = _Err(grpc.StatusCode.INVALID_ARGUMENT, "malformed", "malformed: no")


class _Relay:
    """Answers each upload with the next of ``answers`` (an exception is raised, ``True`` accepted);
    keeps the bytes of every upload it was sent."""

    def __init__(self, answers: list[Any], job_state: str = "running") -> None:
        self.answers = answers
        self.sent: list[bytes] = []
        self.headers: list[dict[str, Any]] = []
        self.state = job_state

    def upload(self, header: dict[str, Any], parts: Iterable[bytes]) -> bool:
        self.headers.append(dict(header))
        self.sent.append(b"".join(parts))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return bool(answer)

    def job_state(self, job_id: str, round_: int) -> str:
        return self.state


def _ctx(tmp: Path, relay: _Relay) -> ModeContext:
    state = SiteState(tmp / "state")
    audit = AuditLog(tmp / "state" / "audit.jsonl")
    return ModeContext(
        kit=SimpleNamespace(name="site-1"),  # type: ignore[arg-type]
        state=state,
        relay=relay,  # type: ignore[arg-type]
        audit=audit,
        target="127.0.0.1:1",
        load_policy=lambda: None,  # type: ignore[arg-type, return-value]
    )


def _out(round_timeout: float = 30.0) -> Outgoing:
    return Outgoing(
        spec=SimpleNamespace(round_timeout=round_timeout),  # type: ignore[arg-type]
        job_id="job",
        round=2,
        attempt=1,
        bspec=None,  # type: ignore[arg-type]
        weighted=None,  # type: ignore[arg-type]
        weight=1.0,
        sites=["site-1", "site-2"],
    )


def _pieces() -> Iterable[bytes]:
    # made once, as a mode protects the update once: a second pass over this would yield nothing
    yield b"protected-"
    yield b"update" * 1000


def _events(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "state" / "audit.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The re-sends' waits, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(resend, "_wait", waited.append)
    return waited


def test_a_storage_full_refusal_is_sent_again_with_the_same_bytes(tmp_path: Path, waits: list[float]) -> None:
    relay = _Relay([FULL, FULL, True])
    sent = upload(_ctx(tmp_path, relay), _out(), "plain", _pieces())
    assert sent.accepted and sent.bytes == len(b"protected-" + b"update" * 1000)
    assert len(relay.sent) == 3 and relay.sent[0] == relay.sent[1] == relay.sent[2]
    assert relay.sent[0] == b"protected-" + b"update" * 1000
    assert relay.headers[0] == relay.headers[2]  # the same attempt, the same header
    assert waits == [resend.RESEND_FIRST_S, resend.RESEND_FIRST_S * 2]  # backoff
    retries = [e for e in _events(tmp_path) if e["event"] == "upload_retry"]
    assert [(e["tries"], e["code"], e["round"], e["attempt"]) for e in retries] == [
        (1, "storage_full", 2, 1),
        (2, "storage_full", 2, 1),
    ]
    assert not list((tmp_path / "state").rglob(".upload-*"))  # the spooled upload is gone after


def test_the_attempt_ending_stops_the_resends(tmp_path: Path, waits: list[float]) -> None:
    relay = _Relay([FULL, LATE, True])
    with pytest.raises(grpc.RpcError) as err:
        upload(_ctx(tmp_path, relay), _out(), "plain", _pieces())
    assert err.value is LATE and len(relay.sent) == 2  # the agent's stale-round path takes it from here


def test_a_job_that_stopped_is_not_sent_to_again(tmp_path: Path, waits: list[float]) -> None:
    relay = _Relay([FULL, True], job_state="aborted")
    with pytest.raises(RoundMovedOn):
        upload(_ctx(tmp_path, relay), _out(), "plain", _pieces())
    assert len(relay.sent) == 1


def test_a_refusal_that_is_not_transient_is_not_retried(tmp_path: Path, waits: list[float]) -> None:
    relay = _Relay([BAD, True])
    with pytest.raises(grpc.RpcError) as err:
        upload(_ctx(tmp_path, relay), _out(), "plain", _pieces())
    assert err.value is BAD and len(relay.sent) == 1 and waits == []
    assert not [e for e in _events(tmp_path) if e["event"] == "upload_retry"]


def test_a_duplicate_after_a_lost_answer_is_the_acceptance(tmp_path: Path, waits: list[float]) -> None:
    relay = _Relay([FULL, DUPLICATE])
    assert upload(_ctx(tmp_path, relay), _out(), "plain", _pieces()).accepted
    # a duplicate on the first send is a refusal as before, not an acceptance
    with pytest.raises(grpc.RpcError):
        upload(_ctx(tmp_path, _Relay([DUPLICATE])), _out(), "plain", _pieces())


def test_the_resends_end_after_the_round_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]

    def sleep(s: float) -> None:
        now[0] += s

    monkeypatch.setattr(resend, "_wait", sleep)
    monkeypatch.setattr(resend, "_now", lambda: now[0])
    relay = _Relay([FULL] * 50)
    with pytest.raises(grpc.RpcError) as err:
        upload(_ctx(tmp_path, relay), _out(round_timeout=10.0), "plain", _pieces())
    assert err.value is FULL  # the job loop's reconnect takes over, as before
    assert now[0] - 100.0 >= 10.0 and len(relay.sent) < 10


# ---- real agents, a real aggregator whose disk is full for one upload


POLICY_EXTRA = {
    "privacy": {
        "required": [{"name": "gaussian", "clip": 1.0, "noise_multiplier": 1.0}],
        "budget": {"epsilon": 100.0, "delta": 1e-3},
    }
}


def _full_once(site: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The aggregator's disk is full when ``site``'s first upload is to be logged (as it is when the
    state folder fills: the upload is withdrawn and refused ``storage_full``); then there is space.
    Patched before anything starts: only the aggregator writes ``upload_accepted``."""
    from secagg.errors import StorageFull

    real = AuditLog.append
    refused: list[int] = []

    def append(self: AuditLog, event: str, **fields: Any) -> Any:
        if event == "upload_accepted" and fields.get("site") == site and not refused:
            refused.append(int(fields["round"]))
            raise StorageFull(f"{self.path}: the disk is full; nothing was logged")
        return real(self, event, **fields)

    monkeypatch.setattr(AuditLog, "append", append)
    return refused


def _kept_sends(monkeypatch: pytest.MonkeyPatch) -> dict[int, list[bytes]]:
    """Every upload each relay streams, as bytes, by the relay's id (patched before anything starts)."""
    from secagg.agent.relay import Relay

    sends: dict[int, list[bytes]] = {}
    real = Relay.upload

    def upload(self: Relay, header: dict[str, Any], parts: Iterable[bytes]) -> bool:
        data = b"".join(parts)
        sends.setdefault(id(self), []).append(data)
        return real(self, header, [data])

    monkeypatch.setattr(Relay, "upload", upload)
    return sends


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["plain", "mask", "tee"])
def test_a_round_refused_for_a_full_disk_completes_in_the_same_attempt(
    mode: str, tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secagg.privacy.ledger import Ledger
    from tests.integration.harness import TEST_POLICY, make_tiny_job, start, write_policies

    policy = TEST_POLICY.replace("modes: [plain, he]", "modes: [plain, he, mask]")
    policy += yaml.safe_dump(POLICY_EXTRA) if mode == "plain" else ""
    enclave = None
    if mode == "tee":  # the sealed upload is re-sent as sealed: the enclave opens the same bytes
        from tests.integration.test_tee import DEV_TEE, _enclave

        policy, enclave = DEV_TEE, _enclave()
    extra = {"mask": {"threshold": 2, "clip": 1.0}} if mode == "mask" else None
    # before F12 the refused round waited out this timeout and ran again (round_retry, attempt 2)
    job = make_tiny_job(tmp_path / "job", workspace, mode=mode, rounds=2, round_timeout=60, extra=extra)
    monkeypatch.setattr(resend, "RESEND_FIRST_S", 0.2)
    refused = _full_once("site-1", monkeypatch)
    kept = _kept_sends(monkeypatch)
    run = start(tmp_path, workspace, job, policies=write_policies(tmp_path, policy), enclave=enclave)
    fed = run.server.fed
    job_id = fed.job.job_id  # type: ignore[union-attr]
    try:
        run.join(timeout=180)
        assert not run.errors, run.errors
    finally:
        run.stop()
    assert refused == [1]
    agg_log = tmp_path / "state" / "aggregator" / "audit.jsonl"
    agg = [json.loads(x) for x in agg_log.read_text().splitlines()]
    assert not [r for r in agg if r["event"] == "round_retry"]  # no round timeout lost
    completed = [r for r in agg if r["event"] == "round_completed"]
    assert [r["round"] for r in completed] == [1, 2]
    assert [r["attempt"] for r in agg if r["event"] == "roster"] == [1, 1]
    accepted = [(r["round"], r["site"]) for r in agg if r["event"] == "upload_accepted"]
    assert accepted.count((1, "site-1")) == 1
    if mode == "mask":
        uploads = [r["sites"] for r in agg if r["event"] == "mask_phase" and r["phase"] == "upload"]
        assert uploads[0] == ["site-1", "site-2", "site-3"]
    # site-1 sent round 1 twice, the same bytes, then round 2 once
    sends = kept[id(run.agents["site-1"].relay)]
    assert len(sends) == 3 and sends[0] == sends[1] and sends[1] != sends[2]
    site = [json.loads(x) for x in (tmp_path / "state" / "site-1" / "audit.jsonl").read_text().splitlines()]
    assert [(r["round"], r["code"]) for r in site if r["event"] == "upload_retry"] == [(1, "storage_full")]
    assert [r["round"] for r in site if r["event"] == "uploaded"] == [1, 2]
    if mode == "plain":
        ledger = Ledger(tmp_path / "state" / "site-1" / "privacy-ledger.sqlite", "site-1")
        assert [(e.job, e.round) for e in ledger.entries()] == [(job_id, 1), (job_id, 2)]  # one debit each
