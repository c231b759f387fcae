"""The enclave's signature on what it tells the sites in ``tee-mask``: pure functions, no I/O.

In ``mask`` the server is untrusted, so the protocol makes its lies useless rather than impossible. In
``tee-mask`` the mask server runs inside the attested enclave, and the sites can also hold it to its
measured code: every roster, share bundle and unmask request it publishes is signed with the
model-signing key bound into the evidence each site verified. The host that relays the messages can
then neither show different sites different rosters, nor claim that a site dropped out when it did not
(the attacks on semi-honest SecAgg servers), without breaking the enclave.

Signed bytes::

    b"secagg-tee-relay/1\\0" || JCS({job, round, attempt, topic, to, sha256})

``to`` is the recipient site, or ``"*"`` for a message every site of the round collects. The same
P-384 key signs global models under another domain (:mod:`secagg.tee.modelsig`), so the two kinds of
signature can never stand for each other.
"""

from __future__ import annotations

import hashlib
import struct

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.tee.errors import RelaySignatureInvalid
from secagg.tee.modelsig import load_key

_DOMAIN = b"secagg-tee-relay/1\0"
EVERYONE = "*"
_LEN = struct.Struct(">H")
#: a DER ECDSA P-384 signature is at most 104 bytes
MAX_SIGNATURE = 160


def purpose(topic: str, attempt: int) -> str:
    """What a site's sealed ``tee-mask`` message is bound to besides job, round and site
    (:class:`secagg.tee.sealing.Context`'s ``purpose``): its phase and attempt, so that it opens as
    nothing else."""
    return f"{topic}/attempt-{int(attempt)}"


def signed_bytes(payload: bytes, job: str, round: int, attempt: int, topic: str, to: str) -> bytes:
    digest = hashlib.sha256(payload).hexdigest()
    return _DOMAIN + rfc8785.dumps(
        {"job": job, "round": int(round), "attempt": int(attempt), "topic": topic, "to": to, "sha256": digest}
    )


def sign(
    key: ec.EllipticCurvePrivateKey, payload: bytes, job: str, round: int, attempt: int, topic: str, to: str
) -> bytes:
    """``payload`` with the enclave's signature in front: ``len u16 | signature | payload``."""
    sig = key.sign(signed_bytes(payload, job, round, attempt, topic, to), ec.ECDSA(hashes.SHA384()))
    return _LEN.pack(len(sig)) + sig + payload


def open_signed(
    spki_der: bytes, message: bytes, job: str, round: int, attempt: int, topic: str, to: str
) -> bytes:
    """The payload of ``message`` if the bound key signed it for exactly this job, round, attempt,
    topic and recipient; else :class:`RelaySignatureInvalid`."""
    if len(message) < _LEN.size:
        raise RelaySignatureInvalid(f"{topic}: message too short to carry the enclave's signature")
    (n,) = _LEN.unpack_from(message)
    if not 0 < n <= MAX_SIGNATURE or len(message) < _LEN.size + n:
        raise RelaySignatureInvalid(f"{topic}: malformed enclave signature")
    sig, payload = message[_LEN.size : _LEN.size + n], message[_LEN.size + n :]
    try:
        load_key(spki_der).verify(
            sig, signed_bytes(payload, job, round, attempt, topic, to), ec.ECDSA(hashes.SHA384())
        )
    except InvalidSignature:
        raise RelaySignatureInvalid(
            f"{topic} for job {job!r} round {round} attempt {attempt} is not signed by the attested "
            f"enclave for {'every site' if to == EVERYONE else to} (forged or altered by the host, or "
            "replayed from another round or recipient)"
        ) from None
    return payload
