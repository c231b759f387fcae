"""Shared fixtures: a provisioned project workspace made fresh for a test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from secagg.provision.project import AdminSpec, AggregatorSpec, Project, SiteSpec
from secagg.provision.writer import provision


def make_project(n_sites: int = 3, port: int = 18443, name: str = "test-project") -> Project:
    return Project(
        name=name,
        aggregator=AggregatorSpec(host="127.0.0.1", port=port),
        sites=[SiteSpec(name=f"site-{i}", org=f"org-{i}") for i in range(1, n_sites + 1)],
        admins=[
            AdminSpec(name="admin@lead", org="lead", role="project_admin"),
            AdminSpec(name="submitter@org-1", org="org-1", role="lead"),
            AdminSpec(name="member@org-2", org="org-2", role="member"),
        ],
        key_holder="site-1",
    )


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only-by-convention workspace of kits; tests that mutate must copy it."""
    ws = tmp_path_factory.mktemp("ws") / "project"
    provision(make_project(), ws)
    return ws
