"""What every gRPC handler of the aggregator shares: who is calling, and how a refusal ends a call."""

from __future__ import annotations

import grpc

from secagg import reasons
from secagg.provision.identity import Identity
from secagg.provision.kit import Kit
from secagg.transport.tls import peer_identity


def caller(context: grpc.ServicerContext, kit: Kit) -> Identity:
    """Invariant 5: identity comes from the mTLS certificate, never from a field in a message.

    The one way the aggregator's handlers (sites in ``service``, admins in ``admin``) learn who calls:
    the peer certificate the TLS layer verified against the project CA. Its name is the site an
    upload is spooled and summed under, the sender of relayed messages, and the admin whose role and
    org decide; no handler reads a name from a request. Raises ``IdentityError``."""
    return peer_identity(context, kit)


def abort(context: grpc.ServicerContext, code: str, message: str) -> None:
    """End a call as refused for ``code``: the status from the reason registry, the code in the
    trailing metadata (``secagg-reason``), and details ``"<code>: <message>"`` as before. Raises."""
    context.set_trailing_metadata(reasons.metadata(code))
    context.abort(reasons.grpc_status(code), reasons.details(code, message))


def abort_with(context: grpc.ServicerContext, status: grpc.StatusCode, code: str, message: str) -> None:
    """Like :func:`abort` with an explicit status and the details text as given (no code prefix)."""
    context.set_trailing_metadata(reasons.metadata(code))
    context.abort(status, message)


__all__ = ["abort", "abort_with", "caller"]
