"""A job's enclave keys sealed to the TEE's sealing key: pure functions, no I/O.

Why: sites pin an enclave's keys for a whole job (:class:`secagg.tee.site.KeyPin`), rightly: a second
instance with other keys might be measured differently. So a tee aggregator restarted mid-job must come
back with the very keys it announced (RELIABILITY.md F7). They can only survive the process by leaving
it, and they may leave it only sealed to a key that exists inside the TEE alone and only for the same
measured image: the hardware sealing key (SEV-SNP's derived key), or, for the INSECURE dev TEE, its
software stand-in (:mod:`secagg.tee.vault`).

What is sealed is the key set's 32-byte seed (:meth:`EnclaveKeys.from_seed` derives every key from it)
and its suites, under AES-256-GCM with a fresh 96-bit nonce; the additional data binds the job id and
the enclave's measurement, so a sealed blob opens only for the job it was made for and only under the
measurement that sealed it (the sealing key is bound to the measurement as well)::

    b"SGTK" | version u8 | nonce 12 bytes | AES-256-GCM(seal key, nonce, JCS({job, seed, suites}), aad)
    aad = b"secagg-tee-job-keys/1\\0" || SHA-384(JCS({job, measurement}))
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os

import rfc8785
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secagg.errors import IntegrityError
from secagg.reasons import Reason
from secagg.tee import suites
from secagg.tee.enclave import EnclaveKeys

MAGIC = b"SGTK"
VERSION = 1
SEAL_KEY_SIZE = 32
_NONCE = 12
_AAD_DOMAIN = b"secagg-tee-job-keys/1\0"
#: a sealed key set is a few hundred bytes; anything far larger is not one
MAX_SEALED_BYTES = 4096


class SealedKeysInvalid(IntegrityError):
    """A sealed key set that does not open here: torn, altered, for another job, or sealed under
    another measurement or sealing key (a different image must not get a job's keys)."""

    code: str = Reason.TEE_SEALED_KEYS


def _aad(job: str, measurement: bytes) -> bytes:
    bound = rfc8785.dumps({"job": job, "measurement": bytes(measurement).hex()})
    return _AAD_DOMAIN + hashlib.sha384(bound).digest()


def _check_key(seal_key: bytes) -> AESGCM:
    if len(seal_key) != SEAL_KEY_SIZE:
        raise ValueError(f"the sealing key must be {SEAL_KEY_SIZE} bytes")
    return AESGCM(bytes(seal_key))


def seal(keys: EnclaveKeys, seal_key: bytes, measurement: bytes, job: str) -> bytes:
    """``keys`` sealed for ``job`` under ``seal_key`` and ``measurement``."""
    if len(keys.seed) != suites.SEED_SIZE:
        raise ValueError("these keys were not made from a seed (EnclaveKeys.from_seed): cannot seal them")
    body = rfc8785.dumps(
        {"job": job, "seed": base64.b64encode(keys.seed).decode(), "suites": list(keys.suites)}
    )
    nonce = os.urandom(_NONCE)
    sealed = _check_key(seal_key).encrypt(nonce, body, _aad(job, measurement))
    return MAGIC + bytes([VERSION]) + nonce + sealed


def unseal(blob: bytes, seal_key: bytes, measurement: bytes, job: str) -> EnclaveKeys:
    """The key set sealed in ``blob`` for ``job``; raises :class:`SealedKeysInvalid` for anything
    that was not sealed by :func:`seal` for this job, measurement and sealing key."""
    aead = _check_key(seal_key)
    head = len(MAGIC) + 1
    if len(blob) > MAX_SEALED_BYTES or len(blob) < head + _NONCE + 16:
        raise SealedKeysInvalid(f"sealed keys of job {job!r}: {len(blob)} bytes is not a sealed key set")
    if blob[: len(MAGIC)] != MAGIC or blob[len(MAGIC)] != VERSION:
        raise SealedKeysInvalid(f"sealed keys of job {job!r}: not a sealed key set of version {VERSION}")
    nonce, sealed = blob[head : head + _NONCE], blob[head + _NONCE :]
    try:
        body = aead.decrypt(nonce, sealed, _aad(job, measurement))
    except InvalidTag:
        raise SealedKeysInvalid(
            f"sealed keys of job {job!r} do not open under this enclave's sealing key and measurement "
            "(altered, another job's, or sealed by another image)"
        ) from None
    try:  # authentic, so well formed unless the sealing code itself is broken: checked all the same
        obj = json.loads(body)
        seed = base64.b64decode(obj["seed"], validate=True)
        names = tuple(str(n) for n in obj["suites"])
        same_job = hmac.compare_digest(str(obj["job"]).encode(), job.encode())
        keys = EnclaveKeys.from_seed(seed, names)
    except (ValueError, KeyError, TypeError) as exc:
        raise SealedKeysInvalid(f"sealed keys of job {job!r} do not decode ({type(exc).__name__})") from None
    if not same_job:
        raise SealedKeysInvalid(f"sealed keys name another job than {job!r}")
    return keys


__all__ = ["MAGIC", "SEAL_KEY_SIZE", "SealedKeysInvalid", "seal", "unseal"]
