"""Who signed a job, as established by verification; the site policy decides whether to trust them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from secagg.errors import PolicyRefusal
from secagg.reasons import Reason

#: admin roles allowed to submit jobs; ``member`` admins may only watch, sites never submit
SUBMIT_ROLES = frozenset({"project_admin", "org_admin", "lead"})


@dataclass(frozen=True)
class SignerInfo:
    """``kind`` provisioned: ``name``/``org``/``role`` from a project certificate.
    ``kind`` sigstore: ``name`` is the certificate identity (email or workflow URI), ``issuer`` the
    OIDC issuer."""

    kind: Literal["provisioned", "sigstore"]
    name: str
    org: str = ""
    role: str = ""
    issuer: str = ""
    fingerprint: str = ""

    def describe(self) -> str:
        if self.kind == "sigstore":
            return f"sigstore identity {self.name} (issuer {self.issuer})"
        return f"{self.name} ({self.role} of {self.org})"


def submitters(signers: Iterable[SignerInfo]) -> list[SignerInfo]:
    """The signers whose signature lets the aggregator accept a job: a provisioned admin of a role in
    :data:`SUBMIT_ROLES`, or a sigstore identity (whom the sites' policies then decide on)."""
    return [s for s in signers if s.kind == "sigstore" or s.role in SUBMIT_ROLES]


def require_submitter(signers: Iterable[SignerInfo], what: str = "the job") -> SignerInfo:
    """The first signer that may submit (see :func:`submitters`), or :class:`PolicyRefusal`
    ``signer_role`` naming ``what`` was refused."""
    found = submitters(signers)
    if not found:
        raise PolicyRefusal(
            f"{what} is not signed by a role that may submit ({', '.join(sorted(SUBMIT_ROLES))})",
            code=Reason.SIGNER_ROLE,
        )
    return found[0]
