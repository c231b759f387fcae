"""DP-FedAvg's Gaussian mechanism on the whole update (McMahan et al., ICLR 2018).

The update is clipped as one vector (all tensors together) to L2 norm ``clip`` (C), then every entry gets
independent ``N(0, (z C)^2)`` noise, ``z`` being ``noise_multiplier``. Per-tensor clipping would need a
bound per tensor and weaken the guarantee by the number of tensors, hence one global norm.

The receipt carries ``z``, ``sample_rate`` (1.0 by default: from the site's own view its data is used
every round it takes part) and one step, so the ledger composes rounds by RDP rather than by adding
epsilons; its ``epsilon`` is this one release's, converted at the spec's ``delta``, for display.

Memory: the mathematics needs the whole update only for its norm: one pass for ``||x||``, then a second
that scales and noises each window independently, so a streamed form over a spooled update would hold a
window, not the model. This implementation still works on the flat update in memory (a float64 copy of
the model, and the noise); the two-pass streamed form over the spooled file is not built yet.
"""

from __future__ import annotations

import numpy as np

from secagg.errors import ConfigError
from secagg.privacy.accounting import rdp_epsilon
from secagg.privacy.spend import Spend, Update, as_update, flatten, unflatten


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
    if not (clip > 0 and noise_multiplier > 0 and 0 < sample_rate <= 1 and 0 < delta < 1):
        raise ConfigError(
            "gaussian: need clip > 0, noise_multiplier > 0, 0 < sample_rate <= 1, 0 < delta < 1"
        )
    upd = as_update(update)
    x = flatten(upd).astype(np.float64)
    norm = float(np.linalg.norm(x))
    if norm > clip:
        x *= clip / norm
    x += rng.normal(scale=noise_multiplier * clip, size=x.size)
    eps = rdp_epsilon([(noise_multiplier, sample_rate, 1)], delta)
    spend = Spend(
        "gaussian",
        eps,
        delta,
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps=1,
    )
    return unflatten(x, upd), spend
