"""Job state and round phase are str-valued enums: stored values and the wire read as before."""

from __future__ import annotations

import json

from secagg.aggregator.rounds import JobState, Phase, Signal


def test_members_are_their_stored_strings() -> None:
    assert [s.value for s in JobState] == [
        "idle",
        "queued",
        "running",
        "finalizing",
        "finished",
        "aborted",
        "failed",
    ]
    assert [p.value for p in Phase] == ["ready", "upload", "mask", "combining"]
    assert JobState.RUNNING == "running" and f"job {JobState.ABORTED}" == "job aborted"
    assert json.dumps({"state": JobState.FINISHED, "phase": Phase.UPLOAD}) == (
        '{"state": "finished", "phase": "upload"}'
    )
    assert JobState("failed") is JobState.FAILED


def test_terminal_states() -> None:
    assert {s for s in JobState if s.terminal} == {JobState.FINISHED, JobState.ABORTED, JobState.FAILED}


def test_signals_keep_the_legacy_payload_keys() -> None:
    assert json.dumps({str(Signal.CANCELLED): True}) == '{"cancelled": true}'
    assert str(Signal.NOT_FOR_YOU) == "not_for_you"
