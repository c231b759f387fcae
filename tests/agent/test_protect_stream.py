"""A site's plaintext upload is made a piece at a time: the same tensors as the in-memory bundle, the
size known before the first byte (tee seals it as it streams)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from secagg.agent import protect
from secagg.bundle import BundleSpec, from_safetensors
from secagg.errors import UpdateRejected


def test_streamed_plain_bundle_holds_the_weighted_update(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protect, "PIECE_VALUES", 5)  # pieces that straddle every tensor
    spec = BundleSpec.of(OrderedDict([("w", np.zeros((3, 4))), ("b", np.zeros(7)), ("s", np.zeros(()))]))
    weighted = np.linspace(-1, 1, spec.size) / 3
    pieces = list(protect.protect_plain(spec, weighted))
    assert len(pieces) == 1 + 4 and all(len(p) <= 4 * 5 for p in pieces[1:])  # header, 20 values
    data = b"".join(pieces)
    assert len(data) == protect.plain_size(spec)
    got = from_safetensors(data)
    assert list(got) == spec.names
    assert spec.flatten(got).tobytes() == weighted.astype(np.float32).astype(np.float64).tobytes()
    with pytest.raises(UpdateRejected, match="spec has 20"):
        list(protect.protect_plain(spec, weighted[:-1]))
