"""Every YAML the project reads goes through :mod:`secagg.safeyaml` (#18: alias bombs).

One alias bomb per entry point that a user or a peer can feed: a job.yaml submitted to the aggregator,
a startup kit's kit.yaml (made by the project's provisioner, not by this machine), the project file,
and the ``--policy`` of ``secagg attest verify`` (read for the ``attestation`` package, which reads no
YAML itself). Site policies and a site's job.yaml are covered in tests/test_safeyaml.py. The bomb here
is small (9^4 leaves) so that a regression fails on the reason code, not on the machine's memory.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from secagg import safeyaml
from secagg.aggregator.federation import Federation
from secagg.cli import main
from secagg.provision.kit import load_kit
from secagg.provision.project import load_project
from secagg.reasons import Reason
from tests.aggregator.conftest import write_job

ROOT = Path(__file__).resolve().parents[1]
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abc", "bcd", strict=True)
)


def _alias_refused(call, *args) -> str:
    with pytest.raises(safeyaml.SafeYamlError) as info:
        call(*args)
    assert info.value.code == Reason.YAML_ALIAS
    assert "YAML anchors (&name) are not allowed" in str(info.value)
    return str(info.value)


def test_job_yaml_submitted_to_the_aggregator(tmp_path: Path, workspace: Path) -> None:
    fed = Federation(load_kit(workspace / "aggregator"), tmp_path / "state")
    try:
        job = write_job(tmp_path / "job")
        (job / "job.yaml").write_text("name: unit\nrounds: 2\nparams:\n  " + BOMB.replace("\n", "\n  "))
        message = _alias_refused(fed.submit, job, "tester")
        assert message.startswith("job.yaml:")
        assert fed.store.jobs() == [] and fed.job is None
        assert not (fed.state_dir / "jobs").exists() or not any((fed.state_dir / "jobs").iterdir())
    finally:
        fed.store.close()


def test_kit_yaml(tmp_path: Path, workspace: Path) -> None:
    kit = tmp_path / "kit"
    shutil.copytree(workspace / "site-1", kit)
    (kit / "kit.yaml").write_text(BOMB)
    message = _alias_refused(load_kit, kit)
    assert message.startswith(f"{kit / 'kit.yaml'}:1:")


def test_project_file(tmp_path: Path) -> None:
    project = tmp_path / "project.yaml"
    project.write_text("name: p\n" + BOMB)
    _alias_refused(load_project, project)


def test_attest_verify_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(BOMB)
    evidence = ROOT / "tests" / "vectors" / "sev-snp" / "go-sev-guest" / "attestation.bin"
    assert evidence.is_file()
    assert main(["attest", "verify", str(evidence), "--policy", str(policy)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"secagg: {Reason.YAML_ALIAS}: {policy}:1: YAML anchors") and err.count("\n") == 1


_YAML_CALL = re.compile(r"\byaml\.(safe_load|load|full_load|unsafe_load|load_all|safe_load_all|compose\w*)\(")


def test_no_other_yaml_loader() -> None:
    """No ``yaml.safe_load`` and the like outside secagg/safeyaml.py; ``attestation`` imports no YAML."""
    found = [
        f"{p.relative_to(ROOT)}:{n}"
        for top in ("secagg", "attestation")
        for p in sorted((ROOT / top).rglob("*.py"))
        if p != ROOT / "secagg" / "safeyaml.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if _YAML_CALL.search(line)
    ]
    assert found == []
    imports_yaml = re.compile(r"^\s*(import|from) yaml\b", re.M)
    assert not [p for p in (ROOT / "attestation").rglob("*.py") if imports_yaml.search(p.read_text())]
