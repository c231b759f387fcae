"""Shared fuzzing machinery: byte mutations, the hypothesis strategy built on them, and the property.

The property every target checks: an input ends in success or in one of the target's *allowed*
exceptions (a :class:`~secagg.errors.SecaggError`, or the documented error type of a standalone module
that its caller maps to a reason code), within a time bound; never another exception, a hang or
unbounded memory. Every target is a plain ``Target`` so that two drivers run the same code: the
hypothesis tests in this folder (a smoke run in ``make test``) and :mod:`tests.fuzz.run`, a fast
mutation loop for the long ``make fuzz`` campaign.
"""

from __future__ import annotations

import contextlib
import os
import random
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st

VECTORS = Path(__file__).resolve().parent.parent / "vectors"

#: the per-input time bound (seconds): far above any parser's real cost, far below a hang
TIME_BOUND = float(os.environ.get("SECAGG_FUZZ_TIME_BOUND", "5"))

_INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                2**63 - 1, 2**63, 2**64 - 1)  # fmt: skip


def _flip(data: bytes, other: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(b) * 8)
        b[i // 8] ^= 1 << (i % 8)
    return bytes(b)


def _byte(data: bytes, other: bytes, rng: random.Random) -> bytes:
    if not data:
        return bytes([rng.randrange(256)])
    b = bytearray(data)
    b[rng.randrange(len(b))] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
    return bytes(b)


def _truncate(data: bytes, other: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def _chop_front(data: bytes, other: bytes, rng: random.Random) -> bytes:
    return data[rng.randrange(len(data) + 1) :]


def _extend(data: bytes, other: bytes, rng: random.Random) -> bytes:
    n = rng.choice((1, 4, 16, 64, 1024, rng.randrange(1, 8192)))
    tail = b"\0" * n if rng.random() < 0.5 else rng.randbytes(n)
    return data + tail


def _insert(data: bytes, other: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + rng.randbytes(rng.randint(1, 32)) + data[i:]


def _delete(data: bytes, other: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randint(1, 64) :]


def _duplicate(data: bytes, other: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    j = min(len(data), i + rng.randint(1, 256))
    return data[:j] + data[i:j] * rng.randint(1, 4) + data[j:]


def _splice(data: bytes, other: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]


def _length_blowup(data: bytes, other: bytes, rng: random.Random) -> bytes:
    """Overwrite a 1/2/4/8-byte field with an interesting value (a length or count field blown up)."""
    width = rng.choice((1, 2, 4, 8))
    if len(data) < width:
        return data
    i = rng.randrange(len(data) - width + 1)
    value = rng.choice((*_INTERESTING, len(data), len(data) + 1, len(data) - i, rng.getrandbits(64)))
    value &= (1 << (8 * width)) - 1
    fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[width]
    packed = struct.pack(rng.choice(("<", ">")) + fmt, value)
    return data[:i] + packed + data[i + width :]


def _ascii(data: bytes, other: bytes, rng: random.Random) -> bytes:
    """Text-format mutations: swap a byte for a JSON/hex-significant one."""
    if not data:
        return data
    i = rng.randrange(len(data))
    tok = rng.choice((b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\", b"0", b"-", b"1e999", b"NaN",
                      b"null", b"9" * 40, b"\xff", b" "))  # fmt: skip
    return data[:i] + tok + data[i + rng.randint(0, 2) :]


MUTATIONS: tuple[Callable[[bytes, bytes, random.Random], bytes], ...] = (
    _flip, _byte, _truncate, _chop_front, _extend, _insert, _delete, _duplicate, _splice,
    _length_blowup, _length_blowup, _ascii,
)  # fmt: skip


def mutate(seeds: Sequence[bytes], rng: random.Random, max_size: int = 1 << 20) -> bytes:
    """A seed with 1..4 stacked mutations (or, 1 in 16, random bytes)."""
    if rng.random() < 1 / 16:
        return rng.randbytes(rng.choice((0, 1, 8, 64, 512, rng.randrange(4096))))
    data = rng.choice(seeds)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        data = rng.choice(MUTATIONS)(data, rng.choice(seeds), rng)
    return data[:max_size]


@dataclass(frozen=True)
class Target:
    """One parser under fuzz: ``call`` takes the bytes, ``allowed`` are its documented refusals."""

    name: str
    call: Callable[[bytes], object]
    seeds: Callable[[], list[bytes]]
    allowed: tuple[type[BaseException], ...]
    #: extra generators of whole inputs (format-aware: deep nesting, huge counts), used 1 in 8
    extra: tuple[Callable[[random.Random], bytes], ...] = field(default=())
    #: the share of inputs ``extra`` makes (structure-aware generators of a format that byte mutations
    #: mostly break, e.g. protobuf requests, can take more)
    extra_share: float = 1 / 8
    time_bound: float = TIME_BOUND
    #: run once before the first input, outside the time bound: a one-time cost of the process (an
    #: import the parser makes lazily, e.g. opacus and torch for RDP accounting) is not the parser's
    warm: Callable[[], object] | None = None

    def generate(self, seeds: Sequence[bytes], rng: random.Random) -> bytes:
        if self.extra and rng.random() < self.extra_share:
            return rng.choice(self.extra)(rng)
        return mutate(seeds, rng)

    def warm_up(self) -> None:
        """Run ``warm`` once per process (before any timer: see :mod:`tests.fuzz.run`)."""
        if self.warm is not None and self.name not in _WARMED:
            self.warm()
            _WARMED.add(self.name)

    def check(self, data: bytes) -> None:
        """The property. An exception outside ``allowed`` (or a too-slow input) propagates."""
        self.warm_up()
        t0 = time.perf_counter()
        with contextlib.suppress(*self.allowed):
            self.call(data)
        elapsed = time.perf_counter() - t0
        if elapsed > self.time_bound:
            raise AssertionError(f"{self.name}: {len(data)}-byte input took {elapsed:.2f} s")


def inputs(target: Target) -> st.SearchStrategy[bytes]:
    """Hypothesis strategy: seeds, mutated seeds (hypothesis drives the mutation rng), raw bytes."""
    seeds = _cached_seeds(target)
    mutated = st.randoms(use_true_random=False).map(lambda rng: target.generate(seeds, rng))
    return st.one_of(st.sampled_from(seeds), mutated, mutated, mutated, st.binary(max_size=4096))


_SEED_CACHE: dict[str, list[bytes]] = {}
_WARMED: set[str] = set()


def _cached_seeds(target: Target) -> list[bytes]:
    if target.name not in _SEED_CACHE:
        _SEED_CACHE[target.name] = [bytes(s) for s in target.seeds()]
        assert _SEED_CACHE[target.name], f"{target.name} has no seeds"
    return _SEED_CACHE[target.name]


def nested(open_: bytes, close: bytes, depth: int, inner: bytes = b"0") -> bytes:
    return open_ * depth + inner + close * depth


def deep_json(rng: random.Random) -> bytes:
    """JSON nested far past the interpreter's recursion limit (arrays or objects)."""
    depth = rng.choice((1000, 5000, 100_000))
    if rng.random() < 0.5:
        return nested(b"[", b"]", depth)
    return nested(b'{"a":', b"}", depth)
