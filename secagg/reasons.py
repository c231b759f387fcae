"""Every reason code, named once, with the gRPC status and the CLI exit code it maps to.

A refusal carries a short machine-readable code (``SecaggError.code``): in the audit log, in declined
tasks, as a metric label, and on the wire. This module is the one table of them, the way
``pyca/cryptography`` names each failure once: the aggregator's service and admin console pick the
gRPC status of a refusal here, the code travels to the caller in the trailing metadata key
:data:`METADATA_KEY` (the details text ``"<code>: <message>"`` stays as it was, for older agents),
and a caller reads it back with :func:`from_metadata` instead of parsing text.

Pure data, no gRPC import: statuses are ``grpc.StatusCode`` names, resolved by :func:`grpc_status`
only where gRPC is already loaded (the transport layer and its users).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

#: gRPC trailing metadata key that carries the reason code of a refused call
METADATA_KEY = "secagg-reason"

# gRPC status names (``grpc.StatusCode[...]``)
INVALID_ARGUMENT = "INVALID_ARGUMENT"
ALREADY_EXISTS = "ALREADY_EXISTS"
FAILED_PRECONDITION = "FAILED_PRECONDITION"
PERMISSION_DENIED = "PERMISSION_DENIED"
UNAUTHENTICATED = "UNAUTHENTICATED"
NOT_FOUND = "NOT_FOUND"


class Reason(StrEnum):
    """A reason code; the member is the code string itself (``Reason.LATE == "late"``).

    Each member carries ``status`` (the ``grpc.StatusCode`` name a refusal with this code is
    answered with), ``exit_code`` (what the CLI exits with: 1 for a refusal, 2 for a usage error, 0 for
    ``ok``) and ``summary`` (one line for operators)."""

    status: str
    exit_code: int
    summary: str

    def __new__(cls, code: str, status: str, summary: str, exit_code: int = 1) -> Reason:
        obj = str.__new__(cls, code)
        obj._value_ = code
        obj.status = status
        obj.summary = summary
        obj.exit_code = exit_code
        return obj

    # ---- general (secagg.errors)
    OK = ("ok", "OK", "accepted", 0)
    ERROR = ("error", FAILED_PRECONDITION, "an unspecified failure")
    INTERNAL = (
        "internal",
        "INTERNAL",
        "an unexpected failure inside the aggregator; the request did nothing",
    )
    USAGE = ("usage", INVALID_ARGUMENT, "the command or request is used wrongly", 2)
    CONFIG = ("config", FAILED_PRECONDITION, "a project file, kit, job or policy that cannot be used")
    IDENTITY = ("identity", UNAUTHENTICATED, "a certificate that is not a participant of this project")
    INTEGRITY = ("integrity", FAILED_PRECONDITION, "data failed an authenticity or integrity check")
    POLICY = ("policy", FAILED_PRECONDITION, "a site policy said no")
    UPDATE_REJECTED = ("update_rejected", FAILED_PRECONDITION, "the aggregator refuses a site's update")
    UNAVAILABLE = ("unavailable", "UNAVAILABLE", "the aggregator cannot be reached")
    ADMIN = ("admin", FAILED_PRECONDITION, "the aggregator failed an admin command and named no reason")
    UNHEALTHY = ("unhealthy", FAILED_PRECONDITION, "a health check failed")
    DEMO_FAILED = ("demo_failed", FAILED_PRECONDITION, "the demo federation did not finish")
    SIMULATION_FAILED = ("simulation_failed", FAILED_PRECONDITION, "the simulated federation did not finish")
    # ---- secagg simulate: a new user's job folder and data (secagg.demo.engine)
    NO_JOB_FILE = ("no_job_file", FAILED_PRECONDITION, "a job folder without job.yaml")
    MODEL_NOT_SAFETENSORS = ("model_not_safetensors", FAILED_PRECONDITION, "the model is not safetensors")
    DATA_MISSING = ("data_missing", FAILED_PRECONDITION, "a site's data folder is missing")
    SCRIPT_FAILED = ("script_failed", FAILED_PRECONDITION, "the job's training script raised at a site")
    NO_UPDATE = ("no_update", FAILED_PRECONDITION, "the training script finished without calling client.send")

    # ---- what a site sends (uploads, messages): the content is wrong
    MALFORMED = ("malformed", INVALID_ARGUMENT, "a message or stream that does not parse")
    BAD_SHAPE = ("bad_shape", INVALID_ARGUMENT, "an update whose names, shapes or size differ from the model")
    DTYPE = ("dtype", INVALID_ARGUMENT, "an update tensor of the wrong dtype")
    NON_FINITE = ("non_finite", INVALID_ARGUMENT, "an update with NaN or infinite values")
    OUT_OF_RANGE = ("out_of_range", INVALID_ARGUMENT, "a value outside the range the protocol allows")
    SHARE_MISMATCH = (
        "share_mismatch",
        INVALID_ARGUMENT,
        "a distributed-DP share in a round of weighted updates, or the reverse, or another fixed point",
    )
    CORRUPT = ("corrupt", INVALID_ARGUMENT, "a stream whose digest or framing is wrong")
    TRUNCATED = ("truncated", INVALID_ARGUMENT, "a stream that ended before its trailer")
    OVERSIZE = ("oversize", INVALID_ARGUMENT, "a payload larger than allowed")
    INCOMPLETE = ("incomplete", FAILED_PRECONDITION, "a payload shorter than its header says")
    BAD_WEIGHT = ("bad_weight", FAILED_PRECONDITION, "a sample count or weight that is not usable")
    BAD_CIPHERTEXT = ("bad_ciphertext", FAILED_PRECONDITION, "a ciphertext that does not load")
    WRONG_CONTEXT = ("wrong_context", FAILED_PRECONDITION, "a ciphertext under another HE context")
    BAD_UPDATE = ("bad_update", FAILED_PRECONDITION, "an update that cannot be combined")
    BAD_INDEX = ("bad_index", FAILED_PRECONDITION, "a share or slot index that is not valid")
    BAD_LENGTH = ("bad_length", FAILED_PRECONDITION, "a result stream with more parts than its model has")
    IDENTITY_MISMATCH = (
        "identity_mismatch",
        FAILED_PRECONDITION,
        "a message names another site than the sender's certificate",
    )

    # ---- what a site sends: the timing or the sender is wrong
    DUPLICATE = ("duplicate", ALREADY_EXISTS, "the same message was already received")
    DUPLICATE_UPLOAD = ("duplicate_upload", ALREADY_EXISTS, "the site already uploaded in this round")
    LATE = ("late", FAILED_PRECONDITION, "the round is not in the phase this message belongs to")
    WRONG_ROUND = ("wrong_round", FAILED_PRECONDITION, "the message is for another round than the current")
    NOT_IN_ROSTER = ("not_in_roster", FAILED_PRECONDITION, "the site is not in this round's roster")
    NO_SUCH_JOB = ("no_such_job", NOT_FOUND, "no such job, or not the running one")
    SITES_REFUSED = (
        "sites_refused",
        FAILED_PRECONDITION,
        "the sites that have not refused the job (for different reasons) are fewer than it needs",
    )
    NOT_A_SITE = ("not_a_site", PERMISSION_DENIED, "the caller's certificate is not a site of the project")
    NOT_KEY_HOLDER = ("not_key_holder", FAILED_PRECONDITION, "only the HE key holder may publish the key")
    NO_HE_KEY = ("no_he_key", FAILED_PRECONDITION, "the HE public context is not published yet")
    NO_TEE = ("no_tee", FAILED_PRECONDITION, "this aggregator does not run in a TEE")

    # ---- admin console
    FORBIDDEN = ("forbidden", PERMISSION_DENIED, "the admin's role may not do this to this job")
    NOT_ADMIN = ("not_admin", PERMISSION_DENIED, "the certificate's role is not an admin role")
    SIGNER_ROLE = ("signer_role", FAILED_PRECONDITION, "the job is not signed by a role that may submit")

    # ---- YAML files the project reads (secagg.safeyaml)
    YAML_INVALID = ("yaml_invalid", FAILED_PRECONDITION, "a YAML file that does not parse or is not UTF-8")
    YAML_ALIAS = ("yaml_alias", FAILED_PRECONDITION, "YAML anchors, aliases or merge keys (not allowed)")
    YAML_DUPLICATE_KEY = ("yaml_duplicate_key", FAILED_PRECONDITION, "a YAML mapping repeats a key")
    YAML_TOO_DEEP = ("yaml_too_deep", FAILED_PRECONDITION, "YAML nested too deep or too many nodes")
    YAML_TYPE = ("yaml_type", FAILED_PRECONDITION, "a YAML tag or key type outside plain JSON data")
    YAML_NUMBER = ("yaml_number", FAILED_PRECONDITION, "a YAML number spelling YAML 1.1 reads otherwise")
    FILE_TOO_LARGE = ("file_too_large", FAILED_PRECONDITION, "a configuration file over its size limit")
    NOT_A_FILE = ("not_a_file", FAILED_PRECONDITION, "a directory, pipe, device or socket given as a file")
    FILE_MISSING = ("file_missing", FAILED_PRECONDITION, "a configuration file that does not exist")
    JOB_SPEC_INVALID = ("job_spec_invalid", FAILED_PRECONDITION, "job.yaml has a setting out of its range")
    # ---- jobs
    JOB_REJECTED = ("job_rejected", FAILED_PRECONDITION, "the job package failed verification")
    SIGSTORE_REJECTED = ("sigstore_rejected", FAILED_PRECONDITION, "the sigstore bundle failed verification")

    # ---- site policy decisions (secagg.policy) and the agent
    SIGNER_UNVERIFIED = ("signer_unverified", FAILED_PRECONDITION, "no verified signature on the job")
    SIGNER_UNTRUSTED = ("signer_untrusted", FAILED_PRECONDITION, "the job's signer is not trusted here")
    MODE_NOT_ALLOWED = ("mode_not_allowed", FAILED_PRECONDITION, "the job's mode is not allowed here")
    TOO_FEW_SITES = ("too_few_sites", FAILED_PRECONDITION, "the job's min_sites is below the policy's")
    TOO_MANY_ROUNDS = ("too_many_rounds", FAILED_PRECONDITION, "the job has more rounds than allowed")
    MASK_SETTINGS_MISSING = ("mask_settings_missing", FAILED_PRECONDITION, "mask mode without settings")
    PRIVACY_WEAKER = (
        "privacy_weaker",
        FAILED_PRECONDITION,
        "the job asks for weaker privacy filter settings than the site requires",
    )
    MASK_THRESHOLD_TOO_LOW = ("mask_threshold_too_low", FAILED_PRECONDITION, "mask threshold too low")
    DISTRIBUTED_DP_MODE = (
        "distributed_dp_mode",
        FAILED_PRECONDITION,
        "distributed_gaussian outside mask, tee-mask and tee (he, plain)",
    )
    DISTRIBUTED_DP_SITES = (
        "distributed_dp_sites",
        FAILED_PRECONDITION,
        "distributed_gaussian's min_honest_sites exceeds the job's min_sites or mask threshold",
    )
    MODEL_SIZE_UNKNOWN = ("model_size_unknown", FAILED_PRECONDITION, "the model size cannot be read")
    BUDGET_EXCEEDED = (
        "budget_exceeded",
        FAILED_PRECONDITION,
        "the job's worst-case spend exceeds the budget",
    )
    BUDGET_EXHAUSTED = ("budget_exhausted", FAILED_PRECONDITION, "the privacy budget is spent")
    ATTESTATION = ("attestation", FAILED_PRECONDITION, "the aggregator's attestation is not acceptable")
    ATTESTATION_MISSING = (
        "attestation_missing",
        FAILED_PRECONDITION,
        "tee mode without an attestation policy",
    )
    POLICY_INVALID = ("policy_invalid", FAILED_PRECONDITION, "the site policy does not validate")
    POLICY_UNREADABLE = ("policy_unreadable", FAILED_PRECONDITION, "the site policy cannot be read")
    DPSGD_NOT_APPLIED = ("dpsgd_not_applied", FAILED_PRECONDITION, "DP-SGD required but not applied")
    DPSGD_OVERSPENT = ("dpsgd_overspent", FAILED_PRECONDITION, "DP-SGD spent more than planned")
    DPSGD_REFUSED = ("dpsgd_refused", FAILED_PRECONDITION, "the DP-SGD runtime refused the training code")
    MODEL_INCONSISTENT = (
        "model_inconsistent",
        FAILED_PRECONDITION,
        "sites hold different global models for the round",
    )
    ROSTER_TOO_SMALL = ("roster_too_small", FAILED_PRECONDITION, "fewer sites proved the model than needed")
    WEIGHTS_MISMATCH = ("weights_mismatch", FAILED_PRECONDITION, "announced weights differ from the counts")
    WEIGHT_SHARE_TOO_SMALL = (
        "weight_share_too_small",
        FAILED_PRECONDITION,
        "the site's share of the round is below the policy's minimum",
    )
    TRAINING_FAILED = ("training_failed", FAILED_PRECONDITION, "the job's training code failed")
    REFUSED = ("refused", FAILED_PRECONDITION, "the training code refused the round")
    JOB_STOPPED = ("job_stopped", FAILED_PRECONDITION, "the job was stopped")
    ROUND_MOVED_ON = ("round_moved_on", FAILED_PRECONDITION, "the round moved on without this site")
    AGGREGATOR_TOO_OLD = (
        "aggregator_too_old",
        FAILED_PRECONDITION,
        "the aggregator predates what this site agent needs (several jobs at once): upgrade it",
    )
    SIMULATED_DROPOUT = ("simulated_dropout", FAILED_PRECONDITION, "a dropout simulated by a demo or test")
    SANDBOX_UNAVAILABLE = (
        "sandbox_unavailable",
        FAILED_PRECONDITION,
        "the host cannot confine the job's code and the policy names no exception",
    )
    TRAINING_TIMEOUT = ("training_timeout", FAILED_PRECONDITION, "the job's training ran past its time limit")
    TRAINING_LIMIT_EXCEEDED = (
        "training_limit_exceeded",
        FAILED_PRECONDITION,
        "the job's training exceeded a resource limit",
    )
    # the agent's pipe to its confined worker (secagg.agent.channel)
    CHANNEL_ERROR = ("channel_error", FAILED_PRECONDITION, "the worker channel failed")
    CHANNEL_CLOSED = ("channel_closed", FAILED_PRECONDITION, "the worker closed its channel")
    CHANNEL_TIMEOUT = ("channel_timeout", FAILED_PRECONDITION, "the worker did not answer in time")
    MALFORMED_FRAME = ("malformed_frame", FAILED_PRECONDITION, "a worker channel frame does not parse")
    FRAME_TOO_LARGE = ("frame_too_large", FAILED_PRECONDITION, "a worker channel frame is too large")

    # ---- mask mode
    MASK_THRESHOLD = ("mask_threshold", FAILED_PRECONDITION, "fewer sites than the mask threshold")
    MASK_PROTOCOL = ("mask_protocol", FAILED_PRECONDITION, "a masking protocol message is invalid")
    MASK_ROUND_ABORTED = ("mask_round_aborted", FAILED_PRECONDITION, "the masked round cannot complete")
    MASK_UNMASK_REFUSED = ("mask_unmask_refused", FAILED_PRECONDITION, "an unmask request was refused")

    # ---- tee mode (secagg.tee.errors.REASON_CODES and the sealed-chunk codes)
    TEE = ("tee", FAILED_PRECONDITION, "the aggregator's TEE evidence is not acceptable")
    TEE_MALFORMED = ("tee_malformed", FAILED_PRECONDITION, "TEE evidence does not parse")
    TEE_DEV_NOT_ALLOWED = ("tee_dev_not_allowed", FAILED_PRECONDITION, "dev-TEE evidence not allowed")
    TEE_TYPE = ("tee_type", FAILED_PRECONDITION, "TEE type not accepted by the policy")
    TEE_CHAIN = ("tee_chain", FAILED_PRECONDITION, "TEE evidence signature or chain fails")
    TEE_REPLAY = ("tee_replay", FAILED_PRECONDITION, "TEE evidence does not bind this site's nonce")
    TEE_CHANNEL_BINDING = ("tee_channel_binding", FAILED_PRECONDITION, "TLS certificate not bound")
    TEE_KEY_BINDING = ("tee_key_binding", FAILED_PRECONDITION, "enclave keys not bound")
    TEE_DEBUG = ("tee_debug", FAILED_PRECONDITION, "the TEE runs in debug mode")
    TEE_MEASUREMENT = ("tee_measurement", FAILED_PRECONDITION, "measurement not in the allow-list")
    TEE_TCB = ("tee_tcb", FAILED_PRECONDITION, "TCB below the policy's minimum")
    TEE_STALE = ("tee_stale", FAILED_PRECONDITION, "TEE evidence too old")
    TEE_POLICY = ("tee_policy", FAILED_PRECONDITION, "TEE evidence fails another policy field")
    TEE_SUITE = ("tee_suite", FAILED_PRECONDITION, "HPKE suite not accepted")
    TEE_KEY_CHANGED = ("tee_key_changed", FAILED_PRECONDITION, "the enclave keys changed during the job")
    TEE_SEALED_KEYS = (
        "tee_sealed_keys",
        FAILED_PRECONDITION,
        "the enclave's sealed job keys do not open (altered, or sealed by another image)",
    )
    TEE_UNAVAILABLE = ("tee_unavailable", FAILED_PRECONDITION, "no TEE evidence source on this machine")
    TEE_MODEL_SIGNATURE = ("tee_model_signature", FAILED_PRECONDITION, "global model signature invalid")
    TEE_RELAY_SIGNATURE = (
        "tee_relay_signature",
        FAILED_PRECONDITION,
        "a tee-mask protocol message not signed by the attested enclave",
    )
    TEE_MASK_UNSEALED = ("tee_mask_unsealed", FAILED_PRECONDITION, "a tee-mask message that is not sealed")
    TEE_CHUNK_AUTH = ("tee_chunk_auth", FAILED_PRECONDITION, "a sealed chunk does not open")
    TEE_CHUNK_MALFORMED = ("tee_chunk_malformed", FAILED_PRECONDITION, "a sealed chunk does not parse")
    TEE_CHUNK_MIXED = ("tee_chunk_mixed", FAILED_PRECONDITION, "sealed chunks of different uploads mixed")
    TEE_CHUNK_ORDER = ("tee_chunk_order", FAILED_PRECONDITION, "sealed chunks out of order")
    TEE_CHUNK_SIZE = ("tee_chunk_size", FAILED_PRECONDITION, "a sealed chunk of the wrong size")
    TEE_CHUNK_TRUNCATED = ("tee_chunk_truncated", FAILED_PRECONDITION, "sealed chunks end early")

    # ---- hostile input (#18, bad input found: h-badinput)
    PACKAGE_TOO_LARGE = (
        "package_too_large",
        FAILED_PRECONDITION,
        "a job package over its size limit (decompressed, tar headers included)",
    )
    # ---- cross-site evaluation (secagg.agent.evaluation, secagg.aggregator.evaluation; h-xsite)
    XSITE_NOT_SHARED = (
        "xsite_not_shared",
        FAILED_PRECONDITION,
        "a site's policy does not share its local model for evaluation: only the global model is evaluated",
    )
    XSITE_NO_LOCAL_MODEL = (
        "xsite_no_local_model",
        FAILED_PRECONDITION,
        "the site has no local model of the last round to share (it did not upload in that round)",
    )
    XSITE_UNSAFE_RELEASE = (
        "xsite_unsafe_release",
        FAILED_PRECONDITION,
        "the site's release is protected only in the sum (distributed_gaussian): its local model stays",
    )
    XSITE_TOO_LARGE = (
        "xsite_too_large",
        FAILED_PRECONDITION,
        "a sealed local model announced larger than the job's model can be",
    )
    XSITE_ENVELOPE = (
        "xsite_envelope",
        FAILED_PRECONDITION,
        "a sealed local model or a signed consent does not verify (wrong sender, recipient, job or tampered)",
    )
    XSITE_PROTOCOL = (
        "xsite_protocol",
        FAILED_PRECONDITION,
        "a cross-site evaluation message out of turn, from a site not taking part, or duplicated",
    )
    # ---- hostile input, continued (#18: h-badinput)
    MANIFEST_INVALID = ("manifest_invalid", FAILED_PRECONDITION, "manifest.json does not parse or validate")
    # ---- several jobs at once (secagg.aggregator.scheduler, secagg.agent.site)
    MAX_CONCURRENT_JOBS = (
        "max_concurrent_jobs",
        FAILED_PRECONDITION,
        "the site already runs as many jobs as its policy's limits.max_concurrent_jobs allows",
    )
    NOT_QUEUED = ("not_queued", FAILED_PRECONDITION, "the job is neither queued nor running")
    # ---- h-faults (#18 faults): a full state disk is a pause, answered UNAVAILABLE so callers retry
    STORAGE_FULL = ("storage_full", "UNAVAILABLE", "the state disk is full: nothing was written, retry later")


#: the codes an agent treats as "the round moved on without me": redo what comes next, no error
STALE = frozenset({Reason.LATE, Reason.WRONG_ROUND, Reason.NOT_IN_ROSTER})


_BY_CODE: dict[str, Reason] = {r.value: r for r in Reason}


def lookup(code: str) -> Reason | None:
    """The registered reason for ``code``, or None for a code this table does not know."""
    return _BY_CODE.get(str(code))


def status_name(code: str) -> str:
    """The ``grpc.StatusCode`` name a refusal with ``code`` is answered with (unknown codes:
    ``FAILED_PRECONDITION``, the status of a refusal that names its reason in the details)."""
    reason = lookup(code)
    return reason.status if reason is not None else FAILED_PRECONDITION


def grpc_status(code: str) -> Any:
    """``grpc.StatusCode`` for ``code`` (imports gRPC: only for the transport and its callers)."""
    import grpc

    return grpc.StatusCode[status_name(code)]


def exit_code(code: str) -> int:
    """The CLI exit code for a failure with ``code``: 1 (a refusal) unless the table says otherwise."""
    reason = lookup(code)
    return reason.exit_code if reason is not None else 1


def details(code: str, message: str) -> str:
    """The details text of a refused call, as older agents parse it: ``"<code>: <message>"``."""
    return f"{code}: {message}"


def metadata(code: str) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that names the reason of a refused call."""
    return ((METADATA_KEY, str(code)),)


def from_metadata(pairs: Iterable[Any] | None) -> str | None:
    """The reason code in a call's trailing metadata (``exc.trailing_metadata()`` of a
    ``grpc.RpcError``), or None when the aggregator sent none (an older one, or a transport error)."""
    for item in pairs or ():
        key, value = (item.key, item.value) if hasattr(item, "key") else item
        if key == METADATA_KEY:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def of_rpc_error(exc: Any) -> str | None:
    """The reason code of a failed call (a ``grpc.RpcError``), read from its trailing metadata."""
    trailing = getattr(exc, "trailing_metadata", None)
    try:
        return from_metadata(trailing() if callable(trailing) else None)
    except Exception:  # noqa: BLE001 - an error without metadata carries no reason
        return None


__all__ = [
    "METADATA_KEY",
    "STALE",
    "Reason",
    "details",
    "exit_code",
    "from_metadata",
    "grpc_status",
    "lookup",
    "metadata",
    "of_rpc_error",
    "status_name",
]
