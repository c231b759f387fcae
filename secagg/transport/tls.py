"""mTLS for the Federation service: both sides present project certificates; the CA is the kit's.

The aggregator requires a client certificate (``require_client_auth=True``), so a peer without one
from this project's CA never reaches a handler. Handlers then read the peer's identity from the
verified certificate in the auth context, never from a request field.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import socket
import ssl
import tempfile
from pathlib import Path

import grpc
from cryptography import x509

from secagg.errors import IdentityError
from secagg.provision.identity import Identity, check_valid_at, load_cert, verify_issued
from secagg.provision.kit import Kit

#: the longest a client channel waits between two dials of a lost peer
MAX_RECONNECT_BACKOFF_MS = 2_000
# Updates can be large; messages are chunked, but allow a chunk plus framing.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # a lost connection is retried by its caller (the agent: every second, for ``reconnect_s``); left
    # to gRPC's defaults the channel backs off up to 120 s between dials and fails every call at once
    # meanwhile, so a site whose link came back stayed away 10-23 s after a 45-60 s outage and missed
    # the end of its job (issue #18, `secagg chaos --scenario partition-timeout`)
    ("grpc.initial_reconnect_backoff_ms", 1_000),
    ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
]
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
]


def server_credentials(kit: Kit) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(kit.key_pem, kit.cert_pem)], root_certificates=kit.ca_pem, require_client_auth=True
    )


def channel(kit: Kit, target: str | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=kit.ca_pem, private_key=kit.key_pem, certificate_chain=kit.cert_pem
    )
    return grpc.secure_channel(target or kit.target, creds, options=CHANNEL_OPTIONS)


def peer_identity(context: grpc.ServicerContext, kit: Kit) -> Identity:
    """The verified identity of the caller, from its mTLS certificate."""
    auth = context.auth_context()
    pem = auth.get("x509_pem_cert")
    if not pem:
        raise IdentityError("caller presented no client certificate")
    ident = _issued(bytes(pem[0]), kit.ca_cert)
    check_valid_at(ident.cert, dt.datetime.now(dt.UTC))
    return ident


#: peer certificates whose signature was verified, by exact bytes and CA: sites, admins and the key
#: holder of one project, with room to spare
_ISSUED_MAX = 4096


@functools.lru_cache(maxsize=_ISSUED_MAX)
def _issued(pem: bytes, ca_cert: x509.Certificate) -> Identity:
    """Why a cache: the P-384 signature check of the caller's certificate was most of what a
    heartbeat cost the aggregator (2.3 of 3.2 ms, profiled through the RPC fuzz targets), and the same
    few certificates call all day. The same bytes under the same CA verify the same way, so only the
    time-independent part is kept (:func:`~secagg.provision.identity.verify_issued`): the validity
    period is checked on every call. A refusal is an exception, and exceptions are not cached."""
    return verify_issued(load_cert(pem), ca_cert)


def probe_server_certificate(
    kit: Kit, host: str, port: int, *, timeout: float, server_hostname: str
) -> bytes:
    """The DER certificate a gRPC port presents, over the same mTLS path a channel takes (project CA,
    this kit's client certificate). gRPC Python does not expose a channel's peer certificate, so the
    tee check and the health check both read it with a handshake of their own.

    Raises ``OSError`` / ``ssl.SSLError`` when the port does not complete the handshake, and
    :class:`IdentityError` when it presents no certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=kit.ca_pem.decode())
    ctx.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
        cert.write_bytes(kit.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(kit.key_pem)
        ctx.load_cert_chain(cert, key)
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise IdentityError(f"{host}:{port} presented no certificate")
    return der
