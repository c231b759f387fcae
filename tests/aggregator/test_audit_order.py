"""A ready or an upload is logged before it counts (issue #18, found by `secagg chaos --scenario
partition-60s`: the aggregator's log held `round_completed` before the `upload_accepted` lines of
two of the uploads it had combined). Counted first and logged after, outside the lock, the driver
could commit the round in between: a full disk then refused the upload to the site after the round
had used it, and a kill left a combined upload with no line."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from secagg.aggregator.federation import Federation
from secagg.bundle import to_safetensors
from secagg.errors import StorageFull
from secagg.provision.kit import load_kit
from tests.aggregator.conftest import chunks, header, open_uploads, update, write_job

GOOD = to_safetensors(update(0.1))


def _ready(fed: Federation) -> bytes:
    job = fed.job
    assert job is not None and job.current is not None
    return json.dumps(
        {"attempt": job.current.attempt, "n_samples": 10, "fingerprint": {"n_samples": 10}}
    ).encode()


def _driver_could_lock(fed: Federation) -> bool:
    """Whether another thread (the driver's) could take the federation's lock right now."""
    got: list[bool] = []

    def try_lock() -> None:
        ok = fed.cond.acquire(blocking=False)
        if ok:
            fed.cond.release()
        got.append(ok)

    t = threading.Thread(target=try_lock)
    t.start()
    t.join()
    return got[0]


def test_an_upload_is_logged_before_the_driver_can_count_it(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = Federation(load_kit(workspace / "aggregator"), tmp_path / "state")
    fed.submit(write_job(tmp_path / "job", rounds=1), "tester")
    cur = open_uploads(fed)
    real_append = fed.audit.append
    seen: list[tuple[str, bool, bool]] = []

    def watch(event: str, **fields: Any) -> Any:
        if event == "upload_accepted":
            seen.append((fields["site"], fields["site"] in cur.uploads, _driver_could_lock(fed)))
        return real_append(event, **fields)

    monkeypatch.setattr(fed.audit, "append", watch)
    fed.accept_upload("site-1", header(fed, GOOD), chunks(GOOD))
    # not counted yet when its line is written, and the driver's lock held meanwhile: from the
    # driver's thread the line and the count are one step
    assert seen == [("site-1", False, False)]
    assert set(cur.uploads) == {"site-1"}
    fed.store.close()


def test_an_upload_refused_for_a_full_disk_is_neither_counted_nor_kept(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = Federation(load_kit(workspace / "aggregator"), tmp_path / "state")
    fed.submit(write_job(tmp_path / "job", rounds=1), "tester")
    cur = open_uploads(fed)
    real_append = fed.audit.append

    def full(event: str, **fields: Any) -> Any:
        if event == "upload_accepted":
            raise StorageFull("the disk is full")
        return real_append(event, **fields)

    monkeypatch.setattr(fed.audit, "append", full)
    with pytest.raises(StorageFull):
        fed.accept_upload("site-1", header(fed, GOOD), chunks(GOOD))
    assert cur.uploads == {} and cur.metrics == {}
    assert not [p for p in (tmp_path / "state" / "spool").rglob("*") if p.is_file()]
    fed.store.close()


def test_a_ready_is_logged_before_it_counts(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = Federation(load_kit(workspace / "aggregator"), tmp_path / "state")
    job_id = fed.submit(write_job(tmp_path / "job", rounds=1), "tester")
    job = fed.job
    assert job is not None and job.current is not None
    cur = job.current
    real_append = fed.audit.append
    seen: list[bool] = []

    def watch(event: str, **fields: Any) -> Any:
        if event == "site_ready":
            seen.append(fields["site"] in cur.ready)
        return real_append(event, **fields)

    monkeypatch.setattr(fed.audit, "append", watch)
    fed.post_ready("site-1", job_id, cur.round, _ready(fed))
    assert seen == [False] and "site-1" in cur.ready
    fed.store.close()
