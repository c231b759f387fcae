"""Full-batch Gaussian releases are accounted without importing Opacus (and so torch): the same float
as Opacus' RDPAccountant, for a restarted agent that must be back within a round (RELIABILITY.md F4)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from secagg.privacy import accounting

HISTORIES = [
    [(1.1, 1.0, 1)],
    [(1.1, 1.0, 1)] * 3,
    [(0.5, 1.0, 2), (2.0, 1.0, 1)],
    [(1.1, 1.0, 40)],
    [(10.0, 1.0, 1)],
    [(0.01, 1.0, 1)],
    [(1.1, 0.0, 1), (3.0, 1.0, 5)],
]


@pytest.mark.parametrize("history", HISTORIES)
@pytest.mark.parametrize("delta", [1e-5, 1e-3, 0.3])
def test_the_same_float_as_opacus(history: list[tuple[float, float, int]], delta: float) -> None:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # opacus warns when the best order is at the end of its range
        want = float(acc.get_epsilon(delta=delta))
    assert accounting._full_batch_epsilon(tuple(history), delta) == want


def test_a_full_batch_total_imports_no_torch() -> None:
    code = (
        "import sys; from secagg.privacy.accounting import rdp_epsilon; "
        "rdp_epsilon([(1.1, 1.0, 2)], 1e-5); print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False"
