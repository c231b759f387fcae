from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("agent_version",)
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    def __init__(self, agent_version: _Optional[str] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("project", "site", "job_id")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    project: str
    site: str
    job_id: str
    def __init__(self, project: _Optional[str] = ..., site: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ("job_id", "after_round", "poll_seconds", "after_attempt", "has_global_round")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_ROUND_FIELD_NUMBER: _ClassVar[int]
    POLL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AFTER_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    HAS_GLOBAL_ROUND_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_round: int
    poll_seconds: float
    after_attempt: int
    has_global_round: int
    def __init__(self, job_id: _Optional[str] = ..., after_round: _Optional[int] = ..., poll_seconds: _Optional[float] = ..., after_attempt: _Optional[int] = ..., has_global_round: _Optional[int] = ...) -> None: ...

class JobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("header_json", "data", "trailer_sha256")
    HEADER_JSON_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRAILER_SHA256_FIELD_NUMBER: _ClassVar[int]
    header_json: str
    data: bytes
    trailer_sha256: str
    def __init__(self, header_json: _Optional[str] = ..., data: _Optional[bytes] = ..., trailer_sha256: _Optional[str] = ...) -> None: ...

class UploadReply(_message.Message):
    __slots__ = ("accepted", "code", "message")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    code: str
    message: str
    def __init__(self, accepted: _Optional[bool] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("topic", "job_id", "round", "sender", "payload", "signal", "reason")
    class Signal(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        NONE: _ClassVar[Message.Signal]
        CANCELLED: _ClassVar[Message.Signal]
        NOT_FOR_YOU: _ClassVar[Message.Signal]
    NONE: Message.Signal
    CANCELLED: Message.Signal
    NOT_FOR_YOU: Message.Signal
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    topic: str
    job_id: str
    round: int
    sender: str
    payload: bytes
    signal: Message.Signal
    reason: str
    def __init__(self, topic: _Optional[str] = ..., job_id: _Optional[str] = ..., round: _Optional[int] = ..., sender: _Optional[str] = ..., payload: _Optional[bytes] = ..., signal: _Optional[_Union[Message.Signal, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("ok", "code", "message")
    OK_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    code: str
    message: str
    def __init__(self, ok: _Optional[bool] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class CollectRequest(_message.Message):
    __slots__ = ("topic", "job_id", "round", "timeout_seconds", "attempt")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    topic: str
    job_id: str
    round: int
    timeout_seconds: float
    attempt: int
    def __init__(self, topic: _Optional[str] = ..., job_id: _Optional[str] = ..., round: _Optional[int] = ..., timeout_seconds: _Optional[float] = ..., attempt: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("job_id", "round", "status")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    status: str
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., status: _Optional[str] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("ok", "job_state")
    OK_FIELD_NUMBER: _ClassVar[int]
    JOB_STATE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    job_state: str
    def __init__(self, ok: _Optional[bool] = ..., job_state: _Optional[str] = ...) -> None: ...

class AdminRequest(_message.Message):
    __slots__ = ("command", "job_id", "payload")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    command: str
    job_id: str
    payload: bytes
    def __init__(self, command: _Optional[str] = ..., job_id: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class SealedRequest(_message.Message):
    __slots__ = ("job_id", "topic", "sender")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    topic: str
    sender: str
    def __init__(self, job_id: _Optional[str] = ..., topic: _Optional[str] = ..., sender: _Optional[str] = ...) -> None: ...

class AttestRequest(_message.Message):
    __slots__ = ("job_id", "nonce")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    nonce: bytes
    def __init__(self, job_id: _Optional[str] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class AttestReply(_message.Message):
    __slots__ = ("evidence_message",)
    EVIDENCE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    evidence_message: bytes
    def __init__(self, evidence_message: _Optional[bytes] = ...) -> None: ...
