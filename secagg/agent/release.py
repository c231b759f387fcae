"""Release: the only path from a trained update to something a mode may protect and send.

:meth:`Releaser.release` runs the policy's filters and debits the budget (through
:func:`secagg.privacy.release.prepare_release`, invariant 3, with or without a budget);
:meth:`Releaser.uploaded` is the one place that records an upload (ledger mark, progress, audit), so a
round is never counted as done before the aggregator acknowledged it. A retried attempt of a round
already debited re-sends that round's release instead of debiting again
(:mod:`~secagg.agent.kept_release`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from secagg.agent.admission import Admitted
from secagg.agent.kept_release import KeptReleases, chain_digest
from secagg.agent.roundfiles import spool_path
from secagg.agent.state import SiteState
from secagg.auditlog import AuditLog
from secagg.errors import ConfigError, PolicyRefusal
from secagg.events import Event
from secagg.jobs.filters import DpsgdFilter
from secagg.policy.model import SitePolicy
from secagg.privacy.ledger import FILENAME as LEDGER_FILE
from secagg.privacy.ledger import Ledger
from secagg.privacy.release import Release, prepare_release
from secagg.privacy.spend import Spend
from secagg.privacy.streamed import UpdateFile
from secagg.reasons import Reason

#: Opacus calibrates the noise to within 0.01 of the target epsilon; more than that was not admitted
_DPSGD_SLACK = 0.011


class Releaser:
    """Owns the data set's ledger for the budget the current policy declares.

    Each job runs in a thread of its own at the site, and a SQLite connection belongs to the thread
    that opened it: every thread gets a ledger connection of its own. They share the one file, whose
    transactions (``BEGIN IMMEDIATE``) keep the jobs' admissions and debits exact whatever their
    interleaving (:mod:`secagg.privacy.ledger`)."""

    def __init__(self, *, state: SiteState, audit: AuditLog, data_name: str) -> None:
        self.state, self.audit, self.data_name = state, audit, data_name
        self.kept = KeptReleases(state)
        self._local = threading.local()
        self._opened: list[Ledger] = []
        self._lock = threading.Lock()

    @property
    def ledger(self) -> Ledger | None:
        """This thread's ledger connection, if it opened one."""
        led: Ledger | None = getattr(self._local, "ledger", None)
        return led

    def ledger_for(self, policy: SitePolicy) -> Ledger:
        """The data set's durable ledger, with the budget the current policy declares."""
        budget = policy.privacy.budget
        assert budget is not None
        current = self.ledger
        if current is None or (current.budget_epsilon, current.budget_delta) != (
            budget.epsilon,
            budget.delta,
        ):
            if current is not None:
                self._forget(current)
            current = Ledger(self.path, self.data_name, budget.epsilon, budget.delta)
            self._local.ledger = current
            with self._lock:
                self._opened.append(current)
        return current

    def _forget(self, led: Ledger) -> None:
        led.close()
        with self._lock:
            if led in self._opened:
                self._opened.remove(led)

    def release_reservation(self, job_id: str) -> bool:
        """The job ended at this site: what it reserved and did not spend is free for other jobs."""
        if not self.path.is_file():
            return False
        try:
            with Ledger(self.path, self.data_name) as led:
                released = led.release_reservation(job_id)
        except ConfigError:  # no budget was ever recorded: nothing was reserved
            return False
        if released:
            self.audit.append(Event.BUDGET_RESERVATION_RELEASED, job=job_id)
        return released

    def reserved_jobs(self) -> list[str]:
        """The jobs holding a reservation in this site's ledger (to settle those that ended while the
        agent was down)."""
        if not self.path.is_file():
            return []
        try:
            with Ledger(self.path, self.data_name) as led:
                return [r.job for r in led.reservations()]
        except ConfigError:
            return []

    @property
    def path(self) -> Path:
        return self.state.root / LEDGER_FILE

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for led in opened:
            led.close()
        self._local = threading.local()

    @staticmethod
    def training_spends(adm: Admitted, reported: tuple[dict[str, Any], ...]) -> list[Spend]:
        """DP-SGD is the one filter a site cannot add after training: refuse an update without it."""
        target = next((f for f in adm.decision.effective_privacy if isinstance(f, DpsgdFilter)), None)
        spends = [Spend(**sp) for sp in reported]
        if target is not None and not any(sp.mechanism == "dpsgd" and sp.steps for sp in spends):
            raise PolicyRefusal(
                "this site's policy requires DP-SGD, but the training script took no optimizer step "
                "under it (train with a torch optimizer over batches from a DataLoader)",
                code=Reason.DPSGD_NOT_APPLIED,
            )
        spent = sum(sp.epsilon for sp in spends if sp.mechanism == "dpsgd")
        if target is not None and spent > target.target_epsilon + _DPSGD_SLACK:
            raise PolicyRefusal(
                f"DP-SGD spent epsilon {spent:.4g} this round, over the {target.target_epsilon} admitted",
                code=Reason.DPSGD_OVERSPENT,
            )
        return spends

    def release(
        self,
        adm: Admitted,
        policy: SitePolicy,
        job_id: str,
        round_: int,
        update: UpdateFile,
        training_spends: list[Spend],
    ) -> Release:
        """Every filter the policy requires, then the durable debit (invariant 3, one path for all).

        A retried attempt of a round this site already debited (its upload accepted, cut short or
        never sent) gets that round's kept release back, with no second debit: the same released
        vector, under the same filter chain, whose debit the ledger holds.

        ``update`` is a file and so is the release's update (:mod:`secagg.privacy.streamed`: filters a
        window at a time where their mathematics allows); the caller removes it once uploaded
        (:meth:`discard`), unless it is the kept file itself."""
        ledger = self.ledger_for(policy) if policy.privacy.budget is not None else None
        chain = chain_digest(adm.decision.effective_privacy)
        kept = self.kept.reuse(job_id, round_, chain, ledger)
        if kept is not None:
            self.audit.append(Event.RELEASE_REUSED, job=job_id, round=round_, debit=kept.debit_id)
            return kept
        def keep(pending: Release) -> None:
            # kept before the debit commits, under the debit's id: a crash right after the commit
            # finds it and resends it (was: kept after, so a crash between lost the round and its
            # budget). A kept file whose debit never committed is never reused (reuse checks the id).
            self.kept.keep(job_id, round_, pending, chain)

        try:
            release = prepare_release(
                ledger,
                adm.decision.effective_privacy,  # the specs: the file form picks per-window filters by name
                update,
                np.random.default_rng(),
                job_id,
                round_,
                training_spends,
                dst=spool_path(self.state.job_dir(job_id), f"release-{int(round_)}"),
                before_debit=keep if ledger is not None else None,
            )
        except Exception:  # a refusal: its debit did not commit (a kill runs nothing, nor need it)
            self.kept.path(job_id, round_).unlink(missing_ok=True)
            raise
        if ledger is None and any(sp.epsilon > 0 for sp in release.spends):
            self.audit.append(Event.SPEND_WITHOUT_BUDGET, job=job_id, round=round_)
        return release

    def discard(self, release: Release, job_id: str, round_: int) -> None:
        """The release's update file is no longer needed (uploaded, or the round lost); a kept
        release's file stays for a retry until its round is over."""
        update = release.update
        if isinstance(update, UpdateFile) and update.path != self.kept.path(job_id, round_):
            update.path.unlink(missing_ok=True)

    def end_job(self, job_id: str) -> None:
        """The job is over: its kept releases go (no round of it is retried again)."""
        self.kept.drop_job(job_id)

    def uploaded(
        self, release: Release, job_id: str, round_: int, attempt: int, *, size: int, accepted: bool
    ) -> None:
        """The aggregator has the round: settle the debit, record progress, write the audit line."""
        if release.debit_id and self.ledger is not None:
            self.ledger.mark_released(release.debit_id)
        self.state.set_progress(job_id, round=round_, attempt=attempt)
        self.audit.append(
            Event.UPLOADED,
            job=job_id,
            round=round_,
            attempt=attempt,
            bytes=size,
            accepted=accepted,
            epsilon=sum(sp.epsilon for sp in release.spends) or None,
        )
