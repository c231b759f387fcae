"""Per-mode combination of spooled uploads into a round result.

One interface for every mode: ``check`` looks at one spooled upload right after it arrives (so a
malformed one is refused while the round goes on), ``combine`` sums the accepted uploads into the
round's result file. The aggregator never unprotects anything: in ``he`` mode it only adds ciphertexts
under a public context that holds no secret key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from secagg.bundle import BundleSpec, from_safetensors, to_safetensors
from secagg.errors import SecaggError, UpdateRejected
from secagg.framing import count_records, frame, unframe


class BadUpload(Exception):
    """One upload that failed while being combined; the round is combined again without it."""

    def __init__(self, path: Path, reason: Exception) -> None:
        super().__init__(str(reason))
        self.path = path
        self.reason = reason


class Combiner(Protocol):
    mode: str

    def check(self, path: Path) -> None: ...

    def combine(self, uploads: Sequence[Path], out: Path) -> None: ...


class PlainCombiner:
    """Uploads are safetensors of w_i * update_i; the result is their sum as a flat float64 array,
    which the aggregator turns into the new global model with the job's strategy."""

    mode = "plain"

    def __init__(self, spec: BundleSpec) -> None:
        self.spec = spec

    def _read(self, path: Path) -> bytes:
        return path.read_bytes()

    def check(self, path: Path) -> None:
        self.spec.check(from_safetensors(self._read(path)))

    def combine(self, uploads: Sequence[Path], out: Path) -> None:
        total = np.zeros(self.spec.size, dtype=np.float64)
        for p in uploads:
            try:
                total += self.spec.flatten(from_safetensors(self._read(p)))
            except SecaggError as exc:
                raise BadUpload(p, exc) from exc
        out.write_bytes(total.astype("<f8").tobytes())

    def load_sum(self, path: Path) -> np.ndarray:
        return np.frombuffer(path.read_bytes(), dtype="<f8").copy()


#: spooled uploads summed in one pass; more are summed in groups (file descriptors are finite)
MAX_OPEN_UPLOADS = 256


class HECombiner:
    """Uploads are framed CKKS ciphertexts of w_i * update_i (one flat slot stream)."""

    mode = "he"

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
                f"encrypted update has {count} ciphertexts, the model needs {self.n}", code="bad_shape"
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


def plain_result_bundle(spec: BundleSpec, vec: np.ndarray) -> bytes:
    return to_safetensors(spec.unflatten(vec), order=spec.names)


class TeeCombiner(PlainCombiner):
    """Uploads are framed HPKE-sealed chunks of safetensors(w_i * update_i), sealed to keys that only
    this (attested) aggregator holds; they are opened in memory, one at a time, and summed."""

    mode = "tee"

    def __init__(self, spec: BundleSpec, enclave: Any, job_id: str, round_of: Callable[[Path], int]) -> None:
        super().__init__(spec)
        self.enclave = enclave
        self.job_id = job_id
        self.round_of = round_of

    def _read(self, path: Path) -> bytes:
        site = path.name.removesuffix(".upload")  # the spool file is named by the mTLS identity
        with path.open("rb") as fh:
            return bytes(self.enclave.open_update(unframe(fh), self.job_id, self.round_of(path), site))
