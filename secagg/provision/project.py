"""The project file (PROJECT.yaml) that the lead IT writes, parsed once into typed models."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from secagg.errors import ConfigError

AdminRole = Literal["project_admin", "org_admin", "lead", "member"]
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


class Project(_Strict):
    """What every kit is derived from. ``key_holder`` names the site that makes the HE key."""

    name: str
    aggregator: AggregatorSpec = AggregatorSpec()
    sites: list[SiteSpec] = Field(min_length=1)
    admins: list[AdminSpec] = []
    key_holder: str | None = None
    cert_validity_days: int = Field(default=365, ge=1, le=3650)

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
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"project file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return Project.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None
