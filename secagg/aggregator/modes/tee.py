"""``tee`` mode at the aggregator: updates sealed to keys that only this attested aggregator holds.

Uploads are framed HPKE-sealed chunks of safetensors(w_i * update_i), sealed by each site to the keys
bound into the evidence it verified (invariant 4, at the site). They are opened in the enclave's memory
a chunk at a time, as the windowed sum reaches them (:class:`secagg.tee.stream.SealedSource`), and
never written to disk in the clear. The sealing context binds the job,
the round and the site: the site is the uploader's mTLS identity and the round the one it uploaded in,
both passed here as values.

Under ``distributed_gaussian`` each upload is instead a site's integer share, sealed as ``U32``
residues mod 2^32 with its fixed point in the (sealed) metadata (:mod:`secagg.privacy.shares`). The
enclave adds the residues in the same windowed pass, with uint32 wrap-around, exactly as the mask
protocol sums masked shares, reads each window back as signed 32-bit times 2^-frac_bits, and the
round engine divides by the number of shares summed (:meth:`TeeMode.total_weight`): the uniform mean
of the Skellam-noised shares, the very release ``mask`` makes of the same shares. A round's uploads are
all shares of one fixed point or all weighted updates; an upload of the other kind is refused
(``share_mismatch``) and the round combined without it, as any bad upload is.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from secagg.aggregator.modes import BadUpload, ModeContext
from secagg.aggregator.modes.plain import PlainCombiner, PlainMode, blamer
from secagg.aggregator.modes.windows import DTYPES, ByteSource, Layout, sum_windows
from secagg.aggregator.rounds import JobRun
from secagg.bundle import BundleSpec
from secagg.errors import ConfigError, UpdateRejected
from secagg.privacy.shares import SHARE_DTYPE, read_sum, share_frac_bits
from secagg.reasons import Reason
from secagg.tee.sealing import ChunkHeader
from secagg.tee.stream import SealedSource


class TeeCombiner(PlainCombiner):
    """A :class:`PlainCombiner` whose uploads are opened by the enclave as they are read."""

    def __init__(self, spec: BundleSpec, window_bytes: int, enclave: Any, job_id: str) -> None:
        super().__init__(spec, window_bytes)
        self.enclave = enclave
        self.job_id = job_id
        #: rounds whose last combine summed integer shares (read once by ``TeeMode.total_weight``)
        self.share_rounds: set[int] = set()

    def source(self, site: str, round_: int, path: Path) -> ByteSource:
        return self._sealed(site, round_, path)

    def _sealed(self, site: str, round_: int, path: Path) -> SealedSource:
        enclave, job = self.enclave, self.job_id

        def open_chunk(raw: bytes, expect: ChunkHeader) -> bytes:
            return bytes(enclave.open_update_chunk(raw, expect, job, round_, site))

        return SealedSource(path, open_chunk)

    def check(self, site: str, round_: int, path: Path) -> None:
        """Every chunk opens for this site and round (one pass, a chunk at a time), then the header
        fits the spec and, for a weighted update, every value is finite (a second, windowed pass; a
        share's residues are integers, and a share must be one in every tensor)."""
        src = self._sealed(site, round_, path)
        try:
            src.verify()
        finally:
            src.close()
        with ExitStack() as stack:
            reader = self.reader(stack, site, round_, path)
            if share_kind(reader.layout) is None:
                reader.check_all(self.elements, self.spec.size)

    def windows(
        self, stack: ExitStack, round_: int, uploads: Mapping[str, Path]
    ) -> Iterator[tuple[int, np.ndarray]]:
        """The weighted sum's windows, or the dequantised sum of integer shares (see the module
        docstring); which one is recorded in :attr:`share_rounds` for :meth:`TeeMode.total_weight`."""
        sites, readers = self.readers(stack, round_, uploads)
        kinds: dict[str, int | None] = {}
        for site, reader in zip(sites, readers, strict=True):
            try:
                kinds[site] = share_kind(reader.layout)
            except UpdateRejected as exc:
                raise BadUpload(uploads[site], exc, site) from exc
        want = round_kind(kinds)
        for site in sites:
            if kinds[site] != want:
                raise BadUpload(
                    uploads[site],
                    UpdateRejected(
                        f"{_kind_words(kinds[site])} in a round of {_kind_words(want)}",
                        code=Reason.SHARE_MISMATCH,
                    ),
                    site,
                )
        blame = blamer(sites, uploads)
        if want is None:
            self.share_rounds.discard(round_)
            return sum_windows(readers, self.spec.size, self.elements, blame)
        self.share_rounds.add(round_)
        frac_bits = want
        wrapped = sum_windows(readers, self.spec.size, self.elements, blame, dtype=np.uint32)
        return ((start, read_sum(win, frac_bits)) for start, win in wrapped)


def share_kind(layout: Layout) -> int | None:
    """The fixed point of an upload that is a distributed-DP share, None for a weighted update;
    refuses (``dtype``) a share whose tensors are not all ``U32`` residues."""
    frac_bits = share_frac_bits(layout.meta)
    if frac_bits is not None and any(e.dtype != DTYPES[SHARE_DTYPE] for e in layout.entries.values()):
        raise UpdateRejected("an integer share with tensors that are not U32 residues", code=Reason.DTYPE)
    return frac_bits


def round_kind(kinds: Mapping[str, int | None]) -> int | None:
    """What a round sums: the kind most of its uploads are (a share's fixed point, or None for
    weighted updates); a tie goes to shares (refusing a weighted update never weakens a share's
    guarantee), then to the finer fixed point."""
    counts = Counter(kinds.values())
    return max(counts, key=lambda k: (counts[k], k is not None, -1 if k is None else k))


def _kind_words(kind: int | None) -> str:
    return "a weighted update" if kind is None else f"integer shares at 2^-{kind}"


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

    def _combiner(self) -> TeeCombiner:
        return TeeCombiner(self.ctx.bundle_spec, self.ctx.window_bytes, self.ctx.enclave, self.ctx.job_id)

    def total_weight(self, round_: int, uploads: Mapping[str, Path], weights: Mapping[str, float]) -> float:
        """The count of the shares summed, where the round summed distributed-DP shares (they
        average uniformly: a sample-count weight would scale a share's noise); else the roster's."""
        combiner = self.combiner
        if isinstance(combiner, TeeCombiner) and round_ in combiner.share_rounds:
            combiner.share_rounds.discard(round_)
            return float(len(uploads))
        return super().total_weight(round_, uploads, weights)

    def payload_header(self, job: JobRun, site_has_round: int) -> dict[str, Any]:
        header = super().payload_header(job, site_has_round)
        if job.global_model is not None:
            # sites check this signature, by a key bound into the evidence, before using the model
            # the fingerprint hashed while the bundle was written, not a copy of the model per task
            sig = self.ctx.enclave.sign_model(job.global_model.fingerprint, job.job_id, job.completed)
            header["model_signature"] = base64.b64encode(sig).decode()
        return header


__all__ = ["TeeCombiner", "TeeMode", "round_kind", "share_kind"]
