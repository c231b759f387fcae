"""``tee`` mode at the aggregator: updates sealed to keys that only this attested aggregator holds.

Uploads are framed HPKE-sealed chunks of safetensors(w_i * update_i), sealed by each site to the keys
bound into the evidence it verified (invariant 4, at the site). They are opened in the enclave's memory
a chunk at a time, as the windowed sum reaches them (:class:`secagg.tee.stream.SealedSource`), and
never written to disk in the clear. The sealing context binds the job,
the round and the site: the site is the uploader's mTLS identity and the round the one it uploaded in,
both passed here as values.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from secagg.aggregator.modes import ModeContext
from secagg.aggregator.modes.plain import PlainCombiner, PlainMode
from secagg.aggregator.modes.windows import ByteSource
from secagg.aggregator.rounds import JobRun
from secagg.bundle import BundleSpec
from secagg.errors import ConfigError
from secagg.tee.sealing import ChunkHeader
from secagg.tee.stream import SealedSource


class TeeCombiner(PlainCombiner):
    """A :class:`PlainCombiner` whose uploads are opened by the enclave as they are read."""

    def __init__(self, spec: BundleSpec, window_bytes: int, enclave: Any, job_id: str) -> None:
        super().__init__(spec, window_bytes)
        self.enclave = enclave
        self.job_id = job_id

    def source(self, site: str, round_: int, path: Path) -> ByteSource:
        return self._sealed(site, round_, path)

    def _sealed(self, site: str, round_: int, path: Path) -> SealedSource:
        enclave, job = self.enclave, self.job_id

        def open_chunk(raw: bytes, expect: ChunkHeader) -> bytes:
            return bytes(enclave.open_update_chunk(raw, expect, job, round_, site))

        return SealedSource(path, open_chunk)

    def check(self, site: str, round_: int, path: Path) -> None:
        """Every chunk opens for this site and round (one pass, a chunk at a time), then the header
        fits the spec and every value is finite (a second, windowed pass)."""
        src = self._sealed(site, round_, path)
        try:
            src.verify()
        finally:
            src.close()
        super().check(site, round_, path)


class TeeMode(PlainMode):
    name = "tee"
    sees_model = True  # inside the attested enclave only

    def __init__(self, ctx: ModeContext) -> None:
        self.check_aggregator(ctx.enclave)
        # the job's keys, unsealed after a restart (the ones the sites pinned) or made and sealed now,
        # before any site can see them (RELIABILITY.md F7); keys that do not open here fail the job
        ctx.enclave.open_job(ctx.job_id)
        super().__init__(ctx)

    @classmethod
    def check_aggregator(cls, enclave: Any) -> None:
        if enclave is None:
            raise ConfigError(
                "a tee job needs an aggregator started in a TEE (aggregator serve --tee configfs, "
                "or --insecure-dev-tee for demos)"
            )

    def _combiner(self) -> PlainCombiner:
        return TeeCombiner(self.ctx.bundle_spec, self.ctx.window_bytes, self.ctx.enclave, self.ctx.job_id)

    def payload_header(self, job: JobRun, site_has_round: int) -> dict[str, Any]:
        header = super().payload_header(job, site_has_round)
        if job.global_model is not None:
            # sites check this signature, by a key bound into the evidence, before using the model
            # the fingerprint hashed while the bundle was written, not a copy of the model per task
            sig = self.ctx.enclave.sign_model(job.global_model.fingerprint, job.job_id, job.completed)
            header["model_signature"] = base64.b64encode(sig).decode()
        return header


__all__ = ["TeeCombiner", "TeeMode"]
