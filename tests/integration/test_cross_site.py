"""evaluation: cross_site end to end: the matrix from the federated workflow, in plain and he mode; a
site that does not share leaves only the global row; the aggregator never holds a local model in the
clear; ``admin download`` returns the matrix."""

from __future__ import annotations

import json
import shutil
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from secagg.aggregator.admin_client import AdminClient
from secagg.aggregator.rounds import JobState
from secagg.crossval.matrix import JSON_FILE, PNG_FILE
from secagg.crossval.wire import DIGITS
from secagg.provision.kit import load_kit
from tests.integration.harness import HERE, INIT, SAMPLES, TEST_POLICY, make_tiny_job, start, write_policies
from tests.integration.test_tee import DEV_TEE, _enclave
from tests.integration.tinyjob_train import delta

pytestmark = pytest.mark.slow
SITES = list(SAMPLES)
SHARING = TEST_POLICY.replace("modes: [plain, he]", "modes: [plain, he, mask, tee]").replace(
    "limits:", "privacy:\n  share_local_model_for_evaluation: true\nlimits:"
) + DEV_TEE.split("min_sites_per_round: 2\n", 1)[1]  # the dev-TEE attestation rules of test_tee


def _job(tmp: Path, workspace: Path, mode: str) -> Path:
    extra: dict = {"evaluation": "cross_site"} | ({"mask": {"threshold": 2}} if mode == "mask" else {})
    job = make_tiny_job(tmp / "job", workspace, mode=mode, rounds=1, round_timeout=20, extra=extra)
    shutil.copy(HERE / "xsite_train.py", job / "train.py")
    shutil.copy(HERE / "tinyjob_train.py", job / "tinyjob_train.py")
    from secagg.jobs.sign import sign_job

    sign_job(job, load_kit(workspace / "submitter@org-1"))
    return job


def _local(site: str) -> OrderedDict[str, np.ndarray]:
    d = delta(site, 1, {k: v.shape for k, v in INIT.items()})
    return OrderedDict((k, (v.astype(np.float64) + d[k]).astype(np.float32)) for k, v in INIT.items())


def _rounded(x: float) -> float:
    return float(f"{x:.{DIGITS}g}")


def _run(tmp: Path, workspace: Path, mode: str, policies: dict[str, str]) -> tuple[dict, Path, list[dict]]:
    job = _job(tmp, workspace, mode)
    enclave = _enclave() if mode == "tee" else None
    run = start(tmp, workspace, job, policies=write_policies(tmp, policies), enclave=enclave)
    try:
        run.join(timeout=180)
        assert not run.errors, run.errors
        fed = run.server.fed
        job = fed.job
        assert job is not None
        deadline = time.monotonic() + 60  # the agents are done once they posted; the matrix follows
        while job.state != JobState.FINISHED and time.monotonic() < deadline:
            time.sleep(0.1)
        assert job.state == JobState.FINISHED
        job_id = job.job_id
        out = tmp / "download"
        with AdminClient(load_kit(tmp / "ws" / "admin@lead"), f"127.0.0.1:{run.server.port}") as admin:
            header = admin.download(job_id, out)
    finally:
        run.stop()
    assert {f["name"] for f in header["files"]} >= {JSON_FILE, PNG_FILE}
    agg = tmp / "state" / "aggregator"
    kept = json.loads((agg / "jobs" / job_id / JSON_FILE).read_text())
    assert json.loads((out / JSON_FILE).read_text()) == kept  # admin download returns the matrix
    assert (out / PNG_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    audit = [json.loads(line) for line in (agg / "audit.jsonl").read_text().splitlines()]
    return kept, agg, audit


def _no_local_model_in_the_clear(agg: Path) -> None:
    """No file under the aggregator's state holds any site's local model (any tensor's raw bytes);
    the check is live: the site's own copy of its model does hold them."""
    own = (agg.parent / "site-2" / "jobs").glob("*/xsite-local.safetensors")
    assert _local("site-2")["layer.weight"].tobytes() in next(own).read_bytes()
    needles = [a.tobytes() for s in SITES for a in _local(s).values()]
    files = [p for p in agg.rglob("*") if p.is_file()]
    assert files
    for p in files:
        data = p.read_bytes()
        assert not any(n in data for n in needles), f"{p} holds a local model in the clear"


@pytest.mark.parametrize("mode", ["plain", "he", "mask", "tee"])
def test_every_site_evaluates_every_model(tmp_path: Path, workspace: Path, mode: str) -> None:
    matrix, agg, audit = _run(tmp_path, workspace, mode, {s: SHARING for s in SITES})
    assert matrix["shared"] is True and matrix["not_shared"] == {}
    assert matrix["models"] == ["global", *SITES] and matrix["sites"] == SITES
    cells = matrix["matrix"]
    for owner in SITES:  # each local model, measured at each other site (and only there)
        want = _rounded(sum(float(v.astype(np.float64).sum()) for v in _local(owner).values()))
        assert set(cells[owner]) == set(SITES) - {owner}
        for evaluator, got in cells[owner].items():
            assert got["weight_sum"] == pytest.approx(want, rel=1e-5)
            assert got["evaluator_n"] == SAMPLES[evaluator]
            assert got["is_global"] == 0.0  # task.model named the site whose model it was
    assert {s: c["evaluator_n"] for s, c in cells["global"].items()} == SAMPLES
    assert all(c["is_global"] == 1.0 for c in cells["global"].values())
    relayed = [(r["site"], r["to"]) for r in audit if r["event"] == "xsite_relayed"]
    assert sorted(relayed) == sorted((a, b) for a in SITES for b in SITES if a != b)
    assert matrix["plotted_metric"] == "weight_sum"  # the first the script reports
    _no_local_model_in_the_clear(agg)


def test_one_site_that_does_not_share_leaves_only_the_global_row(tmp_path: Path, workspace: Path) -> None:
    policies = {s: SHARING for s in SITES} | {"site-3": TEST_POLICY}
    matrix, agg, audit = _run(tmp_path, workspace, "plain", policies)
    assert matrix["shared"] is False
    assert matrix["not_shared"] == {"site-3": "xsite_not_shared"}
    assert matrix["models"] == ["global"]
    assert set(matrix["matrix"]["global"]) == set(SITES)
    assert not [r for r in audit if r["event"] == "xsite_relayed"]
    fixed = next(r for r in audit if r["event"] == "xsite_consents_fixed")
    assert fixed["share"] is False and fixed["sites"] == SITES
    _no_local_model_in_the_clear(agg)
