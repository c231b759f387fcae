"""Metrics and TensorBoard during a real (in-process, three-site, plain) federation run."""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import make_tiny_job, start

pytestmark = pytest.mark.slow
ROUNDS = 1  # each round costs seconds of subprocess training at three sites; one shows the movement


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # noqa: S310
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_counters_move_as_rounds_complete_and_scalars_are_written(tmp_path: Path, workspace: Path) -> None:
    job = make_tiny_job(tmp_path / "job", workspace, mode="plain", rounds=ROUNDS)
    run = start(tmp_path, workspace, job)
    metrics = run.server.metrics
    port = metrics.serve(0)
    assert port is not None
    seen: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            seen.append(scrape(port).get(("secagg_rounds_completed_total", (("mode", "plain"),)), 0.0))
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        run.join()
        assert not run.errors, run.errors
        stop.set()
        poller.join(10)
        final = scrape(port)
        # the finished job's model, downloaded through the admin console, is what the sites hold
        from secagg.aggregator.admin_client import AdminClient
        from secagg.bundle import from_safetensors
        from secagg.provision.kit import load_kit

        job_id = run.server.fed.job.job_id  # type: ignore[union-attr]
        with AdminClient(load_kit(tmp_path / "ws" / "admin@lead"), f"127.0.0.1:{run.server.port}") as admin:
            admin.download(job_id, tmp_path / "dl")
        got = from_safetensors((tmp_path / "dl" / "model.safetensors").read_bytes())
        want = run.final("site-1")
        assert list(got) == list(want) and all((got[k] == want[k]).all() for k in want)
    finally:
        stop.set()
        metrics.close()
        run.stop()
    # the counter moved with the rounds: scraped before, during and after, never backwards
    assert seen == sorted(seen) and seen[0] == 0
    assert final[("secagg_rounds_completed_total", (("mode", "plain"),))] == ROUNDS
    assert final[("secagg_round_seconds_count", (("mode", "plain"),))] == ROUNDS
    assert final[("secagg_bytes_received_total", (("mode", "plain"),))] > 0
    assert final[("secagg_bytes_sent_total", (("mode", "plain"),))] > 0
    assert final[("secagg_jobs_total", (("outcome", "finished"),))] == 1
    assert ("secagg_connected_sites", ()) in final
    # no label anywhere carries more than modes, codes, events and outcomes
    labels = {k for _name, lab in final for k, _v in lab}
    assert labels <= {"mode", "code", "event", "outcome", "le"}

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "state" / "aggregator" / "jobs" / job_id / "tensorboard"
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"round/seconds", "site/site-1/val_auc", "global/val_auc"} <= tags
    assert [e.step for e in acc.Scalars("site/site-2/val_auc")] == list(range(1, ROUNDS + 1))
    # the tiny job reports val_auc = 0.5 + 0.01 * round at every site; the final evaluation is the
    # last global model's, at step = rounds
    assert [round(e.value, 6) for e in acc.Scalars("site/site-3/val_auc")] == [0.51]
    assert [e.step for e in acc.Scalars("final/site-1/val_auc")] == [ROUNDS]
