"""One global model, provably (security invariant 7).

Each site signs (fingerprint, job, round, attempt) of the global model it holds with its certificate
key; the aggregator relays every signature to every site with the round's roster; a site uploads only
if at least ``min_sites`` distinct project sites signed the same fingerprint as its own and no site in
the roster signed another. An aggregator that hands one site a model of its own choosing (to isolate
that site's update, Pasquini et al., CCS 2022) is caught before any update leaves.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.errors import IdentityError, PolicyRefusal
from secagg.provision.identity import verify_cert

_DOMAIN = b"secagg-model-fingerprint-v1\0"


class ModelInconsistent(PolicyRefusal):
    """The sites of a round do not provably hold the same global model."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="model_inconsistent")


def _message(fingerprint: str, job: str, round_: int, attempt: int, site: str) -> bytes:
    return _DOMAIN + "\0".join([fingerprint, job, str(round_), str(attempt), site]).encode()


def sign_fingerprint(
    key: ec.EllipticCurvePrivateKey, fingerprint: str, job: str, round_: int, attempt: int, site: str
) -> dict[str, Any]:
    sig = key.sign(_message(fingerprint, job, round_, attempt, site), ec.ECDSA(hashes.SHA384()))
    return {"fingerprint": fingerprint, "signature": base64.b64encode(sig).decode()}


def check_roster(
    signed: Mapping[str, Any],
    *,
    me: str,
    own_fingerprint: str,
    job: str,
    round_: int,
    attempt: int,
    peers: Mapping[str, x509.Certificate],
    ca_cert: x509.Certificate,
    min_sites: int,
    roster_sites: Iterable[str] = (),
) -> None:
    """Raise :class:`ModelInconsistent` naming the round and every site that differs or fails.

    ``roster_sites`` are the sites whose updates the round will combine: each must have proved the
    same model, or an aggregator could withhold one site's proof and feed that site a model of its own.
    """
    bad: list[str] = [
        f"{site} (in the roster without a signed fingerprint)"
        for site in sorted(set(roster_sites) - set(signed))
    ]
    agreeing: set[str] = set()
    for site, entry in sorted(signed.items()):
        if site == me:
            if not isinstance(entry, Mapping) or entry.get("fingerprint") != own_fingerprint:
                bad.append(f"{site} (the aggregator relayed another fingerprint for this site)")
            else:
                agreeing.add(site)
            continue
        cert = peers.get(site)
        if cert is None:
            bad.append(f"{site} (not a site of this project)")
            continue
        if not isinstance(entry, Mapping) or "fingerprint" not in entry or "signature" not in entry:
            bad.append(f"{site} (no signed fingerprint)")
            continue
        try:
            ident = verify_cert(cert, ca_cert)
            if ident.name != site:
                raise IdentityError(f"certificate is for {ident.name}")
            ident.public_key.verify(
                base64.b64decode(entry["signature"]),
                _message(str(entry["fingerprint"]), job, round_, attempt, site),
                ec.ECDSA(hashes.SHA384()),
            )
        except (InvalidSignature, IdentityError, ValueError, TypeError) as exc:
            bad.append(f"{site} (signature does not verify: {type(exc).__name__})")
            continue
        if entry["fingerprint"] != own_fingerprint:
            bad.append(
                f"{site} (holds model {str(entry['fingerprint'])[:16]}..., "
                f"this site {own_fingerprint[:16]}...)"
            )
        else:
            agreeing.add(site)
    if me not in signed:
        bad.append(f"{me} (this site's own fingerprint is missing from the roster)")
    if bad:
        raise ModelInconsistent(
            f"round {round_} of job {job}: the global model is not the same at every site: " + "; ".join(bad)
        )
    if len(agreeing) < min_sites:
        raise ModelInconsistent(
            f"round {round_} of job {job}: only {len(agreeing)} sites proved the same model, "
            f"the job needs {min_sites}"
        )
