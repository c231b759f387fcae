"""The sites' evaluation of each global model is kept per round, the last one beside the final one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.harness import TEST_POLICY, make_tiny_job, start, write_policies

pytestmark = pytest.mark.slow


def test_the_final_evaluation_does_not_replace_the_last_rounds_metrics(
    tmp_path: Path, workspace: Path
) -> None:
    job = make_tiny_job(tmp_path / "job", workspace, mode="plain", rounds=3)
    run = start(tmp_path, workspace, job, policies=write_policies(tmp_path, TEST_POLICY))
    try:
        run.join()
        assert not run.errors, run.errors
        fed = run.server.fed
        rows = fed.store.rounds(fed.job.job_id)  # type: ignore[union-attr]
    finally:
        run.stop()
    assert [r.round for r in rows] == [1, 2, 3]
    # round r's row holds what the sites measured of the model after round r - 1 (sent with the upload)
    for row in rows:
        assert row.metrics["evaluated_round"] == row.round - 1
        assert {s: m["val_auc"] for s, m in row.metrics["sites"].items()} == {
            s: pytest.approx(0.5 + 0.01 * row.round) for s in ("site-1", "site-2", "site-3")
        }
    # and the last row also holds the sites' evaluation of the final model
    assert set(rows[-1].metrics["final"]) == {"site-1", "site-2", "site-3"}
