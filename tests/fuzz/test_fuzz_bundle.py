"""Fuzz: safetensors bundles (secagg/bundle.py) and the bundle spec JSON that travels with a job.

Seeds: bundles the code itself writes (:func:`to_safetensors`), with and without order metadata.
"""

from __future__ import annotations

import json
import random
import struct
from collections import OrderedDict

import numpy as np
from hypothesis import example, given
from safetensors.numpy import save as st_save

from secagg.bundle import BundleSpec, from_safetensors, to_safetensors
from secagg.errors import SecaggError
from tests.fuzz._harness import Target, inputs


def _seeds() -> list[bytes]:
    b = OrderedDict(w=np.arange(12, dtype=np.float32).reshape(3, 4), b=np.zeros(3, np.float32))
    return [
        to_safetensors(b),
        to_safetensors(b, order=["b", "w"]),
        st_save({"x": np.ones(2, np.float32)}),
        st_save({"x": np.ones(2, np.float64)}, metadata={"order": '["x"]'}),
    ]


def _header_swap(rng: random.Random) -> bytes:
    """A well-formed container whose JSON header says something odd (types, offsets, metadata)."""
    data = rng.choice(_seeds())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    choice = rng.randrange(5)
    if choice == 0:
        header["__metadata__"] = {
            "order": rng.choice(('"w"', "[1,2]", "{}", "[[]]", "null", "[", '["w","w"]'))
        }
    elif choice == 1:
        header["__metadata__"] = rng.choice((None, [], "x", {"order": 1}))
    elif choice == 2:
        k = next(k for k in header if k != "__metadata__")
        header[k]["data_offsets"] = [0, rng.choice((0, 2**40, 2**64 - 1, -1))]
    elif choice == 3:
        k = next(k for k in header if k != "__metadata__")
        header[k]["shape"] = rng.choice(([2**32, 2**32], [-1], [0], ["a"], [1] * 100))
    else:
        header = rng.choice(([], "x", 1, None))
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def _with_metadata(meta: object) -> bytes:
    data = _seeds()[0]
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"] = meta
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def _spec(data: bytes) -> None:
    BundleSpec.from_json(data.decode("utf-8", "replace"))


TARGETS = [
    Target("bundle_safetensors", from_safetensors, _seeds, (SecaggError,), extra=(_header_swap,) * 3),
    Target("bundle_spec_json", _spec, lambda: [b'[["w",[3,4]],["b",[3]]]', b"[]"], (SecaggError,)),
]
_T = {t.name: t for t in TARGETS}


@given(inputs(_T["bundle_safetensors"]))
@example(_with_metadata({"order": "null"}))  # found: TypeError (sorted(None))
@example(_with_metadata({"order": "[1,2]"}))
@example(_with_metadata([]))
def test_bundle_safetensors(data: bytes) -> None:
    _T["bundle_safetensors"].check(data)


@given(inputs(_T["bundle_spec_json"]))
@example(b'["",[]]')  # found: ValueError from unpacking
@example(b"")  # found: JSONDecodeError
def test_bundle_spec_json(data: bytes) -> None:
    _T["bundle_spec_json"].check(data)


def test_seeds_parse() -> None:
    assert list(from_safetensors(_seeds()[1])) == ["b", "w"]
    assert BundleSpec.from_json('[["w",[3,4]]]').size == 12
