"""Admission: nothing from a job runs at this site before its signature and the site policy pass.

A policy edited on disk mid-job takes effect at the next round (:meth:`Admission.recheck`): the job
goes on only if it still passes.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from secagg.agent.relay import Relay
from secagg.agent.state import SiteState
from secagg.auditlog import AuditLog
from secagg.errors import PolicyRefusal, SecaggError
from secagg.events import Event
from secagg.jobs.job import VerifiedJob
from secagg.policy.admit import admit_job, debited_rounds
from secagg.policy.check import load_policy
from secagg.policy.decide import Decision, decide
from secagg.policy.model import SitePolicy
from secagg.privacy.ledger import Ledger
from secagg.provision.kit import Kit
from secagg.reasons import Reason


@dataclass(frozen=True)
class Admitted:
    job: VerifiedJob
    decision: Decision
    policy_stamp: tuple[int, int]


class Admission:
    """Verifies and decides on each job once, and re-decides when the policy file changes."""

    def __init__(
        self,
        *,
        kit: Kit,
        state: SiteState,
        relay: Relay,
        audit: AuditLog,
        policy_path: Path,
        ledger_for: Callable[[SitePolicy], Ledger],
        sandbox_check: Callable[[SitePolicy], None] = lambda policy: None,
    ) -> None:
        self.kit, self.state, self.relay, self.audit = kit, state, relay, audit
        self.policy_path = policy_path
        self._ledger_for = ledger_for
        self._sandbox_check = sandbox_check
        self._jobs: dict[str, Admitted] = {}
        self.load_policy()  # a site never runs without a policy that loads

    def load_policy(self) -> SitePolicy:
        return load_policy(self.policy_path)

    def admitted(self, job_id: str) -> Admitted | None:
        return self._jobs.get(job_id)

    def admit(self, job_id: str) -> Admitted:
        """Invariant 1: nothing from a job runs before its signature and policy check pass.

        The package is fetched, its manifest signature, chain and every file digest are verified on
        the archive before anything is extracted (``policy.admit_job`` -> ``jobs.verify_job``), the
        policy decides, the remaining budget must fit the job's worst case, and the kernel must be able
        to confine its code; only an :class:`Admitted` lets a worker start."""
        if job_id in self._jobs:
            return self._jobs[job_id]
        jdir = self.state.job_dir(job_id)
        pkg = jdir / "package.tar.gz"
        self.relay.fetch_job_to(job_id, pkg)  # to the file as it arrives: it holds the model
        dest = jdir / "pkg"
        shutil.rmtree(dest, ignore_errors=True)
        policy = self.load_policy()
        try:
            job, decision = admit_job(pkg, policy, self.kit.ca_cert, dest=dest)
            decision.raise_if_refused()
            rounds_debited = 0
            if policy.privacy.budget is not None:
                # what this data set has already spent counts too, and what the other admitted jobs
                # may still spend; of this job (re-admitted after a restart) only the rounds it has
                # not debited yet. Check and reservation are one transaction: two jobs admitted at
                # once cannot both fit on the same remaining budget
                self._sandbox_check(policy)
                ledger = self._ledger_for(policy)
                rounds_debited = len(debited_rounds(ledger.entries(), job_id))
                ledger.reserve(job_id, job.spec.rounds, decision.spends)
            else:
                self._sandbox_check(policy)
        except SecaggError as exc:
            shutil.rmtree(dest, ignore_errors=True)
            self.audit.append(Event.JOB_REFUSED, job=job_id, code=exc.code, reason=str(exc))
            self.relay.decline(job_id, 0, exc.code, str(exc))
            raise
        self.audit.append(
            Event.JOB_ADMITTED,
            job=job_id,
            signers=[s.describe() for s in job.signers],
            mode=job.spec.mode,
            filters=[f.name for f in decision.effective_privacy],
            rounds_debited=rounds_debited or None,
        )
        admitted = Admitted(job, decision, self._policy_stamp())
        self._jobs[job_id] = admitted
        return admitted

    def check_capacity(self, job_id: str, running: int) -> None:
        """A site at its policy's ``limits.max_concurrent_jobs`` declines one more job (reason
        ``max_concurrent_jobs``) instead of overcommitting; it is audited and told to the aggregator,
        which goes on without this site for that job."""
        limit = self.load_policy().limits.max_concurrent_jobs
        if running < limit:
            return
        exc = PolicyRefusal(
            f"this site already runs {running} job(s), as many as its policy's "
            f"limits.max_concurrent_jobs ({limit}) allows: job {job_id} is declined",
            code=Reason.MAX_CONCURRENT_JOBS,
        )
        self.audit.append(Event.JOB_REFUSED, job=job_id, code=exc.code, reason=str(exc))
        self.relay.decline(job_id, 0, exc.code, str(exc))
        raise exc

    def _policy_stamp(self) -> tuple[int, int]:
        st = self.policy_path.stat()
        return (st.st_mtime_ns, st.st_size)

    def recheck(self, job_id: str, round_: int) -> Admitted:
        """A policy changed on disk mid-job takes effect now: the job goes on only if it still passes."""
        adm = self._jobs[job_id]
        try:
            stamp = self._policy_stamp()
        except OSError as exc:
            raise PolicyRefusal(
                f"site policy {self.policy_path} is unreadable: {exc}", code=Reason.POLICY_UNREADABLE
            ) from None
        if stamp == adm.policy_stamp:
            return adm
        try:
            decision = decide(self.load_policy(), adm.job.spec, list(adm.job.signers), job_root=adm.job.root)
        except SecaggError as exc:
            raise PolicyRefusal(
                f"site policy {self.policy_path} no longer loads: {exc}", code=Reason.POLICY_INVALID
            ) from None
        self.audit.append(Event.POLICY_RELOADED, job=job_id, round=round_, accept=decision.accept)
        if not decision.accept:
            failed = "; ".join(r.text for r in decision.reasons if not r.ok)
            code = next((r.code for r in decision.reasons if not r.ok), "policy")
            raise PolicyRefusal(
                f"the changed site policy refuses job {job_id} from round {round_}: {failed}", code=code
            )
        adm = Admitted(adm.job, decision, stamp)
        self._jobs[job_id] = adm
        return adm
