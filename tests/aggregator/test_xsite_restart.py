"""A cross-site evaluation across an aggregator restart, without processes: what the killed
Federation took (consents, a sealed model streamed in chunks, final metrics) is what the new one on the
same state holds; each site's finalize task says so; and the evaluation completes from there."""

from __future__ import annotations

import io
import json
from pathlib import Path

from secagg.aggregator.federation import Federation
from secagg.aggregator.rounds import JobState, Signal
from secagg.bundle import to_safetensors
from secagg.crossval import wire
from secagg.crossval.seal import Consent, Envelope, open_stream, seal_model
from secagg.provision.identity import Identity
from secagg.provision.kit import Kit, load_kit
from secagg.reasons import Reason
from tests.aggregator.conftest import INIT, chunks, header, open_uploads, update, write_job

SITES = ["site-1", "site-2", "site-3"]


def _fed(workspace: Path, state: Path) -> Federation:
    return Federation(load_kit(workspace / "aggregator"), state)


def _me(kit: Kit) -> Identity:
    return Identity(kit.name, "org", "site", kit.cert)


def _consent(fed: Federation, kit: Kit, job_id: str) -> None:
    c = Consent(job_id, kit.name, True, Reason.OK).signed(kit.private_key, kit.config.project)
    fed.xsite_post(_me(kit), wire.CONSENT, job_id, json.dumps(c.to_dict()).encode())


def _seal(kits: dict[str, Kit], job_id: str, sender: str, to: str) -> tuple[dict, bytes]:
    k = kits[sender]
    env, sealed = seal_model(
        to_safetensors(INIT),
        project=k.config.project,
        job=job_id,
        sender=sender,
        sender_key=k.private_key,
        recipient=to,
        recipient_cert=kits[to].cert,
    )
    return {"topic": wire.MODEL, "job_id": job_id, "envelope": env.to_dict(), "bytes": len(sealed)}, sealed


def _task(fed: Federation, site: str) -> dict:
    return fed.next_task(site, 1, 1, 1, wait_s=0)


def _at_evaluation(tmp_path: Path, workspace: Path, state: Path) -> tuple[Federation, str]:
    """A one-round cross_site job whose round is combined: the federation is in its evaluation."""
    fed = _fed(workspace, state)
    job_id = fed.submit(write_job(tmp_path / "job", rounds=1, evaluation="cross_site"), "tester")
    open_uploads(fed, dict.fromkeys(SITES, 1 / 3))
    for i, s in enumerate(SITES):
        data = to_safetensors(update(0.1, seed=i))
        fed.accept_upload(s, header(fed, data), chunks(data))
    while fed.job is not None and fed.job.state == JobState.RUNNING:
        fed.step()
    return fed, job_id


def test_a_restarted_aggregator_takes_up_the_evaluation(tmp_path: Path, workspace: Path) -> None:
    kits, state = {s: load_kit(workspace / s) for s in SITES}, tmp_path / "state"
    fed, job_id = _at_evaluation(tmp_path, workspace, state)
    fed.post_final("site-1", job_id, json.dumps({"auc": 0.7}).encode())
    for s in SITES:
        _consent(fed, kits[s], job_id)
    fed.step()  # the consents are fixed: every site shares
    head, sealed = _seal(kits, job_id, "site-1", "site-2")
    fed.xsite_upload(_me(kits["site-1"]), head, chunks(sealed))
    xsite_dir = state / "jobs" / job_id / "xsite"
    (xsite_dir / ".site-2--site-1-dead.part").write_bytes(b"an upload the kill cut short")
    fed.store.close()  # killed here

    again = _fed(workspace, state)
    job = again.job
    assert job is not None and job.state == JobState.FINALIZING
    assert set(job.final_metrics) == {"site-1"}  # kept: site-1 is not asked for it again
    assert not (xsite_dir / ".site-2--site-1-dead.part").exists()
    held = _task(again, "site-1")
    assert held["kind"] == "finalize"
    assert held["xsite"] == {"final": True, "consent": True, "sealed_to": ["site-2"], "metrics": False}
    assert _task(again, "site-3")["xsite"]["sealed_to"] == []
    # the rest of the models, then site-2's inbox: the kept one, fetched in chunks, opens
    for a, b in [(a, b) for a in SITES for b in SITES if a != b and (a, b) != ("site-1", "site-2")]:
        head, sealed = _seal(kits, job_id, a, b)
        again.xsite_upload(_me(kits[a]), head, chunks(sealed))
    again.step()
    inbox = json.loads(again.xsite_collect("site-2", wire.INBOX, job_id, wait_s=0))  # type: ignore[arg-type]
    assert sorted(inbox) == ["site-1", "site-3"]
    got = again.xsite_fetch("site-2", job_id, "site-1")
    assert not isinstance(got, Signal)
    stream_head, fh = got
    env = Envelope.from_dict(inbox["site-1"])
    assert stream_head["bytes"] == env.sealed_bytes
    out = io.BytesIO()
    with fh:
        open_stream(
            env,
            iter(lambda: fh.read(1 << 16), b""),
            out,
            project=kits["site-2"].config.project,
            job=job_id,
            me="site-2",
            my_key=kits["site-2"].private_key,
            sender_cert=kits["site-1"].cert,
        )
    assert out.getvalue() == to_safetensors(INIT)
    assert again.xsite_fetch("site-3", job_id, "site-3") == Signal.NOT_FOR_YOU
    for s in SITES:
        if s != "site-1":
            again.post_final(s, job_id, json.dumps({"auc": 0.6}).encode())
        others = {o: {"auc": 0.5} for o in SITES if o != s}
        body = {"results": {"global": {"auc": 0.6}, **others}, "refused": {}}
        again.xsite_post(_me(kits[s]), wire.METRICS, job_id, json.dumps(body).encode())
    while again.job is not None and again.job.state == JobState.FINALIZING:
        again.step()
    assert again.job is not None and again.job.state == JobState.FINISHED
    matrix = json.loads((state / "jobs" / job_id / "cross_site.json").read_text())
    assert matrix["models"] == ["global", *SITES]
    assert all(set(matrix["matrix"][o]) == set(SITES) - {o} for o in SITES)
    assert not xsite_dir.exists()  # sealed models and state gone once the job is finished
    again.store.close()


def test_a_state_file_that_does_not_load_starts_the_evaluation_again(tmp_path: Path, workspace: Path) -> None:
    kits, state = {s: load_kit(workspace / s) for s in SITES}, tmp_path / "state"
    fed, job_id = _at_evaluation(tmp_path, workspace, state)
    _consent(fed, kits["site-1"], job_id)
    fed.store.close()
    (state / "jobs" / job_id / "xsite" / "state.json").write_text('{"format": "something else"}')

    again = _fed(workspace, state)  # the job goes on (its model is done); only the evaluation restarts
    assert again.job is not None and again.job.state == JobState.FINALIZING
    assert _task(again, "site-1")["xsite"]["consent"] is False
    line = [json.loads(x) for x in (state / "audit.jsonl").read_text().splitlines()][-1]
    assert line["event"] == "xsite_resumed" and line["fresh"] is True
    again.store.close()
