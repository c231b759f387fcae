"""The compose file: valid against the Compose Specification schema, and hardened service by service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from secagg.errors import ConfigError
from secagg.provision.deploy.compose import compose_document
from secagg.provision.deploy.layout import DeployOptions
from secagg.provision.kit import load_kit
from tests.conftest import make_project
from tests.deploy.conftest import IMAGE, with_aggregator

SCHEMA = Path(__file__).parents[1] / "vectors" / "compose" / "compose-spec.json"


def _load(ws: Path) -> dict[str, Any]:
    return yaml.safe_load((ws / "deploy" / "compose" / "compose.yaml").read_text())


def _validate(doc: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


@pytest.mark.parametrize("fixture", ["deployed", "deployed_named"])
def test_compose_file_is_valid_against_the_compose_spec_schema(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    _validate(_load(request.getfixturevalue(fixture)))


def test_schema_check_would_catch_a_bad_key(deployed: Path) -> None:
    doc = _load(deployed)
    doc["services"]["aggregator"]["read_only_fs"] = True
    with pytest.raises(AssertionError):
        _validate(doc)


def test_every_service_is_hardened(deployed: Path) -> None:
    services = _load(deployed)["services"]
    assert set(services) == {"aggregator", "site-1", "site-2", "site-3"}
    for name, svc in services.items():
        assert svc["image"] == IMAGE, name
        assert svc["read_only"] is True, name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        uid, gid = svc["user"].split(":")
        assert int(uid) != 0 and int(gid) != 0, name
        assert "privileged" not in svc and "cap_add" not in svc, name


def test_each_participant_mounts_only_its_own_kit_read_only_and_state_in_a_named_volume(
    deployed: Path,
) -> None:
    doc = _load(deployed)
    compose_dir = deployed / "deploy" / "compose"
    for name, svc in doc["services"].items():
        mounts = {m["target"]: m for m in svc["volumes"]}
        kit = mounts["/etc/secagg/kit"]
        assert kit["type"] == "bind" and kit["read_only"] is True
        kit_dir = (compose_dir / kit["source"]).resolve()
        assert kit_dir == deployed / name
        assert load_kit(kit_dir).identity.name == name
        state = mounts["/var/lib/secagg"]
        assert state["type"] == "volume" and state["source"] in doc["volumes"]
        assert [m for m in svc["volumes"] if not m.get("read_only")] == [state], name


def test_sites_mount_policy_and_data_read_only_and_run_the_agent(deployed: Path) -> None:
    for site in ["site-1", "site-2", "site-3"]:
        svc = _load(deployed)["services"][site]
        mounts = {m["target"]: m for m in svc["volumes"]}
        assert mounts["/etc/secagg/policy/policy.yaml"]["source"] == f"./policies/{site}.yaml"
        assert mounts["/data"]["source"] == f"./data/{site}"
        assert all(mounts[t]["read_only"] for t in ("/etc/secagg/policy/policy.yaml", "/data"))
        assert svc["command"][:2] == ["agent", "run"]
        assert svc["depends_on"] == {"aggregator": {"condition": "service_healthy"}}


def test_only_the_aggregator_port_is_published_on_loopback(deployed: Path) -> None:
    services = _load(deployed)["services"]
    assert services["aggregator"]["ports"] == [
        {"target": 18443, "published": "18443", "protocol": "tcp", "host_ip": "127.0.0.1"}
    ]
    assert services["aggregator"]["command"][:2] == ["aggregator", "serve"]
    for site in ["site-1", "site-2", "site-3"]:
        assert "ports" not in services[site] and "expose" not in services[site]
        # the kit says 127.0.0.1: the site shares the aggregator's network namespace to reach it
        assert services[site]["network_mode"] == "service:aggregator"


def test_named_aggregator_gets_an_internal_network_alias_and_metrics_stay_unpublished(
    deployed_named: Path,
) -> None:
    doc = _load(deployed_named)
    assert doc["networks"]["federation"] == {"internal": True}
    agg = doc["services"]["aggregator"]
    assert agg["networks"]["federation"]["aliases"] == ["aggregator.example.org"]
    assert agg["ports"] == [{"target": 18443, "published": "18443", "protocol": "tcp"}]
    assert agg["expose"] == ["9100"]
    for site in ["site-1", "site-2", "site-3"]:
        assert doc["services"][site]["networks"] == ["federation"]


def test_private_ipv4_aggregator_gets_its_address_on_the_internal_network() -> None:
    doc = compose_document(with_aggregator(make_project(), "10.20.30.40"), DeployOptions())
    _validate(doc)
    assert doc["networks"]["federation"]["ipam"] == {"config": [{"subnet": "10.20.30.0/24"}]}
    assert doc["services"]["aggregator"]["networks"]["federation"] == {"ipv4_address": "10.20.30.40"}


@pytest.mark.parametrize("host", ["2001:db8::5", "10.20.30.1"])
def test_addresses_compose_cannot_give_the_aggregator_are_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="use a host name"):
        compose_document(with_aggregator(make_project(), host), DeployOptions())
