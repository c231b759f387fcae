"""Translate an NVFlare site privacy policy (``privacy.json``) into secagg filter specs.

NVFlare lists, per scope, ``task_result_filters``: ``{"path": "<class path>", "args": {...}}``. Only result
filters matter here (they are what leaves the site). A filter this module does not know is an error, not
something to skip: silently dropping a privacy filter would weaken the site's policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from secagg.errors import ConfigError
from secagg.privacy.specs import ExcludeSpec, FilterSpec, PercentileSpec, SvtSpec

_KNOWN: dict[str, Any] = {
    "SVTPrivacy": SvtSpec,
    "PercentilePrivacy": PercentileSpec,
    "ExcludeVars": ExcludeSpec,
}


def filter_from_nvflare(entry: Mapping[str, Any]) -> FilterSpec:
    """One ``{"path": ..., "args": ...}`` entry (the last dotted component names the class)."""
    path = entry.get("path") or entry.get("name")
    if not isinstance(path, str):
        raise ConfigError(f"NVFlare filter entry without a path: {dict(entry)!r}")
    cls = _KNOWN.get(path.rsplit(".", 1)[-1])
    if cls is None:
        raise ConfigError(f"NVFlare filter {path} has no secagg equivalent")
    spec: FilterSpec = cls.from_nvflare(entry.get("args") or {})
    return spec


def from_nvflare(config: Mapping[str, Any], scope: str | None = None) -> list[FilterSpec]:
    """The result-filter chain of one scope of a ``privacy.json`` (or of a bare scope dict).

    With a full ``privacy.json``, ``scope`` picks the scope by name (default: its ``default_scope``).
    Filters keep their NVFlare order.
    """
    if "scopes" in config:
        name = scope or config.get("default_scope")
        matches = [s for s in config["scopes"] if s.get("name") == name]
        if len(matches) != 1:
            raise ConfigError(f"NVFlare privacy config has no (unique) scope {name!r}")
        config = matches[0]
    return [filter_from_nvflare(e) for e in config.get("task_result_filters") or []]
