"""Tensors that never leave the site.

Excluded tensors are **zeroed, not dropped**: the shape and position are kept so HE slot packing and
mask vectors line up across sites, and the aggregator learns only that the tensor is excluded (it sees
zeros), never its value. Names match exactly or as shell globs (``fnmatch``, case-sensitive), or by a
regular expression (NVFlare's ``ExcludeVars`` string form, matched with ``re.search``). Excluding costs no
privacy budget.

Filters after ``exclude`` in a chain see zeros there and may add noise (Gaussian, SVT) to them: the value
still never leaves, but only an ``exclude`` placed last guarantees zeros on the wire.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

import numpy as np

from secagg.privacy.spend import Spend, Update, as_update


def excluded_names(names: Sequence[str], tensors: Sequence[str], regex: str | None = None) -> list[str]:
    """The names in ``names`` that ``tensors`` (exact or glob) or ``regex`` select."""
    rx = re.compile(regex) if regex else None
    return [
        n
        for n in names
        if any(fnmatch.fnmatchcase(n, p) for p in tensors) or (rx is not None and rx.search(n))
    ]


def exclude(
    update: Update, rng: np.random.Generator, *, tensors: Sequence[str] = (), regex: str | None = None
) -> tuple[Update, Spend | None]:
    """Zero every tensor whose name ``tensors`` or ``regex`` select; keep shapes and order."""
    del rng
    upd = as_update(update)
    for name in excluded_names(list(upd), tensors, regex):
        upd[name] = np.zeros_like(upd[name])
    return upd, None
