"""Participant names made safe for compose services and Kubernetes objects.

A participant name may hold ``@``, ``_``, ``.`` and capitals, which Kubernetes refuses in object names
and labels; two names could map to the same safe name, so collisions are refused rather than letting
one participant's Secret overwrite another's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from secagg.errors import ConfigError

_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_NOT_COMPOSE = re.compile(r"[^a-z0-9_-]+")
#: longest participant part; "secagg-" + name + "-policy" stays within 63 characters (DNS-1035 label)
_MAX = 48


def dns_label(name: str) -> str:
    """A DNS-1123 label (lower case, digits, '-'; starts and ends alphanumeric)."""
    label = _NOT_DNS.sub("-", name.lower()).strip("-")[:_MAX].strip("-")
    if not label:
        raise ConfigError(f"participant name {name!r} has no letters or digits to name its resources")
    return label


def compose_name(name: str) -> str:
    """A compose service, volume or project name (lower case so every engine accepts it)."""
    safe = _NOT_COMPOSE.sub("-", name.lower()).strip("-_")
    if not safe:
        raise ConfigError(f"participant name {name!r} has no letters or digits to name its service")
    return safe


def unique(names: Iterable[str], convert: Callable[[str], str]) -> dict[str, str]:
    """Map each name through ``convert``; refuse two participants that end up with one name."""
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name in names:
        safe = convert(name)
        if safe in seen:
            raise ConfigError(
                f"participants {seen[safe]!r} and {name!r} both become {safe!r} in deployment files; "
                "rename one of them"
            )
        seen[safe] = name
        out[name] = safe
    return out
