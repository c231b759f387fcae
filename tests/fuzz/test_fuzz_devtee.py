"""Fuzz: dev-TEE evidence (canonical JSON signed by a local key), parsed and through the front door.

Seeds: evidence the code itself makes (:func:`make_dev_evidence`, ECDSA P-384 and Ed25519), and
format-aware inputs: JSON nested past the recursion limit, fields swapped for values of other types,
numbers past what RFC 8785 canonicalises.
"""

from __future__ import annotations

import functools
import json
import random

import rfc8785
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import example, given

from attestation import devtee
from attestation.errors import ParseError
from attestation.evidence import verify_and_validate
from attestation.options import ValidationOptions, VerifyOptions
from tests.fuzz._harness import Target, deep_json, inputs, nested

_EC = ec.generate_private_key(ec.SECP384R1())
_ED = ed25519.Ed25519PrivateKey.generate()


@functools.cache
def _seeds() -> list[bytes]:
    return [
        devtee.make_dev_evidence(_EC, b"\x11" * 32, b"nonce", timestamp=1_750_000_000),
        devtee.make_dev_evidence(_ED, b"\x22" * 48, b"\x01" * 64, debug=True, tcb={"snp": 8}),
    ]


_ODD_VALUES = (None, True, 1, -1, 2**53 - 1, 1.5, "", "zz", "00" * 64, [], {}, [1, [2]], {"a": {"b": 1}},
               "A" * 100, "AAAA", 255, 256)  # fmt: skip


def _field_swap(rng: random.Random) -> bytes:
    """Valid, canonical evidence with one field replaced: reaches the field checks, not just JSON's."""
    obj = json.loads(rng.choice(_seeds()))
    where = obj["evidence"] if rng.random() < 0.8 else obj
    key = rng.choice(sorted(where))
    where[key] = rng.choice(_ODD_VALUES)
    if rng.random() < 0.2 and isinstance(obj["evidence"], dict):
        obj["evidence"]["tcb"] = {"snp": rng.choice((-1, 0, 255, 256, 2**53 - 1, 1.5, "8"))}
    return bytes(rfc8785.dumps(obj))


def _deep_evidence(rng: random.Random) -> bytes:
    """Nested inside an otherwise well-formed envelope, so detection still says dev-tee."""
    depth = rng.choice((500, 1000, 3000, 5000))
    inner = nested(b"[", b"]", depth) if rng.random() < 0.5 else nested(b'{"a":', b"}", depth)
    return b'{"evidence":' + inner + b',"format":"secagg-dev-tee/1","signature":""}'


def _front_door(data: bytes) -> None:
    opts = ValidationOptions(types=["dev-tee"], max_age_s=300)
    verify_and_validate(data, VerifyOptions(allow_insecure_dev_tee=True), opts, expected_report_data=b"n")


def _with_certs(data: bytes) -> None:
    """Random bytes as the pinned-key file (``--certs``) beside genuine evidence."""
    res = verify_and_validate(_seeds()[0], VerifyOptions(certs=[data], allow_insecure_dev_tee=True))
    for e in res.errors:
        assert not e.startswith("parse:"), e


_EXTRA = (deep_json, _field_swap, _field_swap, _deep_evidence)
TARGETS = [
    Target("devtee_parse", devtee.parse_dev_evidence, _seeds, (ParseError,), extra=_EXTRA),
    Target("devtee_verify", _front_door, _seeds, (), extra=_EXTRA),
    Target("devtee_certs_option", _with_certs, lambda: [*_seeds(), b"-----BEGIN PUBLIC KEY-----\n"], ()),
]
_T = {t.name: t for t in TARGETS}


@given(inputs(_T["devtee_parse"]))
@example(b'{"evidence":' + b"[" * 5000 + b"]" * 5000 + b',"format":"secagg-dev-tee/1","signature":""}')
@example(b'{"a":NaN}')
@example(b"1" * 5000)
def test_devtee_parse(data: bytes) -> None:
    _T["devtee_parse"].check(data)


@given(inputs(_T["devtee_verify"]))
def test_devtee_verify(data: bytes) -> None:
    _T["devtee_verify"].check(data)


@given(inputs(_T["devtee_certs_option"]))
def test_devtee_certs_option(data: bytes) -> None:
    _T["devtee_certs_option"].check(data)


def test_deep_nesting_is_a_parse_error_not_recursion() -> None:
    """Found: evidence nested ~5000 deep ended in RecursionError (issue #18)."""
    deep = b'{"evidence":' + b"[" * 5000 + b"]" * 5000 + b',"format":"secagg-dev-tee/1","signature":""}'
    res = verify_and_validate(deep, VerifyOptions(allow_insecure_dev_tee=True))
    assert res.type == "dev-tee" and res.decision == "refuse"
    assert res.errors == ["parse: dev-TEE evidence is nested too deeply to be evidence"]


def test_number_past_canonical_range_is_a_parse_error() -> None:
    obj = json.loads(_seeds()[0])
    raw = json.dumps(obj, separators=(",", ":"), sort_keys=True)
    raw = raw.replace('"debug":false', '"debug":' + "9" * 20)
    try:
        devtee.parse_dev_evidence(raw.encode())
    except ParseError as exc:
        assert "canonical" in str(exc)
    else:
        raise AssertionError("accepted")


def test_seeds_verify() -> None:
    for s in _seeds():
        res = verify_and_validate(s, VerifyOptions(allow_insecure_dev_tee=True))
        assert res.verified and not res.errors, res.errors
