"""Offline verification of sigstore bundles (keyless signing from CI).

The trusted root is read from a file, never fetched: a site verifies with no network, and the root it
trusts is the one shipped in this package (``trust/*.trusted_root.json``, from the sigstore-python
4.5.1 wheel) or one the operator names. Which identities and OIDC issuers are acceptable is the site
policy's business; this module only answers "did one of these identities sign exactly these bytes?".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sigstore.errors import Error as SigstoreError
from sigstore.models import Bundle, TrustedRoot
from sigstore.verify import Verifier
from sigstore.verify.policy import Identity

from secagg.errors import ConfigError, IntegrityError
from secagg.jobs.signer import SignerInfo
from secagg.reasons import Reason
from secagg.userfile import read_file

Instance = Literal["production", "staging"]
IN_TOTO = "application/vnd.in-toto+json"
TRUST_DIR = Path(__file__).parent / "trust"


@dataclass(frozen=True)
class SigstoreIdentity:
    identity: str
    issuer: str
    instance: Instance = "production"


class BundleRejected(IntegrityError):
    code: str = Reason.SIGSTORE_REJECTED


#: a trusted root is a few KiB of JSON (the shipped ones are 7-8 KiB): 1 MiB is ample
MAX_TRUSTED_ROOT_BYTES = 1 << 20


def trusted_root(instance: Instance = "production", path: Path | None = None) -> TrustedRoot:
    """The instance's shipped root, or the one at ``path`` (a user's ``--trusted-root``): that file is
    checked by kind and size first, so a FIFO, device or huge file is refused in one line instead of
    blocking or filling memory inside sigstore's reader."""
    source = path or TRUST_DIR / f"{instance}.trusted_root.json"
    read_file(source, MAX_TRUSTED_ROOT_BYTES, "sigstore trusted root")
    try:
        return TrustedRoot.from_file(str(source))
    except (OSError, ValueError, SigstoreError) as exc:
        raise ConfigError(f"{source}: not a usable sigstore trusted root ({exc})") from None


def verify_bundle(
    artifact: bytes,
    bundle_json: bytes,
    identities: Sequence[SigstoreIdentity],
    *,
    root_path: Path | None = None,
) -> SignerInfo:
    """Return the first accepted identity that signed ``artifact``; raise :class:`BundleRejected`.

    Identities are tried per instance with that instance's trusted root (``root_path`` overrides it
    for every instance), so a staging bundle never verifies against the production root.
    """
    if not identities:
        raise BundleRejected("no sigstore identity is trusted, so no bundle can be accepted")
    try:
        bundle = Bundle.from_json(bundle_json)
    except Exception as exc:  # malformed input surfaces as many exception types
        raise BundleRejected(f"not a valid sigstore bundle ({exc})") from None
    # an in-toto statement in a DSSE envelope signs the artifact's digest as a "subject"
    is_dsse = "dsseEnvelope" in json.loads(bundle_json)
    errors: list[str] = []
    verifiers: dict[Instance, Verifier] = {}
    for ident in identities:
        if ident.instance not in verifiers:
            verifiers[ident.instance] = Verifier(trusted_root=trusted_root(ident.instance, root_path))
        policy = Identity(identity=ident.identity, issuer=ident.issuer)
        try:
            if is_dsse:
                payload_type, payload = verifiers[ident.instance].verify_dsse(bundle, policy)
                _check_statement(payload_type, payload, artifact)
            else:
                verifiers[ident.instance].verify_artifact(artifact, bundle, policy)
        except Exception as exc:  # any failure of untrusted input means "not verified"
            errors.append(f"{ident.identity} ({ident.issuer}, {ident.instance}): {exc}")
            continue
        return SignerInfo(kind="sigstore", name=ident.identity, issuer=ident.issuer)
    raise BundleRejected("sigstore bundle not accepted: " + "; ".join(errors))


def _check_statement(payload_type: str, payload: bytes, artifact: bytes) -> None:
    """The DSSE signature is over the statement, so the artifact must be one of its subjects."""
    if payload_type != IN_TOTO:
        raise BundleRejected(f"DSSE payload type {payload_type!r} is not an in-toto statement")
    statement = json.loads(payload)
    digest = hashlib.sha256(artifact).hexdigest()
    subjects = statement.get("subject", []) if isinstance(statement, dict) else []
    if not any(isinstance(s, dict) and s.get("digest", {}).get("sha256") == digest for s in subjects):
        raise BundleRejected("the in-toto statement does not name this artifact's SHA-256 as a subject")
