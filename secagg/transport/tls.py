"""mTLS for the Federation service: both sides present project certificates; the CA is the kit's.

The aggregator requires a client certificate (``require_client_auth=True``), so a peer without one
from this project's CA never reaches a handler. Handlers then read the peer's identity from the
verified certificate in the auth context, never from a request field.
"""

from __future__ import annotations

import grpc

from secagg.errors import IdentityError
from secagg.provision.identity import Identity, load_cert, verify_cert
from secagg.provision.kit import Kit

# Updates can be large; messages are chunked, but allow a chunk plus framing.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
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
    return verify_cert(load_cert(pem[0]), kit.ca_cert)
