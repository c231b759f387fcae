"""The site policy as typed, frozen models; ``policies/schema.json`` describes the same shape.

The JSON Schema is what a security officer's editor and ``secagg policy check`` validate against (with
line numbers); these models are what the code reads. Both forbid unknown keys, so a misspelt rule is an
error rather than a rule silently not applied.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from attestation.options import ValidationOptions
from secagg.jobs.filters import FilterSpec
from secagg.jobs.keyless import SigstoreIdentity
from secagg.jobs.package import DEFAULT_MAX_BYTES
from secagg.jobs.spec import MAX_SAFE_INT, Mode

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
    #: finite: an infinite budget would admit every job (the ledger refuses it too)
    epsilon: float = Field(gt=0, allow_inf_nan=False)
    delta: float = Field(ge=0, lt=1, allow_inf_nan=False)


class Privacy(_Strict):
    required: list[FilterSpec] = Field(default_factory=list)
    budget: Budget | None = None
    #: a job with ``evaluation: cross_site`` may send this site's last local model (the global model
    #: plus its released update), sealed to each other site, to be evaluated there; off by default,
    #: because it shows the other sites one site's release that the job's mode otherwise hides
    share_local_model_for_evaluation: bool = False


_HEX48 = r"^[0-9a-fA-F]{96}$"


class MinTcb(_Strict):
    bootloader: int | None = Field(default=None, ge=0, le=255)
    tee: int | None = Field(default=None, ge=0, le=255)
    snp: int | None = Field(default=None, ge=0, le=255)
    microcode: int | None = Field(default=None, ge=0, le=255)
    fmc: int | None = Field(default=None, ge=0, le=255)


class Attestation(_Strict):
    """What aggregator evidence this site accepts; a superset of ``attestation.ValidationOptions``."""

    types: list[AttestationType] = Field(min_length=1)
    measurements: list[Annotated[str, Field(pattern=r"^([0-9a-fA-F]{64}|[0-9a-fA-F]{96})$")]] = Field(
        default_factory=list
    )
    min_tcb: MinTcb | None = None
    min_tee_tcb_svn: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{32}$")
    debug_allowed: bool = False
    max_age_s: int = Field(default=300, ge=1, le=MAX_SAFE_INT)
    allow_insecure_dev_tee: bool = False
    # SEV-SNP only
    vmpl: int | None = Field(default=None, ge=0, le=3)
    host_data: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{2,64}$")
    id_key_digests: list[Annotated[str, Field(pattern=_HEX48)]] | None = None
    min_guest_svn: int | None = Field(default=None, ge=0, le=2**32 - 1)
    signing_key: Literal["vcek", "vlek"] | None = None
    # TDX only
    mr_seam: list[Annotated[str, Field(pattern=_HEX48)]] | None = None
    tcb_statuses: list[str] | None = Field(default=None, min_length=1)

    def validation_options(self) -> ValidationOptions:
        """The options ``attestation.validate`` checks evidence fields against.

        ``allow_insecure_dev_tee`` is not a field check but a switch of the verifier, so it is passed
        to the verifier separately; ``report_data`` is never in a policy: it is the per-nonce binding.
        """
        data = self.model_dump(exclude_none=True, exclude={"allow_insecure_dev_tee"})
        if not self.measurements:
            data.pop("measurements")
        return ValidationOptions.model_validate(data)


class Limits(_Strict):
    max_package_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1, le=MAX_SAFE_INT)
    max_rounds: int | None = Field(default=None, ge=1, le=MAX_SAFE_INT)
    min_sites_per_round: int = Field(default=1, ge=1, le=MAX_SAFE_INT)
    mask_min_threshold: int = Field(default=2, ge=2, le=MAX_SAFE_INT)
    #: the smallest share of a round's total weight any other site may hold, so that this site's
    #: update cannot dominate a sum that is meant to hide it
    min_weight_share: float = Field(default=0.0, ge=0, lt=1, allow_inf_nan=False)
    #: how many jobs this site runs at once (one training worker each); a job beyond it is declined
    #: with ``max_concurrent_jobs`` rather than overcommitting the machine (the aggregator's default
    #: ``max_jobs`` is 2 as well)
    max_concurrent_jobs: int = Field(default=2, ge=1, le=MAX_SAFE_INT)


class SandboxSettings(_Strict):
    """How the job's training worker is confined (``secagg.agent.sandbox``); null means no limit."""

    memory_bytes: int | None = Field(default=8 * 2**30, ge=64 * 2**20, le=MAX_SAFE_INT)
    #: tasks: processes *and threads* (torch starts one per core)
    processes: int | None = Field(default=256, ge=1, le=MAX_SAFE_INT)
    open_files: int | None = Field(default=1024, ge=16, le=MAX_SAFE_INT)
    file_size_bytes: int | None = Field(default=4 * 2**30, ge=1, le=MAX_SAFE_INT)
    cpu_seconds: int | None = Field(default=86400, ge=1, le=MAX_SAFE_INT)
    #: refuse the job where a fresh network namespace cannot be made (else it is applied where it can)
    require_netns: bool = False
    #: let the worker use the NVIDIA devices (/dev/nvidia*, read-write with ioctl)
    allow_gpu: bool = False
    #: run the job even where the kernel cannot confine it: its code may then read the site's keys
    insecure_unconfined: bool = False


class SitePolicy(_Strict):
    version: Literal[1]
    signers: Signers
    modes: list[Mode] = Field(min_length=1)
    privacy: Privacy = Field(default_factory=Privacy)
    attestation: Attestation | None = None
    limits: Limits = Field(default_factory=Limits)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)

    def sigstore_identities(self) -> list[SigstoreIdentity]:
        return [s.as_identity() for s in self.signers.sigstore]
