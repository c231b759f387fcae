"""The relay decides "the round moved on" and "stale" from typed signals, not from payload text."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from secagg.agent.relay import (
    AggregatorRefusedCall,
    AggregatorTooOld,
    Relay,
    RoundMovedOn,
    is_stale,
    predates_jobs,
    reason_of,
)
from secagg.transport.generated import secagg_pb2 as pb


class _Stub:
    def __init__(self, messages: list[pb.Message]) -> None:
        self.messages = messages
        self.posted: list[pb.Message] = []

    def Collect(self, request: Any, timeout: float) -> list[pb.Message]:  # noqa: N802 - gRPC's name
        return [self.messages.pop(0)] if self.messages else []

    def Post(self, msg: pb.Message, timeout: float) -> None:  # noqa: N802
        self.posted.append(msg)


class _Err(grpc.RpcError):
    def __init__(
        self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailing


def _relay(*messages: pb.Message) -> tuple[Relay, _Stub]:
    stub = _Stub(list(messages))
    return Relay(stub, max_payload=1 << 20), stub  # type: ignore[arg-type]


def test_collect_returns_the_payload_and_waits_through_empty_polls() -> None:
    relay, stub = _relay(pb.Message(topic="roster", payload=b'{"round": 1}'))
    assert relay.collect("roster", job_id="j", round_=1, attempt=1) == b'{"round": 1}'


@pytest.mark.parametrize("marker", ["cancelled", "not_for_you"])
def test_older_aggregators_json_markers_still_mean_round_moved_on(marker: str) -> None:
    relay, _ = _relay(pb.Message(topic="roster", payload=json.dumps({marker: True}).encode()))
    with pytest.raises(RoundMovedOn):
        relay.collect("roster", job_id="j", round_=1, attempt=1)


def test_a_payload_that_merely_contains_the_word_is_not_a_signal() -> None:
    body = b"\x00binary mask message mentioning " + b'"cancelled"'
    relay, _ = _relay(pb.Message(topic="mask-myshares", payload=body))
    assert relay.collect("mask-myshares", job_id="j", round_=1, attempt=1) == body


def test_stale_comes_from_the_reason_code() -> None:
    fp = grpc.StatusCode.FAILED_PRECONDITION
    assert is_stale(_Err(fp, "whatever text", (("secagg-reason", "late"),)))
    assert is_stale(_Err(fp, "wrong_round: round 3 is not open"))  # an older aggregator's text
    assert not is_stale(_Err(fp, "bad_shape: tensor w has shape (2,)"))
    assert not is_stale(_Err(grpc.StatusCode.INVALID_ARGUMENT, "late: ...", (("secagg-reason", "late"),)))
    assert reason_of(_Err(fp, "no code in this text")) is None


def test_decline_is_best_effort_and_carries_code_and_message() -> None:
    relay, stub = _relay()
    relay.decline("j", 2, "budget_exceeded", "no budget left")
    (msg,) = stub.posted
    assert msg.topic == "declined" and msg.round == 2
    assert json.loads(msg.payload) == {"code": "budget_exceeded", "message": "no budget left"}


def test_only_the_old_aggregators_unknown_topic_answer_means_it_predates_the_jobs_listing() -> None:
    old = _Err(
        grpc.StatusCode.INVALID_ARGUMENT, "malformed: unknown topic 'jobs'", (("secagg-reason", "malformed"),)
    )
    assert predates_jobs(old)
    assert predates_jobs(
        _Err(grpc.StatusCode.INVALID_ARGUMENT, "malformed: unknown topic 'jobs'")
    )  # text only
    assert not predates_jobs(_Err(grpc.StatusCode.INVALID_ARGUMENT, "malformed: topic too long"))
    assert not predates_jobs(_Err(grpc.StatusCode.UNAVAILABLE, "unknown topic 'jobs'"))

    class _Refusing(_Stub):
        def Collect(self, request: Any, timeout: float) -> list[pb.Message]:  # noqa: N802
            raise old

    with pytest.raises(AggregatorTooOld) as err:
        Relay(_Refusing([]), max_payload=1 << 20).jobs()  # type: ignore[arg-type]
    assert err.value.code == "aggregator_too_old" and "\n" not in str(err.value)


def test_an_unhandled_refusal_is_one_line_with_its_reason_code() -> None:
    coded = AggregatorRefusedCall(
        _Err(grpc.StatusCode.NOT_FOUND, "no_such_job: no job x", (("secagg-reason", "no_such_job"),))
    )
    assert coded.code == "no_such_job"
    assert str(coded) == "the aggregator refused a call (NOT_FOUND): no_such_job: no job x"
    assert AggregatorRefusedCall(_Err(grpc.StatusCode.INTERNAL, "boom")).code == "error"
