"""The site policy as typed, frozen models; ``policies/schema.json`` describes the same shape.

The JSON Schema is what a security officer's editor and ``secagg policy check`` validate against (with
line numbers); these models are what the code reads. Both forbid unknown keys, so a misspelt rule is an
error rather than a rule silently not applied.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from secagg.jobs.filters import FilterSpec
from secagg.jobs.keyless import SigstoreIdentity
from secagg.jobs.package import DEFAULT_MAX_BYTES
from secagg.jobs.spec import Mode

AttestationType = Literal["sev-snp", "tdx", "dev-tee"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SigstoreSigner(_Strict):
    identity: str = Field(min_length=1)
    issuer: str = Field(pattern=r"^https://")
    instance: Literal["production", "staging"] = "production"

    def as_identity(self) -> SigstoreIdentity:
        return SigstoreIdentity(self.identity, self.issuer, self.instance)


class Signers(_Strict):
    submitters: list[str] = Field(default_factory=list)
    sigstore: list[SigstoreSigner] = Field(default_factory=list)


class Budget(_Strict):
    epsilon: float = Field(gt=0)
    delta: float = Field(ge=0, lt=1)


class Privacy(_Strict):
    required: list[FilterSpec] = Field(default_factory=list)
    budget: Budget | None = None


class MinTcb(_Strict):
    bootloader: int = Field(default=0, ge=0, le=255)
    tee: int = Field(default=0, ge=0, le=255)
    snp: int = Field(default=0, ge=0, le=255)
    microcode: int = Field(default=0, ge=0, le=255)


class Attestation(_Strict):
    types: list[AttestationType] = Field(min_length=1)
    measurements: list[str] = Field(default_factory=list)
    min_tcb: MinTcb | None = None
    min_tee_tcb_svn: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{32}$")
    debug_allowed: bool = False
    max_age_s: int = Field(default=300, ge=1)
    allow_insecure_dev_tee: bool = False


class Limits(_Strict):
    max_package_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1)
    max_rounds: int | None = Field(default=None, ge=1)
    min_sites_per_round: int = Field(default=1, ge=1)
    mask_min_threshold: int = Field(default=2, ge=2)


class SitePolicy(_Strict):
    version: Literal[1]
    signers: Signers
    modes: list[Mode] = Field(min_length=1)
    privacy: Privacy = Field(default_factory=Privacy)
    attestation: Attestation | None = None
    limits: Limits = Field(default_factory=Limits)

    def sigstore_identities(self) -> list[SigstoreIdentity]:
        return [s.as_identity() for s in self.signers.sigstore]
