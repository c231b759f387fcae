"""Who signed a job, as established by verification; the site policy decides whether to trust them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
