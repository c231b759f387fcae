"""A tee site reads the aggregator's certificate with a TLS handshake of its own (gRPC does not show a
channel's peer). When the network went between the evidence (a gRPC call) and that handshake, the
``OSError`` ended the job and the agent with a traceback, and the job waited for that site for ever
(RELIABILITY.md, F16: CI's ``test_site_partition[tee]``). Now a port that cannot be reached is a lost
aggregator, ridden out like any other; a certificate the project CA does not vouch for still ends the
job."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from secagg.agent import site as site_module
from secagg.agent.modes.base import ModeContext
from secagg.agent.modes.tee import TeeMode
from secagg.agent.relay import TRANSIENT, AggregatorUnreachable
from secagg.errors import IntegrityError
from secagg.provision.kit import load_kit
from tests.agent.bare_agent import bare_agent


def _tee(workspace: Path, target: str) -> TeeMode:
    none: Any = None
    ctx = ModeContext(
        kit=load_kit(workspace / "site-1"),
        state=none,
        relay=none,
        audit=none,
        target=target,
        load_policy=lambda: none,
    )
    return TeeMode(ctx)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens there


def test_a_port_that_cannot_be_reached_is_a_lost_aggregator(workspace: Path) -> None:
    with pytest.raises(AggregatorUnreachable) as err:
        _tee(workspace, f"127.0.0.1:{_closed_port()}")._server_cert_der()
    assert err.value.code() in TRANSIENT
    assert "cannot reach the aggregator" in err.value.details()


@pytest.fixture
def impostor(tmp_path: Path) -> Iterator[int]:
    """A TLS port on 127.0.0.1 whose self-signed certificate no project CA signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn, contextlib.suppress(OSError):  # the client refused our certificate, as expected
            ctx.wrap_socket(conn, server_side=True).close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield int(server.getsockname()[1])
    server.close()
    t.join(10)


def test_a_certificate_the_project_ca_did_not_sign_ends_the_job(workspace: Path, impostor: int) -> None:
    with pytest.raises(IntegrityError, match="does not verify"):
        _tee(workspace, f"127.0.0.1:{impostor}")._server_cert_der()


def test_the_jobs_thread_rides_it_out_and_goes_on(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent: Any = bare_agent(tmp_path, workspace)
    slept: list[float] = []
    monkeypatch.setattr(
        site_module, "time", SimpleNamespace(sleep=slept.append, monotonic=site_module.time.monotonic)
    )
    calls: list[str] = []
    down = [4]  # the first four calls of any kind find no network

    def call(name: str) -> None:
        calls.append(name)
        if down[0] > 0:
            down[0] -= 1
            raise AggregatorUnreachable("cannot reach the aggregator at 10.0.0.1:1 for its certificate")

    def serve_one(job_id: str, stop_after_job: bool) -> tuple[str, bool]:
        call("serve_one")  # the tee check's handshake, as TeeMode raises it
        return job_id, True

    def job_state(job_id: str, round_: int) -> str:
        call("job_state")
        return "running"

    monkeypatch.setattr(agent, "_serve_one", serve_one)
    monkeypatch.setattr(agent.relay, "job_state", job_state)
    try:
        agent._serve_job("job-1", reconnect_s=300.0)  # returns: the job ended, the agent goes on
    finally:
        agent.close()
    assert calls == ["serve_one", *["job_state"] * 4, "serve_one"] and slept.count(1.0) == 4
    lines = [json.loads(x) for x in agent.audit.path.read_text().splitlines()]
    lost = [r for r in lines if r["event"] == "connection_lost"]
    assert len(lost) == 1 and lost[0]["code"] == "StatusCode.UNAVAILABLE"
    assert "for its certificate" in lost[0]["detail"]
    assert [r["failed_tries"] for r in lines if r["event"] == "connection_restored"] == [4]
