"""DP-FedAvg's Gaussian mechanism on the whole update (McMahan et al., ICLR 2018).

The update is clipped as one vector (all tensors together) to L2 norm ``clip`` (C), then every entry gets
independent ``N(0, (z C)^2)`` noise, ``z`` being ``noise_multiplier``. Per-tensor clipping would need a
bound per tensor and weaken the guarantee by the number of tensors, hence one global norm.

The receipt carries ``z``, ``sample_rate`` (1.0 by default: from the site's own view its data is used
every round it takes part) and one step, so the ledger composes rounds by RDP rather than by adding
epsilons; its ``epsilon`` is this one release's, converted at the spec's ``delta``, for display.

Memory: the mathematics needs the whole update only for its norm: one pass for ``||x||``, then a second
that scales and noises each window independently. :func:`gaussian` works on an update in memory; the site
agent runs the two-pass form over its spooled update (:mod:`secagg.privacy.streamed`), a window at a
time, with the same result bit for bit: the norm is summed over fixed blocks of :data:`NORM_BLOCK`
values in both (:func:`l2_norm`), and the noise is drawn in order, element for element.
"""

from __future__ import annotations

import numpy as np

from secagg.errors import ConfigError
from secagg.privacy.accounting import rdp_epsilon
from secagg.privacy.spend import Spend, Update, as_update, flatten, unflatten

#: the norm's summation blocks (values): fixed, so the norm is the same whatever window reads them
NORM_BLOCK = 1 << 20


def sum_squares(block: np.ndarray) -> float:
    """``sum(block**2)`` of one :data:`NORM_BLOCK` (or the last, shorter one), as float64; on a fresh
    copy, so the dot product sees the same memory layout in memory and streamed alike."""
    c = np.array(block, dtype=np.float64, copy=True)
    return float(np.dot(c, c))


def l2_norm(x: np.ndarray) -> float:
    """The L2 norm of ``x``, summed block by block (:data:`NORM_BLOCK`) in order."""
    total = 0.0
    for start in range(0, x.size, NORM_BLOCK):
        total += sum_squares(x[start : start + NORM_BLOCK])
    return float(np.sqrt(total))


def check_params(clip: float, noise_multiplier: float, sample_rate: float, delta: float) -> None:
    if not (clip > 0 and noise_multiplier > 0 and 0 < sample_rate <= 1 and 0 < delta < 1):
        raise ConfigError(
            "gaussian: need clip > 0, noise_multiplier > 0, 0 < sample_rate <= 1, 0 < delta < 1"
        )


def receipt(noise_multiplier: float, sample_rate: float, delta: float) -> Spend:
    """What one release through the filter costs: the RDP triple, and epsilon at ``delta`` for display."""
    eps = rdp_epsilon([(noise_multiplier, sample_rate, 1)], delta)
    return Spend("gaussian", eps, delta, noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=1)


def gaussian(
    update: Update,
    rng: np.random.Generator,
    *,
    clip: float,
    noise_multiplier: float,
    sample_rate: float = 1.0,
    delta: float = 1e-5,
) -> tuple[Update, Spend | None]:
    """Clip the update to L2 norm ``clip`` and add ``N(0, (noise_multiplier * clip)^2)`` to each entry."""
    check_params(clip, noise_multiplier, sample_rate, delta)
    upd = as_update(update)
    x = flatten(upd).astype(np.float64)
    norm = l2_norm(x)
    if norm > clip:
        x *= clip / norm
    x += rng.normal(scale=noise_multiplier * clip, size=x.size)
    return unflatten(x, upd), receipt(noise_multiplier, sample_rate, delta)
