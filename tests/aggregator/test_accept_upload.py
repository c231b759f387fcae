"""``Federation.accept_upload``: one owner for an upload, from its header to its acceptance; every
refusal has its reason code and leaves nothing in the spool."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from secagg.aggregator.federation import Federation
from secagg.aggregator.rounds import Phase
from secagg.bundle import to_safetensors
from secagg.errors import UpdateRejected
from tests.aggregator.conftest import chunks, header, open_uploads, update

GOOD = to_safetensors(update(0.1))


def _audit(fed: Federation) -> list[dict]:
    return [json.loads(line) for line in fed.audit.path.read_text().splitlines()]


def _spooled(fed: Federation) -> list[str]:
    return sorted(p.name for p in (fed.state_dir / "spool").rglob("*") if p.is_file())


def test_an_accepted_upload_is_spooled_counted_and_audited(make_fed: Callable[..., Federation]) -> None:
    fed = make_fed()
    cur = open_uploads(fed)
    fed.accept_upload("site-1", header(fed, GOOD, metrics={"auc": 0.75, "note": "x"}), chunks(GOOD))
    path = fed.spool.path(fed.job.job_id, cur.round, cur.attempt, "site-1")  # type: ignore[union-attr]
    assert cur.uploads == {"site-1": path} and path.read_bytes() == GOOD
    assert cur.metrics == {"site-1": {"auc": 0.75}}
    last = _audit(fed)[-1]
    assert last["event"] == "upload_accepted" and last["site"] == "site-1" and last["bytes"] == len(GOOD)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"job_id": "no-such-job"}, "no_such_job"),
        ({"round": 5}, "wrong_round"),
        ({"attempt": 9}, "late"),
    ],
)
def test_an_upload_for_another_job_round_or_attempt_is_refused_before_spooling(
    make_fed: Callable[..., Federation], change: dict, code: str
) -> None:
    fed = make_fed()
    open_uploads(fed)
    with pytest.raises(UpdateRejected) as err:
        fed.accept_upload("site-1", header(fed, GOOD, **change), chunks(GOOD))
    assert err.value.code == code
    assert _spooled(fed) == []


def test_sites_outside_the_roster_and_rounds_not_uploading_are_refused(
    make_fed: Callable[..., Federation],
) -> None:
    fed = make_fed()
    with pytest.raises(UpdateRejected) as ready:  # still collecting readiness
        fed.accept_upload("site-1", header(fed, GOOD), chunks(GOOD))
    assert ready.value.code == "late"
    open_uploads(fed)
    with pytest.raises(UpdateRejected) as outside:
        fed.accept_upload("site-3", header(fed, GOOD), chunks(GOOD))
    assert outside.value.code == "not_in_roster"
    assert _spooled(fed) == []


def test_a_second_upload_of_a_site_is_a_duplicate(make_fed: Callable[..., Federation]) -> None:
    fed = make_fed()
    cur = open_uploads(fed)
    fed.accept_upload("site-2", header(fed, GOOD), chunks(GOOD))
    with pytest.raises(UpdateRejected) as err:
        fed.accept_upload("site-2", header(fed, GOOD), chunks(GOOD))
    assert err.value.code == "duplicate_upload"
    assert list(cur.uploads) == ["site-2"]


@pytest.mark.parametrize(
    ("body", "cut", "code"),
    [
        (b"not safetensors at all", False, "malformed"),
        (to_safetensors({"other": update(0.1)["head"]}), False, "bad_shape"),
        (GOOD, True, "truncated"),
    ],
)
def test_a_bad_upload_is_refused_and_leaves_nothing_in_the_spool(
    make_fed: Callable[..., Federation], body: bytes, cut: bool, code: str
) -> None:
    fed = make_fed()
    cur = open_uploads(fed)
    with pytest.raises(UpdateRejected) as err:
        fed.accept_upload("site-1", header(fed, body), chunks(body, cut=cut))
    assert err.value.code == code, err.value
    assert cur.uploads == {} and _spooled(fed) == []
    fed.accept_upload("site-1", header(fed, GOOD), chunks(GOOD))  # the site may try again
    assert list(cur.uploads) == ["site-1"]


def test_an_upload_beyond_the_limit_is_oversize(make_fed: Callable[..., Federation]) -> None:
    fed = make_fed()
    fed.max_upload_bytes = 100
    open_uploads(fed)
    with pytest.raises(UpdateRejected) as err:
        fed.accept_upload("site-1", header(fed, GOOD), chunks(GOOD))
    assert err.value.code == "oversize" and _spooled(fed) == []


def test_an_upload_that_outlives_its_round_is_late(
    make_fed: Callable[..., Federation], monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = make_fed()
    cur = open_uploads(fed)
    assert fed.mode is not None
    check = fed.mode.accept

    def slow(site: str, round_, head, spooled: Path) -> None:  # type: ignore[no-untyped-def]
        check(site, round_, head, spooled)
        cur.phase = Phase.COMBINING  # the round closed while this upload streamed

    monkeypatch.setattr(fed.mode, "accept", slow)
    with pytest.raises(UpdateRejected) as err:
        fed.accept_upload("site-1", header(fed, GOOD), chunks(GOOD))
    assert err.value.code == "late" and cur.uploads == {} and _spooled(fed) == []


def test_a_round_that_cannot_be_combined_fails_the_job(
    make_fed: Callable[..., Federation], monkeypatch: pytest.MonkeyPatch
) -> None:
    """failed is produced where a job really fails: the driver records it, tells sites to stop."""
    fed = make_fed()
    cur = open_uploads(fed)
    for site in ("site-1", "site-2"):
        fed.accept_upload(site, header(fed, GOOD), chunks(GOOD))
    assert fed.mode is not None

    def corrupt(*_: object) -> None:
        raise OSError("round result folder is not writable")

    monkeypatch.setattr(fed.mode, "combine", corrupt)
    fed.step()
    job = fed.job
    assert job is not None and job.state == "failed" and job.current is None
    row = fed.store.job(job.job_id)
    assert row is not None and row.state == "failed" and "not writable" in (row.reason or "")
    last = _audit(fed)[-1]
    assert last["event"] == "job_failed" and last["job"] == job.job_id
    task = fed.next_task("site-1", cur.round, cur.attempt, 0, 0.0)
    assert task["kind"] == "stop" and task["reason"] == "job failed"
    assert _spooled(fed) == []
