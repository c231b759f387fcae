"""secagg.validation: a file's data becomes a model, or bounded printable lines naming each field (#18).

Before it, ``rounds: "3"`` and ``rounds: true`` were read as 3 and 1, a key of control characters reached
the terminal raw, and the project file reported only its first problem.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from secagg import validation
from secagg.errors import ConfigError, SecaggError
from secagg.jobs.job import parse_spec
from secagg.jobs.manifest import ManifestInvalid, parse_manifest
from secagg.provision.kit import load_kit
from secagg.provision.project import load_project
from secagg.reasons import Reason
from secagg.strategy.spec import parse_spec as parse_strategy
from tests.jobs.conftest import JOB_YAML


def _job_error(text: str) -> str:
    with pytest.raises(SecaggError) as info:
        parse_spec(text.encode())
    assert info.value.code == Reason.JOB_SPEC_INVALID
    message = str(info.value)
    assert "\n" not in message and message.isprintable()
    return message


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ("rounds: 3", 'rounds: "3"', "rounds: expected a number, not the text '3' (remove the quotes)"),
        ("rounds: 3", "rounds: true", "rounds: expected a number, not true"),
        ("round_timeout: 60", "round_timeout: '60'", "round_timeout: expected a number, not the text '60'"),
        ("percentile: 20", 'percentile: "20"', "privacy[0].percentile: expected a number, not the text"),
        (
            "{name: fedavg}",
            '{name: fedprox, mu: "0.1"}',
            "strategy.mu: expected a number, not the text '0.1'",
        ),
    ],
)
def test_job_yaml_text_or_boolean_for_a_number_is_refused(old: str, new: str, words: str) -> None:
    assert old in JOB_YAML
    assert words in _job_error(JOB_YAML.replace(old, new))


def test_job_yaml_numbers_both_readers_agree_on_are_read() -> None:
    spec = parse_spec(
        JOB_YAML.replace("rounds: 3", "rounds: 1e3").replace("min_sites: 2", "min_sites: 0o2").encode()
    )
    assert (spec.rounds, spec.min_sites) == (1000, 2)
    assert isinstance(spec.rounds, int)


def test_a_key_of_control_characters_is_escaped_and_bounded() -> None:
    message = _job_error(JOB_YAML + '"\\e[31m' + "k" * 500 + '": 1\n')
    assert "\x1b" not in message and "\\x1b[31m" in message
    assert len(message) < 400


def test_at_most_five_problems_then_a_count() -> None:
    extra = "".join(f"unknown_{i}: 1\n" for i in range(9))
    message = _job_error(JOB_YAML + extra)
    assert message.count("Extra inputs are not permitted") == 5
    assert message.endswith("(and 4 more)")


def test_strategy_given_alone_is_checked_the_same_way() -> None:
    with pytest.raises(ConfigError, match=r"strategy spec: mu: expected a number, not the text '0\.1'"):
        parse_strategy({"name": "fedprox", "mu": "0.1"})
    assert parse_strategy({"name": "fedprox", "mu": None}).mu is not None  # null: the default


def test_project_file_lists_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\nsites: [{name: a, colour: red}, {name: b, shade: blue}]\n")
    with pytest.raises(ConfigError) as info:
        load_project(bad)
    assert "sites[0].colour" in str(info.value) and "sites[1].shade" in str(info.value)


def test_kit_yaml_quoted_number_is_refused(tmp_path: Path, workspace: Path) -> None:
    kit = tmp_path / "kit"
    shutil.copytree(workspace / "site-1", kit)
    text = (kit / "kit.yaml").read_text()
    port_line = next(line for line in text.splitlines() if line.split(":")[0].strip() == "aggregator_port")
    key, value = port_line.split(":", 1)
    (kit / "kit.yaml").write_text(text.replace(port_line, f'{key}: "{value.strip()}"'))
    with pytest.raises(ConfigError, match=r"aggregator_port: expected a number, not the text"):
        load_kit(kit)


def test_manifest_key_of_control_characters_is_escaped() -> None:
    raw = {"files": {}, "version": 1, "\u001b[2J": 1}
    with pytest.raises(ManifestInvalid) as info:
        parse_manifest(json.dumps(raw, separators=(",", ":")).encode())
    assert info.value.failures == ["manifest.json: \\x1b[2J: unknown field"]


def test_printable_escapes_and_cuts() -> None:
    assert validation.printable("a\x1bb\nc") == "a\\x1bb\\nc"
    assert len(validation.printable("x" * 1000)) == 60
