"""The upload spool: where a site's protected update lies between its upload and the round's combine.

One owner for the layout and the names, so nothing else builds or parses a spool path::

    <root>/<job>/<round>-<attempt>/<site>.upload        an upload, complete and checked for its trailer
    <root>/<job>/<round>-<attempt>/.<site>-XXXX.part    one being received (never read by anyone)

A file is written under a temporary name, fsynced and renamed: a ``.upload`` is always whole. Names are
for people looking at the folder: the site and round of an upload travel as values (:class:`Spooled`),
never read back from a path. Rounds are discarded whole once combined or retried; a restarted
aggregator discards the whole job's spool (every attempt of a dead process is over: RELIABILITY.md F1),
and a job that ends leaves nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from secagg.errors import UpdateRejected
from secagg.reasons import Reason

SUFFIX = ".upload"
PART_SUFFIX = ".part"


@dataclass(frozen=True)
class Spooled:
    """One complete spooled upload: whose (the mTLS identity), for which job, round and attempt, where."""

    site: str
    job_id: str
    round: int
    attempt: int
    path: Path


def _component(name: str, what: str) -> str:
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise UpdateRejected(f"{what} {name!r} cannot name a spool file", code=Reason.MALFORMED)
    return name


class Spool:
    """The aggregator's spool folder (``STATE/spool``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, job_id: str, round_: int, attempt: int) -> Path:
        """The folder of one attempt of one round."""
        return self.root / _component(job_id, "job id") / f"{int(round_)}-{int(attempt)}"

    def path(self, job_id: str, round_: int, attempt: int, site: str) -> Path:
        return self.folder(job_id, round_, attempt) / f"{_component(site, 'site')}{SUFFIX}"

    def receive(
        self, site: str, job_id: str, round_: int, attempt: int, fill: Callable[[BinaryIO], object]
    ) -> Spooled:
        """Write one upload: ``fill(fh)`` streams it into a temporary file, which is then fsynced and
        renamed to its final name. If ``fill`` raises, nothing of the upload is left."""
        final = self.path(job_id, round_, attempt, site)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{site}-", suffix=PART_SUFFIX)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fill(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Spooled(site, job_id, int(round_), int(attempt), final)

    def remove(self, upload: Spooled) -> None:
        """Drop one upload the round refused."""
        upload.path.unlink(missing_ok=True)

    def discard(self, job_id: str, round_: int, attempt: int) -> None:
        """Drop every upload of one attempt of a round (combined, or run again)."""
        shutil.rmtree(self.folder(job_id, round_, attempt), ignore_errors=True)

    def discard_round(self, job_id: str, round_: int) -> None:
        """Drop every attempt of a round, those of an earlier (killed) process included: once the
        round has committed, none of them is ever read again."""
        job = self.root / _component(job_id, "job id")
        if job.is_dir():
            for folder in job.glob(f"{int(round_)}-*"):
                shutil.rmtree(folder, ignore_errors=True)

    def discard_job(self, job_id: str) -> None:
        """Drop everything spooled for a job: on a restart (the rounds in flight start again as new
        attempts, so what a killed process spooled, half-written temp files too, is dead) and when
        the job ends."""
        shutil.rmtree(self.root / _component(job_id, "job id"), ignore_errors=True)


__all__ = ["PART_SUFFIX", "SUFFIX", "Spool", "Spooled"]
