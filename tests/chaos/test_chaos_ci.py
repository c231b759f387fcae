"""The CI subset of the fault harness (issue #18): per mode, one kill -9 of the aggregator (during the
uploads of round 2), one of a site (after its ledger debit, before its upload) and one 10 s partition
of a site (where network namespaces can be made), 5 sites each, real processes, restarted on the same
state, then every check of :mod:`secagg.chaos.checks`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from secagg.chaos import net
from secagg.chaos.checks import BOUND, Report, check, final_models
from secagg.chaos.run import RunSpec, run
from secagg.chaos.scenarios import KILL_SITE

# ten real federations take 7-12 minutes on the shared 2-core machine, past make test's budget: they
# run in `make chaos-ci` (which sets SECAGG_CHAOS_CI=1), and are skipped, with this reason, elsewhere
pytestmark = [
    pytest.mark.chaos,
    pytest.mark.skipif(not os.environ.get("SECAGG_CHAOS_CI"), reason="fault harness: run with make chaos-ci"),
    # two federations a test; on a loaded 2-core machine a round can take a minute
    pytest.mark.timeout(1200),
]
BOUND_S = 500.0

SITES, ROUNDS = 5, 2
#: a site partition's cut: short, so the CI subset stays a few minutes (longer ones: RELIABILITY.md)
PARTITION_S = 10.0


def _assert_clean(rep: Report, what: str) -> None:
    assert rep.finished and rep.lost == 0, f"{what}: {rep.refusals}"
    assert rep.audit_ok == rep.audit_total > SITES, f"{what}: {rep.audit_errors}"
    assert rep.overspent == 0, f"{what}: a ledger over its budget"


# tee (RELIABILITY.md F7): the restarted aggregator's enclave unseals the job's keys (sealed to the dev
# TEE's sealing key in the job's state folder), so the sites' pins hold and the job goes on
@pytest.mark.parametrize("mode", ["plain", "he", "mask", "tee"])
def test_kill_aggregator_during_upload(mode: str, tmp_path: Path) -> None:
    ref = None
    if mode in ("plain", "tee"):  # bit for bit against the fault-free run
        models = final_models(run(RunSpec(mode, SITES, ROUNDS, timeout=BOUND_S), tmp_path / "ref"))
        ref = models["site-1"]
    o = run(RunSpec(mode, SITES, ROUNDS, fault="agg-upload@2", sleep=0.5, timeout=BOUND_S), tmp_path / "kill")
    assert o.hits == ["agg-upload 2"] and o.restarts == 1
    assert not o.torch_loaded  # F6: the aggregator (its TensorBoard observer too) never maps libtorch
    rep = check(o, ref)
    _assert_clean(rep, f"{mode} aggregator kill")
    assert rep.max_abs_err <= BOUND[mode], rep.model_note
    assert not rep.leftovers, rep.leftovers  # F1: the killed attempt's spool is discarded on restart
    assert rep.model_ok, rep.model_note  # F2: bit-identical to the fault-free run in plain and tee


def test_a_tee_aggregator_back_with_other_keys_fails_the_job_with_the_sites_reason(tmp_path: Path) -> None:
    """F7 (b) with real processes: the aggregator is killed during the uploads of round 2 and its
    sealed job keys deleted before it restarts (a TEE without a sealing key). Every site refuses the
    new keys (``tee_key_changed``), and the job fails with that reason at once: the run ends by
    itself, long before its bound, instead of retrying the round every 10 s."""
    import json

    spec = RunSpec("tee", 3, ROUNDS, fault="agg-upload@2", sleep=0.5, timeout=BOUND_S, drop_sealed_keys=True)
    o = run(spec, tmp_path / "kill")
    assert o.hits == ["agg-upload 2"] and o.restarts == 1
    assert not o.timed_out
    agg = [json.loads(x) for x in (o.state / "aggregator" / "audit.jsonl").read_text().splitlines()]
    failed = [r for r in agg if r["event"] == "job_failed"]
    assert [r["code"] for r in failed] == ["tee_key_changed"], failed
    resumed = next(i for i, r in enumerate(agg) if r["event"] == "job_resumed")
    assert not [r for r in agg[resumed:] if r["event"] in ("round_retry", "round_completed")]
    for site in spec.names:
        log = [json.loads(x) for x in (o.state / site / "audit.jsonl").read_text().splitlines()]
        assert any(r["event"] == "aggregator_refused" and r["code"] == "tee_key_changed" for r in log), site
    rep = check(o)
    assert rep.audit_ok == rep.audit_total, rep.audit_errors
    assert not rep.leftovers, rep.leftovers


@pytest.mark.parametrize("mode", ["plain", "he", "mask", "tee"])
def test_kill_site_after_debit(mode: str, tmp_path: Path) -> None:
    o = run(
        RunSpec(
            mode, SITES, ROUNDS, fault="site-debit@2", target=KILL_SITE, dp=True, sleep=0.5, timeout=BOUND_S
        ),
        tmp_path / "kill",
    )
    assert o.hits == ["site-debit 2"] and o.restarts == 1
    rep = check(o)
    _assert_clean(rep, f"{mode} site kill")
    assert rep.model_ok is not False, rep.model_note  # every site holds the same final model
    assert not rep.leftovers, rep.leftovers
    # the one debit with no upload behind it is the killed site's, in the round it was killed
    assert set(rep.unuploaded_debits) <= {f"{KILL_SITE} r2"}, rep.unuploaded_debits
    # F3: the retried round re-sends each site's kept release: no site debits a round twice
    assert not rep.double_debits, rep.double_debits


@pytest.mark.skipif(
    net.available() is not None, reason=f"a partition needs network namespaces: {net.available()}"
)
@pytest.mark.parametrize("mode", ["plain", "he", "mask", "tee"])
def test_site_partition(mode: str, tmp_path: Path) -> None:
    """Site-2's link (its own network namespace) cut for 10 s once round 1 has completed, every site
    required: the round waits for it, and the job ends as a fault-free one would."""
    o = run(
        RunSpec(mode, SITES, ROUNDS, target=KILL_SITE, partition_s=PARTITION_S, timeout=BOUND_S),
        tmp_path / "cut",
    )
    assert len(o.partition) == 2, "the link was never cut and mended"
    rep = check(o)
    _assert_clean(rep, f"{mode} site partition")
    assert rep.model_ok, rep.model_note  # every site holds the same model, within the mode's bound
    assert rep.max_abs_err <= BOUND[mode], rep.model_note
    assert not rep.leftovers, rep.leftovers
