"""``tee-mask`` in the benchmark: ``mask``'s protocol with its server inside the attested enclave.

The site side is :class:`~secagg.bench.modes.MaskMode` with every message it posts sealed to the
enclave's key for its phase (HPKE, ML-KEM-768+X25519, as :class:`secagg.tee.site.TrustedAggregator`
seals in the agent), its masked input sealed in 4 MiB chunks, and everything it reads checked against
the enclave's P-384 signature for it. The aggregator's step opens every message inside the enclave
(the masked inputs a chunk at a time, as the windowed unmasking reads them, after one whole opening
that authenticates each, as the service's ``admit`` does), signs each roster, share bundle and unmask
request per recipient, and signs the global model, which site 1 verifies. The code paths are the
library's own (:class:`secagg.tee.enclave.Enclave`, :mod:`secagg.tee.relaysig`,
:class:`secagg.tee.stream.SealedSource`). Attestation (once per round and site) is not timed, as for
``tee``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.bundle import fingerprint, from_safetensors
from secagg.framing import frame, unframe
from secagg.mask.job import pack, unpack
from secagg.tee import suites
from secagg.tee.enclave import Enclave, EnclaveKeys
from secagg.tee.relaysig import EVERYONE, purpose
from secagg.topics import Topic

from .clock import Lap, clock, lap
from .modes import UPLOAD, MaskAggregator, MaskMode, _tee_key, down_path, up_path
from .workload import Workload

#: the attempt every benchmark round is (it only enters the signed and sealed contexts)
ATTEMPT = 1
#: what every site collects under the same signature (the agent's ``BROADCAST``)
_BROADCAST = frozenset({Topic.MASK_KEYROSTER, Topic.MASK_UNMASK})
#: the largest protocol message the aggregator opens (as ``aggregator.modes.tee_mask``)
_MAX_MESSAGE = 16 * 1024 * 1024
_SUITE = suites.MLKEM768_X25519


def _keys(work: Path) -> EnclaveKeys:
    """The enclave's keys from the scratch folder, so the aggregator's child has the very same."""
    seed = (work / "tee-agg.seed").read_bytes()
    from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

    hpke_key = _tee_key(seed)
    # the announced encoding (secagg.tee.suites.generate): ML-KEM-768 public || X25519 public
    m = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed[:64]).public_key().public_bytes_raw()
    x = x25519.X25519PrivateKey.from_private_bytes(seed[64:96]).public_key().public_bytes_raw()
    raw = m + x
    model_key = serialization.load_pem_private_key((work / "tee-sig.pem").read_bytes(), None)
    assert isinstance(model_key, ec.EllipticCurvePrivateKey)
    return EnclaveKeys(((_SUITE, hpke_key),), ((_SUITE, raw),), model_key)


def _enclave(work: Path) -> Enclave:
    from secagg.tee.attester import DevTeeAttester

    # the attester answers challenges only, which the benchmark does not time: any key does
    attester = DevTeeAttester(ec.generate_private_key(ec.SECP384R1()), b"\0" * 48)
    return Enclave(attester, _keys(work))


def _payload(topic: str, messages: list[bytes]) -> bytes:
    """What the service publishes for ``topic``: the unmask request as it is, the others packed."""
    return messages[0] if topic == Topic.MASK_UNMASK else pack(messages)


class TeeMaskBenchMode(MaskMode):
    name = "tee-mask"
    #: the masked input is sealed whole in ``posted`` (not streamed yet)
    streamed_upload = False

    def setup(self, work: Path, wl: Workload) -> dict[str, Any]:
        from attestation.evidence import AttestationResult
        from secagg.tee.site import TrustedAggregator

        info = super().setup(work, wl)
        (work / "tee-agg.seed").write_bytes(os.urandom(96))
        (work / "tee-sig.pem").write_bytes(
            ec.generate_private_key(ec.SECP384R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        # the router of protect_all plays the enclave's signing part (timed again in the child)
        self.enclave = _enclave(work)
        # what a site holds once it accepted the evidence (verification itself is not timed)
        self.trusted = TrustedAggregator(
            self.enclave.announcement, _SUITE, "dev-tee", "", AttestationResult("dev-tee", True)
        )
        self.names = wl.names
        return {
            **info,
            "tee": "every mask message sealed to the enclave (mlkem768-x25519), every "
            "message it sends signed (P-384), masked inputs in 4 MiB sealed chunks; model signed",
        }

    def posted(self, site: int, topic: str, payload: bytes) -> bytes:
        name = self.names[site]
        if topic == UPLOAD:
            return b"".join(frame(self.trusted.seal_update(payload, self.job, self.round, name)))
        where = purpose(topic, ATTEMPT)
        return b"".join(frame(self.trusted.seal_message(payload, self.job, self.round, name, where)))

    def published(self, site: int, topic: str, messages: list[bytes]) -> bytes | None:
        to = EVERYONE if topic in _BROADCAST else self.names[site]
        return self.enclave.sign_message(_payload(topic, messages), self.job, self.round, ATTEMPT, topic, to)

    def read(self, site: int, topic: str, got: bytes | None, messages: list[bytes]) -> list[bytes]:
        assert got is not None
        to = EVERYONE if topic in _BROADCAST else self.names[site]
        payload = self.trusted.open_message(got, self.job, self.round, ATTEMPT, topic, to)
        return [payload] if topic == Topic.MASK_UNMASK else unpack(payload)

    def downlink_bytes(self, work: Path, site: int) -> int:
        return super().downlink_bytes(work, site) + _sig_path(work).stat().st_size

    def unprotect(self, work: Path, wl: Workload, site: int) -> tuple[Lap, np.ndarray | float]:
        model = down_path(work, 0).read_bytes()
        signature = _sig_path(work).read_bytes()
        t0 = clock()
        bundle = from_safetensors(model)
        # one hash serves the enclave's signature and the consistency proof, as in the agent
        self.trusted.verify_model(signature, fingerprint(bundle), self.job, self.round)
        out = wl.spec.flatten(bundle)
        return lap(t0), out


def _sig_path(work: Path) -> Path:
    return work / "down-0.sig"


class TeeMaskAggregator(MaskAggregator):
    """Inside the enclave: every site's message opened, every published message signed for its
    recipient, the masked inputs read a sealed chunk at a time, the model signed as written."""

    def prepare(self, work: Path, sites: int) -> None:
        super().prepare(work, sites)
        self.enclave = _enclave(work)
        self.limit = 4 * self.length + 4096  # as the service's admit bounds one masked input
        # imported here, not in run(): module loading is start-up cost, not round cost
        import secagg.tee.modelsig
        import secagg.tee.stream  # noqa: F401

    def message(self, site: int, part: str, topic: str) -> bytes:
        raw = up_path(self.work, site, part).read_bytes()
        where = purpose(topic, ATTEMPT)
        return bytes(
            self.enclave.open_message(
                unframe(io.BytesIO(raw)),
                MaskMode.job,
                MaskMode.round,
                self.names[site],
                where,
                max_bytes=_MAX_MESSAGE,
            )
        )

    def masked(self, site: int) -> Any:
        from secagg.mask.spooled import MaskedSource
        from secagg.tee.sealing import ChunkHeader
        from secagg.tee.stream import SealedSource

        enclave, job, rnd, name = self.enclave, MaskMode.job, MaskMode.round, self.names[site]
        path = up_path(self.work, site, ".masked")

        def open_chunk(raw: bytes, expect: ChunkHeader) -> bytes:
            return bytes(enclave.open_update_chunk(raw, expect, job, rnd, name))

        with path.open("rb") as fh:  # authenticated whole once, transiently (the service's admit)
            enclave.open_update(unframe(fh), job, rnd, name, max_bytes=self.limit)
        return MaskedSource(SealedSource(path, open_chunk, max_bytes=self.limit))

    def publish(self, topic: str, messages: list[bytes], to: list[str]) -> None:
        payload = _payload(topic, messages)
        for name in to:  # each site's collect is signed for it (broadcasts: for everyone, per request)
            who = EVERYONE if topic in _BROADCAST else name
            self.enclave.sign_message(payload, MaskMode.job, MaskMode.round, ATTEMPT, topic, who)

    def write_result(self, windows: Any) -> None:
        from secagg.aggregator.modes.windows import Fingerprint, write_bundle

        fp = Fingerprint(self.spec)
        write_bundle(down_path(self.work, 0), self.spec, windows, fp)
        signature = self.enclave.sign_model(fp.hexdigest(), MaskMode.job, MaskMode.round)
        _sig_path(self.work).write_bytes(signature)
