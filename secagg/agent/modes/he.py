"""``he``: CKKS ciphertexts of the weighted update; the site decrypts the sum and applies the strategy.

The aggregator only ever holds ciphertexts (invariant 2 is the aggregator's side of this): it sends each
round's encrypted sum and its scale, and every site decrypts it and steps the job's strategy from state
it keeps durably, so every site computes the same model without the aggregator seeing it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

import grpc

from secagg.agent.modes.base import ModeContext, Outgoing, Sent, Task, upload
from secagg.agent.protect import protect_he_windows
from secagg.errors import ConfigError, IntegrityError
from secagg.events import Event
from secagg.framing import unframe
from secagg.strategy import make_strategy
from secagg.topics import Topic

HE_KEY_TOPIC = Topic.HE_KEY


#: one key custody step at a time per agent state folder (each running job has a mode object of its
#: own); per folder, not per process: agents in one process (tests, demos) must not wait on each other
_KEY_CUSTODY: dict[Path, threading.Lock] = {}
_KEY_CUSTODY_GUARD = threading.Lock()


def _custody_lock(root: Path) -> threading.Lock:
    with _KEY_CUSTODY_GUARD:
        return _KEY_CUSTODY.setdefault(root, threading.Lock())


class HeMode:
    name = "he"

    def __init__(self, ctx: ModeContext) -> None:
        self.ctx = ctx
        self._secret_ctx: Any = None

    # ------------------------------------------------------------ key custody
    def secret_context(self) -> Any:
        """The shared CKKS secret context: made here if this site is the key holder, else received
        sealed to this site's certificate key."""
        if self._secret_ctx is not None:
            return self._secret_ctx
        with _custody_lock(self.ctx.state.root):  # two HE jobs at the key holder: one key pair
            return self._secret_context()

    def _secret_context(self) -> Any:
        from secagg.he import store as he_store

        kit, relay = self.ctx.kit, self.ctx.relay
        path = self.ctx.state.root / "he-secret.ctx"
        if path.is_file():
            self._secret_ctx = he_store.load_secret_context_file(path)
            return self._secret_ctx
        if kit.name == kit.config.key_holder:
            from secagg.he.context import make_secret_context
            from secagg.he.custody import make_key_envelopes
            from secagg.he.params import SECAGG_DEFAULT

            ctx = make_secret_context(SECAGG_DEFAULT)
            release = make_key_envelopes(ctx, kit.private_key, kit.cert, kit.peer_certs(), kit.config.project)
            he_store.save_secret_context(path, ctx)
            try:
                relay.post(HE_KEY_TOPIC, release.to_bytes())
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
            self.ctx.audit.append(Event.HE_KEY_CREATED, recipients=sorted(release.envelopes))
        else:
            from secagg.he.custody import KeyRelease, open_envelope, verify_public_context

            release = KeyRelease.from_bytes(relay.collect(HE_KEY_TOPIC))
            holder = kit.config.key_holder
            public = verify_public_context(
                release.public_context,
                release.public_context_sig,
                release.holder_cert,
                kit.ca_cert,
                holder,
                kit.config.project,
            )
            if kit.name not in release.envelopes:
                raise IntegrityError(f"the HE key release has no envelope for {kit.name}")
            ctx = open_envelope(
                release.envelopes[kit.name], kit.private_key, kit.name, kit.config.project, public=public
            )
            he_store.save_secret_context(path, ctx)
            self.ctx.audit.append(Event.HE_KEY_RECEIVED, holder=holder)
        self._secret_ctx = he_store.load_secret_context_file(path)
        return self._secret_ctx

    # ------------------------------------------------------------ the round
    def receive_global(self, task: Task) -> Path:
        self.secret_context()
        spec, state, job_id = task.job.spec, self.ctx.state, task.job_id
        base = int(task.header["base_round"])
        if base == 0:
            path = task.job.root / spec.model
        else:
            path = state.global_path(job_id, base)
            if not path.is_file():
                raise ConfigError(
                    f"site state has no global model of round {base}; cannot resume job {job_id}"
                )
        # stepped a ciphertext at a time (secagg.agent.he_step): the decrypted average, the model and
        # the strategy's buffers are never whole in memory
        from secagg.agent.he_step import step_he_round
        from secagg.agent.roundfiles import model_spec, spool_path

        bspec = model_spec(path)
        strategy = make_strategy(spec.strategy)
        job_dir = state.job_dir(job_id)
        kept = job_dir / f"strategy-{base}.bin"
        state_file = kept if kept.is_file() else None
        offset = 0
        for upd in task.header["updates"]:
            size, r = int(upd["bytes"]), int(upd["round"])
            tmp = spool_path(job_dir, f"global-{r}")
            try:
                with _ciphertexts(task, offset, size) as frames:
                    step_he_round(
                        self.secret_context(),
                        strategy,
                        bspec,
                        path,
                        state_file,
                        frames,
                        float(upd["scale"]),
                        tmp,
                        job_dir / f"strategy-{r}.bin",
                    )
                state.adopt_global(job_id, r, tmp)
            finally:
                tmp.unlink(missing_ok=True)
            offset += size
            # the next round starts from the model and state as stored, exactly as a site that took
            # this round alone does: catching up on several rounds at once (a site back after a
            # partition) must give the same bits, not the unrounded sum (issue #18, partition-timeout)
            path, state_file = state.global_path(job_id, r), job_dir / f"strategy-{r}.bin"  # type: ignore[assignment]
        return path

    def check_global(self, task: Task, model_fingerprint: str) -> None:
        return None

    def protect_and_send(self, out: Outgoing) -> Sent:
        # encrypted a window at a time; a window refused mid-way raises while the frames are still
        # being spooled, so nothing of a bad update is sent
        weighted = out.weighted
        frames = protect_he_windows(self.secret_context(), weighted.windows(), weighted.size)
        return upload(self.ctx, out, self.name, frames)


@contextmanager
def _ciphertexts(task: Task, offset: int, size: int) -> Iterator[Iterator[bytes]]:
    """The frames of one round's result, ``size`` bytes at ``offset`` of the task's payload, read from
    its spooled file as they are decrypted (never the whole payload in memory)."""
    if isinstance(task.payload, bytes):
        yield unframe(BytesIO(task.payload[offset : offset + size]))
        return
    with task.payload.open("rb") as fh:
        fh.seek(offset)
        yield unframe(_Bounded(fh, size))  # type: ignore[arg-type]


class _Bounded:
    """A file read no further than ``size`` bytes from where it stands: one round's piece of the task."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self._fh, self._left = fh, size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._fh.read(n)
        self._left -= len(data)
        return data


__all__ = ["HE_KEY_TOPIC", "HeMode"]
