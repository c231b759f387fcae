"""An aggregator killed mid-round and restarted on the same state (RELIABILITY.md F1, F2): nothing a
dead attempt spooled is left behind, and the final model is bit for bit the uninterrupted one's."""

from __future__ import annotations

from pathlib import Path

from secagg.aggregator.federation import Federation
from secagg.aggregator.spool import Spool
from secagg.bundle import to_safetensors
from secagg.provision.kit import load_kit
from tests.aggregator.conftest import chunks, header, open_uploads, update, write_job

UPLOADS = {1: {s: to_safetensors(update(0.1, seed=i)) for i, s in enumerate(("site-1", "site-2"))}}
UPLOADS[2] = {s: to_safetensors(update(0.07, seed=10 + i)) for i, s in enumerate(("site-1", "site-2"))}


def _fed(workspace: Path, state: Path) -> Federation:
    return Federation(load_kit(workspace / "aggregator"), state)


def _round(fed: Federation, round_: int) -> None:
    """Every roster site uploads its fixed update; the driver combines and commits the round."""
    cur = open_uploads(fed)
    assert cur.round == round_
    for site, data in UPLOADS[round_].items():
        fed.accept_upload(site, header(fed, data), chunks(data))
    while fed.job is not None and fed.job.completed < round_:
        fed.step()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_restart_discards_what_the_killed_attempt_spooled(tmp_path: Path, workspace: Path) -> None:
    state = tmp_path / "state"
    fed = _fed(workspace, state)
    job_id = fed.submit(write_job(tmp_path / "job", rounds=2), "tester")
    cur = open_uploads(fed)
    data = UPLOADS[1]["site-1"]
    fed.accept_upload("site-1", header(fed, data), chunks(data))
    # killed while site-2's upload was half received and a partial result was being written
    folder = fed.spool.folder(job_id, cur.round, cur.attempt)
    (folder / ".site-2-abcd.part").write_bytes(b"half")
    (state / "jobs" / job_id / "round-1.partial").write_bytes(b"partial")
    fed.store.close()

    again = _fed(workspace, state)  # resumes the running job
    assert again.job is not None and again.job.current is not None and again.job.current.attempt == 2
    assert _files(state / "spool") == []
    assert not (state / "jobs" / job_id / "round-1.partial").exists()
    _round(again, 1)
    _round(again, 2)
    assert _files(state / "spool") == []
    again.store.close()


def test_a_committed_round_drops_every_attempt_of_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for attempt in (1, 2, 3):
        spool.receive("site-1", "job", 4, attempt, lambda fh: fh.write(b"x"))
    spool.receive("site-1", "job", 5, 1, lambda fh: fh.write(b"y"))
    spool.discard_round("job", 4)
    assert _files(tmp_path / "spool") == ["job/5-1/site-1.upload"]
    spool.discard_job("job")
    assert not (tmp_path / "spool" / "job").exists()


def test_a_restart_between_rounds_leaves_the_final_model_bit_identical(
    tmp_path: Path, workspace: Path
) -> None:
    straight = _fed(workspace, tmp_path / "straight")
    a = straight.submit(write_job(tmp_path / "job-a", rounds=2), "tester")
    _round(straight, 1)
    _round(straight, 2)
    want = (tmp_path / "straight" / "jobs" / a / "round-2.bin").read_bytes()
    straight.store.close()

    killed = _fed(workspace, tmp_path / "killed")
    b = killed.submit(write_job(tmp_path / "job-b", rounds=2), "tester")
    _round(killed, 1)
    killed.store.close()  # killed after round 1 committed; restarted on the same state
    again = _fed(workspace, tmp_path / "killed")
    _round(again, 2)
    got = (tmp_path / "killed" / "jobs" / b / "round-2.bin").read_bytes()
    again.store.close()
    assert got == want


def test_a_site_back_after_the_job_finished_still_gets_the_final_model(
    tmp_path: Path, workspace: Path
) -> None:
    """RELIABILITY.md F4: a site restarted late is owed the final model; the stored final
    evaluation is not rewritten by its late metrics, and an exiting aggregator knows to wait."""
    fed = _fed(workspace, tmp_path / "state")
    job_id = fed.submit(write_job(tmp_path / "job", rounds=1), "tester")
    _round(fed, 1)
    job = fed.job
    assert job is not None and job.state == "finalizing"
    assert fed.next_task("site-1", 1, 1, 1, 0.0)["kind"] == "finalize"
    fed.post_final("site-1", job_id, b'{"auc": 0.5}')
    fed.next_task("site-2", 1, 1, 1, 0.0)  # site-2 was in contact, then crashed before its final
    job.finalize_started -= 10 * job.spec.round_timeout  # the finalize window ran out without it
    while job.state != "finished":
        fed.step()
    assert fed.owed_final(60.0) == ["site-2"]
    task = fed.next_task("site-2", 1, 1, 1, 0.0)  # restarted: it holds round 1, not the final model
    assert task["kind"] == "finalize" and task["round"] == 2
    assert b"".join(fed.payload(task)) == (tmp_path / "state" / "jobs" / job_id / "round-1.bin").read_bytes()
    fed.post_final("site-2", job_id, b'{"auc": 0.25}')
    assert fed.owed_final(60.0) == []
    assert fed.next_task("site-2", 2, 1, 1, 0.0)["kind"] == "stop"
    assert fed.store.rounds(job_id)[-1].metrics["final"] == {"site-1": {"auc": 0.5}}
    lines = fed.audit.path.read_text().splitlines()
    assert '"late":true' in lines[-1] and '"site_final"' in lines[-1]
    fed.store.close()


def test_a_round_resumed_twice_runs_past_every_attempt_it_had(tmp_path: Path, workspace: Path) -> None:
    """A site that uploaded in the first resumed attempt must be offered the second one."""
    from secagg.events import Event

    state = tmp_path / "state"
    fed = _fed(workspace, state)
    job_id = fed.submit(write_job(tmp_path / "job", rounds=2), "tester")
    fed.store.close()  # killed in round 1, attempt 1
    again = _fed(workspace, state)
    assert again.job is not None and again.job.current is not None and again.job.current.attempt == 2
    again.audit.append(Event.ROSTER, job=job_id, round=1, attempt=2, sites=["site-1", "site-2"])
    again.store.close()  # killed again in round 1, after site-1 uploaded in attempt 2
    third = _fed(workspace, state)
    assert third.job is not None and third.job.current is not None and third.job.current.attempt == 3
    task = third.next_task("site-1", 1, 2, 0, 0.0)  # site-1's progress: round 1, attempt 2
    assert task["kind"] == "train" and task["attempt"] == 3
    third.store.close()
