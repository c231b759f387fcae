"""Options, as go-sev-guest keeps them apart: :class:`VerifyOptions` say how to establish that evidence
is *authentic* (certificates, CRLs, collateral, the clock), :class:`ValidationOptions` what a verifier
*accepts* of authentic evidence.

One model for all evidence types (the site policy's ``attestation`` section reuses it). Options that
only make sense for one type (``vmpl`` for SEV-SNP, ``rtmrs`` for TDX, ...) are skipped for the others
and shown as skipped, so one policy can accept several TEE types. Every field is optional; an unset
field is not checked, except ``debug_allowed``, which defaults to *refusing* debug guests.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.functional_validators import AfterValidator

from attestation.errors import OptionsError

EvidenceType = Literal["sev-snp", "tdx", "dev-tee"]


def _hex(v: str) -> str:
    s = v.strip().lower().removeprefix("0x")
    if len(s) % 2 or any(ch not in "0123456789abcdef" for ch in s):
        raise ValueError(f"not a hex string: {v!r}")
    return s


Hex = Annotated[str, AfterValidator(_hex)]


class MinTcb(BaseModel):
    """Minimum security patch level per TCB component (SEV-SNP; dev-TEE uses the same names).

    Turin reports also carry ``fmc``; a minimum for a component the evidence does not have (``fmc`` on
    Milan/Genoa) fails validation rather than passing silently.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    bootloader: int | None = Field(default=None, ge=0, le=255)
    tee: int | None = Field(default=None, ge=0, le=255)
    snp: int | None = Field(default=None, ge=0, le=255)
    microcode: int | None = Field(default=None, ge=0, le=255)
    fmc: int | None = Field(default=None, ge=0, le=255)

    def items(self) -> list[tuple[str, int]]:
        return [(k, v) for k, v in self.model_dump().items() if v is not None]


@dataclass(frozen=True)
class VerifyOptions:
    """How to check authenticity: signatures and certificate chains (go-sev-guest's ``verify.Options``).

    ``certs``: certificate blobs (PEM/DER/GUID table) for SEV-SNP; PEM public keys or certificates
    pinning the dev-TEE key. ``crls``: PEM/DER CRLs by the AMD ARK, SEV-SNP only (from files, no
    network). ``collateral_dir``: Intel collateral for TDX. ``allow_insecure_dev_tee``: accept
    software-signed dev-TEE evidence at all. ``now``: the time to check validity at (default: now)."""

    certs: Sequence[bytes] = ()
    crls: Sequence[bytes] = ()
    collateral_dir: str | Path | None = None
    allow_insecure_dev_tee: bool = False
    now: dt.datetime | None = None


class ValidationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: accepted evidence types; None accepts any type this package verifies
    types: list[EvidenceType] | None = None
    #: allow-list of launch measurements (SEV-SNP MEASUREMENT, TDX MRTD, dev-TEE measurement)
    measurements: list[Hex] | None = None
    debug_allowed: bool = False
    min_tcb: MinTcb | None = None
    #: expected REPORT_DATA (the binding); shorter values are right-padded with zeros to 64 bytes
    report_data: Hex | None = None
    # SEV-SNP only
    vmpl: int | None = Field(default=None, ge=0, le=3)
    host_data: Hex | None = None
    id_key_digests: list[Hex] | None = None
    min_guest_svn: int | None = Field(default=None, ge=0)
    signing_key: Literal["vcek", "vlek"] | None = None
    # TDX only
    min_tee_tcb_svn: Hex | None = None
    mr_seam: list[Hex] | None = None
    rtmrs: dict[int, Hex] | None = None
    #: TCB statuses accepted from Intel collateral (when collateral is given)
    tcb_statuses: list[str] = Field(default_factory=lambda: ["UpToDate"])
    # dev-TEE only
    max_age_s: int | None = Field(default=None, gt=0)

    @field_validator("rtmrs")
    @classmethod
    def _rtmr_index(cls, v: dict[int, str] | None) -> dict[int, str] | None:
        if v is not None and any(k not in range(4) for k in v):
            raise ValueError("RTMR index must be 0..3")
        return v

    @field_validator("report_data")
    @classmethod
    def _rd_len(cls, v: str | None) -> str | None:
        if v is not None and len(v) > 128:
            raise ValueError("report_data longer than 64 bytes")
        return v


def options_from_mapping(data: Any, source: str = "options") -> ValidationOptions:
    """Build options from a parsed mapping; a site policy's ``attestation`` section is taken as is.

    This package reads no YAML itself: a file of options is read by the caller with the project's one
    hardened loader (``secagg.safeyaml``: no aliases, bounded), and the data passed in here, so that
    ``attestation`` stays below ``secagg`` and there is one YAML loader to keep safe, not two."""
    if isinstance(data, dict) and isinstance(data.get("attestation"), dict) and "version" in data:
        data = data["attestation"]
    if not isinstance(data, dict):
        raise OptionsError(f"{source}: expected a mapping of validation options")
    try:
        return ValidationOptions.model_validate(data)
    except ValidationError as exc:
        parts = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise OptionsError(f"{source}: " + "; ".join(parts)) from None
