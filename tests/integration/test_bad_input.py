"""Bad input at the aggregator: each gets a specific refusal and an audit line, the round goes on
with the honest sites, and the aggregator keeps serving."""

from __future__ import annotations

import json
import shutil
from collections import OrderedDict
from pathlib import Path

import grpc
import numpy as np
import pytest

from secagg import reasons
from secagg.agent.consistency import sign_fingerprint
from secagg.bundle import fingerprint, from_safetensors, to_safetensors
from secagg.errors import ConfigError
from secagg.provision.kit import load_kit
from secagg.provision.writer import provision
from secagg.transport.chunks import encode_stream, read_all
from secagg.transport.generated import secagg_pb2 as pb
from secagg.transport.generated import secagg_pb2_grpc as rpc
from secagg.transport.tls import channel
from tests.conftest import make_project
from tests.integration.harness import SAMPLES, expected_global, make_tiny_job, start
from tests.integration.tinyjob_train import delta

pytestmark = pytest.mark.slow


def _upload(stub: rpc.FederationStub, header: dict, body: bytes, *, cut: bool = False) -> None:
    chunks = list(encode_stream(header, [body]))
    if cut:
        chunks = chunks[:-1]  # drop the trailer: the stream ends mid-way
    stub.UploadResult(iter(chunks), timeout=30)


def test_bad_uploads_are_refused_and_the_round_goes_on(tmp_path: Path, workspace: Path) -> None:
    job = make_tiny_job(tmp_path / "job", workspace, mode="plain", rounds=1, min_sites=2, round_timeout=20)
    run = start(tmp_path, workspace, job, sites=["site-1", "site-2"])
    evil_kit = load_kit(tmp_path / "ws" / "site-3")
    ch = channel(evil_kit, f"127.0.0.1:{run.server.port}")
    stub = rpc.FederationStub(ch)
    try:
        stub.Register(pb.RegisterRequest(agent_version="test"), timeout=10)
        header, payload = read_all(
            iter(stub.FetchTask(pb.TaskRequest(poll_seconds=10), timeout=30)), max_bytes=1 << 20
        )
        assert header["kind"] == "train"
        job_id, rnd, attempt = header["job_id"], header["round"], header["attempt"]
        glob = from_safetensors(payload)
        fp = fingerprint(glob)
        ready = {
            "attempt": attempt,
            "n_samples": SAMPLES["site-3"],
            "metrics": {},
            "fingerprint": sign_fingerprint(
                evil_kit.private_key, fp, job_id, rnd, attempt, "site-3", n_samples=SAMPLES["site-3"]
            ),
        }
        # hostile sample counts (the weights a roster is made of) are refused one by one, each
        # with its reason, and none counts: the honest ready after them is still the site's first
        for n in (1e308, 10**400, -1, 0, 2.5, True, "100", None, [1], 10**12 + 1):
            text = json.dumps({**ready, "n_samples": n}).encode()
            with pytest.raises(grpc.RpcError) as hostile:
                stub.Post(pb.Message(topic="ready", job_id=job_id, round=rnd, payload=text), timeout=10)
            assert reasons.of_rpc_error(hostile.value) == "bad_weight", (n, hostile.value.details())
        unsigned = json.dumps({**ready, "n_samples": SAMPLES["site-3"] * 100}).encode()
        with pytest.raises(grpc.RpcError) as inflated:  # a count other than the one it signed
            stub.Post(pb.Message(topic="ready", job_id=job_id, round=rnd, payload=unsigned), timeout=10)
        assert reasons.of_rpc_error(inflated.value) == "malformed"
        assert "differs from its signed sample count" in inflated.value.details()
        stub.Post(
            pb.Message(topic="ready", job_id=job_id, round=rnd, payload=json.dumps(ready).encode()),
            timeout=10,
        )
        with pytest.raises(grpc.RpcError) as dup_ready:
            stub.Post(
                pb.Message(topic="ready", job_id=job_id, round=rnd, payload=json.dumps(ready).encode()),
                timeout=10,
            )
        assert dup_ready.value.code() == grpc.StatusCode.ALREADY_EXISTS
        roster = None
        while roster is None:
            for msg in stub.Collect(
                pb.CollectRequest(topic="roster", job_id=job_id, round=rnd, timeout_seconds=10)
            ):
                roster = json.loads(msg.payload)
        w = roster["weights"]["site-3"]
        d = delta("site-3", rnd, {k: v.shape for k, v in glob.items()})
        good = OrderedDict((k, d[k] * w) for k in glob)
        up = {"job_id": job_id, "round": rnd, "attempt": attempt, "mode": "plain"}

        def send(bundle: dict, *, cut: bool = False) -> grpc.RpcError:
            body = to_safetensors(bundle)
            with pytest.raises(grpc.RpcError) as err:
                _upload(stub, {**up, "bytes": len(body)}, body, cut=cut)
            return err.value

        missing = send(OrderedDict(list(good.items())[:-1]))
        assert (
            missing.code() == grpc.StatusCode.INVALID_ARGUMENT
            and "missing tensors: head" in missing.details()
        )
        extra = send(OrderedDict([*good.items(), ("sneaky", np.zeros(2, np.float32))]))
        assert "unexpected tensors: sneaky" in extra.details()
        shaped = send(OrderedDict((k, v.reshape(-1) if k == "layer.weight" else v) for k, v in good.items()))
        assert "wrong shapes" in shaped.details()
        nan = send(OrderedDict((k, np.full_like(v, np.nan) if k == "head" else v) for k, v in good.items()))
        assert "non_finite" in nan.details()
        cut = send(good, cut=True)
        assert cut.code() == grpc.StatusCode.INVALID_ARGUMENT and "truncated" in cut.details()
        body = to_safetensors(good)
        _upload(stub, {**up, "bytes": len(body)}, body)  # the honest retry is accepted
        with pytest.raises(grpc.RpcError) as twice:
            _upload(stub, {**up, "bytes": len(body)}, body)
        assert twice.value.code() == grpc.StatusCode.ALREADY_EXISTS

        # an admin certificate is not a site
        admin = rpc.FederationStub(
            channel(load_kit(tmp_path / "ws" / "admin@lead"), f"127.0.0.1:{run.server.port}")
        )
        with pytest.raises(grpc.RpcError) as not_site:
            admin.Register(pb.RegisterRequest(), timeout=10)
        assert not_site.value.code() == grpc.StatusCode.PERMISSION_DENIED

        # a client certificate from another project's CA never gets past the TLS handshake
        other = tmp_path / "other"
        provision(make_project(name="other"), other)
        foreign = rpc.FederationStub(channel(load_kit(other / "site-1"), f"127.0.0.1:{run.server.port}"))
        with pytest.raises(grpc.RpcError) as foreign_err:
            foreign.Register(pb.RegisterRequest(), timeout=5)
        assert foreign_err.value.code() == grpc.StatusCode.UNAVAILABLE

        run.join()
        assert not run.errors, run.errors
        want = expected_global(1, ["site-1", "site-2", "site-3"])
        got = run.final("site-1")
        assert max(float(np.max(np.abs(got[k] - want[k]))) for k in want) < 1e-6
        # the aggregator still serves after all that
        assert stub.Heartbeat(pb.HeartbeatRequest(), timeout=10).ok
    finally:
        ch.close()
        run.stop()
    audit = [
        json.loads(line)
        for line in (tmp_path / "state" / "aggregator" / "audit.jsonl").read_text().splitlines()
    ]
    codes = [r.get("code") for r in audit if r["event"] == "refused"]
    for code in ("bad_shape", "non_finite", "truncated", "duplicate_upload", "duplicate"):
        assert code in codes, (code, codes)
    assert any(r["event"] == "refused_identity" and r.get("peer") == "admin@lead" for r in audit)


def test_unreadable_data_folder_is_refused_before_connecting(tmp_path: Path, workspace: Path) -> None:
    from secagg.agent.site import SiteAgent

    kit = load_kit(workspace / "site-1")
    with pytest.raises(ConfigError, match="does not exist"):
        SiteAgent(kit, tmp_path / "nope", tmp_path / "state", policy_path=tmp_path / "p.yaml")
    shutil.rmtree(tmp_path / "state", ignore_errors=True)
