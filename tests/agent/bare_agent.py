"""A real :class:`~secagg.agent.site.SiteAgent` of site-1 over a one-file data folder and the test
policy, for tests that replace its relay (and its clock) with fakes."""

from __future__ import annotations

from pathlib import Path

from secagg.agent.site import SiteAgent
from secagg.provision.kit import load_kit
from tests.integration.harness import TEST_POLICY


def bare_agent(tmp_path: Path, workspace: Path) -> SiteAgent:
    data = tmp_path / "data"
    data.mkdir()
    (data / "n.txt").write_text("10")
    policy = tmp_path / "policy.yaml"
    policy.write_text(TEST_POLICY)
    return SiteAgent(load_kit(workspace / "site-1"), data, tmp_path / "state", policy_path=policy)
