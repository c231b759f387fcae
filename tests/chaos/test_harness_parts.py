"""The harness's pure parts, without processes: the plan, the reference model, the tables and the
plot, the kill-point launcher's refusal of a point it does not know, and the leftover scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from secagg.chaos import job, shim
from secagg.chaos.checks import Report, _leftovers
from secagg.chaos.run import Outcome, RunSpec
from secagg.chaos.scenarios import Row, load_table, plan, plot, table


def test_plan_expands_every_point_per_mode() -> None:
    runs = plan(["kill-aggregator", "kill-site"], ["plain", "he"])
    assert len(runs) == 2 * (len(shim.AGGREGATOR_POINTS) + len(shim.SITE_POINTS))
    site_runs = [p.spec for p in runs if p.scenario == "kill-site"]
    assert all(s.dp and s.target == "site-2" for s in site_runs)
    # every rounds' point; the cross-site one is reached only by a cross_site job (its own test)
    assert {p.spec.fault for p in runs} == {f"{x}@2" for x in shim.POINTS if x not in shim.XSITE_POINTS}
    with pytest.raises(ValueError, match="unknown scenario"):
        plan(["nope"], ["plain"])


def test_expected_final_follows_the_participants() -> None:
    sites = ["site-1", "site-2", "site-3"]
    everyone = job.expected_final(2, sites)
    assert np.array_equal(job.expected_final(2, sites, {1: sites, 2: sites})["head"], everyone["head"])
    without = job.expected_final(2, sites, {2: ["site-1", "site-3"]})
    assert not np.array_equal(without["head"], everyone["head"])


def test_expected_final_covers_a_large_models_extra_tensor() -> None:
    sites = ["site-1", "site-2"]
    small, big = job.expected_final(2, sites), job.expected_final(2, sites, big=1000)
    # the big tensor is drawn after the others: theirs are unchanged, and it moved away from 0.5
    assert all(np.allclose(small[k], big[k], rtol=0, atol=1e-15) for k in small)
    assert big["big"].shape == (1000,) and float(np.max(np.abs(big["big"] - 0.5))) > 0.01


def test_an_upload_is_cut_only_once_its_bytes_are_arriving(tmp_path: Path) -> None:
    from secagg.chaos.run import CUT_AFTER_BYTES, _partial_upload

    attempt = tmp_path / "state" / "aggregator" / "spool" / "job-1" / "2-1"
    attempt.mkdir(parents=True)
    assert _partial_upload(tmp_path, "site-2", 2) is None
    (attempt / "site-2.upload").write_bytes(b"x")  # a whole upload is not one being received
    (attempt / ".site-20-ab12.part").write_bytes(b"x")  # nor another site's
    (tmp_path / "state" / "aggregator" / "spool" / "job-1" / "1-1").mkdir()
    (tmp_path / "state" / "aggregator" / "spool" / "job-1" / "1-1" / ".site-2-zz.part").write_bytes(b"x")
    assert _partial_upload(tmp_path, "site-2", 2) is None  # nor its upload of another round
    part = attempt / ".site-2-k3j4.part"
    part.write_bytes(b"x" * 10)
    assert _partial_upload(tmp_path, "site-2", 2) == part
    assert CUT_AFTER_BYTES > 10  # the run waits for more than an opened stream before it cuts


def test_partition_upload_plans_a_large_model_and_a_timeout_past_the_cut() -> None:
    runs = plan(["partition-upload-10s", "partition-upload-60s"], ["tee"], sites=5)
    for p, cut in zip(runs, (10.0, 60.0), strict=True):
        s = p.spec
        assert (s.target, s.partition_at, s.partition_s, s.min_sites) == ("site-2", "upload", cut, None)
        assert s.big * 4 >= 32 << 20 and s.round_timeout > cut
        assert p.label == f"{cut:.0f} s cut mid-upload"


def test_an_internal_refusal_anywhere_fails_the_run(tmp_path: Path) -> None:
    from secagg.chaos.checks import _rounds

    spec = RunSpec("he", sites=2, rounds=1)
    for node, line in (
        ("aggregator", '{"event":"round_completed","round":1,"sites":["site-1","site-2"]}'),
        ("aggregator", '{"event":"refused","code":"internal","reason":"RpcError","round":1,"site":"site-2"}'),
        ("aggregator", '{"event":"job_finished"}'),
        ("site-1", '{"event":"refused","code":"truncated","round":1}'),
    ):
        log = tmp_path / "state" / node / "audit.jsonl"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as fh:
            fh.write(line + "\n")
    r = Report(finished=True, audit_ok=3, audit_total=3)
    _rounds(Outcome(spec, tmp_path, 1.0, False), r)
    assert r.internal == ["aggregator refused r1: RpcError"]  # a bug, whatever fault the run injected
    assert r.completed == 1 and not r.ok
    r.internal.clear()
    assert r.ok


def test_unknown_kill_point_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown point"):
        shim.install("agg-nowhere", 2)


def _row(scenario: str, label: str, mode: str, sites: int, ok: bool) -> Row:
    rep = Report(
        completed=3, finished=True, model_ok=ok, model_note="max |err| 1e-08", audit_ok=4, audit_total=4
    )
    return Row(scenario, label, mode, sites, 3, 10.0, 1.5, 200 << 20, True, 0, rep.to_dict())


def test_tables_and_plot(tmp_path: Path) -> None:
    rows = [_row("kill-aggregator", "agg-upload", "plain", 5, True), _row("load", "10 sites", "he", 10, True)]
    lines = table(rows)
    assert lines[0].startswith("| scenario | point | mode | runs | rounds completed | rounds lost |")
    assert (
        "`secagg chaos --scenario kill-aggregator --modes plain --sites 5 --rounds 3 --points agg-upload`"
        in lines[2]
    )
    assert "--load-sites 10" in lines[3]
    assert load_table(rows)[2] == "| he | 10 | 3/3 | 1.50 | 200 |"
    plot(rows, tmp_path / "load.png")
    assert (tmp_path / "load.png").read_bytes()[:4] == b"\x89PNG"


def test_leftover_scan_finds_temp_files_and_spool(tmp_path: Path) -> None:
    o = Outcome(RunSpec("plain", 2, 1), tmp_path, 1.0, False)
    (tmp_path / "state" / "aggregator" / "spool" / "j" / "2-1").mkdir(parents=True)
    (tmp_path / "state" / "aggregator" / "spool" / "j" / "2-1" / ".site-1-x.part").write_bytes(b"x")
    (tmp_path / "state" / "site-1").mkdir(parents=True)
    (tmp_path / "state" / "site-1" / ".progress.json.ab.tmp").write_bytes(b"x")
    (tmp_path / "state" / "site-1" / "audit.jsonl").write_bytes(b"")
    r = Report()
    _leftovers(o, r)
    assert r.leftovers == [
        "state/aggregator/spool/j/2-1/.site-1-x.part",
        "state/site-1/.progress.json.ab.tmp",
    ]


def test_audit_check_verifies_each_log_against_its_kit(tmp_path: Path, workspace: Path) -> None:
    """The harness's audit check is the library's ``verify_audit`` with each node's own certificate:
    a signed, intact log counts, a truncated one or one signed by another node is named."""
    import shutil

    from secagg.auditlog import AuditLog
    from secagg.chaos.checks import _audit
    from secagg.provision.kit import load_kit

    shutil.copytree(workspace, tmp_path / "workspace")
    o = Outcome(RunSpec("plain", 2, 1), tmp_path, 1.0, False)
    for node, signer in (("aggregator", "aggregator"), ("site-1", "site-1"), ("site-2", "site-1")):
        (o.state / node).mkdir(parents=True)
        log = AuditLog(
            o.state / node / "audit.jsonl", key=load_kit(o.workspace / signer).private_key, node=signer
        )
        for i in range(3):
            log.append("round_completed", job="j", round=i + 1)
    path = o.state / "aggregator" / "audit.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))  # the last line removed
    r = Report()
    _audit(o, r)
    assert (r.audit_total, r.audit_ok) == (3, 1)
    assert [e.split(":")[0] for e in r.audit_errors] == ["aggregator", "site-2"]


def test_plan_expands_clock_skew_and_disk_full() -> None:
    skew = plan(["clock-skew"], ["tee"], sites=3)
    assert [(p.label, p.spec.clock_skew_s, p.spec.min_sites) for p in skew] == [
        ("+600 s", 600.0, 2),
        ("-600 s", -600.0, 2),
    ]
    (disk,) = plan(["disk-full"], ["plain"])
    assert disk.spec.disk_full_s is not None and disk.spec.disk_mb > 0


def test_a_skewed_process_reads_a_moved_clock() -> None:
    import subprocess
    import sys
    import time

    code = "from secagg.chaos.shim import skew_clock; skew_clock(-600); import time; print(time.time())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert abs(float(out.stdout) - (time.time() - 600)) < 30


def test_the_dp_policy_has_one_privacy_section_and_loads(tmp_path: Path) -> None:
    from secagg.chaos.run import _policy
    from secagg.policy.check import load_policy

    text = _policy(True)
    assert text.count("\nprivacy:") + text.startswith("privacy:") == 1
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    policy = load_policy(path)
    assert policy.privacy.budget is not None and policy.privacy.budget.epsilon == 50.0
