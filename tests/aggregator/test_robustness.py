"""Issue #18, bad input found: the aggregator's own robustness (no gRPC; see test_robustness_rpc.py).

A submission whose audit line cannot be written leaves nothing; the round driver survives a step
that raises (the job fails with its reason, the next job runs) and stops at once; a round every site
declines backs off instead of spinning; an upload far larger than its model is refused while it
streams; request fields are parsed into typed, bounded values first."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from secagg.aggregator import rpc
from secagg.aggregator.federation import Federation
from secagg.aggregator.modes import ModeBase
from secagg.aggregator.rounds import RETRY_MAX_S, JobState, Phase, retry_delay
from secagg.aggregator.service import AggregatorServer
from secagg.errors import SecaggError, UpdateRejected
from secagg.events import Event
from secagg.provision.kit import load_kit
from secagg.transport.generated import secagg_pb2 as pb
from tests.aggregator.conftest import chunks, header, open_uploads, write_job


def _audit(fed: Federation) -> list[dict[str, Any]]:
    return [json.loads(line) for line in fed.audit.path.read_text().splitlines()]


def _events(fed: Federation) -> list[str]:
    return [r["event"] for r in _audit(fed)]


@pytest.fixture
def bare_fed(tmp_path: Path, workspace: Path) -> Iterator[Federation]:
    fed = Federation(load_kit(workspace / "aggregator"), tmp_path / "state")
    yield fed
    fed.store.close()


# ---------------------------------------------------------------- 1. store row + audit line, one step
def test_a_submission_whose_audit_line_fails_leaves_no_row_and_no_package(
    bare_fed: Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = bare_fed.audit.append

    def refuse_submitted(event: str, **fields: Any) -> dict[str, Any]:
        if event == Event.JOB_SUBMITTED:
            raise TypeError("Integer 1000000000000000000000000000000 is out of range")  # what rfc8785 says
        return real(event, **fields)

    monkeypatch.setattr(bare_fed.audit, "append", refuse_submitted)
    with pytest.raises(SecaggError) as err:
        bare_fed.submit(write_job(tmp_path / "job"), "tester")
    assert "nothing was kept" in str(err.value)
    assert bare_fed.store.jobs() == []  # admin list shows nothing, a restart resumes nothing
    assert bare_fed.job is None
    assert not any((bare_fed.state_dir / "jobs").iterdir())
    assert not bare_fed.audit.path.exists() or Event.JOB_SUBMITTED not in _events(bare_fed)
    monkeypatch.setattr(bare_fed.audit, "append", real)
    job_id = bare_fed.submit(write_job(tmp_path / "job2"), "tester")  # the aggregator serves on
    assert [r.job_id for r in bare_fed.store.jobs()] == [job_id]


def test_a_submission_whose_store_row_fails_is_closed_by_a_failed_line(
    bare_fed: Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    def full_disk(*args: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(bare_fed.store, "add_job", full_disk)
    with pytest.raises(SecaggError, match="nothing was kept"):
        bare_fed.submit(write_job(tmp_path / "job"), "tester")
    monkeypatch.undo()
    assert bare_fed.store.jobs() == [] and bare_fed.job is None
    events = [r for r in _audit(bare_fed) if r.get("job")]
    assert [r["event"] for r in events] == [Event.JOB_SUBMITTED, Event.JOB_FAILED]
    assert "disk is full" in events[-1]["reason"]


def test_rounds_past_2_53_never_leave_a_running_job_without_its_submitted_line(
    bare_fed: Federation, tmp_path: Path
) -> None:
    """10**30 rounds: refused by job.yaml's ranges or by the audit line; either way nothing remains."""
    with pytest.raises(SecaggError):
        bare_fed.submit(write_job(tmp_path / "job", rounds=10**30), "tester")
    assert bare_fed.store.jobs() == []
    assert bare_fed.job is None
    restarted = Federation(bare_fed.kit, bare_fed.state_dir)
    try:
        assert restarted.job is None
    finally:
        restarted.store.close()


def test_a_package_whose_model_does_not_load_is_refused_before_anything_is_kept(
    bare_fed: Federation, tmp_path: Path
) -> None:
    job = write_job(tmp_path / "job")
    (job / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SecaggError, match="does not load"):
        bare_fed.submit(job, "tester")
    assert bare_fed.store.jobs() == [] and bare_fed.job is None


# ---------------------------------------------------------------- 2. the driver neither dies nor spins
def _pathological_ready(fed: Federation) -> None:
    """Sample counts of 1e308 (what roster.py now refuses at post_ready) put straight into the round,
    as a bug elsewhere could: the driver's roster step raises on them."""
    job = fed.job
    assert job is not None and job.current is not None
    with fed.cond:
        for site in fed.sites:
            job.current.ready[site] = {"fingerprint": {"n_samples": 1e308}, "n_samples": 1e308}
        fed.cond.notify_all()


def test_the_driver_fails_the_job_on_a_pathological_roster_and_serves_on(
    tmp_path: Path, workspace: Path
) -> None:
    server = AggregatorServer(
        load_kit(workspace / "aggregator"), tmp_path / "state", port=0, host="127.0.0.1"
    )
    fed = server.fed
    try:
        fed.submit(write_job(tmp_path / "job-1"), "tester")
        job = fed.job
        assert job is not None
        _pathological_ready(fed)
        fed.start()
        assert _eventually(lambda: Event.JOB_FAILED in _events(fed))  # state, store row, then the line
        assert job.state == JobState.FAILED
        assert _eventually(lambda: not fed.scheduler.driving())  # that job's driver ends with it
        failed = [r for r in _audit(fed) if r["event"] == Event.JOB_FAILED]
        assert failed and failed[-1]["job"] == job.job_id and "sample count" in failed[-1]["reason"]
        row = fed.store.job(job.job_id)
        assert row is not None and row.state == JobState.FAILED and row.reason
        # the driver goes on with the next job: its first round reaches the upload phase
        fed.submit(write_job(tmp_path / "job-2", min_sites=1), "tester")
        nxt = fed.job
        assert nxt is not None and nxt.job_id != job.job_id and nxt.current is not None
        for site in fed.sites:
            fed.post_ready(site, nxt.job_id, 1, _ready(fed, site))
        cur = nxt.current
        assert _eventually(lambda: cur.phase == Phase.UPLOAD)
        assert nxt.state == JobState.RUNNING and fed.scheduler.driving() == [nxt.job_id]
    finally:
        server.stop(grace=0.1)
    assert not server.fed.scheduler.driving()


def _eventually(pred: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll a condition another thread makes true (a bound for a hang, not a speed check)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def _ready(fed: Federation, site: str) -> bytes:
    """A ready message as the service sees it (the signature is not checked by the aggregator)."""
    job = fed.job
    assert job is not None and job.current is not None
    return json.dumps(
        {"attempt": job.current.attempt, "n_samples": 10, "fingerprint": {"n_samples": 10}}
    ).encode()


def test_a_driver_error_without_a_job_is_audited_and_not_raised(bare_fed: Federation) -> None:
    bare_fed.driver_failed(RuntimeError("boom"))
    last = _audit(bare_fed)[-1]
    assert last["event"] == Event.DRIVER_ERROR and last["reason"] == "boom"


def test_a_stop_ends_the_driver_while_it_backs_off(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = AggregatorServer(
        load_kit(workspace / "aggregator"), tmp_path / "state", port=0, host="127.0.0.1"
    )
    calls: list[int] = []

    def broken_step() -> None:
        calls.append(1)
        raise OSError("disk gone")

    server.fed.submit(write_job(tmp_path / "job-1"), "tester")
    (job_fed,) = server.fed.scheduler.live()
    monkeypatch.setattr(job_fed, "step", broken_step)
    # the job cannot even be failed (the store is as broken as the disk): its driver keeps trying
    monkeypatch.setattr(job_fed, "driver_failed", lambda exc: None)
    server.fed.start()
    assert _eventually(lambda: len(calls) >= 3)
    server.fed.stopping = True  # what stop() does first
    server.fed.scheduler.join(timeout=RETRY_MAX_S)
    assert not server.fed.scheduler.driving()
    assert len(calls) < 20  # it backed off between failures, it did not spin
    server.server.stop(0)
    server.fed.store.close()


def test_retry_backoff_starts_at_once_doubles_and_is_bounded() -> None:
    delays = [retry_delay(n) for n in range(1, 12)]
    assert delays[0] == 0.0 and delays[1] == 0.5 and delays[2] == 1.0
    assert all(b >= a for a, b in zip(delays, delays[1:], strict=False))
    assert max(delays) == RETRY_MAX_S and retry_delay(10**6) == RETRY_MAX_S


def test_a_round_every_site_declines_backs_off_instead_of_spinning(
    make_fed: Callable[..., Federation],
) -> None:
    fed = make_fed()
    job = fed.job
    assert job is not None
    backoffs = []
    for i in range(8):
        cur = job.current
        assert cur is not None
        cur.not_before = 0.0  # the test stands in for the time the backoff waits
        for site in fed.sites:
            fed.decline(site, job.job_id, cur.round, "training_failed", "x", round_only=True)
        fed.step()  # the roster of nobody
        fed.step()  # nothing to combine: a retry
        nxt = job.current
        assert nxt is not None and nxt.attempt == cur.attempt + 1
        backoffs.append(nxt.not_before)
        if i:  # from the second retry in a row on, the attempt is not offered to sites while it waits
            assert nxt.not_before > time.monotonic() and fed._task_for("site-1", 0, 0, 0) is None
    lines = [r for r in _audit(fed) if r["event"] == Event.ROUND_RETRY]
    assert [r["backoff_s"] for r in lines] == [retry_delay(n) for n in range(1, 9)]
    assert lines[-1]["backoff_s"] == RETRY_MAX_S
    # while a retry waits, the driver waits too (no roster line, no audit line per step)
    before = len(_audit(fed))
    fed.step()
    assert len(_audit(fed)) == before


# ---------------------------------------------------------------- 4. uploads bounded by the model
def test_every_mode_states_a_bound_near_its_models_size(make_fed: Callable[..., Federation]) -> None:
    fed = make_fed()
    assert fed.mode is not None
    bound = fed.upload_bound()
    model_bytes = 4 * fed.mode.ctx.bundle_spec.size
    assert model_bytes < bound <= model_bytes + (2 << 20)
    assert ModeBase.max_upload_bytes(fed.mode) == bound


def test_an_upload_announcing_far_more_than_its_model_is_refused_before_a_byte(
    make_fed: Callable[..., Federation],
) -> None:
    fed = make_fed()
    open_uploads(fed)
    consumed: list[int] = []

    def stream() -> Iterator[pb.Chunk]:
        for c in chunks(b"x" * 10):
            consumed.append(1)
            yield c

    with pytest.raises(UpdateRejected) as err:
        fed.accept_upload("site-1", header(fed, b"", bytes=300 << 20), stream())
    assert err.value.code == "oversize" and consumed == []


def test_an_upload_far_larger_than_its_model_is_refused_while_it_streams(
    make_fed: Callable[..., Federation],
) -> None:
    fed = make_fed()
    open_uploads(fed)
    sent: list[int] = []
    piece = b"\0" * (1 << 20)

    def stream() -> Iterator[pb.Chunk]:
        for _ in range(300):  # 300 MiB for a model of a few hundred bytes
            sent.append(len(piece))
            yield pb.Chunk(data=piece)

    h = header(fed, b"")
    del h["bytes"]
    with pytest.raises(UpdateRejected) as err:
        fed.accept_upload("site-1", h, stream())
    assert err.value.code == "oversize"
    assert sum(sent) <= fed.upload_bound() + len(piece)  # stopped at the bound, not spooled in full
    assert not any(p.is_file() for p in (fed.state_dir / "spool").rglob("*"))


# ---------------------------------------------------------------- 3. typed request fields
@pytest.mark.parametrize(
    ("over", "code"),
    [
        ({"round": "1"}, "malformed"),
        ({"round": 1.5}, "malformed"),
        ({"round": True}, "malformed"),
        ({"round": 10**30}, "out_of_range"),
        ({"attempt": None}, "malformed"),
        ({"bytes": "12"}, "malformed"),
        ({"bytes": -1}, "out_of_range"),
        ({"job_id": 7}, "malformed"),
        ({"job_id": "j" * 10_000}, "oversize"),
        ({"metrics": {"loss": math.inf}}, "out_of_range"),
        ({"metrics": {"loss": math.nan}}, "out_of_range"),
        ({"metrics": {"loss": 10**400}}, "out_of_range"),
        ({"metrics": [1, 2]}, "malformed"),
        ({"metrics": {"k" * 1000: 1.0}}, "oversize"),
    ],
)
def test_an_upload_header_with_a_bad_field_is_refused_with_its_code(
    make_fed: Callable[..., Federation], over: dict[str, Any], code: str
) -> None:
    fed = make_fed()
    open_uploads(fed)
    with pytest.raises(UpdateRejected) as err:
        fed.accept_upload("site-1", header(fed, b"abc", **over), chunks(b"abc"))
    assert err.value.code == code


def test_json_payloads_are_bounded_in_depth_and_range() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for payload, code in [
        (deep, "malformed"),
        (b'{"a":' * 50 + b"1" + b"}" * 50, "malformed"),
        (b'{"auc": 1e400}', "out_of_range"),
        (b'{"auc": NaN}', "out_of_range"),
        (b'{"auc": -Infinity}', "out_of_range"),
        (b"\xff\xfe", "malformed"),
        (b"[1]", "malformed"),
        (b" " * (rpc.MAX_JSON_BYTES + 1), "oversize"),
    ]:
        with pytest.raises(UpdateRejected) as err:
            rpc.json_object(payload, "message")
        assert err.value.code == code, payload[:20]
    assert rpc.json_object(b'{"a": {"b": [1, 2.5]}}', "m") == {"a": {"b": [1, 2.5]}}


def test_final_metrics_deeply_nested_or_past_float_range_are_refused(
    make_fed: Callable[..., Federation],
) -> None:
    fed = make_fed(rounds=1)
    job = fed.job
    assert job is not None
    job.state = JobState.FINALIZING
    for payload in (b'{"x":' * 10_000 + b"1" + b"}" * 10_000, b'{"auc": 1e400}'):
        with pytest.raises(UpdateRejected):
            fed.post_final("site-1", job.job_id, payload)
    fed.post_final("site-1", job.job_id, b'{"auc": 0.5}')
    assert job.final_metrics == {"site-1": {"auc": 0.5}}


def test_a_ready_message_nested_past_the_stack_is_malformed(make_fed: Callable[..., Federation]) -> None:
    fed = make_fed()
    job = fed.job
    assert job is not None
    with pytest.raises(UpdateRejected) as err:
        fed.post_ready("site-1", job.job_id, 1, b"[" * 200_000)
    assert err.value.code == "malformed"


def test_post_fields_and_waits_are_typed() -> None:
    with pytest.raises(UpdateRejected) as err:
        rpc.post_fields("t" * 1000, "", 1, "")
    assert err.value.code == "oversize"
    with pytest.raises(UpdateRejected):
        rpc.post_fields("", "", 1, "")
    assert rpc.post_fields("ready", "job", 3, "").round == 3
    assert rpc.seconds_field(math.nan, hi=30) == 0.0
    assert rpc.seconds_field(math.inf, hi=30) == 30.0
    assert rpc.seconds_field(-5, hi=30) == 0.0
    d = rpc.declined(json.dumps({"message": "m" * 10_000, "scope": "round"}).encode(), "")
    assert d.round_only and len(d.message) == rpc.MAX_TEXT and d.code == "declined"


def test_long_polls_end_at_once_when_the_service_stops(make_fed: Callable[..., Federation]) -> None:
    """A stop is honoured while sites wait: every long poll returns instead of running its timeout."""
    fed = make_fed()
    job = fed.job
    assert job is not None
    fed.stopping = True
    assert fed.stop_event.is_set()
    assert fed.roster(job.job_id, 1, wait_s=120) is None
    assert fed.key_release(wait_s=120) is None
    assert fed.next_task("site-1", 0, 0, 0, wait_s=120)["kind"] in ("train", "wait")
