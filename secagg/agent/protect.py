"""Mode protection of a site's pre-weighted update: what leaves the site, as a byte stream.

``plain`` is safetensors of the weighted update (baselines only, and only where the policy allows
it); ``he`` is the framed CKKS ciphertext stream of one flat slot vector.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from secagg.bundle import BundleSpec, to_safetensors
from secagg.framing import frame


def protect_plain(spec: BundleSpec, weighted: np.ndarray) -> Iterator[bytes]:
    yield to_safetensors(spec.unflatten(weighted), order=spec.names)


def protect_he(secret_ctx: object, weighted: np.ndarray) -> Iterator[bytes]:
    from secagg.he.codec import encrypt_vector

    yield from frame(encrypt_vector(secret_ctx, weighted, 1.0))  # type: ignore[arg-type]
