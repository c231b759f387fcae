"""``he`` at a site: one round's decrypted average stepped onto the global model, a ciphertext at a time.

Why: the aggregator of ``he`` sends an encrypted sum that only a site can open, so each site steps the
job's strategy itself. Decrypting the whole average, loading the model and the optimizer's buffers
(FedAdam's are twice the model in float64) and serialising the new model held several copies of the
model at once. The strategy's rules are element-wise (:meth:`secagg.strategy.Strategy.step_window`),
so each ciphertext's values are stepped as they are decrypted, against that window of the stored
float32 model and of the stored buffers, and the new model and state are written window by window:
bit for bit what ``Strategy.apply`` on whole vectors gave (``tests/agent/test_he_step.py``).

The state file is the windowed format both sides write (:mod:`secagg.strategy.statefile`), which
:meth:`secagg.strategy.StrategyState.from_bytes` reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from secagg.agent.roundfiles import spool_path
from secagg.bundle import BundleSpec
from secagg.bundlefile import open_bundle, write_bundle
from secagg.fsio import atomic_write
from secagg.strategy import Strategy


def step_he_round(
    secret: object,
    strategy: Strategy,
    spec: BundleSpec,
    model: Path,
    state: Path | None,
    frames: Iterable[bytes],
    scale: float,
    model_out: Path,
    state_out: Path,
) -> None:
    """The model at ``model`` (float32, as stored) stepped by ``scale`` times the decrypted ``frames``,
    from the state at ``state`` (None: the strategy's first round), to ``model_out`` and ``state_out``,
    each whole or not there at all (``model_out`` is written first: the caller adopts it once this
    returns, and removes it if this raises). Raises what ``decrypt_vector``
    and ``Strategy.apply`` raise (a short, long or foreign stream; a state of another strategy; NaN or
    infinity in or out) before either file is replaced."""
    from secagg.he.codec import decrypt_windows
    from secagg.strategy.statefile import StateFile, StateReader, pwrite_all, state_header

    dim = spec.size
    names = sorted(strategy.buffer_names)
    old = StateFile.read(state) if state is not None else None
    if old is not None:
        strategy.check_state(old.strategy, old.params, old.dim, set(old.offsets), dim)
    head = state_header(
        strategy.name, (old.step if old is not None else 0) + 1, dim, strategy.params(), names
    )
    tmp_state = spool_path(state_out.parent, state_out.name)
    reader = open_bundle(model, spec)
    bufs_in = StateReader(old) if old is not None else None
    fd = os.open(tmp_state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.ftruncate(fd, len(head) + 8 * dim * len(names))
        pwrite_all(fd, memoryview(head), 0)

        def windows() -> Iterator[tuple[int, np.ndarray]]:
            for start, avg in decrypt_windows(secret, frames, dim):  # type: ignore[arg-type]
                stop = start + avg.size
                x = np.empty(avg.size, dtype=np.float64)
                reader.read_into(x, start, stop)
                bufs = {
                    n: bufs_in.window(n, start, stop) if bufs_in else strategy.initial_buffer(n, avg.size)
                    for n in names
                }
                new_x, new_bufs = strategy.step_window(x, avg * float(scale), bufs)
                for i, n in enumerate(names):
                    data = np.ascontiguousarray(new_bufs[n], dtype="<f8")
                    pwrite_all(fd, data.data, len(head) + 8 * (dim * i + start))
                yield start, new_x.astype(np.float32)

        write_bundle(model_out, spec, windows())
        os.fsync(fd)
        os.close(fd)
        fd = -1
        atomic_write(state_out, source=tmp_state)
    finally:
        if fd >= 0:
            os.close(fd)
        reader.close()
        if bufs_in is not None:
            bufs_in.close()
        tmp_state.unlink(missing_ok=True)


__all__ = ["step_he_round"]
