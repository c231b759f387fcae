"""RELIABILITY.md F17, over real mTLS gRPC: an upload whose connection dies mid-stream (the site's
link cut for longer than gRPC's keepalive) reaches the handler as a bare ``grpc.RpcError`` from the
request iterator. It is refused as ``truncated`` with its audit line, the spool keeps nothing of it,
and the site's resend of the same bytes is accepted; before the fix it was ``internal`` with a
traceback, in he and mask (whichever way gRPC reported the cut)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from secagg.aggregator.service import AggregatorServer
from secagg.bundle import to_safetensors
from secagg.provision.kit import load_kit
from secagg.transport.chunks import encode_stream
from secagg.transport.generated import secagg_pb2 as pb
from secagg.transport.generated import secagg_pb2_grpc as rpc
from secagg.transport.tls import channel
from tests.aggregator.conftest import header, open_uploads, update, write_job


def _refusals(server: AggregatorServer) -> list[dict[str, Any]]:
    lines = server.fed.audit.path.read_text().splitlines()
    return [x for x in map(json.loads, lines) if x["event"] == "refused" and x.get("site") == "site-2"]


def test_an_upload_cut_off_mid_stream_is_truncated_and_its_resend_accepted(
    tmp_path: Path, workspace: Path
) -> None:
    kit = load_kit(workspace / "aggregator")
    server = AggregatorServer(kit, tmp_path / "state", port=0, host="127.0.0.1")
    server.fed.submit(write_job(tmp_path / "job"), "tester")
    open_uploads(server.fed, {"site-1": 0.25, "site-2": 0.75})
    server.start()
    ch = channel(load_kit(workspace / "site-2"), f"127.0.0.1:{server.port}")
    try:
        stub = rpc.FederationStub(ch)
        payload = to_safetensors(update(0.1))
        stream = list(encode_stream(header(server.fed, payload), [payload]))
        started, hold = threading.Event(), threading.Event()

        def cut_short() -> Iterator[pb.Chunk]:
            yield stream[0]  # the header, then the first bytes of the payload
            yield stream[1]
            started.set()
            hold.wait(30)  # the link goes quiet: no more bytes, no trailer

        call = stub.UploadResult.future(cut_short(), timeout=30)
        assert started.wait(10)
        time.sleep(0.3)  # the header and first chunk have reached the handler
        call.cancel()  # what the site's gRPC does when its connection is declared dead
        hold.set()
        deadline = time.monotonic() + 10
        while not _refusals(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        (refused,) = _refusals(server)
        # gRPC hands the handler a cancelled stream either as an error from its request iterator
        # (F17: that was refused as ``internal``) or, on a loaded machine, as the stream's end
        assert refused["code"] == "truncated", refused
        assert refused["reason"] in (
            "stream cut off: the caller's connection was lost mid-stream",
            "stream cut off before its trailer",
        )
        spool = tmp_path / "state" / "spool"
        assert not [p for p in spool.rglob("*") if p.is_file()]
        # the site sends the same bytes again, as its upload retry does: accepted
        reply = stub.UploadResult(iter(stream), timeout=30)
        assert reply.accepted
        assert [p.name for p in spool.rglob("*") if p.is_file()] == ["site-2.upload"]
    finally:
        ch.close()
        server.stop(grace=0.2)
