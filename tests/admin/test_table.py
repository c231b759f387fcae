"""The authorization table as data: defaults, project-file overrides, and the pure scope decision."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from secagg.aggregator.admin import JobOwner, authorize, in_scope, job_owner
from secagg.aggregator.admin_client import AdminClient
from secagg.aggregator.service import AggregatorServer
from secagg.errors import ConfigError, PolicyRefusal
from secagg.provision.identity import Identity
from secagg.provision.kit import load_kit
from secagg.provision.project import DEFAULT_AUTHORIZATION, Authorization, load_project
from secagg.provision.writer import provision
from tests.admin.conftest import OWNER_TEXT, admin_project
from tests.integration.harness import make_tiny_job


def ident(name: str, org: str, role: str) -> Identity:
    return Identity(name=name, org=org, role=role, cert=None)  # type: ignore[arg-type]


def test_defaults_match_the_documented_roles() -> None:
    t = Authorization.model_validate({})
    assert all(v == "any" for v in t.project_admin.model_dump().values())
    assert (t.org_admin.list, t.org_admin.abort) == ("any", "org")
    assert (t.lead.submit, t.lead.list, t.lead.abort, t.lead.download) == ("any", "org", "own", "own")
    assert (t.member.submit, t.member.abort, t.member.download) == ("none", "none", "none")
    assert t.model_dump() == DEFAULT_AUTHORIZATION


def test_project_file_overrides_single_cells(tmp_path: Path) -> None:
    f = tmp_path / "project.yaml"
    f.write_text(
        yaml.safe_dump(
            {
                "name": "p",
                "sites": [{"name": "site-1"}],
                "authorization": {"member": {"logs": "none"}, "lead": {"abort": "org"}},
            }
        )
    )
    t = load_project(f).authorization
    assert t.member.logs == "none" and t.member.list == "org"  # untouched cells keep the default
    assert t.lead.abort == "org" and t.lead.download == "own"


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ({"member": {"abort": "everyone"}}, "authorization.member.abort"),
        ({"lead": {"submit": "own"}}, "authorization.lead.submit"),
        ({"auditor": {"list": "any"}}, "authorization"),
        ({"lead": {"delete": "any"}}, "authorization.lead.delete"),
    ],
)
def test_bad_tables_are_config_errors(tmp_path: Path, table: dict, needle: str) -> None:  # type: ignore[type-arg]
    f = tmp_path / "project.yaml"
    f.write_text(yaml.safe_dump({"name": "p", "sites": [{"name": "site-1"}], "authorization": table}))
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_project(f)


def test_scope_decisions() -> None:
    owner = JobOwner("alice", "org-1")
    assert in_scope("any", ident("x", "org-9", "lead"), owner)
    assert in_scope("org", ident("bob", "org-1", "lead"), owner)
    assert not in_scope("org", ident("bob", "org-2", "lead"), owner)
    assert in_scope("own", ident("alice", "org-1", "lead"), owner)
    assert not in_scope("own", ident("bob", "org-1", "lead"), owner)
    assert not in_scope("none", ident("alice", "org-1", "lead"), owner)
    # a sigstore-signed job has no project org: only ``any`` reaches it, never an empty-org match
    assert not in_scope("org", ident("x", "", "org_admin"), JobOwner("someone@example.com", ""))


def test_job_owner_parses_the_stored_submitter() -> None:
    assert job_owner(OWNER_TEXT) == JobOwner("submitter@org-1", "org-1")
    assert job_owner("sigstore identity a@b.c (issuer https://x)").org == ""


def test_non_admin_roles_may_do_nothing() -> None:
    t = Authorization.model_validate({})
    for role in ("site", "aggregator", "", "superuser"):
        with pytest.raises(PolicyRefusal) as err:
            authorize(t, ident("x", "org-1", role), "list", None)
        assert err.value.code == "not_admin"


def test_the_aggregator_enforces_the_provisioned_table(tmp_path: Path) -> None:
    """A project that lets members abort any job: the aggregator follows its kit, not the defaults."""
    base = admin_project()
    custom = base.model_copy(
        update={"authorization": Authorization.model_validate({"member": {"abort": "any"}})}
    )
    ws = tmp_path / "ws"
    provision(custom, ws)
    assert load_kit(ws / "aggregator").config.authorization["member"]["abort"] == "any"  # type: ignore[index]
    job_dir = make_tiny_job(tmp_path / "job", ws, signer="submitter@org-1")
    server = AggregatorServer(load_kit(ws / "aggregator"), tmp_path / "state", port=0, host="127.0.0.1")
    server.start()
    try:
        job_id = server.fed.submit(job_dir, OWNER_TEXT)
        with AdminClient(load_kit(ws / "member@org-2"), f"127.0.0.1:{server.port}", timeout=20) as c:
            c.abort(job_id)
        assert server.fed.job is not None and server.fed.job.state == "aborted"
    finally:
        server.stop(grace=0.5)
