"""The project file (PROJECT.yaml) that the lead IT writes, parsed once into typed models."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from secagg import safeyaml, validation
from secagg.errors import ConfigError
from secagg.windowsize import DEFAULT_WINDOW_BYTES, MAX_WINDOW_BYTES, MIN_WINDOW_BYTES

AdminRole = Literal["project_admin", "org_admin", "lead", "member"]
ADMIN_ROLES: tuple[str, ...] = ("project_admin", "org_admin", "lead", "member")
#: ``any`` job, jobs of the admin's own ``org``, only jobs the admin submitted (``own``), or ``none``
Scope = Literal["any", "org", "own", "none"]
ADMIN_ACTIONS: tuple[str, ...] = ("submit", "list", "status", "abort", "download", "logs")
ParticipantKind = Literal["aggregator", "site", "admin"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{value!r} is not a valid participant name (letters, digits, . _ @ -; max 63)")
    return value


class AggregatorSpec(_Strict):
    name: str = "aggregator"
    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=1, le=65535)
    org: str = "lead"
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    #: jobs the aggregator runs at once; further submissions queue (persisted) until one ends
    max_jobs: int = Field(default=2, ge=1, le=64)
    #: bytes of float64 accumulator per window when the aggregator combines uploads and applies the
    #: server step (secagg.aggregator.modes.windows): its peak memory is a few windows, whatever the
    #: model's size; larger windows mean fewer, longer reads (16 MiB reads at disk speed already)
    window_bytes: int = Field(default=DEFAULT_WINDOW_BYTES, ge=MIN_WINDOW_BYTES, le=MAX_WINDOW_BYTES)

    _n = field_validator("name")(_check_name)


class SiteSpec(_Strict):
    name: str
    org: str = "default"

    _n = field_validator("name")(_check_name)


class AdminSpec(_Strict):
    name: str
    org: str = "default"
    role: AdminRole = "member"

    _n = field_validator("name")(_check_name)


class RolePermissions(_Strict):
    """What one admin role may do, per action, and for whose jobs. ``submit`` is ``any`` or ``none``
    (a new job has no owner yet); ``list`` shows only the jobs in scope, the others refuse outright."""

    submit: Scope
    list: Scope
    status: Scope
    abort: Scope
    download: Scope
    logs: Scope

    @field_validator("submit")
    @classmethod
    def _submit_yes_no(cls, value: str) -> str:
        if value not in ("any", "none"):
            raise ValueError("submit is 'any' or 'none' (a job being submitted has no owner to scope by)")
        return value


#: Like NVIDIA FLARE's default authorization.json: the project admin may do everything on any job; an
#: org admin manages their org's jobs and views all; a lead submits and manages their own jobs and views
#: their org's; a member only views their org's jobs and logs.
DEFAULT_AUTHORIZATION: dict[str, dict[str, str]] = {
    "project_admin": dict.fromkeys(ADMIN_ACTIONS, "any"),
    "org_admin": {
        "submit": "any",
        "list": "any",
        "status": "any",
        "abort": "org",
        "download": "org",
        "logs": "org",
    },
    "lead": {
        "submit": "any",
        "list": "org",
        "status": "org",
        "abort": "own",
        "download": "own",
        "logs": "own",
    },
    "member": {
        "submit": "none",
        "list": "org",
        "status": "org",
        "abort": "none",
        "download": "none",
        "logs": "org",
    },
}


class Authorization(_Strict):
    """The project's authorization table. A project file may override single cells; every cell it
    leaves out keeps the default, so a short table cannot silently drop a role."""

    project_admin: RolePermissions
    org_admin: RolePermissions
    lead: RolePermissions
    member: RolePermissions

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            return data
        unknown = sorted(set(data) - set(DEFAULT_AUTHORIZATION))
        if unknown:
            raise ValueError(
                f"unknown admin role(s) {', '.join(unknown)}; roles are {', '.join(ADMIN_ROLES)}"
            )
        merged: dict[str, Any] = {}
        for role, defaults in DEFAULT_AUTHORIZATION.items():
            given = data.get(role) or {}
            merged[role] = {**defaults, **given} if isinstance(given, dict) else given
        return merged

    def for_role(self, role: str) -> RolePermissions | None:
        """The permissions of ``role``, or None for a role that is not an admin role (a site, the
        aggregator, an unknown OU): such a certificate may do nothing at all."""
        return getattr(self, role) if role in ADMIN_ROLES else None


class Project(_Strict):
    """What every kit is derived from. ``key_holder`` names the site that makes the HE key."""

    name: str
    aggregator: AggregatorSpec = AggregatorSpec()
    sites: list[SiteSpec] = Field(min_length=1)
    admins: list[AdminSpec] = []
    key_holder: str | None = None
    cert_validity_days: int = Field(default=365, ge=1, le=3650)
    authorization: Authorization = Field(default_factory=lambda: Authorization.model_validate({}))

    _n = field_validator("name")(_check_name)

    @model_validator(mode="after")
    def _unique_and_consistent(self) -> Project:
        names = [self.aggregator.name] + [s.name for s in self.sites] + [a.name for a in self.admins]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"participant names must be unique; repeated: {', '.join(dupes)}")
        if self.key_holder is not None and self.key_holder not in {s.name for s in self.sites}:
            raise ValueError(f"key_holder {self.key_holder!r} is not one of the sites")
        return self

    @property
    def he_key_holder(self) -> str:
        return self.key_holder or self.sites[0].name


def load_project(path: Path) -> Project:
    raw = safeyaml.load_file(path, what="project file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return validation.validate(Project, raw)
    except validation.FieldProblems as exc:
        raise ConfigError(f"{path}: {exc.line()}") from None
