"""The service over real mTLS gRPC: a refusal's reason code in the trailing metadata (and, as before,
at the start of the details text); cancelled and not-for-you signals as ``Message.signal`` (and, as
before, as a JSON payload)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from secagg import reasons
from secagg.aggregator.service import AggregatorServer
from secagg.provision.kit import load_kit
from secagg.transport.chunks import encode_stream
from secagg.transport.generated import secagg_pb2 as pb
from secagg.transport.generated import secagg_pb2_grpc as rpc
from secagg.transport.tls import channel


@pytest.fixture
def stub(tmp_path: Path, workspace: Path) -> Iterator[rpc.FederationStub]:
    server = AggregatorServer(
        load_kit(workspace / "aggregator"), tmp_path / "state", port=0, host="127.0.0.1"
    )
    server.start()
    ch = channel(load_kit(workspace / "site-2"), f"127.0.0.1:{server.port}")
    try:
        yield rpc.FederationStub(ch)
    finally:
        ch.close()
        server.stop(grace=0.2)


def test_a_refusal_names_its_reason_in_trailing_metadata(stub: rpc.FederationStub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Post(pb.Message(topic="no-such-topic"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("malformed: unknown topic")
    assert reasons.of_rpc_error(err.value) == "malformed"
    head = {"job_id": "nope", "round": 1, "attempt": 1, "bytes": 1}
    with pytest.raises(grpc.RpcError) as upload:
        stub.UploadResult(iter(list(encode_stream(head, [b"x"]))), timeout=10)
    assert upload.value.details().startswith("no_such_job: ")
    assert reasons.of_rpc_error(upload.value) == "no_such_job"
    assert upload.value.code() == grpc.StatusCode.NOT_FOUND


def test_collect_signals_a_cancelled_round_in_the_field_and_the_old_payload(stub: rpc.FederationStub) -> None:
    for topic in ("roster", "mask-keyroster"):
        (msg,) = list(
            stub.Collect(pb.CollectRequest(topic=topic, job_id="gone", round=1, attempt=1), timeout=10)
        )
        assert msg.signal == pb.Message.CANCELLED
        assert json.loads(msg.payload) == {"cancelled": True}
