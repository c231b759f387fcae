"""RELIABILITY.md F6: the aggregator writes its TensorBoard scalars without loading torch, and what it
writes is what ``tensorboard`` itself reads back (its ``EventAccumulator``), scalar for scalar.

A fresh process (this test process has torch loaded by other tests) imports what ``aggregator serve``
imports, runs the observer the aggregator attaches on a real audit log and store rows, and reports
``sys.modules``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from secagg.tensorboard import scalars_for_final, scalars_for_round

ROUNDS = [
    (1, {"sites": {"site-1": {"val_auc": 0.51, "loss": 2.5}, "site-2": {"val_auc": 0.53}}}, 1.25, ["site-1"]),
    (
        2,
        {
            "sites": {"site-1": {"val_auc": 0.61}, "site-2": {"val_auc": 0.63, "loss": 1.5}},
            "evaluated_round": 1,
            "final": {"site-1": {"val_auc": 0.7}, "site-2": {"val_auc": 0.8}},
        },
        2.5,
        ["site-1", "site-2"],
    ),
]

CHILD = textwrap.dedent(
    """
    import json, sys
    from dataclasses import dataclass
    from pathlib import Path

    import secagg.commands.aggregator  # what `secagg aggregator serve` imports, then
    import secagg.aggregator.service
    from secagg.auditlog import AuditLog
    from secagg.events import Event
    from secagg.tensorboard import RoundScalars

    @dataclass
    class Row:
        round: int
        metrics: dict
        seconds: float
        participants: list

    out, rounds = Path(sys.argv[1]), [Row(*r) for r in json.loads(sys.argv[2])]
    audit = AuditLog(out / "audit.jsonl", node="aggregator")
    RoundScalars(audit, lambda job: rounds, out / "jobs")
    for r in rounds:
        audit.append(Event.ROUND_COMPLETED, job="job-1", round=r.round)
    audit.append(Event.JOB_FINISHED, job="job-1", rounds=len(rounds))
    print(json.dumps(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))))
    """
)


def test_the_aggregators_tensorboard_observer_never_imports_torch_and_tensorboard_reads_it(
    tmp_path: Path,
) -> None:
    pytest.importorskip("tensorboard")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), json.dumps(ROUNDS)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []  # not torch, not any of it

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "jobs" / "job-1" / "tensorboard"
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 1
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    want: dict[str, list[tuple[int, float]]] = {}
    for r in ROUNDS:
        for tag, value, step in scalars_for_round(r[0], r[1], r[2], r[3]):  # type: ignore[arg-type]
            want.setdefault(tag, []).append((step, value))
    for tag, value, step in scalars_for_final(ROUNDS[-1][0], ROUNDS[-1][1]):  # type: ignore[arg-type]
        want.setdefault(tag, []).append((step, value))
    assert set(acc.Tags()["scalars"]) == set(want)
    for tag, points in want.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        # simple_value is a float32, as torch's SummaryWriter wrote it
        assert got == [(s, float(np.float32(v))) for s, v in points], tag
    # the sites' metrics sent in round 2 evaluate round 1's global model; the final one the last
    assert [(e.step, e.value) for e in acc.Scalars("global/val_auc")] == [
        (1, float(np.float32(0.62))),
        (2, float(np.float32(0.75))),
    ]
