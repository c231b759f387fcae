"""The site agent's systemd unit: rated 2.0 or better by systemd-analyze, and accepted by verify."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from secagg.provision.deploy.layout import HOST_BIN
from secagg.provision.deploy.systemd import agent_unit
from tests.conftest import make_project
from tests.deploy.conftest import with_aggregator

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed on this machine")
UNIT = "secagg-agent.service"
SITES = ["site-1", "site-2", "site-3"]


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def _exposure(unit: Path) -> float:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@needs_analyze
@pytest.mark.parametrize("fixture", ["deployed", "deployed_named"])
def test_security_exposure_is_at_most_2(fixture: str, request: pytest.FixtureRequest) -> None:
    ws = request.getfixturevalue(fixture)
    for site in SITES:
        assert _exposure(ws / "deploy" / "systemd" / site / UNIT) <= 2.0


@needs_analyze
def test_exposure_check_would_catch_a_weakened_unit(tmp_path: Path) -> None:
    weak = "\n".join(
        line
        for line in agent_unit(make_project(), "site-1").splitlines()
        if not line.startswith(
            ("DynamicUser", "CapabilityBoundingSet", "SystemCallFilter", "Protect", "Private")
        )
    )
    (tmp_path / UNIT).write_text(weak + "\n")
    assert _exposure(tmp_path / UNIT) > 2.0


@needs_analyze
def test_verify_accepts_the_unit(deployed: Path, tmp_path: Path) -> None:
    """ExecStart names /opt/secagg/bin/secagg, absent here: a drop-in points it at a stub for verify."""
    assert ANALYZE is not None
    unit = tmp_path / UNIT
    shutil.copy(deployed / "deploy" / "systemd" / "site-1" / UNIT, unit)
    bare = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, check=False)
    complaints = [line for line in bare.stderr.splitlines() if line.strip()]
    # without the binary the only complaint is the missing binary
    assert all(f"{HOST_BIN} is not executable" in line for line in complaints), complaints

    stub = tmp_path / "bin" / "secagg"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    dropin = tmp_path / f"{UNIT}.d"
    dropin.mkdir()
    exec_start = _directives(unit.read_text())["ExecStart"][0]
    (dropin / "stub.conf").write_text(
        f"[Service]\nExecStart=\nExecStart={exec_start.replace(HOST_BIN, str(stub))}\n"
    )
    result = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_unit_confines_the_agent() -> None:
    d = _directives(agent_unit(make_project(), "site-2"))
    expected = {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
        "StateDirectory": "secagg-agent",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "IPAddressDeny": "any",
        "IPAddressAllow": "127.0.0.1",
    }
    for key, value in expected.items():
        assert d[key] == [value], key
    assert "@system-service" in d["SystemCallFilter"]
    # the kit reaches the service only as credentials; the agent reads it from %d
    assert sorted(v.split(":")[0] for v in d["LoadCredential"]) == [
        "ca.pem",
        "cert.pem",
        "key.pem",
        "kit.yaml",
    ]
    argv = d["ExecStart"][0].split()
    assert argv[0] == HOST_BIN and argv[1:3] == ["agent", "run"]
    assert argv[argv.index("--kit") + 1] == "%d"
    assert argv[argv.index("--state") + 1] == "%S/secagg-agent"
    assert "ReadWritePaths" not in d


def test_named_aggregator_leaves_the_allow_list_to_a_drop_in() -> None:
    text = agent_unit(with_aggregator(make_project(), "aggregator.example.org"), "site-1")
    d = _directives(text)
    assert "IPAddressDeny" not in d and "IPAddressAllow" not in d
    assert "aggregator.example.org" in text


def test_ipv6_aggregator_is_allowed_by_address() -> None:
    d = _directives(agent_unit(with_aggregator(make_project(), "2001:db8::7"), "site-1"))
    assert d["IPAddressAllow"] == ["2001:db8::7"]
