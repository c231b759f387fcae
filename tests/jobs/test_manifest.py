"""``manifest.json`` refusals name the field (#18, weak messages; fuzzing found ints past 2^53)."""

from __future__ import annotations

import json

import pytest

from secagg.jobs.manifest import ManifestInvalid, parse_manifest
from secagg.reasons import Reason

SHA = "ab" * 32


def refused(data: bytes) -> list[str]:
    with pytest.raises(ManifestInvalid) as info:
        parse_manifest(data)
    assert info.value.code == Reason.MANIFEST_INVALID
    return info.value.failures


def doc(**entry: object) -> bytes:
    return json.dumps({"files": {"lib/a.py": {"sha256": SHA, "size": 3, **entry}}, "version": 1}).encode()


@pytest.mark.parametrize(
    ("data", "failure"),
    [
        (
            doc(size=2**53 + 1),  # rfc8785 raised IntegerDomainError (a crash, found by fuzzing)
            'manifest.json: files["lib/a.py"].size: over 2^53 - 1 (9007199254740991), '
            "the largest integer JSON keeps exact",
        ),
        (
            doc(sha256="xyz"),
            'manifest.json: files["lib/a.py"].sha256: not 64 lowercase hex digits (a SHA-256)',
        ),
        (doc(size=-1), 'manifest.json: files["lib/a.py"].size: Input should be greater than or equal to 0'),
        (doc(size=1.5), 'manifest.json: files["lib/a.py"].size: expected a whole number'),
        (doc(size="3"), 'manifest.json: files["lib/a.py"].size: expected a whole number'),
        (doc(mode=420), 'manifest.json: files["lib/a.py"].mode: unknown field'),
        (b'{"files": {}, "version": 2}', "manifest.json: version: Input should be 1"),
        (b'{"version": 1}', "manifest.json: files: Field required"),
        (b"[1]", "manifest.json: (top level): expected an object with version and files"),
        (b"[" * 100_000, "manifest.json: nested too deep"),
        (b"{", "manifest.json: not valid JSON (Expecting property name enclosed in double quotes: "),
    ],
)
def test_refusal_names_the_field(data: bytes, failure: str) -> None:
    assert any(f.startswith(failure) for f in refused(data)), refused(data)


def test_every_bad_field_is_named_and_bounded() -> None:
    files = {f"f{i}": {"sha256": "no", "size": 1} for i in range(9)}
    failures = refused(json.dumps({"files": files, "version": 1}).encode())
    assert failures[:5] == [
        f'manifest.json: files["f{i}"].sha256: not 64 lowercase hex digits (a SHA-256)' for i in range(5)
    ]
    assert failures[5] == "manifest.json: and 4 more problems"


def test_a_hostile_file_name_is_cut() -> None:
    name = "n" * 5000
    failures = refused(json.dumps({"files": {name: {"sha256": "no", "size": 1}}, "version": 1}).encode())
    assert len(failures[0]) < 200
