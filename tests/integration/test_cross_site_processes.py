"""evaluation: cross_site with real processes (the fault harness's federation, :mod:`secagg.chaos.run`):
a local model past the old one-message limit (8 MiB of float32) travels in chunks and every cell of
the matrix is the value of the model it names; and an aggregator killed with ``kill -9`` during the
evaluation (after it kept the first sealed model) and restarted on the same state completes the
matrix, asks no site again for what it had, and leaves no temporary file."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secagg.chaos import job as chaos_job
from secagg.chaos.checks import LEFTOVER_GLOBS, records
from secagg.chaos.run import Outcome, RunSpec, run
from secagg.crossval.matrix import JSON_FILE
from secagg.crossval.wire import DIGITS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
SITES = 3
NAMES = [f"site-{i}" for i in range(1, SITES + 1)]
#: 8 MiB of float32 in one tensor: the old relay took about 5 MiB of safetensors in one message
BIG = 2 << 20
OLD_LIMIT = 7 << 20
#: generous on a loaded 2-core machine (the federation itself needs well under a minute)
BOUND_S = 600.0


def _spec(fault: str | None = None) -> RunSpec:
    return RunSpec(
        "plain", SITES, 1, fault=fault, evaluation="cross_site", big=BIG, round_timeout=60.0, timeout=BOUND_S
    )


def _local_sum(site: str) -> float:
    """The weight sum of ``site``'s released local model after round 1 (no filter: start + its update)."""
    start = chaos_job.model(BIG)
    d = chaos_job._delta(site, 1, start)
    return float(f"{sum(float((v.astype(np.float64) + d[k]).sum()) for k, v in start.items()):.{DIGITS}g}")


def _agg_audit(o: Outcome) -> list[dict[str, Any]]:
    return records(o.state / "aggregator" / "audit.jsonl")


def _matrix(o: Outcome) -> dict[str, Any]:
    found = list((o.state / "aggregator" / "jobs").glob(f"*/{JSON_FILE}"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


def _check_matrix(o: Outcome) -> None:
    """Complete (every site's local model measured at every other site, the global one everywhere),
    and each cell is the value of the model its row names."""
    assert not o.timed_out, o.exits
    m = _matrix(o)
    assert m["shared"] is True and m["models"] == ["global", *NAMES]
    final = _final_global(o)  # the global model every site holds at the end
    global_sum = float(f"{sum(float(v.astype(np.float64).sum()) for v in final.values()):.{DIGITS}g}")
    for evaluator in NAMES:
        assert m["matrix"]["global"][evaluator]["weight_sum"] == pytest.approx(global_sum, rel=1e-5)
    sums = {owner: _local_sum(owner) for owner in NAMES}
    assert len({round(v) for v in sums.values()}) == SITES  # the cells tell the models apart
    for owner in NAMES:
        row = m["matrix"][owner]
        assert set(row) == set(NAMES) - {owner}
        for evaluator, cell in row.items():
            assert cell["weight_sum"] == pytest.approx(sums[owner], rel=1e-6), (owner, evaluator)
            assert cell["evaluator_n"] == chaos_job.samples(evaluator)


def _final_global(o: Outcome) -> dict[str, np.ndarray]:
    from secagg.bundle import from_safetensors

    path = next((o.state / "site-1" / "jobs").glob("*/final.safetensors"))
    return dict(from_safetensors(path.read_bytes()))


def _no_leftovers(o: Outcome) -> None:
    found = sorted(str(p) for g in LEFTOVER_GLOBS for p in o.state.rglob(g))
    found += sorted(str(p) for p in o.state.rglob(".xsite-*"))  # a site's sealed scratch files
    found += sorted(str(p) for p in o.state.rglob("*.part"))
    assert not found, found
    assert not list((o.state / "aggregator" / "jobs").glob("*/xsite")), "the sealed models stayed"


def test_a_model_past_the_old_limit_travels_in_chunks(tmp_path: Path) -> None:
    o = run(_spec(), tmp_path / "run", log=lambda *_: None)
    _check_matrix(o)
    relayed = [r for r in _agg_audit(o) if r["event"] == "xsite_relayed"]
    assert len(relayed) == SITES * (SITES - 1)
    assert min(r["bytes"] for r in relayed) > OLD_LIMIT  # each one past what one message could carry
    _no_leftovers(o)


def test_an_aggregator_killed_during_the_evaluation_resumes_it(tmp_path: Path) -> None:
    o = run(_spec("agg-xsite@1"), tmp_path / "run", log=lambda *_: None)
    assert o.hits == ["agg-xsite 1"] and o.restarts == 1, (o.hits, o.exits)
    _check_matrix(o)
    audit = _agg_audit(o)
    resumed = [r for r in audit if r["event"] == "xsite_resumed"]
    assert len(resumed) == 1 and resumed[0]["fixed"] is True and resumed[0]["relayed"] >= 1
    assert resumed[0]["consents"] == NAMES
    # nothing it held was asked for or sent again: one consent, one final evaluation, one metrics
    # report per site, each pair's sealed model at most once (the killed one's line never came),
    # and no upload refused as a duplicate
    for event in ("xsite_consent", "site_final", "xsite_metrics"):
        counts = Counter(r["site"] for r in audit if r["event"] == event)
        assert max(counts.values()) == 1, (event, counts)
    pairs = Counter((r["site"], r["to"]) for r in audit if r["event"] == "xsite_relayed")
    assert max(pairs.values()) == 1 and len(pairs) >= SITES * (SITES - 1) - resumed[0]["relayed"]
    assert not [r for r in audit if r["event"] == "refused" and r.get("code") == "duplicate"]
    # each site sealed its model to each peer once over both aggregators (its own audit log)
    for name in NAMES:
        lines = records(o.state / name / "audit.jsonl")
        shared = [peer for r in lines if r["event"] == "xsite_shared" for peer in r["to"]]
        assert len(shared) == len(set(shared)), (name, shared)
    _no_leftovers(o)
