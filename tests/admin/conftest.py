"""An admin-console project: the shared fixture's three admins plus org admins, a second lead and a
second member, so that every scope (any / org / own / none) has an admin on each side of it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from secagg.aggregator.admin_client import AdminClient
from secagg.aggregator.service import AggregatorServer
from secagg.provision.kit import load_kit
from secagg.provision.project import AdminSpec, Project
from secagg.provision.writer import provision
from tests.conftest import make_project
from tests.integration.harness import INIT, make_tiny_job

OWNER = "submitter@org-1"
OWNER_TEXT = "submitter@org-1 (lead of org-1)"
ADMINS = {
    "admin@lead": ("lead", "project_admin"),
    "submitter@org-1": ("org-1", "lead"),
    "member@org-2": ("org-2", "member"),
    "orgadmin@org-1": ("org-1", "org_admin"),
    "orgadmin@org-2": ("org-2", "org_admin"),
    "lead2@org-1": ("org-1", "lead"),
    "lead@org-2": ("org-2", "lead"),
    "member@org-1": ("org-1", "member"),
}


def admin_project() -> Project:
    base = make_project(name="admin-project", port=18500)
    return Project(
        name=base.name,
        aggregator=base.aggregator,
        sites=base.sites,
        admins=[AdminSpec(name=n, org=o, role=r) for n, (o, r) in ADMINS.items()],  # type: ignore[arg-type]
        key_holder=base.key_holder,
    )


@dataclass
class Console:
    ws: Path
    server: AggregatorServer
    job_dir: Path
    target: str

    def client(self, admin: str, ws: Path | None = None) -> AdminClient:
        return AdminClient(load_kit((ws or self.ws) / admin), self.target, timeout=20)

    def fresh_job(self, submitter: str = OWNER_TEXT, *, with_round: bool = True) -> str:
        """Abort whatever runs and start a job owned by ``submitter`` directly (no sites run it)."""
        fed = self.server.fed
        if fed.job is not None and fed.job.state in ("running", "finalizing"):
            fed.abort(fed.job.job_id, by="test")
        job_id = fed.submit(self.job_dir, submitter)
        if with_round:
            result = fed.state_dir / "jobs" / job_id / "round-1.bin"
            result.write_bytes((self.job_dir / "model.safetensors").read_bytes())
            fed.store.add_round(job_id, 1, 1, str(result), 1.0, ["site-1"], {}, 0.25)
        return job_id

    def audit(self) -> list[dict]:  # type: ignore[type-arg]
        import json

        return [json.loads(line) for line in self.server.fed.audit.path.read_text().splitlines()]


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    root = tmp_path_factory.mktemp("admin")
    ws = root / "ws"
    provision(admin_project(), ws)
    job_dir = make_tiny_job(root / "job", ws, mode="plain", rounds=2, signer=OWNER)
    assert set(INIT)  # the tiny job's model
    server = AggregatorServer(load_kit(ws / "aggregator"), root / "state", port=0, host="127.0.0.1")
    server.start()
    try:
        yield Console(ws, server, job_dir, f"127.0.0.1:{server.port}")
    finally:
        server.stop(grace=0.5)
