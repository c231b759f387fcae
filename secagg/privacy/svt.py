"""Sparse vector technique, as NVIDIA Clara / NVFlare's ``SVTPrivacy`` run it, with honest accounting.

References: Lyu, Su, Li, "Understanding the Sparse Vector Technique for Differential Privacy", VLDB 2017
(arXiv 2016), Alg. 7 with numeric answers; Li et al., "Privacy-preserving Federated Brain Tumour
Segmentation", MLMI 2019 (the federated use of it that NVFlare ships).

Parameters keep NVFlare's names and meaning, so an NVFlare ``privacy.json`` scope translates one to one:
``fraction`` (share ``ceil(n * fraction)`` entries), ``epsilon`` (eps_1, the threshold's budget),
``noise_var`` (eps_3, the per-entry budget of the released values), ``gamma`` (clip bound), ``tau``
(threshold).

What happens to an update of ``n`` entries, with ``c = ceil(n * fraction)``:

1. Clip: every entry is clipped to ``[-gamma, gamma]``; the query for entry ``i`` is
   ``q_i = |clip(x_i)|`` in ``[0, gamma]``.
2. Threshold: ``T = tau + Laplace(scale = 2 gamma / eps_1)``, drawn once.
3. Selection: queries are asked in a uniformly random order within each pass, each with fresh
   ``Laplace(scale = 4 gamma c / eps_2)`` noise where ``eps_2 = eps_1 (2c)^(2/3)`` (Lyu's optimal split,
   as NVFlare sets it); entries that answer "below" are asked again in later passes, as NVFlare's loop
   does; the stream stops at the c-th "above". (NVFlare takes every "above" of a pass and then draws c of
   them with replacement; stopping at the c-th is what the SVT proof covers, and shares exactly c.)
4. Release: each selected entry is sent as ``clip(clip(x_i) + Laplace(scale = 2 gamma / eps_3))`` to
   ``[-gamma, gamma]``. (NVFlare adds the noise to the unclipped value; clipping first bounds the
   sensitivity the accounting assumes.) Every other entry is sent as 0; shapes never change.

Accounting, for neighbouring updates that differ arbitrarily within the clip bound (which covers any
finer relation, such as one training record): selection is ``(eps_1 + eps_2)``-DP (a query moves by at
most gamma; the noise is calibrated for 2 gamma, as in NVFlare); the release of c values, each moving by
at most 2 gamma, with per-entry noise calibrated to eps_3 costs ``c * eps_3`` by basic composition. One
release therefore costs ``epsilon = eps_1 + eps_1 (2c)^(2/3) + c * noise_var`` with ``delta = 0``. That is
far more than NVFlare's ``epsilon`` parameter suggests; the ledger debits this figure, because counting
less than was spent is the one mistake a budget must never make.

NVFlare divides the update by the round's local step count before clipping and multiplies back after;
secagg filters see no step count, which is NVFlare's behaviour when that count is absent (1). NVFlare
also passes zero-dimensional tensors through untouched; here they are entries like any other.

Memory: SVT needs the **whole update at once**: its queries are asked in one uniformly random order over
every entry of every tensor, and it stops at the c-th "above" wherever that falls, so neither tensors nor
windows can be processed independently without changing the mechanism (and its proof). It holds the
flat update, the clipped queries and the output: a few float64 copies of the model.
"""

from __future__ import annotations

import math

import numpy as np

from secagg.errors import ConfigError
from secagg.privacy.spend import Spend, Update, as_update, flatten, share_count, unflatten

#: passes over the not-yet-selected entries before giving up (only a threshold far above gamma needs more)
MAX_PASSES = 100


def svt_epsilon(n_params: int, fraction: float, epsilon: float, noise_var: float) -> float:
    """The epsilon one SVT release of an ``n_params``-entry update costs (see the module docstring)."""
    c = share_count(n_params, fraction)
    if c == 0:
        return 0.0
    return math.fsum([epsilon, epsilon * (2.0 * c) ** (2.0 / 3.0), c * noise_var])


def svt(
    update: Update,
    rng: np.random.Generator,
    *,
    fraction: float = 0.1,
    epsilon: float = 0.1,
    noise_var: float = 0.1,
    gamma: float = 1e-5,
    tau: float = 1e-6,
) -> tuple[Update, Spend | None]:
    """Share ``ceil(n * fraction)`` noisy, clipped entries chosen by SVT; zero the rest (see module doc)."""
    if not (0 < fraction <= 1 and epsilon > 0 and noise_var > 0 and gamma > 0 and math.isfinite(tau)):
        raise ConfigError("svt: need 0 < fraction <= 1, epsilon > 0, noise_var > 0, gamma > 0, finite tau")
    upd = as_update(update)
    x = flatten(upd)
    n = x.size
    c = share_count(n, fraction)
    if c == 0:
        return upd, None

    clipped = np.clip(x, -gamma, gamma)
    query = np.abs(clipped)
    threshold = tau + rng.laplace(scale=2.0 * gamma / epsilon)
    eps_2 = epsilon * (2.0 * c) ** (2.0 / 3.0)
    lambda_nu = 4.0 * gamma * c / eps_2

    # The query stream is pass after pass over the entries not yet selected. Within a pass the order is
    # uniformly random, so the first `need` "above" answers of the last pass are a uniform sample of
    # that pass's "above" set: drawn directly, without permuting millions of indices.
    remaining: np.ndarray | None = None  # None: every entry (first pass, no index array needed)
    chosen: list[np.ndarray] = []
    need = c
    for _ in range(MAX_PASSES):
        size = n if remaining is None else remaining.size
        nu = rng.laplace(scale=lambda_nu, size=size)
        q = query if remaining is None else query[remaining]
        above = q + nu >= threshold
        hits = np.flatnonzero(above)
        if hits.size >= need:
            if hits.size > need:
                hits = rng.choice(hits, size=need, replace=False, shuffle=False)
            chosen.append(hits if remaining is None else remaining[hits])
            need = 0
            break
        chosen.append(hits if remaining is None else remaining[hits])
        need -= hits.size
        remaining = np.flatnonzero(~above) if remaining is None else remaining[~above]
    if need:
        raise ConfigError(
            f"svt: only {c - need} of {c} entries passed the threshold in {MAX_PASSES} passes; "
            f"tau={tau} is too high for gamma={gamma}"
        )
    selected = np.concatenate(chosen)

    noise = rng.laplace(scale=2.0 * gamma / noise_var, size=c)
    out = np.zeros(n, dtype=np.float32)
    out[selected] = np.clip(clipped[selected] + noise, -gamma, gamma)
    spend = Spend("svt", svt_epsilon(n, fraction, epsilon, noise_var), 0.0)
    return unflatten(out, upd), spend
