"""Cross-site evaluation's topics and the bounds on what an evaluation may report.

The job's code evaluates another site's local model at this site; what it returns leaves the site. So
a result is numbers only, few, finite, bounded and rounded: at most :data:`MAX_METRICS` names of the
form ``[A-Za-z][A-Za-z0-9_.-]*`` (at most 64 characters), each value finite, ``|v| <=``
:data:`MAX_ABS` and rounded to :data:`DIGITS` significant digits. The rounding is not cosmetic: it
narrows what confined job code could smuggle out of a peer's model through its metrics to about
``MAX_METRICS * 20`` bits per model, instead of 64 bits per value of an unbounded map.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from secagg.bundle import BundleSpec
from secagg.topics import Topic

#: posted by a site: its signed consent (JSON of :class:`secagg.crossval.seal.Consent`)
CONSENT = Topic.XSITE_CONSENT
#: uploaded by a site (the rounds' streamed upload, this topic in its header): its local model sealed
#: to one other site, the signed :class:`secagg.crossval.seal.Envelope` in the header, then ciphertext
MODEL = Topic.XSITE_MODEL
#: posted by a site: ``{"results": {model_owner: metrics}, "refused": {model_owner: code}}``
METRICS = Topic.XSITE_METRICS
#: collected by a site: every site's consent, once the aggregator fixed the set
CONSENTS = Topic.XSITE_CONSENTS
#: collected by a site: the headers of the sealed models addressed to it (each then fetched in chunks
#: with ``FetchSealed``, this topic and the sender's name)
INBOX = Topic.XSITE_INBOX
POST_TOPICS = frozenset({CONSENT, METRICS})
COLLECT_TOPICS = frozenset({CONSENTS, INBOX})

#: the row of the final global model in the matrix (sites' rows are their names)
GLOBAL = "global"
MAX_METRICS = 32
MAX_ABS = 1e15
DIGITS = 6
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


class BadMetrics(ValueError):
    """An evaluation's metrics outside the bounds (the message says which)."""


def bounded_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``metrics`` within the bounds of the module docstring, rounded; raises :class:`BadMetrics`."""
    if len(metrics) > MAX_METRICS:
        raise BadMetrics(f"{len(metrics)} metrics; an evaluation may report at most {MAX_METRICS}")
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise BadMetrics(f"metric name {str(name)[:80]!r} is not a short identifier")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadMetrics(f"metric {name!r} is not a number")
        v = float(value)
        if not math.isfinite(v) or abs(v) > MAX_ABS:
            raise BadMetrics(f"metric {name!r} is not finite or past {MAX_ABS:g}")
        out[name] = float(f"{v:.{DIGITS}g}")
    return out


__all__ = [
    "COLLECT_TOPICS",
    "CONSENT",
    "CONSENTS",
    "GLOBAL",
    "INBOX",
    "MAX_METRICS",
    "METRICS",
    "MODEL",
    "POST_TOPICS",
    "BadMetrics",
    "bounded_metrics",
    "max_model_bytes",
]


def max_model_bytes(bspec: BundleSpec) -> int:
    """The most bytes a site's local model of the job (float32 safetensors of ``bspec``, with its
    order metadata) can take: what a sealed model's announced length is checked against on both
    sides, before a byte of it is received."""
    return 8 + 4 * bspec.size + sum(2 * len(t.name.encode()) + 192 for t in bspec.tensors) + 4096
