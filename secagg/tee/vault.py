"""Where an enclave keeps each job's keys across a restart: sealed, in the job's state folder.

``STATE/jobs/<job>/tee-keys.sealed`` (0600) holds the job's key set sealed by :mod:`secagg.tee.keyseal`
to the TEE's sealing key, never the keys in the clear. It is written durably (fsync, atomic rename)
before the keys are first announced, so a site can never have pinned keys that a restart loses.

The sealing key comes from a :class:`SealingKey`. On hardware it is the TEE's own (SEV-SNP derives it
from the chip's secret and the launch measurement; configfs-tsm offers no such key, so an aggregator
run with ``--tee configfs`` keeps job keys in memory only: a restart there ends the job, see
``Federation``'s refusal check). :class:`DevTeeSealingKey` is the INSECURE dev TEE's stand-in: a
root secret in a file of the aggregator's state, from which a key is derived per measurement. Anyone
who can read that file can unseal, exactly as anyone holding the dev TEE's signing key can forge its
evidence: it proves nothing, and exists so that the restart path is the one hardware takes.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg.errors import ConfigError, UpdateRejected
from secagg.fsio import atomic_write, fsync_dir
from secagg.reasons import Reason
from secagg.tee import keyseal
from secagg.tee.enclave import EnclaveKeys

log = logging.getLogger(__name__)

SEALED_FILE = "tee-keys.sealed"
#: the aggregator's job ids (``<job.yaml name>-<8 hex>``); anything else never becomes a path
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_DEV_DOMAIN = b"secagg-dev-tee-sealing-key/1\0"
ROOT_SIZE = 32


class SealingKey(Protocol):
    """The TEE's key for sealing data to the measured image it runs."""

    @property
    def measurement(self) -> bytes: ...

    def key(self) -> bytes:
        """32 bytes that only this TEE, running this measurement, can obtain."""
        ...


class DevTeeSealingKey:
    """INSECURE dev-TEE stand-in for a hardware sealing key: HKDF-SHA384 of a root secret kept in
    ``folder/sealing-root.key`` (0600, made on first use), bound to the measurement."""

    ROOT_FILE = "sealing-root.key"

    def __init__(self, root_secret: bytes, measurement: bytes) -> None:
        if len(root_secret) != ROOT_SIZE:
            raise ValueError(f"the dev-TEE sealing root must be {ROOT_SIZE} bytes")
        self._root = bytes(root_secret)
        self._measurement = bytes(measurement)

    def __repr__(self) -> str:  # never print key material
        return f"DevTeeSealingKey(INSECURE, measurement={self._measurement.hex()[:16]}..., <redacted>)"

    @property
    def measurement(self) -> bytes:
        return self._measurement

    def key(self) -> bytes:
        kdf = HKDF(hashes.SHA384(), keyseal.SEAL_KEY_SIZE, salt=None, info=_DEV_DOMAIN + self._measurement)
        return kdf.derive(self._root)

    @classmethod
    def open(cls, folder: Path, measurement: bytes) -> DevTeeSealingKey:
        """The dev TEE's sealing key for ``measurement``, from the root secret in ``folder`` (made,
        0600, if there is none yet)."""
        path = folder / cls.ROOT_FILE
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(path, os.urandom(ROOT_SIZE), mode=0o600)
        try:
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"dev-TEE sealing root {path} is not a regular file")
            if st.st_mode & 0o077:
                raise ConfigError(f"dev-TEE sealing root {path} is readable by others (chmod 600 it)")
            root = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"dev-TEE sealing root {path} cannot be read: {exc.strerror}") from None
        if len(root) != ROOT_SIZE:
            raise ConfigError(f"dev-TEE sealing root {path} is not {ROOT_SIZE} bytes: torn or not ours")
        return cls(root, measurement)


class JobKeyVault:
    """Each job's key set, sealed in ``jobs_dir/<job>/tee-keys.sealed``."""

    def __init__(self, jobs_dir: Path, sealing: SealingKey) -> None:
        self.jobs_dir = jobs_dir
        self.sealing = sealing

    def __repr__(self) -> str:
        return f"JobKeyVault({self.jobs_dir})"

    def path(self, job: str) -> Path:
        """The sealed file of ``job``, whose folder must exist (the aggregator made it at submission):
        a name from the wire never makes a folder."""
        if not _JOB_ID.fullmatch(job) or ".." in job:
            raise UpdateRejected(f"no job {job[:80]!r}", code=Reason.NO_SUCH_JOB)
        folder = self.jobs_dir / job
        if not folder.is_dir():
            raise UpdateRejected(f"no job {job!r} in this aggregator's state", code=Reason.NO_SUCH_JOB)
        return folder / SEALED_FILE

    def load(self, job: str) -> EnclaveKeys | None:
        """The keys sealed for ``job``, or None if it has none; raises
        :class:`~secagg.tee.keyseal.SealedKeysInvalid` if they do not open here."""
        path = self.path(job)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        return keyseal.unseal(blob, self.sealing.key(), self.sealing.measurement, job)

    def create(self, job: str, suites_: Sequence[str]) -> EnclaveKeys:
        """Fresh keys for ``job``, sealed and durably written before they are returned (so before any
        site can see them)."""
        path = self.path(job)
        keys = EnclaveKeys.generate(suites_)
        atomic_write(path, keyseal.seal(keys, self.sealing.key(), self.sealing.measurement, job), mode=0o600)
        log.info("tee keys of job %s made and sealed to the TEE's sealing key", job)
        return keys

    def destroy(self, job: str) -> None:
        """Remove ``job``'s sealed keys (the job has ended), durably; nothing to do for a job without
        a folder (it never started)."""
        try:
            path = self.path(job)
        except UpdateRejected:
            return
        if path.exists():
            path.unlink()
            fsync_dir(path.parent)
            log.info("sealed tee keys of job %s removed: the job has ended", job)

    def open_or_create(self, job: str, suites_: Sequence[str]) -> EnclaveKeys:
        keys = self.load(job)
        if keys is not None:
            log.info("tee keys of job %s unsealed (the keys the sites pinned)", job)
            return keys
        return self.create(job, suites_)


__all__ = ["SEALED_FILE", "DevTeeSealingKey", "JobKeyVault", "SealingKey"]
