"""A round's released update, kept until the round is over, so a retried attempt re-sends it.

Why: a round is retried as a new attempt when the aggregator restarts or a roster site vanishes; the
global model of the retry is the same (a round's model only changes when the round completes). A
site that already released, and debited, a noisy update for (job, round) would otherwise filter a
fresh one and debit the round again: one site's crash cost every site a second spend (RELIABILITY.md
F3). Sending the same released vector again is post-processing of a release already paid for, so
it costs nothing more; a second, independently noised vector would.

The ledger stays exact and never under-charges: the kept file is written only *after* the debit has
committed and names its ``debit_id``; it is reused only while the ledger still holds that debit for
the same (job, round) and the policy's filter chain is the same one that produced it. A crash between
the debit and the file leaves a debit and no file: the retry debits again (over-counts, as invariant
3 allows), never the reverse. A file whose debit is not in the ledger is ignored.

One file per round, ``STATE/jobs/JOB/release-ROUND.safetensors`` (the update, with its receipt in the
safetensors metadata; copied from the release's file a window at a time, and re-sent from where it
lies, so a kept release never costs a copy of the model in memory), written atomically in the agent's
own state (the job's code cannot read it, invariant 8); rounds before the current one and the whole
job's at its end are deleted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from secagg.agent.state import SiteState
from secagg.bundle import bundle_header
from secagg.bundlefile import FileSource, Layout, spec_of, write_windows
from secagg.privacy.ledger import Ledger
from secagg.privacy.release import Release
from secagg.privacy.spend import Spend
from secagg.privacy.streamed import UpdateFile

PREFIX, SUFFIX = "release-", ".safetensors"
_META = "secagg-kept-release-v1"


def chain_digest(filters: Sequence[Any]) -> str:
    """What identifies the filter chain a release went through (its specs, canonical JSON)."""
    specs = [f.model_dump(mode="json") if hasattr(f, "model_dump") else f for f in filters]
    return hashlib.sha256(json.dumps(specs, sort_keys=True, default=str).encode()).hexdigest()


class KeptReleases:
    """The site's kept releases, one per (job, round) still in flight."""

    def __init__(self, state: SiteState) -> None:
        self.state = state

    def path(self, job_id: str, round_: int) -> Path:
        return self.state.job_dir(job_id) / f"{PREFIX}{int(round_)}{SUFFIX}"

    def keep(self, job_id: str, round_: int, release: Release, chain: str) -> None:
        """Write ``release`` (after its debit committed) and drop the job's earlier rounds' files.
        Its update (a file) is copied a window at a time beneath a header that carries the receipt."""
        update = release.update
        if not isinstance(update, UpdateFile):
            raise TypeError("a kept release is made from the release's update file")
        meta = {
            "kind": _META,
            "job": job_id,
            "round": str(int(round_)),
            "debit_id": release.debit_id,
            "chain": chain,
            "spends": json.dumps([asdict(s) for s in release.spends]),
        }
        head = bundle_header(update.spec, metadata=meta)
        write_windows(self.path(job_id, round_), head, update.windows(), "<f4")
        self.drop_before(job_id, round_)

    def reuse(self, job_id: str, round_: int, chain: str, ledger: Ledger | None) -> Release | None:
        """The kept release of (job, round) if it may be sent again as it is, else None.

        Only with a ledger (a policy without a budget debits nothing, so there is nothing to save) that
        still holds the file's debit for this very job and round, and the same filter chain. The
        release's update is the kept file itself, read a window at a time (never loaded)."""
        path = self.path(job_id, round_)
        if ledger is None or not path.is_file():
            return None
        try:
            with FileSource(path) as src:
                layout = Layout.parse(src)  # order metadata naming exactly its tensors, offsets whole
                header_len = int.from_bytes(src.read(0, 8), "little")
                meta = json.loads(src.read(8, header_len)).get("__metadata__") or {}
            spec = spec_of(layout)
            if any(layout.entries[n].dtype != np.dtype("<f4") for n in layout.order):
                return None
            spends = [Spend(**s) for s in json.loads(meta["spends"])]
            debit_id = str(meta["debit_id"])
        except Exception:  # noqa: BLE001 - a torn or foreign file is never reused: the round debits anew
            return None
        if meta.get("kind") != _META or meta.get("job") != job_id or meta.get("round") != str(int(round_)):
            return None
        if meta.get("chain") != chain or not debit_id:
            return None
        if not _debited(ledger.entries(), debit_id, job_id, round_):
            return None
        return Release(UpdateFile(path, spec), spends, debit_id)

    def drop_before(self, job_id: str, round_: int) -> None:
        """Delete the job's kept releases of rounds before ``round_`` (they can never be retried)."""
        for p in self._files(job_id):
            if _round_of(p) < round_:
                p.unlink(missing_ok=True)

    def drop_job(self, job_id: str) -> None:
        """The job is over: nothing of it is retried again."""
        for p in self._files(job_id):
            p.unlink(missing_ok=True)

    def _files(self, job_id: str) -> list[Path]:
        folder = self.state.root / "jobs" / job_id
        return sorted(folder.glob(f"{PREFIX}*{SUFFIX}")) if folder.is_dir() else []


def _round_of(path: Path) -> int:
    try:
        return int(path.name[len(PREFIX) : -len(SUFFIX)])
    except ValueError:
        return -1


def _debited(entries: Iterable[Any], debit_id: str, job_id: str, round_: int) -> bool:
    return any(e.debit_id == debit_id and e.job == job_id and e.round == int(round_) for e in entries)


__all__ = ["KeptReleases", "chain_digest"]
