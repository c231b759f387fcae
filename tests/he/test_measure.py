from __future__ import annotations

from secagg.he.measure import measure
from secagg.he.params import NVFLARE_DEFAULT, SECAGG_DEFAULT


def test_measure_reports_and_meets_the_byte_goal() -> None:
    n = NVFLARE_DEFAULT.slots * 2  # whole ciphertexts for both sets: a fair byte comparison
    ours = measure(SECAGG_DEFAULT, n, sites=2)
    theirs = measure(NVFLARE_DEFAULT, n, sites=2)
    for r in (ours, theirs):
        assert r["raw_bytes"] == 4 * n and r["max_abs_err"] <= 1e-7
        assert r["ratio_to_raw_float32"] == r["bytes_per_site"] / r["raw_bytes"]
        assert {"encrypt_s", "aggregate_s", "decrypt_s", "public_context_bytes"} <= set(r)
    assert ours["n_ciphertexts"] == 2 and theirs["n_ciphertexts"] == 1  # N real values per ciphertext
    # the goal: at most half of NVFlare's uplink
    assert ours["bytes_per_site"] <= 0.5 * theirs["bytes_per_site"]
