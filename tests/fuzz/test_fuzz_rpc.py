"""Fuzz (#18): every gRPC request the aggregator accepts, fed to the real handlers in-process.

Each target is one RPC of :class:`~secagg.aggregator.service.FederationService` (``Admin`` and
``AdminUpload`` go through it to the admin console). The fuzzed bytes are the serialized request, decoded
with the generated protobuf class as gRPC would (a ``DecodeError`` is gRPC's own refusal, allowed); a
client stream (``UploadResult``, ``AdminUpload``) is up to :data:`_MAX_CHUNKS` serialized ``Chunk``
messages split at :data:`_SEP`. The handler runs against a real federation (a provisioned project, a
plain job in its upload phase, its state on a tmpfs so that audit fsyncs are cheap) with a fake
``ServicerContext`` that presents site-2's (for the admin RPCs, admin@lead's) certificate as the TLS
layer does and raises :class:`Aborted` from ``abort``. The property: the call returns (its response
stream read), or ends in an abort with a registered reason code in the trailing metadata and a status
other than ``UNKNOWN`` or ``INTERNAL`` (``internal`` is the handlers' net for an unexpected exception:
a bug). Long polls are cut to no wait (``MAX_POLL_S``, ``MAX_FOLLOW_S``) so that an input is cheap.

Worlds: a ``plain`` job in its upload phase, and a ``mask`` job collecting keys or (both sites' keys
in) encrypted shares, each on one provisioned project per process under a tmpfs. Every world's job
id is :data:`JOB` (its uuid made deterministic), so seeds name the running job. A world is made
afresh every :data:`_RENEW` executions, once its job stopped running (an admin abort, a decline),
and after an accepted upload or mask post (site-2 sends each once a round: without a fresh round
every later one would stop at ``duplicate``), so its state stays bounded and the job stays live.
Half the inputs are structure-aware (:func:`_mutant`: a seed's fields, or its JSON header or
payload, set to hostile values), since byte mutations of a protobuf mostly end in a ``DecodeError``.
The mask targets' seeds come from a world, so importing this module provisions the project.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import copy
import functools
import hashlib
import itertools
import json
import math
import os
import random
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from hypothesis import example, given

from secagg import reasons
from secagg.aggregator import admin as admin_mod
from secagg.aggregator import service as service_mod
from secagg.aggregator.hub import FederationHub
from secagg.aggregator.rounds import RoundRun
from secagg.aggregator.service import FederationService
from secagg.bundle import to_safetensors
from secagg.mask.client import MaskClient
from secagg.provision.kit import load_kit
from secagg.provision.writer import provision
from secagg.topics import Topic
from secagg.transport.chunks import encode_stream
from secagg.transport.generated import secagg_pb2 as pb
from tests.aggregator.conftest import open_uploads, update, write_job
from tests.conftest import make_project
from tests.fuzz._harness import Target, inputs, mutate

#: the job id of every world (its uuid made deterministic), so that seeds name the running job
JOB = b"unit-00000000"
#: separates the serialized ``Chunk`` messages of a client stream
_SEP = b"\n--\n"
_MAX_CHUNKS = 16
_JOB = JOB.decode()
SITES = ("site-1", "site-2")
#: the most response messages read from a server stream
_MAX_REPLIES = 64
#: executions between two fresh federations
_RENEW = 5000
_BAD_STATUS = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


class Aborted(Exception):
    """What the fake context's ``abort`` raises (grpc raises its own, private, exception there)."""

    def __init__(self, status: grpc.StatusCode, details: str, code: str | None) -> None:
        super().__init__(f"{status.name} [{code}]: {details[:200]}")
        self.status, self.details, self.code = status, details, code


class Refused(Exception):
    """An abort that satisfies the property: a registered reason code, a specific status."""


class FakeContext:
    """The part of ``grpc.ServicerContext`` the handlers use, with a real peer certificate."""

    def __init__(self, pem: bytes) -> None:
        self._auth = {"x509_pem_cert": [pem]}
        self._trailing: tuple[tuple[str, str], ...] = ()

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def set_trailing_metadata(self, md: tuple[tuple[str, str], ...]) -> None:
        self._trailing = tuple(md)

    def abort(self, status: grpc.StatusCode, details: str) -> None:
        raise Aborted(status, details, reasons.from_metadata(self._trailing))

    def is_active(self) -> bool:
        return True


@dataclass
class World:
    """A federation with one job in its first round, on the process's provisioned project."""

    root: Path
    hub: FederationHub
    service: FederationService
    job_id: str
    site_pem: bytes
    admin_pem: bytes
    #: mask worlds: site-1's and site-2's clients, whose keys the round has
    clients: dict[str, MaskClient]
    execs: int = 0

    def live(self) -> bool:
        job = self.hub.live_job(self.job_id)
        return job is not None and not job.state.terminal

    def round(self) -> RoundRun:
        job = self.hub.live_job(self.job_id)
        assert job is not None and job.current is not None
        return job.current

    def close(self) -> None:
        self.hub.store.close()
        shutil.rmtree(self.root, ignore_errors=True)


#: what a world's job is: ``plain`` (upload phase), ``mask-keys`` (a mask job collecting keys),
#: ``mask-shares`` (both sites' keys in, collecting encrypted shares)
KINDS = ("plain", "mask-keys", "mask-shares")
_WORLDS: dict[str, World] = {}
_PROJECT: list[Path] = []


def _tmpfs() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _project() -> Path:
    """The provisioned project every world of this process runs on (made once: keys take a while)."""
    if not _PROJECT:
        root = Path(tempfile.mkdtemp(prefix="secagg-fuzz-rpc-", dir=_tmpfs()))
        provision(make_project(), root / "project")
        _PROJECT.append(root)
    return _PROJECT[0]


def _mask_client(ws: Path, site: str, cur: RoundRun, job_id: str) -> MaskClient:
    kit = load_kit(ws / site)
    config = cur.mode_state.config
    return MaskClient(site, kit.private_key, kit.cert, kit.ca_cert, config, job_id, cur.round, sites=SITES)


def _make_world(kind: str) -> World:
    ws = _project() / "project"
    root = Path(tempfile.mkdtemp(prefix=f"world-{kind}-", dir=_project()))
    hub = FederationHub(load_kit(ws / "aggregator"), root / "state")
    mode = "plain" if kind == "plain" else "mask"
    spec: dict[str, Any] = {"mask": {"threshold": 2}} if mode == "mask" else {}
    with mock.patch.object(uuid, "uuid4", return_value=uuid.UUID(int=0)):  # the job id the seeds name
        job_id = hub.submit(write_job(root / "job", mode=mode, **spec), "admin@lead (project_admin of lead)")
    assert job_id == _JOB, job_id
    cur = open_uploads(hub, dict(zip(SITES, (0.25, 0.75), strict=True)))  # type: ignore[arg-type]
    clients = {s: _mask_client(ws, s, cur, job_id) for s in SITES} if mode == "mask" else {}
    if kind == "mask-shares":
        for site, client in clients.items():
            hub.mode_post(site, Topic.MASK_KEYS, job_id, cur.round, client.advertise().to_bytes())
        with hub.cond:
            cur.mode_state.advance()
    return World(
        root=root,
        hub=hub,
        service=FederationService(hub),
        job_id=job_id,
        site_pem=load_kit(ws / "site-2").cert_pem,
        admin_pem=load_kit(ws / "admin@lead").cert_pem,
        clients=clients,
    )


def world(kind: str = "plain") -> World:
    """The current ``kind`` of federation, made afresh after :data:`_RENEW` executions or once its job
    ended."""
    w = _WORLDS.get(kind)
    if w is None or w.execs >= _RENEW or not w.live():
        if w is not None:
            w.close()
        w = _WORLDS[kind] = _make_world(kind)
    w.execs += 1
    return w


def _close_worlds() -> None:
    for w in _WORLDS.values():
        w.close()
    _WORLDS.clear()
    for root in _PROJECT:
        shutil.rmtree(root, ignore_errors=True)
    _PROJECT.clear()


atexit.register(_close_worlds)


@contextlib.contextmanager
def _no_waits() -> Iterator[None]:
    """Long polls answer at once: an input must not sit out a 30 s poll or a 600 s log follow."""
    poll, follow = service_mod.MAX_POLL_S, admin_mod.MAX_FOLLOW_S
    service_mod.MAX_POLL_S, admin_mod.MAX_FOLLOW_S = 0.0, 0.0
    try:
        yield
    finally:
        service_mod.MAX_POLL_S, admin_mod.MAX_FOLLOW_S = poll, follow


def _judge(exc: Aborted) -> None:
    if exc.code is None or reasons.lookup(exc.code) is None:
        raise AssertionError(f"abort without a registered reason code: {exc}") from exc
    if exc.status in _BAD_STATUS:
        raise AssertionError(f"abort with status {exc.status.name}: {exc}") from exc
    raise Refused(str(exc)) from None


def _run(call: Callable[[FakeContext], Any], w: World, *, admin: bool) -> None:
    ctx = FakeContext(w.admin_pem if admin else w.site_pem)
    try:
        with _no_waits():
            out = call(ctx)
            if isinstance(out, Iterator):  # a server stream: read it as the client would, then close it
                try:
                    for _ in itertools.islice(out, _MAX_REPLIES):
                        pass
                finally:
                    close = getattr(out, "close", None)
                    if close is not None:
                        close()
    except Aborted as exc:
        _judge(exc)


def _unary(
    method: str, cls: Any, *, admin: bool = False, kind: str = "plain", renew: bool = False
) -> Callable[[bytes], None]:
    def call(data: bytes) -> None:
        request = cls.FromString(data)
        w = world(kind)
        handler = getattr(w.service, method)
        _run(lambda ctx: handler(request, ctx), w, admin=admin)
        if renew:  # accepted (site-2's keys or shares are in): the next input gets a fresh round
            w.execs = _RENEW

    return call


def _stream(method: str, *, admin: bool = False) -> Callable[[bytes], None]:
    def call(data: bytes) -> None:
        chunks = [pb.Chunk.FromString(p) for p in data.split(_SEP)[:_MAX_CHUNKS]]
        w = world()
        handler = getattr(w.service, method)
        _run(lambda ctx: handler(iter(chunks), ctx), w, admin=admin)
        if method == "UploadResult":  # accepted: site-2 has uploaded, so the next world has it not yet
            w.execs = _RENEW

    return call


def _ser(*messages: Any) -> list[bytes]:
    return [m.SerializeToString() for m in messages]


def _joined(chunks: Iterator[pb.Chunk] | list[pb.Chunk]) -> bytes:
    return _SEP.join(c.SerializeToString() for c in chunks)


# ---------------------------------------------------------------------------- structure-aware inputs
# Byte mutations of a serialized request mostly end in a DecodeError (a string field that is no longer
# UTF-8, a length past the end); these keep the protobuf (and a JSON header or payload) well-formed and
# put hostile values in its fields, so that half the inputs reach the handlers' own checks.

_HOSTILE_TEXT = (
    "",
    "x" * 300,
    "\x00",
    "../../etc/passwd",
    "site-1",
    "unit-11111111",
    "\u202e",
    " ",
    "é" * 200,
)
_HOSTILE_JSON: tuple[Any, ...] = (
    None, True, False, -1, 0, 1, 2, 2**31, 2**53 + 1, 2**63, 10**30, -(10**30), 0.5, -0.0, 1e308,
    math.nan, math.inf, -math.inf, "", "x" * 300, "1", [], {}, [1, 2], {"a": {"b": {"c": 1}}}, [[[[[[]]]]]],
    {"loss": math.nan}, {"x" * 300: 1}, {str(i): i for i in range(300)},
)  # fmt: skip
_JSON_KEYS = (
    "job_id", "round", "attempt", "bytes", "metrics", "topic", "envelope", "command", "n_samples",
    "fingerprint", "code", "message", "scope", "follow", "seq", "head", "version", "sha256", "format",
)  # fmt: skip
_INT32 = (0, 1, 2, -1, 3, 2**31 - 1, -(2**31), 1000)
_DOUBLE = (0.0, -1.0, 0.001, 1e308, -1e308, math.nan, math.inf, -math.inf, 5e-324)


def _json_mutant(text: bytes | str, rng: random.Random) -> str | None:
    """A JSON object with 1..3 keys set to hostile values or dropped (None: ``text`` is not one)."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    for _ in range(rng.randint(1, 3)):
        target = obj
        nested = [v for v in obj.values() if isinstance(v, dict)]
        if nested and rng.random() < 0.3:
            target = rng.choice(nested)
        key = rng.choice((*target, *_JSON_KEYS))
        if rng.random() < 0.15:
            target.pop(key, None)
        else:
            target[key] = copy.deepcopy(rng.choice(_HOSTILE_JSON))
    return json.dumps(obj)


def _text(value: str, rng: random.Random) -> str:
    as_json = _json_mutant(value, rng) if value.startswith("{") and rng.random() < 0.8 else None
    if as_json is not None:
        return as_json
    if rng.random() < 0.5:
        return rng.choice((*_HOSTILE_TEXT, value + rng.choice(_HOSTILE_TEXT)))
    return mutate([value.encode()], rng).decode("utf-8", "replace")


def _blob(value: bytes, rng: random.Random) -> bytes:
    as_json = _json_mutant(value, rng) if value.startswith(b"{") and rng.random() < 0.8 else None
    if as_json is not None:
        return as_json.encode()
    return mutate([value], rng, max_size=1 << 16)


def _mutant(msg: Any, rng: random.Random) -> Any:
    """``msg`` with 1..3 of its fields set to hostile values of the field's own type."""
    fields = msg.DESCRIPTOR.fields
    present = [
        f for f in fields if f.containing_oneof is None or msg.WhichOneof(f.containing_oneof.name) == f.name
    ]
    for _ in range(rng.randint(1, 3)):
        f = rng.choice(present if present and rng.random() < 0.8 else fields)
        value = getattr(msg, f.name)
        if f.type == FieldDescriptor.TYPE_STRING:
            setattr(msg, f.name, _text(value, rng))
        elif f.type == FieldDescriptor.TYPE_BYTES:
            setattr(msg, f.name, _blob(value, rng))
        elif f.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_ENUM):
            setattr(msg, f.name, max(-(2**31), min(2**31 - 1, rng.choice((*_INT32, value + 1, value - 1)))))
        elif f.type == FieldDescriptor.TYPE_DOUBLE:
            setattr(msg, f.name, rng.choice(_DOUBLE))
        elif f.type == FieldDescriptor.TYPE_BOOL:
            setattr(msg, f.name, not value)
    return msg


def _unary_mutant(cls: Any, seeds: Callable[[], list[bytes]]) -> Callable[[random.Random], bytes]:
    def make(rng: random.Random) -> bytes:
        return bytes(_mutant(cls.FromString(rng.choice(seeds())), rng).SerializeToString())

    return make


def _stream_mutant(seeds: Callable[[], list[bytes]]) -> Callable[[random.Random], bytes]:
    """A seed stream with 1..2 chunks mutated, and perhaps one dropped, repeated or moved."""

    def make(rng: random.Random) -> bytes:
        chunks = [pb.Chunk.FromString(p) for p in rng.choice(seeds()).split(_SEP)]
        for _ in range(rng.randint(1, 2)):
            i = 0 if rng.random() < 0.5 else rng.randrange(len(chunks))  # mostly the header
            chunks[i] = _mutant(chunks[i], rng)
        if len(chunks) > 1 and rng.random() < 0.25:
            i = rng.randrange(len(chunks))
            piece = chunks.pop(i)
            how = rng.random()
            if how < 0.33:
                chunks.insert(i, piece)
                chunks.insert(i, piece)
            elif how < 0.66:
                chunks.insert(rng.randrange(len(chunks) + 1), piece)
        if rng.random() < 0.5:
            _consistent(chunks)
        return _joined(chunks)

    return make


def _consistent(chunks: list[pb.Chunk]) -> None:
    """Make the trailer and the header's ``bytes`` match the data pieces, so that a mutated payload
    reaches the checks past the stream's own (a model update's names, shapes and dtypes)."""
    data = b"".join(c.data for c in chunks if c.WhichOneof("part") == "data")
    for c in chunks:
        if c.WhichOneof("part") == "trailer_sha256":
            c.trailer_sha256 = hashlib.sha256(data).hexdigest()
    first = chunks[0] if chunks else None
    if first is not None and first.WhichOneof("part") == "header_json":
        with contextlib.suppress(ValueError, RecursionError):
            head = json.loads(first.header_json)
            if isinstance(head, dict) and "bytes" in head:
                head["bytes"] = len(data)
                first.header_json = json.dumps(head)


_READY = json.dumps(
    {"n_samples": 100, "attempt": 1, "fingerprint": {"n_samples": 100, "sha256": "ab" * 32}}
).encode()


def _upload_seeds() -> list[bytes]:
    data = to_safetensors(update(0.1))
    head = {"job_id": _JOB, "round": 1, "attempt": 1, "bytes": len(data), "metrics": {"loss": 0.5}}
    xsite = {"topic": "xsite-model", "job_id": _JOB, "bytes": 1, "envelope": {"format": "x"}}
    return [
        _joined(encode_stream(head, [data])),
        _joined(encode_stream({**head, "bytes": 6}, [b"abc", b"def"])),
        _joined(encode_stream(xsite, [b"x"])),
        _joined([pb.Chunk(header_json=json.dumps(head))]),
    ]


def _admin_upload_seeds() -> list[bytes]:
    return [
        _joined(encode_stream({"command": "submit"}, [b"\x1f\x8b" + b"\0" * 64])),
        _joined(encode_stream({"command": "abort"}, [])),
    ]


def _post_seeds() -> list[bytes]:
    return _ser(
        pb.Message(topic="ready", job_id=_JOB, round=1, payload=_READY),
        pb.Message(
            topic="declined",
            job_id=_JOB,
            round=1,
            reason="policy",
            payload=b'{"code": "policy", "message": "no", "scope": "round"}',
        ),
        pb.Message(topic="declined", job_id=_JOB, round=1, payload=b'{"message": "not this job"}'),
        pb.Message(topic="final", job_id=_JOB, round=2, payload=b'{"auc": 0.9, "loss": {"a": 1}}'),
        pb.Message(topic="audit-head", job_id=_JOB, payload=b'{"seq": 1, "head": "00"}'),
        pb.Message(topic="he-key", job_id=_JOB, payload=b"key"),
        pb.Message(topic="xsite-consent", job_id=_JOB, payload=b'{"consent": true}'),
        pb.Message(topic="xsite-metrics", job_id=_JOB, payload=b'{"site-1": {"auc": 0.5}}'),
        pb.Message(topic="mask-keys", job_id=_JOB, round=1, payload=b"\0" * 16),
    )


def _collect_seeds() -> list[bytes]:
    return _ser(
        pb.CollectRequest(topic="roster", job_id=_JOB, round=1, timeout_seconds=1.0, attempt=1),
        pb.CollectRequest(topic="jobs"),
        pb.CollectRequest(topic="he-key", timeout_seconds=float("nan")),
        pb.CollectRequest(topic="xsite-consents", job_id=_JOB),
        pb.CollectRequest(topic="mask-keyroster", job_id=_JOB, round=1, attempt=1),
        pb.CollectRequest(topic="mask-myshares", job_id=_JOB, round=1, attempt=1),
    )


@functools.cache
def _mask_seeds() -> list[bytes]:
    """Site-2's key advertisement (on a world collecting keys) and its encrypted shares (on one
    collecting shares), as the agent posts them; each target gets both (one is out of phase)."""
    keys = world("mask-keys")
    cur = keys.round()
    advert = keys.clients["site-2"].advertise().to_bytes()
    shares_world = world("mask-shares")
    roster = shares_world.round().mode_state.server.roster()
    shares = shares_world.clients["site-2"].share_keys(roster)
    body = json.dumps({k: base64.b64encode(v.to_bytes()).decode() for k, v in shares.items()}).encode()
    return _ser(
        pb.Message(topic=Topic.MASK_KEYS, job_id=_JOB, round=cur.round, payload=advert),
        pb.Message(topic=Topic.MASK_SHARES, job_id=_JOB, round=cur.round, payload=body),
        pb.Message(topic=Topic.MASK_UNMASK_RESP, job_id=_JOB, round=cur.round, payload=advert),
    )


def _mask_collect_seeds() -> list[bytes]:
    return _ser(
        pb.CollectRequest(topic=Topic.MASK_KEYROSTER, job_id=_JOB, round=1, attempt=1),
        pb.CollectRequest(topic=Topic.MASK_MYSHARES, job_id=_JOB, round=1, attempt=1),
        pb.CollectRequest(topic=Topic.MASK_UNMASK, job_id=_JOB, round=1, attempt=1, timeout_seconds=1),
    )


def _admin_seeds() -> list[bytes]:
    return _ser(
        pb.AdminRequest(command="list"),
        pb.AdminRequest(command="status"),
        pb.AdminRequest(command="status", job_id=_JOB),
        pb.AdminRequest(command="logs", job_id=_JOB, payload=b'{"follow": 5}'),
        pb.AdminRequest(command="download", job_id=_JOB),
        pb.AdminRequest(command="abort", job_id=_JOB),
        pb.AdminRequest(command="abort", job_id="unit-11111111"),
    )


def _cached(seeds: Callable[[], list[bytes]]) -> Callable[[], list[bytes]]:
    got: list[list[bytes]] = []
    return lambda: got[0] if got else (got.append(seeds()) or got[0])


def _unary_target(name: str, method: str, cls: Any, seeds: Callable[[], list[bytes]], **kw: Any) -> Target:
    seeds = _cached(seeds)
    return Target(
        name,
        _unary(method, cls, **kw),
        seeds,
        (DecodeError, Refused),
        extra=(_unary_mutant(cls, seeds),),
        extra_share=1 / 2,
        warm=lambda: world(kw.get("kind", "plain")),
    )


def _stream_target(name: str, method: str, seeds: Callable[[], list[bytes]], **kw: bool) -> Target:
    seeds = _cached(seeds)
    return Target(
        name,
        _stream(method, **kw),
        seeds,
        (DecodeError, Refused),
        extra=(_stream_mutant(seeds),),
        extra_share=1 / 2,
        warm=world,
    )


TARGETS = [
    _unary_target(
        "rpc_register",
        "Register",
        pb.RegisterRequest,
        lambda: _ser(pb.RegisterRequest(agent_version="0.9.0"), pb.RegisterRequest()),
    ),
    _unary_target(
        "rpc_heartbeat",
        "Heartbeat",
        pb.HeartbeatRequest,
        lambda: _ser(pb.HeartbeatRequest(job_id=_JOB, round=1, status="training"), pb.HeartbeatRequest()),
    ),
    _unary_target(
        "rpc_fetch_task",
        "FetchTask",
        pb.TaskRequest,
        lambda: _ser(
            pb.TaskRequest(job_id=_JOB, poll_seconds=5.0),
            pb.TaskRequest(job_id=_JOB, after_round=1, after_attempt=1, has_global_round=1, poll_seconds=1),
            pb.TaskRequest(),
        ),
    ),
    _unary_target(
        "rpc_fetch_job",
        "FetchJob",
        pb.JobRequest,
        lambda: _ser(pb.JobRequest(job_id=_JOB), pb.JobRequest(job_id="unit-11111111")),
    ),
    _stream_target("rpc_upload", "UploadResult", _upload_seeds),
    _unary_target("rpc_post", "Post", pb.Message, _post_seeds),
    _unary_target("rpc_collect", "Collect", pb.CollectRequest, _collect_seeds),
    _unary_target("rpc_post_mask_keys", "Post", pb.Message, _mask_seeds, kind="mask-keys", renew=True),
    _unary_target("rpc_post_mask_shares", "Post", pb.Message, _mask_seeds, kind="mask-shares", renew=True),
    _unary_target("rpc_collect_mask", "Collect", pb.CollectRequest, _mask_collect_seeds, kind="mask-shares"),
    _unary_target(
        "rpc_attest",
        "Attest",
        pb.AttestRequest,
        lambda: _ser(pb.AttestRequest(job_id=_JOB, nonce=b"\x01" * 32)),
    ),
    _unary_target(
        "rpc_fetch_sealed",
        "FetchSealed",
        pb.SealedRequest,
        lambda: _ser(pb.SealedRequest(job_id=_JOB, topic="xsite-inbox", sender="site-1")),
    ),
    _unary_target("rpc_admin", "Admin", pb.AdminRequest, _admin_seeds, admin=True),
    _stream_target("rpc_admin_upload", "AdminUpload", _admin_upload_seeds, admin=True),
]
_T = {t.name: t for t in TARGETS}


@given(inputs(_T["rpc_register"]))
def test_rpc_register(data: bytes) -> None:
    _T["rpc_register"].check(data)


@given(inputs(_T["rpc_heartbeat"]))
def test_rpc_heartbeat(data: bytes) -> None:
    _T["rpc_heartbeat"].check(data)


@given(inputs(_T["rpc_fetch_task"]))
def test_rpc_fetch_task(data: bytes) -> None:
    _T["rpc_fetch_task"].check(data)


@given(inputs(_T["rpc_fetch_job"]))
def test_rpc_fetch_job(data: bytes) -> None:
    _T["rpc_fetch_job"].check(data)


@given(inputs(_T["rpc_upload"]))
def test_rpc_upload(data: bytes) -> None:
    _T["rpc_upload"].check(data)


@given(inputs(_T["rpc_post"]))
def test_rpc_post(data: bytes) -> None:
    _T["rpc_post"].check(data)


@given(inputs(_T["rpc_collect"]))
def test_rpc_collect(data: bytes) -> None:
    _T["rpc_collect"].check(data)


def _shares_post(payload: bytes) -> bytes:
    return bytes(
        pb.Message(topic=Topic.MASK_SHARES, job_id=_JOB, round=1, payload=payload).SerializeToString()
    )


@given(inputs(_T["rpc_post_mask_keys"]))
def test_rpc_post_mask_keys(data: bytes) -> None:
    _T["rpc_post_mask_keys"].check(data)


@given(inputs(_T["rpc_post_mask_shares"]))
@example(_shares_post(b'["site-1"]'))  # found: shares that are no JSON object ended in ``internal``
@example(_shares_post(b'{"site-1": 5}'))
def test_rpc_post_mask_shares(data: bytes) -> None:
    _T["rpc_post_mask_shares"].check(data)


@given(inputs(_T["rpc_collect_mask"]))
def test_rpc_collect_mask(data: bytes) -> None:
    _T["rpc_collect_mask"].check(data)


@given(inputs(_T["rpc_attest"]))
def test_rpc_attest(data: bytes) -> None:
    _T["rpc_attest"].check(data)


@given(inputs(_T["rpc_fetch_sealed"]))
def test_rpc_fetch_sealed(data: bytes) -> None:
    _T["rpc_fetch_sealed"].check(data)


def _logs(payload: bytes) -> bytes:
    return bytes(pb.AdminRequest(command="logs", job_id=_JOB, payload=payload).SerializeToString())


@given(inputs(_T["rpc_admin"]))
@example(_logs(b'{"follow": {"a": 1}}'))  # found: a follow that is no number ended in ``internal``
@example(_logs(b"[" * 100_000))  # and so did a payload nested past the stack
def test_rpc_admin(data: bytes) -> None:
    _T["rpc_admin"].check(data)


@given(inputs(_T["rpc_admin_upload"]))
def test_rpc_admin_upload(data: bytes) -> None:
    _T["rpc_admin_upload"].check(data)


def test_valid_seeds_are_answered_not_refused() -> None:
    """The seeds reach the handlers' success paths (so mutations start from there), on one world."""
    _T["rpc_register"].call(_T["rpc_register"].seeds()[0])
    _T["rpc_heartbeat"].call(_T["rpc_heartbeat"].seeds()[0])
    _T["rpc_fetch_task"].call(_T["rpc_fetch_task"].seeds()[0])
    _T["rpc_fetch_job"].call(_T["rpc_fetch_job"].seeds()[0])
    for seed in _admin_seeds()[:3]:
        _T["rpc_admin"].call(seed)
    before = world()
    _T["rpc_upload"].call(_upload_seeds()[0])  # accepted: the next input gets a fresh round
    assert world() is not before
    _T["rpc_upload"].call(_upload_seeds()[0])


def test_an_abort_passes_only_with_a_registered_code_and_a_specific_status() -> None:
    with pytest.raises(Refused):
        _judge(Aborted(grpc.StatusCode.INVALID_ARGUMENT, "malformed: x", "malformed"))
    with pytest.raises(AssertionError, match="INTERNAL"):
        _judge(Aborted(grpc.StatusCode.INTERNAL, "internal: x", "internal"))
    with pytest.raises(AssertionError, match="registered"):
        _judge(Aborted(grpc.StatusCode.INVALID_ARGUMENT, "x", None))
    with pytest.raises(AssertionError, match="registered"):
        _judge(Aborted(grpc.StatusCode.INVALID_ARGUMENT, "x", "no-such-code"))


@pytest.mark.parametrize("payload", [b'{"follow": {"a": 1}}', b'{"follow": [1]}', b"[" * 100_000, b"[]"])
def test_a_logs_follow_that_is_no_number_is_a_usage_error(payload: bytes) -> None:
    with pytest.raises(Refused, match=r"INVALID_ARGUMENT \[usage\]"):
        _T["rpc_admin"].call(_logs(payload))
    last = json.loads(world().hub.audit.path.read_text().splitlines()[-1])
    assert last["event"] == "admin_failed" and last["code"] == "usage"


@pytest.mark.parametrize("payload", [b'["site-1"]', b"7", b'{"site-1": 5}', b'{"site-1": "not base64!"}'])
def test_mask_shares_that_are_no_object_of_base64_are_malformed(payload: bytes) -> None:
    with pytest.raises(Refused, match=r"INVALID_ARGUMENT \[malformed\]"):
        _T["rpc_post_mask_shares"].call(_shares_post(payload))
    last = json.loads(world("mask-shares").hub.audit.path.read_text().splitlines()[-1])
    assert last["event"] == "refused" and last["code"] == "malformed" and last["site"] == "site-2"
