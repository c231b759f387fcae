"""Composition of many releases into one ``(epsilon, delta)``, and how it was computed.

Two families compose differently:

* SVT / Laplace (pure or approximate DP with no finer description): basic composition, epsilons and
  deltas add up.
* Gaussian mechanisms with a known noise multiplier (the Gaussian filter, DP-SGD): their Renyi-DP curves
  add up (Opacus' ``RDPAccountant``), converted once to ``(epsilon, delta_rdp)``; far tighter than adding
  per-release epsilons.

The two parts are then added by basic composition. ``delta_rdp`` is whatever the target delta leaves
after the basic part's deltas. Update-level guarantees imply record-level ones, so releases of the
update (SVT, Gaussian filter) and of gradients (DP-SGD) on the same data compose soundly at record level.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from secagg.privacy.spend import Spend


@lru_cache(maxsize=256)
def _rdp_epsilon_cached(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    from opacus.accountants import RDPAccountant  # heavy import (torch): only when RDP is needed

    acc = RDPAccountant()
    acc.history = list(history)
    return float(acc.get_epsilon(delta=delta))


def rdp_epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """Epsilon at ``delta`` of ``(noise_multiplier, sample_rate, steps)`` releases, by Opacus' RDP."""
    if not history:
        return 0.0
    if not 0 < delta < 1:
        return math.inf
    return _rdp_epsilon_cached(tuple((float(z), float(q), int(s)) for z, q, s in history), float(delta))


@dataclass(frozen=True)
class Composition:
    epsilon: float
    delta: float
    method: str
    basic_epsilon: float = 0.0
    basic_delta: float = 0.0
    rdp_epsilon: float = 0.0
    rdp_delta: float = 0.0
    n_basic: int = 0
    n_rdp: int = 0


def compose(spends: Iterable[Spend], target_delta: float) -> Composition:
    """Total privacy of ``spends``; the RDP part is converted at what ``target_delta`` leaves."""
    spends = list(spends)
    basic = [s for s in spends if not s.rdp]
    rdp = [s for s in spends if s.rdp]
    b_eps = math.fsum(s.epsilon for s in basic)
    b_delta = math.fsum(s.delta for s in basic)
    parts = []
    if basic:
        parts.append(
            f"basic composition of {len(basic)} release(s) ({_mechs(basic)}): "
            f"eps={b_eps:.6g}, delta={b_delta:.3g}"
        )
    r_eps = r_delta = 0.0
    if rdp:
        r_delta = target_delta - b_delta
        r_eps = rdp_epsilon([s.rdp_triple() for s in rdp], r_delta) if r_delta > 0 else math.inf
        r_delta = max(r_delta, 0.0)
        parts.append(
            f"RDP (Opacus RDPAccountant) of {len(rdp)} Gaussian release(s) ({_mechs(rdp)}) "
            f"converted at delta={r_delta:.3g}: eps={r_eps:.6g}"
        )
    if not parts:
        parts.append("no releases")
    method = "; ".join(parts)
    if basic and rdp:
        method += "; the two parts added by basic composition"
    return Composition(
        epsilon=b_eps + r_eps,
        delta=b_delta + r_delta,
        method=method,
        basic_epsilon=b_eps,
        basic_delta=b_delta,
        rdp_epsilon=r_eps,
        rdp_delta=r_delta,
        n_basic=len(basic),
        n_rdp=len(rdp),
    )


def _mechs(spends: Sequence[Spend]) -> str:
    counts: dict[str, int] = {}
    for s in spends:
        counts[s.mechanism] = counts.get(s.mechanism, 0) + 1
    return ", ".join(f"{m} x{c}" for m, c in sorted(counts.items()))
