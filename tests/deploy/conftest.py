"""Fixtures: workspaces provisioned with every deployment target, for a loopback and a named aggregator."""

from __future__ import annotations

from pathlib import Path

import pytest

from secagg.provision.deploy import TARGETS, DeployOptions, provision_with_deploy
from secagg.provision.project import AggregatorSpec, Project
from tests.conftest import make_project

IMAGE = "registry.example.org/secagg@sha256:" + "ab" * 32


def with_aggregator(project: Project, host: str, **extra: object) -> Project:
    return project.model_copy(update={"aggregator": AggregatorSpec(host=host, port=18443, **extra)})


@pytest.fixture(scope="session")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conftest project (aggregator on 127.0.0.1) with compose, k8s and systemd files."""
    ws = tmp_path_factory.mktemp("deploy") / "project"
    provision_with_deploy(make_project(), ws, TARGETS, DeployOptions(image=IMAGE))
    return ws


@pytest.fixture(scope="session")
def deployed_named(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same project with the aggregator at a DNS name and a metrics port."""
    ws = tmp_path_factory.mktemp("deploy-named") / "project"
    project = with_aggregator(make_project(), "aggregator.example.org", metrics_port=9100)
    provision_with_deploy(project, ws, TARGETS, DeployOptions(image=IMAGE))
    return ws
