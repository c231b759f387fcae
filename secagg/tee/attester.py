"""Sources of TEE evidence for the aggregator: real hardware via configfs-tsm, or the insecure dev TEE.

An :class:`Attester` turns 64 bytes of report data into evidence that binds them. The aggregator
never chooses the evidence format; the site recognises it by content (:mod:`attestation.evidence`).
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from attestation import devtee
from secagg.tee.errors import TeeUnavailable

log = logging.getLogger(__name__)

CONFIGFS_TSM_REPORT = Path("/sys/kernel/config/tsm/report")


@dataclass(frozen=True)
class RawEvidence:
    """Evidence bytes and the certificates a verifier needs that the evidence does not carry."""

    evidence: bytes
    certs: tuple[bytes, ...] = ()


class Attester(Protocol):
    def attest(self, report_data: bytes) -> RawEvidence: ...


class DevTeeAttester:
    """INSECURE dev TEE: not a hardware TEE. Evidence is signed by a local software key.

    For demos and tests on machines without TEE hardware. Whoever holds ``signing_key`` can claim any
    measurement, so it proves nothing about isolation; sites refuse it unless their policy sets
    ``allow_insecure_dev_tee`` (and should pin the key). Constructing one logs a warning.
    """

    def __init__(
        self,
        signing_key: devtee.SigningKey,
        measurement: bytes,
        *,
        debug: bool = False,
        tcb: dict[str, int] | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        if len(measurement) not in (32, 48):
            raise ValueError("measurement must be 32 or 48 bytes")
        self._key = signing_key
        self._measurement = bytes(measurement)
        self._debug = debug
        self._tcb = dict(tcb) if tcb is not None else None
        self._clock = clock
        log.warning("INSECURE dev TEE: not a hardware TEE (evidence signed by a software key)")

    def __repr__(self) -> str:
        return f"DevTeeAttester(INSECURE, measurement={self._measurement.hex()})"

    def attest(self, report_data: bytes) -> RawEvidence:
        ts = self._clock() if self._clock is not None else None
        return RawEvidence(
            devtee.make_dev_evidence(
                self._key, self._measurement, report_data, self._debug, tcb=self._tcb, timestamp=ts
            )
        )


class ConfigfsTsmAttester:
    """Real SEV-SNP or TDX evidence through the Linux configfs-tsm report interface (kernel >= 6.7).

    Protocol (Documentation/ABI/testing/configfs-tsm-report): create a report entry (mkdir), write the
    report data to ``inblob`` (and ``privlevel`` for SEV-SNP VMPL), read ``outblob`` (the SNP report
    or TDX quote) and ``auxblob`` (SNP certificate table, if any), and check that ``generation`` (a
    count of writes to the entry) is what we wrote: anything else means another writer raced us, and
    the evidence may bind someone else's data. The entry is removed afterwards.
    """

    def __init__(self, root: str | Path = CONFIGFS_TSM_REPORT, *, privlevel: int | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise TeeUnavailable(
                f"configfs-tsm is not available: {self.root} does not exist (not a confidential VM, "
                "kernel older than 6.7, or configfs not mounted)"
            )
        if privlevel is not None and privlevel not in range(4):
            raise ValueError("privlevel must be 0..3")
        self.privlevel = privlevel

    def attest(self, report_data: bytes) -> RawEvidence:
        if len(report_data) > 64:
            raise ValueError("report data must be at most 64 bytes")
        entry = self.root / f"secagg-{secrets.token_hex(8)}"
        try:
            os.mkdir(entry)
        except OSError as exc:
            raise TeeUnavailable(
                f"configfs-tsm: cannot create a report entry in {self.root}: {exc}"
            ) from None
        try:
            return self._report(entry, bytes(report_data).ljust(64, b"\0"))
        finally:
            try:
                os.rmdir(entry)
            except OSError as exc:
                log.warning("configfs-tsm: could not remove %s: %s", entry, exc)

    def _report(self, entry: Path, inblob: bytes) -> RawEvidence:
        try:
            writes = 0
            if self.privlevel is not None:
                (entry / "privlevel").write_text(str(self.privlevel))
                writes += 1
            (entry / "inblob").write_bytes(inblob)
            writes += 1
            provider = (entry / "provider").read_text().strip() if (entry / "provider").exists() else "?"
            outblob = (entry / "outblob").read_bytes()
            aux = entry / "auxblob"
            auxblob = aux.read_bytes() if aux.exists() else b""
            generation = int((entry / "generation").read_text().strip())
        except (OSError, ValueError) as exc:
            raise TeeUnavailable(f"configfs-tsm report failed in {entry}: {exc}") from None
        if generation != writes:
            raise TeeUnavailable(
                f"configfs-tsm: generation is {generation}, expected {writes}: another writer used the "
                "report entry concurrently; evidence discarded"
            )
        if not outblob:
            raise TeeUnavailable(f"configfs-tsm: provider {provider} returned an empty report")
        return RawEvidence(outblob, (auxblob,) if auxblob else ())
