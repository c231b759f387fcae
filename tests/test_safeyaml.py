"""secagg.safeyaml: every refusal is one bounded line with its own reason code (#18, bad input found)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from secagg import safeyaml
from secagg.jobs.job import parse_spec
from secagg.policy.check import check_policy_text, load_policy
from secagg.reasons import Reason

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


def code_of(text: str | bytes) -> tuple[str, str]:
    with pytest.raises(safeyaml.SafeYamlError) as info:
        safeyaml.load(text, "x.yaml")
    return info.value.code, str(info.value)


@pytest.mark.parametrize(
    ("text", "code", "words"),
    [
        (BOMB, Reason.YAML_ALIAS, "x.yaml:1: YAML anchors (&name) are not allowed"),
        ("a: 1\na: 2\n", Reason.YAML_DUPLICATE_KEY, "x.yaml:2: key 'a' appears twice"),
        ("[" * 200 + "]" * 200, Reason.YAML_TOO_DEEP, "nested deeper than 64 levels"),
        ("a: !!binary aGk=\n", Reason.YAML_TYPE, "tag 'tag:yaml.org,2002:binary' is not allowed"),
        ("1: a\n", Reason.YAML_TYPE, "key '1' is not a string"),
        ("<<: {a: 1}\n", Reason.YAML_ALIAS, "merge keys"),
        ("a: 1:30\n", Reason.YAML_NUMBER, "base-60"),
        ("a: 017\n", Reason.YAML_NUMBER, "octal"),
        # YAML 1.1 reads these as numbers, YAML 1.2 as text (or 017 as 17): refused, not guessed
        ("a: 0b101\n", Reason.YAML_NUMBER, "'0b101' is binary in YAML 1.1"),
        ("a: 1_000\n", Reason.YAML_NUMBER, "digit separators (_) are YAML 1.1 only"),
        ("a: 1_000.5\n", Reason.YAML_NUMBER, "digit separators"),
        ("a: -0x1F\n", Reason.YAML_NUMBER, "signed hex or octal"),
        ("a: [\n", Reason.YAML_INVALID, "not valid YAML"),
        (b"\xff\xfe", Reason.YAML_INVALID, "not UTF-8"),
        # found by fuzzing (#18): PyYAML's reader raised ReaderError, not a SecaggError
        (b"a: 1\nb: x\x01y\n", Reason.YAML_INVALID, "x.yaml:2: character U+0001 (column 5) is not allowed"),
        ("a: \x7f", Reason.YAML_INVALID, "x.yaml:1: character U+007F (column 4) is not allowed"),
        ("a: \ufffe", Reason.YAML_INVALID, "character U+FFFE"),
    ],
)
def test_refusals(text: str, code: str, words: str) -> None:
    got, message = code_of(text)
    assert got == code and words in message
    assert "\n" not in message and len(message) <= 300


def test_bomb_message_never_expands() -> None:
    _, message = code_of(BOMB)
    assert message.count("x") < 5


def test_yaml12_numbers_are_numbers_and_timestamps_text() -> None:
    assert safeyaml.load("a: 1e-5\nb: 1e5\nc: 1.0e5\nd: 2024-01-01\n") == {
        "a": 1e-5,
        "b": 1e5,
        "c": 1e5,
        "d": "2024-01-01",
    }


def test_spellings_both_yaml_versions_read_alike_stay_numbers() -> None:
    """``0o17`` is 15 in YAML 1.2 (text in 1.1, which PyYAML follows); hex and quoted text as written."""
    assert safeyaml.load('a: 0o17\nb: 0x1F\nc: "1_000"\nd: a_b\ne: 0o8\nf: 00\n') == {
        "a": 15,
        "b": 31,
        "c": "1_000",
        "d": "a_b",
        "e": "0o8",
        "f": 0,
    }


def test_size_checked_before_parse() -> None:
    with pytest.raises(safeyaml.SafeYamlError) as info:
        safeyaml.load("a: 1\n" * 10, "x.yaml", max_bytes=20)
    assert info.value.code == Reason.FILE_TOO_LARGE


def test_files_of_the_wrong_kind(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opened without blocking: this returns, it does not hang
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * 100)
    cases = [
        (tmp_path, Reason.NOT_A_FILE, "is a directory"),
        (fifo, Reason.NOT_A_FILE, "is a named pipe (FIFO)"),
        (Path("/dev/null"), Reason.NOT_A_FILE, "is a device"),
        (tmp_path / "none.yaml", Reason.FILE_MISSING, "no such policy file"),
        (big, Reason.FILE_TOO_LARGE, "is 100 bytes, over the limit of 50"),
    ]
    for path, code, words in cases:
        with pytest.raises(safeyaml.SafeYamlError) as info:
            safeyaml.read_file(path, max_bytes=50, what="policy file")
        assert info.value.code == code and words in str(info.value)


POLICY = "version: 1\nsigners: {submitters: [a]}\nmodes: [he]\n"


def test_policy_alias_bomb_refused(tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text(POLICY + "x:\n" + "".join("  " + line + "\n" for line in BOMB.splitlines()))
    with pytest.raises(safeyaml.SafeYamlError) as info:
        load_policy(p)
    assert info.value.code == Reason.YAML_ALIAS and f"{p}:5:" in str(info.value)


def test_policy_infinite_epsilon_refused_like_the_agent() -> None:
    text = POLICY + "privacy:\n  budget: {epsilon: .inf, delta: 1.0e-5}\n"
    policy, issues = check_policy_text(text)
    assert policy is None
    assert [(i.line, i.path) for i in issues] == [(5, "privacy.budget.epsilon")]
    assert "finite" in issues[0].message


def test_policy_yaml12_float_is_a_number() -> None:
    policy, issues = check_policy_text(POLICY + "privacy:\n  budget: {epsilon: 1, delta: 1e-5}\n")
    assert issues == [] and policy is not None and policy.privacy.budget is not None
    assert policy.privacy.budget.delta == 1e-5


JOB = b"name: j\nmin_sites: 2\nmode: he\nmodel: m.safetensors\nentry: t.py\n"


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (b"rounds: 1e30\n", "rounds: 1e+30 is out of range"),
        (b"rounds: 1000000000000000000000000000000\n", "rounds: integer out of range"),
        (b"rounds: .inf\n", "rounds: inf is not a finite number"),
        (b"rounds: .nan\n", "rounds: nan is not a finite number"),
        (b"rounds: 2\nround_timeout: .inf\n", "round_timeout: inf is not a finite number"),
        (b"rounds: 2\nround_timeout: 1e308\n", "round_timeout: 1e+308 is out of range"),
        (b"rounds: 2\nparams: {a: [1, 9007199254740993]}\n", "params.a[1]: integer out of range"),
        (b"rounds: 2\nparams: {a: .nan}\n", "params.a: nan is not a finite number"),
    ],
)
def test_job_yaml_ranges(extra: bytes, words: str) -> None:
    with pytest.raises(Exception) as info:
        parse_spec(JOB + extra)
    assert getattr(info.value, "code", None) == Reason.JOB_SPEC_INVALID
    assert str(info.value) == f"job.yaml: {words}" or str(info.value).startswith(f"job.yaml: {words}")


def test_job_yaml_duplicate_and_alias() -> None:
    with pytest.raises(safeyaml.SafeYamlError) as info:
        parse_spec(JOB + b"rounds: 2\nrounds: 3\n")
    assert info.value.code == Reason.YAML_DUPLICATE_KEY
    with pytest.raises(safeyaml.SafeYamlError) as info:
        parse_spec(
            JOB + b"rounds: 2\nparams:\n" + b"".join(b"  " + x.encode() + b"\n" for x in BOMB.splitlines())
        )
    assert info.value.code == Reason.YAML_ALIAS
