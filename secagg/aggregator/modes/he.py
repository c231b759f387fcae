"""``he`` mode at the aggregator: CKKS ciphertexts only, summed under a public context.

Uploads are framed CKKS ciphertexts of w_i * update_i (one flat slot stream). The aggregator adds them
and relays the encrypted sum; the sites decrypt it and run the server strategy themselves, so the
aggregator holds no global model in this mode. The public context comes from the key holder's
``KeyRelease``, relayed as published (the envelopes in it are sealed to the sites).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from secagg.aggregator.modes import BadUpload, ModeBase, ModeContext
from secagg.aggregator.rounds import JobRun, RoundRun
from secagg.bundle import BundleSpec
from secagg.errors import UpdateRejected
from secagg.framing import count_records, frame, unframe
from secagg.reasons import Reason

#: the store blob that holds the key holder's published ``KeyRelease``
HE_KEY_BLOB = "he-key-release"
#: spooled uploads summed in one pass; more are summed in groups (file descriptors are finite)
MAX_OPEN_UPLOADS = 256
_PIECE = 1 << 22


def combiner_for_release(spec: BundleSpec, release_blob: bytes) -> HECombiner:
    """Invariant 2: the aggregator process never holds an HE secret key and never decrypts.

    The only HE context the aggregator loads is the public one inside the key holder's published
    release, through :func:`secagg.he.context.load_public_context` (in :class:`HECombiner`), which
    refuses bytes that carry a secret key whatever their header claims; what it returns can add
    ciphertexts, not decrypt them. The release's key envelopes stay sealed to the sites, and the
    encrypted sum goes to the sites as it is: they decrypt it and run the strategy."""
    from secagg.he.custody import KeyRelease

    return HECombiner(spec, KeyRelease.from_bytes(release_blob).public_context)


class HECombiner:
    """Sums spooled CKKS uploads index-major (the i-th ciphertext of every upload, then the next)."""

    def __init__(self, spec: BundleSpec, public_context: bytes) -> None:
        from secagg.he.codec import n_ciphertexts
        from secagg.he.context import load_public_context

        self.spec = spec
        self.ctx = load_public_context(public_context)
        self.n = n_ciphertexts(spec.size, self.ctx.params)

    def check(self, path: Path) -> None:
        with path.open("rb") as fh:
            count = count_records(fh)
        if count != self.n:
            raise UpdateRejected(
                f"encrypted update has {count} ciphertexts, the model needs {self.n}", code=Reason.BAD_SHAPE
            )

    def combine(self, uploads: Sequence[Path], out: Path) -> None:
        """Sum index-major over the spooled uploads (memory: one ciphertext, not one sum stream).

        More uploads than can be open at once are summed in groups into partial sum files beside
        ``out``, which are then summed the same way and removed.
        """
        if len(uploads) <= MAX_OPEN_UPLOADS:
            self._sum_files(uploads, out, blame=True)
            return
        partials: list[Path] = []
        try:
            for start in range(0, len(uploads), MAX_OPEN_UPLOADS):
                part = out.with_name(f".{out.name}.part{len(partials)}")
                partials.append(part)
                self._sum_files(uploads[start : start + MAX_OPEN_UPLOADS], part, blame=True)
            self._sum_files(partials, out, blame=False)
        finally:
            for part in partials:
                part.unlink(missing_ok=True)

    def _sum_files(self, paths: Sequence[Path], out: Path, blame: bool) -> None:
        from secagg.he.codec import StreamRejected, sum_streams

        with ExitStack() as files:
            streams = [unframe(files.enter_context(p.open("rb"))) for p in paths]
            try:
                with out.open("wb") as fh:
                    for piece in frame(sum_streams(self.ctx, streams, self.n)):
                        fh.write(piece)
            except StreamRejected as exc:
                out.unlink(missing_ok=True)
                if not blame:  # a partial sum we wrote ourselves: not a site's fault
                    raise
                raise BadUpload(paths[exc.stream], exc) from exc


class HEMode(ModeBase):
    name = "he"
    sees_model = False

    def __init__(self, ctx: ModeContext) -> None:
        super().__init__(ctx)
        self._combiner: HECombiner | None = None
        self._get(required=False)  # the key holder may publish later: then at the first upload

    def _get(self, required: bool = True) -> HECombiner | None:
        if self._combiner is None:
            blob = self.ctx.store.get_blob(HE_KEY_BLOB)
            if blob is None:
                if required:
                    raise UpdateRejected("no HE public context published yet", code=Reason.NO_HE_KEY)
                return None
            self._combiner = combiner_for_release(self.ctx.bundle_spec, blob)
        return self._combiner

    @classmethod
    def download(cls, job_id: str, rounds: Sequence[Any]) -> list[tuple[str, Path | bytes]]:
        # Rounds are incremental: a site rebuilds the global model from the job's initial model by
        # applying the job's strategy to scale * decrypt(aggregate) of each round in order, so every
        # round is needed, not only the last. Only a site kit holds the key to decrypt them.
        files: list[tuple[str, Path | bytes]] = [
            (f"round-{r.round}.ckks", Path(r.result_path)) for r in rounds
        ]
        meta = {
            "job_id": job_id,
            "mode": cls.name,
            "global_model": "from the job's initial model, apply the job's strategy to "
            "scale * decrypt(round-N.ckks) for each round in order (a site kit holds the key)",
            "rounds": [{"round": r.round, "scale": r.scale, "file": f"round-{r.round}.ckks"} for r in rounds],
        }
        files.append(("he.json", json.dumps(meta, indent=2).encode()))
        return files

    def payload_header(self, job: JobRun, site_has_round: int) -> dict[str, Any]:
        have = max(site_has_round, 0)
        needed = [r for r in self.ctx.store.rounds(job.job_id) if r.round > have]
        return {
            "base_round": have,
            "updates": [
                {"round": r.round, "bytes": Path(r.result_path).stat().st_size, "scale": r.scale}
                for r in needed
            ],
        }

    def payload(self, job: JobRun, header: dict[str, Any]) -> Iterator[bytes]:
        rows = {r.round: r for r in self.ctx.store.rounds(job.job_id)}
        for u in header["updates"]:
            with open(rows[u["round"]].result_path, "rb") as fh:
                while piece := fh.read(_PIECE):
                    yield piece

    def max_upload_bytes(self) -> int | None:
        """Ciphertexts of the model's slot stream, each at most one frame under the published params."""
        from secagg.he.codec import max_frame_bytes

        combiner = self._get(required=False)
        if combiner is None:
            return None  # no context yet: the upload is refused at ``accept`` anyway
        return combiner.n * (max_frame_bytes(combiner.ctx.params) + 8) + (1 << 16)

    def accept(self, site: str, round_: RoundRun, header: dict[str, Any], spooled: Path) -> None:
        combiner = self._get()
        assert combiner is not None
        combiner.check(spooled)

    def combine(self, round_: int, uploads: Mapping[str, Path], out: Path) -> np.ndarray | None:
        """Writes the encrypted sum to ``out``; the aggregator never sees the sum in the clear."""
        combiner = self._get()
        assert combiner is not None
        sites = sorted(uploads)
        try:
            combiner.combine([uploads[s] for s in sites], out)
        except BadUpload as bad:
            bad.site = next(s for s in sites if uploads[s] == bad.path)
            raise
        return None


__all__ = ["HE_KEY_BLOB", "MAX_OPEN_UPLOADS", "HECombiner", "HEMode", "combiner_for_release"]
