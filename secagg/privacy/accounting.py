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
from typing import Any

from secagg.privacy.spend import Spend

#: the RDP orders Opacus' ``RDPAccountant`` searches (its ``DEFAULT_ALPHAS``)
_ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def _full_batch_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """Opacus' own computation for releases without subsampling (``sample_rate`` 0 or 1: the Gaussian
    filter), in numpy, operation for operation (``analysis.rdp.compute_rdp`` at ``q == 1``, then
    ``get_privacy_spent``), so the result is the same float.

    Why not Opacus itself: importing it imports torch, which took a restarted agent (admission checks
    the ledger) past a minute on a loaded machine, so it missed its round or the final model
    (RELIABILITY.md F4, F5). Subsampled releases (DP-SGD) still go to Opacus."""
    import numpy as np

    def one(z: float, q: float, steps: int) -> Any:
        per: list[float]
        if q == 0:
            per = [0.0 for _ in _ALPHAS]
        elif z == 0:
            per = [np.inf for _ in _ALPHAS]
        else:
            per = [a / (2 * z**2) for a in _ALPHAS]
        return np.array(per) * steps

    rdp = sum(one(z, q, s) for z, q, s in history)
    orders = np.atleast_1d(_ALPHAS)
    rdp_vec = np.atleast_1d(rdp)
    eps = rdp_vec - (np.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    if np.isnan(eps).all():
        return math.inf
    return float(eps[np.nanargmin(eps)])


@lru_cache(maxsize=256)
def _rdp_epsilon_cached(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    if all(q in (0.0, 1.0) for _, q, _ in history):
        return _full_batch_epsilon(history, delta)
    from opacus.accountants import RDPAccountant  # heavy import (torch): only for subsampled releases

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
