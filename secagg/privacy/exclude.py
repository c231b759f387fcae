"""Tensors that never leave the site.

Excluded tensors are **zeroed, not dropped**: the shape and position are kept so HE slot packing and
mask vectors line up across sites, and the aggregator learns only that the tensor is excluded (it sees
zeros), never its value. Names match exactly or as shell globs (``fnmatch``, case-sensitive), or by a
regular expression (NVFlare's ``ExcludeVars`` string form, matched with ``re.search``). Excluding costs no
privacy budget.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

import numpy as np

from secagg.privacy.spend import Spend, Update, as_update


def excluded_names(names: Sequence[str], patterns: Sequence[str], regex: str | None = None) -> list[str]:
    """The names in ``names`` that ``patterns`` (exact or glob) or ``regex`` select."""
    rx = re.compile(regex) if regex else None
    return [
        n
        for n in names
        if any(fnmatch.fnmatchcase(n, p) for p in patterns) or (rx is not None and rx.search(n))
    ]


def exclude(
    update: Update, rng: np.random.Generator, *, patterns: Sequence[str] = (), regex: str | None = None
) -> tuple[Update, Spend | None]:
    """Zero every tensor whose name ``patterns`` or ``regex`` select; keep shapes and order."""
    del rng
    upd = as_update(update)
    for name in excluded_names(list(upd), patterns, regex):
        upd[name] = np.zeros_like(upd[name])
    return upd, None
