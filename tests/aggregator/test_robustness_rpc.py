"""Issue #18 over real mTLS gRPC: hostile request fields end in a specific status and reason code with
an audit line, never ``UNKNOWN: Exception calling application``; a non-admin cannot learn which job
ids exist."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from secagg import reasons
from secagg.aggregator.federation import Federation
from secagg.aggregator.service import AggregatorServer
from secagg.provision.kit import load_kit
from secagg.transport.chunks import encode_stream
from secagg.transport.generated import secagg_pb2 as pb
from secagg.transport.generated import secagg_pb2_grpc as rpc
from secagg.transport.tls import channel
from tests.aggregator.conftest import open_uploads, write_job


@dataclass
class Live:
    stub: rpc.FederationStub
    fed: Federation
    job_id: str

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.fed.audit.path.read_text().splitlines()]


@pytest.fixture
def live(tmp_path: Path, workspace: Path) -> Iterator[Live]:
    server = AggregatorServer(
        load_kit(workspace / "aggregator"), tmp_path / "state", port=0, host="127.0.0.1"
    )
    job_id = server.fed.submit(write_job(tmp_path / "job"), "tester")
    open_uploads(server.fed, {"site-1": 0.25, "site-2": 0.75})
    server.start()
    ch = channel(load_kit(workspace / "site-2"), f"127.0.0.1:{server.port}")
    try:
        yield Live(rpc.FederationStub(ch), server.fed, job_id)
    finally:
        ch.close()
        server.stop(grace=0.2)


def _refused(call: Any) -> tuple[grpc.StatusCode, str | None, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    exc = err.value
    assert exc.code() != grpc.StatusCode.UNKNOWN, exc.details()
    return exc.code(), reasons.of_rpc_error(exc), exc.details()


def _upload(live: Live, header: dict[str, Any] | None = None, *, raw_header: str | None = None) -> Any:
    if raw_header is not None:
        stream = [pb.Chunk(header_json=raw_header), *list(encode_stream({}, [b"x"]))[1:]]
    else:
        stream = list(encode_stream(header or {}, [b"x"]))
    return lambda: live.stub.UploadResult(iter(stream), timeout=20)


def _head(live: Live, **over: Any) -> dict[str, Any]:
    job = live.fed.job
    assert job is not None and job.current is not None
    cur = job.current
    return {"job_id": live.job_id, "round": cur.round, "attempt": cur.attempt, "bytes": 1, **over}


@pytest.mark.parametrize(
    ("over", "code"),
    [
        ({"round": "1"}, "malformed"),
        ({"bytes": "lots"}, "malformed"),
        ({"round": 10**30}, "out_of_range"),
        ({"metrics": {"loss": math.inf}}, "out_of_range"),
        ({"metrics": {"loss": math.nan}}, "out_of_range"),
        ({"job_id": "j" * 100_000}, "oversize"),
        ({"bytes": 300 << 20}, "oversize"),
    ],
)
def test_a_bad_upload_header_field_is_refused_specifically_and_audited(
    live: Live, over: dict[str, Any], code: str
) -> None:
    status, reason, _ = _refused(_upload(live, _head(live, **over)))
    assert reason == code and status == grpc.StatusCode.INVALID_ARGUMENT
    last = live.audit()[-1]
    assert last["event"] == "refused" and last["code"] == code and last["site"] == "site-2"


def test_an_upload_header_nested_past_the_stack_is_malformed(live: Live) -> None:
    status, reason, _ = _refused(_upload(live, raw_header='{"a":' * 50_000 + "1" + "}" * 50_000))
    assert reason == "malformed" and status == grpc.StatusCode.INVALID_ARGUMENT
    assert live.audit()[-1]["event"] == "refused"


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (pb.Message(topic="final", payload=b'{"x":' * 20_000 + b"1" + b"}" * 20_000), "malformed"),
        (pb.Message(topic="final", payload=b'{"auc": 1e400}'), "out_of_range"),
        (pb.Message(topic="ready", payload=b"[" * 100_000), "malformed"),
        (pb.Message(topic="declined", payload=b"[" * 100_000), "malformed"),
        (pb.Message(topic="t" * 10_000), "oversize"),
        (pb.Message(topic="ready", job_id="j" * 10_000), "oversize"),
    ],
)
def test_a_hostile_post_is_refused_specifically_and_audited(
    live: Live, message: pb.Message, code: str
) -> None:
    status, reason, _ = _refused(lambda: live.stub.Post(message, timeout=20))
    assert reason == code
    assert status == reasons.grpc_status(code)
    assert live.audit()[-1]["event"] == "refused"


def test_non_finite_waits_are_clamped_not_raised(live: Live) -> None:
    replies = list(live.stub.FetchTask(pb.TaskRequest(poll_seconds=math.nan, after_round=5), timeout=20))
    assert replies  # a header came back (a task or a wait), no error
    got = list(
        live.stub.Collect(
            pb.CollectRequest(topic="roster", job_id="gone", round=1, timeout_seconds=math.inf), timeout=40
        )
    )
    assert got[0].signal == pb.Message.CANCELLED


def test_a_non_admin_cannot_tell_existing_job_ids_from_missing_ones(live: Live) -> None:
    answers = []
    for job_id in (live.job_id, "no-such-job"):
        for command in ("abort", "status", "logs", "download"):
            request = pb.AdminRequest(command=command, job_id=job_id)
            status, reason, details = _refused(lambda r=request: list(live.stub.Admin(r, timeout=20)))
            assert reason == "not_admin" and status == grpc.StatusCode.PERMISSION_DENIED
            answers.append(details.replace(job_id, "<id>"))
    assert answers[:4] == answers[4:]  # the same answer whether or not the job exists


def test_an_admin_request_with_an_oversize_job_id_is_a_usage_error_with_a_short_audit_line(
    live: Live,
) -> None:
    request = pb.AdminRequest(command="status", job_id="j" * 100_000)
    status, reason, _ = _refused(lambda: list(live.stub.Admin(request, timeout=20)))
    assert reason == "usage" and status == grpc.StatusCode.INVALID_ARGUMENT
    last = live.audit()[-1]
    assert last["event"] == "admin_failed" and len(last["job"]) <= 256


def test_hostile_cross_site_calls_are_refused_with_a_reason(live: Live) -> None:
    """A sealed-model upload for a job that is not evaluating, one whose envelope does not parse, and a
    fetch of a sealed model that is not there: each a specific refusal with its code, none UNKNOWN."""
    xsite = {"topic": "xsite-model", "job_id": live.job_id, "bytes": 1, "envelope": {"format": "x"}}
    status, code, _ = _refused(_upload(live, xsite))
    assert (status, code) == (grpc.StatusCode.FAILED_PRECONDITION, "late")  # the job is still training
    status, code, _ = _refused(_upload(live, {**xsite, "job_id": 7}))
    assert code == "malformed"

    def fetch(**kw: Any) -> Any:
        req = pb.SealedRequest(**({"job_id": live.job_id, "topic": "xsite-inbox", "sender": "site-1"} | kw))
        return lambda: list(live.stub.FetchSealed(req, timeout=20))

    assert _refused(fetch())[1] == "late"  # nothing sealed to site-2 (no evaluation yet)
    assert _refused(fetch(topic="roster"))[1] == "malformed"
    assert _refused(fetch(sender=""))[1] == "malformed"
    assert not (live.fed.state_dir / "jobs" / live.job_id / "xsite").exists()
