"""One global model and honest weights, provably (security invariant 7).

Each site signs (fingerprint, sample count, job, round, attempt) of the global model it holds with its
certificate key; the aggregator relays every signature to every site with the round's roster; a site
uploads only if at least ``min_sites`` distinct project sites signed the same fingerprint as its own and
no site in the roster signed another. An aggregator that hands one site a model of its own choosing (to
isolate that site's update, Pasquini et al., CCS 2022) is caught before any update leaves.

The weights each site multiplies its update by are not the aggregator's to choose either: a roster of
``{site-1: 1.0, site-2: 1e-12, site-3: 1e-12}`` would make the unmasked sum (``mask``) or the decrypted
average (``he``) equal site-1's update in the clear. Every site recomputes the weights from the signed
counts of the roster's sites and refuses the round if the announced ones differ.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.errors import IdentityError, PolicyRefusal
from secagg.provision.identity import verify_cert
from secagg.reasons import Reason
from secagg.roster import BadSampleCount, expected_weights, sample_count

_DOMAIN = b"secagg-model-fingerprint-v2\0"
#: announced weights must equal the recomputed ones to this relative precision (both sides compute
#: count / total from exact integers; the slack only absorbs a different float summation order)
_WEIGHT_RTOL = 1e-9


class ModelInconsistent(PolicyRefusal):
    """The sites of a round do not provably hold the same global model."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=Reason.MODEL_INCONSISTENT)


class WeightsRefused(PolicyRefusal):
    """The roster's weights are not the ones the sites' signed sample counts give."""


def _message(fingerprint: str, n_samples: int, job: str, round_: int, attempt: int, site: str) -> bytes:
    fields = [fingerprint, str(n_samples), job, str(round_), str(attempt), site]
    return _DOMAIN + "\0".join(fields).encode()


def sign_fingerprint(
    key: ec.EllipticCurvePrivateKey,
    fingerprint: str,
    job: str,
    round_: int,
    attempt: int,
    site: str,
    *,
    n_samples: int,
) -> dict[str, Any]:
    """The entry a site puts in its ready message: its model fingerprint and sample count, signed."""
    n = sample_count(n_samples)
    sig = key.sign(_message(fingerprint, n, job, round_, attempt, site), ec.ECDSA(hashes.SHA384()))
    return {"fingerprint": fingerprint, "n_samples": n, "signature": base64.b64encode(sig).decode()}


def check_roster(
    signed: Mapping[str, Any],
    *,
    me: str,
    own_fingerprint: str,
    own_samples: int,
    job: str,
    round_: int,
    attempt: int,
    peers: Mapping[str, x509.Certificate],
    ca_cert: x509.Certificate,
    min_sites: int,
    weights: Mapping[str, Any],
    min_weight_share: float = 0.0,
) -> dict[str, float]:
    """Invariant 7: a site uploads only after every site's signed fingerprint of the round's global
    model matches its own, and only with the weight the signed sample counts give it.

    Returns the round's weights, recomputed here (never the aggregator's numbers). Raises
    :class:`ModelInconsistent` (fingerprints) or :class:`WeightsRefused` (weights) naming the round
    and every site that differs or fails.
    """
    _check_fingerprints(
        signed,
        me=me,
        own_fingerprint=own_fingerprint,
        own_samples=own_samples,
        job=job,
        round_=round_,
        attempt=attempt,
        peers=peers,
        ca_cert=ca_cert,
        min_sites=min_sites,
        roster_sites=weights,
    )
    return check_weights(
        weights, signed, me=me, job=job, round_=round_, min_sites=min_sites, min_weight_share=min_weight_share
    )


def _check_fingerprints(
    signed: Mapping[str, Any],
    *,
    me: str,
    own_fingerprint: str,
    own_samples: int | None,
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
    Each entry's sample count is covered by its signature, so :func:`check_weights` may trust the
    counts of a roster that passed here; ``own_samples`` is what this site itself signed.
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
            elif own_samples is not None and entry.get("n_samples") != own_samples:
                bad.append(f"{site} (the aggregator relayed another sample count for this site)")
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
            n = sample_count(entry.get("n_samples"))
        except BadSampleCount as exc:
            bad.append(f"{site} (no signed sample count: {exc})")
            continue
        try:
            ident = verify_cert(cert, ca_cert)
            if ident.name != site:
                raise IdentityError(f"certificate is for {ident.name}")
            ident.public_key.verify(
                base64.b64decode(entry["signature"]),
                _message(str(entry["fingerprint"]), n, job, round_, attempt, site),
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


def check_weights(
    announced: Mapping[str, Any],
    signed: Mapping[str, Mapping[str, Any]],
    *,
    me: str,
    job: str,
    round_: int,
    min_sites: int,
    min_weight_share: float = 0.0,
) -> dict[str, float]:
    """Refuse a roster whose weights the signed counts do not give (part of :func:`check_roster`).

    Call only on counts whose signatures were checked (every roster site's count is signed).
    Returns the weights to use. Raises :class:`WeightsRefused` with ``weights_mismatch`` for weights
    the aggregator chose, ``roster_too_small`` for a roster of fewer than ``min_sites`` sites (a sum
    that hides nothing), and ``weight_share_too_small`` when another site's share is below the
    policy's ``min_weight_share`` (this site's update would dominate the sum meant to hide it).
    """
    where = f"round {round_} of job {job}"
    if me not in announced:
        raise WeightsRefused(
            f"{where}: this site is not in the roster's weights", code=Reason.WEIGHTS_MISMATCH
        )
    if len(announced) < min_sites:
        raise WeightsRefused(
            f"{where}: the roster weighs {len(announced)} sites, the job needs {min_sites}",
            code=Reason.ROSTER_TOO_SMALL,
        )
    missing = sorted(set(announced) - set(signed))
    if missing:
        raise WeightsRefused(
            f"{where}: no signed sample count for {', '.join(missing)}", code=Reason.WEIGHTS_MISMATCH
        )
    expected = expected_weights(signed, announced)
    wrong = []
    for site, want in expected.items():
        got = announced[site]
        if isinstance(got, bool) or not isinstance(got, (int, float)) or not math.isfinite(got):
            wrong.append(f"{site} (weight {got!r} is not a number)")
        elif not math.isclose(float(got), want, rel_tol=_WEIGHT_RTOL, abs_tol=0.0):
            wrong.append(f"{site} (announced {float(got):.6g}, signed counts give {want:.6g})")
    if wrong:
        raise WeightsRefused(
            f"{where}: the roster's weights are not the signed sample counts': " + "; ".join(wrong),
            code=Reason.WEIGHTS_MISMATCH,
        )
    small = [f"{s} ({w:.3g})" for s, w in expected.items() if s != me and w < min_weight_share]
    if small:
        raise WeightsRefused(
            f"{where}: other sites' shares are below this site's minimum {min_weight_share}: "
            + ", ".join(small),
            code=Reason.WEIGHT_SHARE_TOO_SMALL,
        )
    return expected
