"""Relay topics, named once: the ``topic`` of what a site posts to and collects from the aggregator.

Both ends of the wire read them from here (the agent's relay and mode objects, the aggregator's
service and mode objects), so a topic renamed on one side cannot silently stop matching on the other.
Members are the wire strings themselves (``Topic.READY == "ready"``), so agents and aggregators that
predate this module talk to each other unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class Topic(StrEnum):
    # ---- every mode: the round engine
    #: a site's signed fingerprint and sample count of the round's global model (invariant 7)
    READY = "ready"
    #: the roster the aggregator announces, with every site's signed READY (collected)
    ROSTER = "roster"
    #: a site sits the job (or one round) out, with a reason code
    DECLINED = "declined"
    #: a site's evaluation of the final model
    FINAL = "final"
    #: a site's signed audit head, relayed at the end of a job
    AUDIT_HEAD = "audit-head"
    # ---- he: the key holder's HPKE-enveloped CKKS key release, relayed opaque
    HE_KEY = "he-key"
    # ---- mask (and tee-mask): the secure-aggregation phases after the roster
    MASK_KEYS = "mask-keys"
    MASK_KEYROSTER = "mask-keyroster"
    MASK_SHARES = "mask-shares"
    MASK_MYSHARES = "mask-myshares"
    MASK_UNMASK = "mask-unmask"
    MASK_UNMASK_RESP = "mask-unmask-resp"
    # ---- cross-site evaluation after the last round (secagg.crossval)
    #: posted: a site's signed consent to share its last local model
    XSITE_CONSENT = "xsite-consent"
    #: posted: a site's local model sealed to one other site, relayed opaque
    XSITE_MODEL = "xsite-model"
    #: posted: a site's bounded metrics of the models it evaluated
    XSITE_METRICS = "xsite-metrics"
    #: collected: every site's consent, once the aggregator fixed the set
    XSITE_CONSENTS = "xsite-consents"
    #: collected: the sealed models addressed to this site
    XSITE_INBOX = "xsite-inbox"
    # ---- several jobs at once
    #: collected: the aggregator's running jobs (and how many queue), for a site to serve each
    JOBS = "jobs"


__all__ = ["Topic"]
