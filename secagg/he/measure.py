"""Measure one HE round in-process: bytes per site, time per phase, error against float64 FedAvg.

Run by hand (``python -m secagg.he.measure --n 1000000 --sites 3``) to compare presets; the benchmark
suite (``secagg bench``) reports the same figures end to end. Sizes here are what a site uploads: the
ciphertext frames of its flat stream (the public context, ~300 bytes, travels once per job).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

import numpy as np

from secagg.he.codec import CiphertextAccumulator, decrypt_vector, encrypt_vector, n_ciphertexts
from secagg.he.context import make_secret_context
from secagg.he.params import PRESETS, CkksParams


def measure(params: CkksParams, n: int, sites: int, seed: int = 0) -> dict[str, Any]:
    """One round of ``sites`` updates of ``n`` values drawn from U(-0.05, 0.05), random FedAvg weights."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    secret = make_secret_context(params)
    keygen_s = time.perf_counter() - t0
    public = secret.public()
    counts = rng.integers(100, 10_000, sites).astype(np.float64)
    weights = counts / counts.sum()
    expected = np.zeros(n, dtype=np.float64)
    acc = CiphertextAccumulator(public, n_ciphertexts(n, params))
    encrypt_s = aggregate_s = 0.0
    uplink = 0
    for w in weights:
        update = rng.uniform(-0.05, 0.05, n)
        expected += w * update
        t0 = time.perf_counter()
        frames = list(encrypt_vector(secret, update, float(w)))
        encrypt_s += time.perf_counter() - t0
        uplink = sum(len(f) for f in frames)
        t0 = time.perf_counter()
        for i, frame in enumerate(frames):
            acc.add(i, frame)
        aggregate_s += time.perf_counter() - t0
        del frames
    t0 = time.perf_counter()
    result = list(acc.result())
    aggregate_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    out = decrypt_vector(secret, result, n)
    decrypt_s = time.perf_counter() - t0
    raw = 4 * n
    return {
        "params": params.to_dict(),
        "n": n,
        "sites": sites,
        "n_ciphertexts": n_ciphertexts(n, params),
        "raw_bytes": raw,
        "bytes_per_site": uplink,
        "ratio_to_raw_float32": uplink / raw,
        "public_context_bytes": len(secret.serialize_public()),
        "secret_context_bytes": len(secret.serialize_secret()),
        "keygen_s": keygen_s,
        "encrypt_s": encrypt_s / sites,
        "aggregate_s": aggregate_s,
        "decrypt_s": decrypt_s,
        "max_abs_err": float(np.max(np.abs(out - expected))),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--preset", nargs="+", default=["secagg-default", "nvflare-default"], choices=PRESETS)
    args = parser.parse_args(argv)
    results = [dict(measure(PRESETS[name], args.n, args.sites), preset=name) for name in args.preset]
    json.dump(results, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
