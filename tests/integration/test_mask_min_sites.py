"""A mask round is never summed over fewer sites than the job's ``min_sites``, which every site's
policy admitted the job on (``limits.min_sites_per_round``), even when the mask threshold ``t`` would
let the survivors be unmasked.

Found while killing a site agent serving two mask jobs (tests/integration/test_multijob_kill.py): the
aggregator unmasked a round of 2 survivors of a ``min_sites: 3`` job because 2 reached ``t``. Now the
aggregator retries such a round instead, and a site refuses to answer an unmask request for fewer
survivors than that (the aggregator is untrusted: the sites' refusal is the guarantee)."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from secagg.agent.site import SimulatedDropout
from secagg.aggregator.modes.mask import MaskMode
from secagg.mask.errors import UnmaskRefused
from tests.integration.harness import TEST_POLICY, make_tiny_job, start, write_policies

pytestmark = pytest.mark.slow

POLICY = TEST_POLICY.replace("modes: [plain, he]", "modes: [plain, he, mask]")
MASK = {"mask": {"threshold": 2, "clip": 1.0}}


def _audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_round_with_fewer_uploads_than_min_sites_is_retried_not_unmasked(
    tmp_path: Path, workspace: Path
) -> None:
    job = make_tiny_job(tmp_path / "job", workspace, mode="mask", rounds=1, round_timeout=3, extra=MASK)
    run = start(tmp_path, workspace, job, policies=write_policies(tmp_path, POLICY))
    run.agents["site-3"].simulate_dropout = (1, "upload")  # keys and shares sent, never uploads
    fed = run.server.fed
    retried: list[dict[str, Any]] = []
    seen = threading.Event()

    def on_retry(record: dict[str, Any]) -> None:
        if record["event"] == "round_retry":
            retried.append(record)
            seen.set()

    fed.audit.listeners.append(on_retry)
    try:
        seen.wait(120)  # a bound for a hang: the upload phase times out after 3 s
        job_id = fed.job.job_id  # type: ignore[union-attr]
        fed.abort(job_id, "admin@lead")
        run.join(timeout=120)
    finally:
        run.stop()
    assert retried, "the round was neither retried nor finished"
    assert "the job needs 3" in retried[0]["reason"]
    events = [e for e in _audit(fed.audit.path) if e.get("job") == job_id]
    assert not [e for e in events if e["event"] == "round_completed"]
    assert not [e for e in events if e["event"] == "mask_phase" and e["phase"] == "mask-unmask"]
    assert isinstance(run.errors.get("site-3"), SimulatedDropout)


def test_sites_refuse_to_unmask_fewer_survivors_than_min_sites(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An aggregator that goes on with 2 survivors anyway (as this one did) learns nothing: the
    survivors refuse its unmask request."""
    real = MaskMode.step

    def careless(self: MaskMode, *a: Any, **k: Any) -> Any:
        honest = self.ctx
        self.ctx = dataclasses.replace(honest, spec=honest.spec.model_copy(update={"min_sites": 2}))
        try:
            return real(self, *a, **k)
        finally:
            self.ctx = honest

    monkeypatch.setattr(MaskMode, "step", careless)
    job = make_tiny_job(tmp_path / "job", workspace, mode="mask", rounds=1, round_timeout=3, extra=MASK)
    run = start(tmp_path, workspace, job, policies=write_policies(tmp_path, POLICY))
    run.agents["site-3"].simulate_dropout = (1, "upload")
    fed = run.server.fed
    try:
        run.join(timeout=120)
        job_id = fed.job.job_id  # type: ignore[union-attr]
    finally:
        run.stop()
    for site in ("site-1", "site-2"):
        err = run.errors.get(site)
        assert isinstance(err, UnmaskRefused), run.errors
        assert err.code == "mask_unmask_refused" and "needs at least 3" in str(err)
    events = [e for e in _audit(fed.audit.path) if e.get("job") == job_id]
    assert not [e for e in events if e["event"] == "round_completed"]
