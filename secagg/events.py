"""Audit event names, named once: what ``AuditLog.append`` writes as ``event`` and its observers match.

The aggregator, the site agent, the admin console's log follower, Prometheus metrics and TensorBoard
all read the same names from here, so an observer cannot silently miss an event renamed elsewhere.
Members are the stored strings themselves (``Event.ROUND_COMPLETED == "round_completed"``): audit
logs written before this module existed read the same.
"""

from __future__ import annotations

from enum import StrEnum


class Event(StrEnum):
    # ---- aggregator: jobs
    JOB_SUBMITTED = "job_submitted"
    JOB_STARTED = "job_started"
    JOB_RESUMED = "job_resumed"
    JOB_FINISHED = "job_finished"
    JOB_ABORTED = "job_aborted"
    JOB_FAILED = "job_failed"
    #: the round driver's step raised with no running job to fail (it goes on)
    DRIVER_ERROR = "driver_error"
    # ---- aggregator: rounds
    SITE_READY = "site_ready"
    TASK_DECLINED = "task_declined"
    ROSTER = "roster"
    UPLOAD_ACCEPTED = "upload_accepted"
    UPLOAD_REJECTED = "upload_rejected"
    ROUND_RETRY = "round_retry"
    ROUND_COMPLETED = "round_completed"
    MASK_PHASE = "mask_phase"
    SITE_FINAL = "site_final"
    # ---- aggregator: relay, attestation, service
    HE_KEY_PUBLISHED = "he_key_published"
    ATTESTED = "attested"
    AGGREGATOR_STARTED = "aggregator_started"
    SITE_REGISTERED = "site_registered"
    REFUSED = "refused"
    REFUSED_IDENTITY = "refused_identity"
    # ---- aggregator: admin console
    ADMIN_COMMAND = "admin_command"
    ADMIN_REFUSED = "admin_refused"
    ADMIN_FAILED = "admin_failed"
    ADMIN_SUBMITTED = "admin_submitted"
    # ---- site agent
    REGISTERED = "registered"
    #: the aggregator stopped answering (once per outage, per job thread and for the job loop)
    CONNECTION_LOST = "connection_lost"
    #: it answers again: how long it did not (``outage_s``) and how many tries failed meanwhile
    CONNECTION_RESTORED = "connection_restored"
    POLICY_RELOADED = "policy_reloaded"
    JOB_ADMITTED = "job_admitted"
    JOB_REFUSED = "job_refused"
    JOB_STOPPED = "job_stopped"
    JOB_DONE = "job_done"
    ROUND_ABANDONED = "round_abandoned"
    ROUND_DECLINED = "round_declined"
    NOT_IN_ROSTER = "not_in_roster"
    MODEL_CONSISTENT = "model_consistent"
    UPLOADED = "uploaded"
    #: an upload refused as a transient loss (``storage_full``): the same bytes sent again (F12)
    UPLOAD_RETRY = "upload_retry"
    AGGREGATOR_ATTESTED = "aggregator_attested"
    AGGREGATOR_REFUSED = "aggregator_refused"
    HE_KEY_CREATED = "he_key_created"
    HE_KEY_RECEIVED = "he_key_received"
    SIMULATED_DROPOUT = "simulated_dropout"
    SPEND_WITHOUT_BUDGET = "spend_without_budget"
    # ---- both: the audit log itself (secagg.auditlog)
    #: a head was first written over a non-empty log (one written before heads, or its head deleted)
    AUDIT_HEAD_CREATED = "audit_head_created"
    #: aggregator: a site's signed audit head at the end of a job, checked against its certificate
    SITE_AUDIT_HEAD = "site_audit_head"
    # ---- h-faults (#18 faults): a retried attempt re-sends the round's kept release, no second debit
    RELEASE_REUSED = "release_reused"
    # ---- cross-site evaluation (h-xsite)
    #: aggregator: a site's signed answer whether it shares its last local model
    XSITE_CONSENT = "xsite_consent"
    #: aggregator: the consents are fixed; ``share`` says whether local models travel at all
    XSITE_CONSENTS_FIXED = "xsite_consents_fixed"
    #: aggregator: a sealed local model relayed (sender, recipient, bytes; never its content)
    XSITE_RELAYED = "xsite_relayed"
    #: aggregator: a site's metrics of the models it evaluated
    XSITE_METRICS = "xsite_metrics"
    #: aggregator: the cross-site matrix written to the job's output
    XSITE_MATRIX = "xsite_matrix"
    #: aggregator: a restarted aggregator took up a job's cross-site evaluation from its state file
    XSITE_RESUMED = "xsite_resumed"
    #: site: its local model sealed to the other sites (or why not)
    XSITE_SHARED = "xsite_shared"
    XSITE_NOT_SHARED = "xsite_not_shared"
    #: site: another site's local model evaluated here (or refused, with a code)
    XSITE_EVALUATED = "xsite_evaluated"
    XSITE_REFUSED = "xsite_refused"
    # ---- several jobs at once
    #: aggregator: a submitted job waits for a free slot (``max_jobs`` are running); it starts later
    #: with ``job_started``, or leaves the queue with ``job_aborted``
    JOB_QUEUED = "job_queued"
    #: site: an ended job's unspent reserved privacy budget is free again for other jobs
    BUDGET_RESERVATION_RELEASED = "budget_reservation_released"


#: aggregator events that are refusals; their ``code`` field is the reason code
REFUSALS = frozenset(
    {Event.REFUSED, Event.REFUSED_IDENTITY, Event.UPLOAD_REJECTED, Event.TASK_DECLINED, Event.ADMIN_REFUSED}
)
#: site agent events that are refusals (the site's metrics count them by ``code``)
SITE_REFUSALS = frozenset({Event.ROUND_DECLINED, Event.JOB_REFUSED, Event.AGGREGATOR_REFUSED})
#: a job's last event at the aggregator: a log follower stops after one of these
TERMINAL = frozenset({Event.JOB_FINISHED, Event.JOB_ABORTED, Event.JOB_FAILED})
#: job outcomes counted by the aggregator's metrics (label: the name without ``job_``)
JOB_OUTCOMES = frozenset({Event.JOB_STARTED, *TERMINAL})


__all__ = ["JOB_OUTCOMES", "REFUSALS", "SITE_REFUSALS", "TERMINAL", "Event"]
