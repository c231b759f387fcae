"""Kubernetes manifests: every object valid for a current Kubernetes, hardened, and wired together."""

from __future__ import annotations

import base64
import stat
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from secagg.errors import ConfigError
from secagg.provision.deploy.k8s import site_objects
from secagg.provision.deploy.layout import DeployOptions
from secagg.provision.project import SiteSpec
from tests.conftest import make_project
from tests.deploy.conftest import IMAGE

K8S_VERSION = "1.37.0"
PARTICIPANTS = ["aggregator", "site-1", "site-2", "site-3"]


def _objects(ws: Path, name: str) -> dict[str, dict[str, Any]]:
    """kind -> object for one participant (one object of each kind)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((ws / "deploy" / "k8s" / name).glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            assert obj["kind"] not in out
            out[obj["kind"]] = obj
    return out


@pytest.mark.parametrize("fixture", ["deployed", "deployed_named"])
def test_every_object_validates_strictly_against_kubernetes(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    ws = request.getfixturevalue(fixture)
    files = sorted((ws / "deploy" / "k8s").glob("*/*.yaml"))
    assert len(files) == 5 + 3 * 5
    count = 0
    for path in files:
        for obj in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            count += 1
    assert count == len(files)


def test_validation_would_catch_a_misspelt_field(deployed: Path) -> None:
    deployment = _objects(deployed, "site-1")["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFs"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", PARTICIPANTS)
def test_every_container_is_locked_down(deployed: Path, name: str) -> None:
    pod = _objects(deployed, name)["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    containers = pod["initContainers"] + pod["containers"]
    assert len(containers) == 2
    for c in containers:
        sc = c["securityContext"]
        assert c["image"] == IMAGE
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("name", PARTICIPANTS)
def test_kit_secret_holds_exactly_this_participants_kit_and_is_private(deployed: Path, name: str) -> None:
    path = deployed / "deploy" / "k8s" / name / "secret-kit.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = _objects(deployed, name)["Secret"]
    files = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert files == {
        f: (deployed / name / f).read_bytes() for f in ("ca.pem", "cert.pem", "key.pem", "kit.yaml")
    }
    # the Secret is mounted only into the init container, which copies it 0600 for the kit loader
    pod = _objects(deployed, name)["Deployment"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["kit-secret"]["secret"]["secretName"] == secret["metadata"]["name"]
    init = pod["initContainers"][0]
    assert init["command"][:4] == ["install", "-m", "0600", "-t"]
    assert {m["name"] for m in pod["containers"][0]["volumeMounts"]} >= {"kit", "state"}
    assert "kit-secret" not in {m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert volumes["kit"]["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("name", PARTICIPANTS)
def test_state_is_on_a_claim_and_everything_else_mounted_read_only(deployed: Path, name: str) -> None:
    objs = _objects(deployed, name)
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    assert objs["Deployment"]["spec"]["replicas"] == 1
    assert objs["Deployment"]["spec"]["strategy"] == {"type": "Recreate"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert (
        volumes["state"]["persistentVolumeClaim"]["claimName"]
        == objs["PersistentVolumeClaim"]["metadata"]["name"]
    )
    writable = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/var/lib/secagg", "/tmp"}
    probe = pod["containers"][0]["livenessProbe"]["exec"]["command"]
    assert probe[:2] == ["secagg", "health"]


def test_aggregator_service_and_network_policy_admit_only_grpc(deployed: Path) -> None:
    objs = _objects(deployed, "aggregator")
    assert objs["Service"]["spec"]["ports"] == [
        {"name": "grpc", "port": 18443, "targetPort": "grpc", "protocol": "TCP"}
    ]
    assert objs["Service"]["spec"]["selector"] == objs["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"]
    pod_labels = objs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert objs["Service"]["spec"]["selector"].items() <= pod_labels.items()
    policy = objs["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [{"ports": [{"protocol": "TCP", "port": 18443}]}]
    assert policy["egress"] == []
    assert objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"][:2] == [
        "aggregator",
        "serve",
    ]


def test_site_accepts_no_connections_and_reaches_only_the_aggregator(deployed: Path) -> None:
    policy = _objects(deployed, "site-2")["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == []
    assert policy["egress"] == [
        {"ports": [{"protocol": "TCP", "port": 18443}], "to": [{"ipBlock": {"cidr": "127.0.0.1/32"}}]}
    ]


def test_site_with_named_aggregator_may_also_resolve_names(deployed_named: Path) -> None:
    egress = _objects(deployed_named, "site-1")["NetworkPolicy"]["spec"]["egress"]
    assert egress[0] == {"ports": [{"protocol": "TCP", "port": 18443}]}
    assert {p["port"] for p in egress[1]["ports"]} == {53}
    agg = _objects(deployed_named, "aggregator")["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in agg["ports"]} == {"grpc": 18443, "metrics": 9100}


def test_site_policy_is_a_config_map_and_data_a_read_only_claim(deployed: Path) -> None:
    objs = _objects(deployed, "site-3")
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["policy"]["configMap"]["name"] == objs["ConfigMap"]["metadata"]["name"]
    assert "policy.yaml" in objs["ConfigMap"]["data"]
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "secagg-site-3-data", "readOnly": True}
    args = pod["containers"][0]["args"]
    assert args[:2] == ["agent", "run"]
    assert args[args.index("--policy") + 1] == "/etc/secagg/policy/policy.yaml"


def test_names_are_made_dns_safe_and_collisions_refused() -> None:
    project = make_project().model_copy(
        update={"sites": [SiteSpec(name="Site_A@Org", org="o"), SiteSpec(name="site-b", org="o")]}
    )
    kit = {f: b"x" for f in ("ca.pem", "cert.pem", "key.pem", "kit.yaml")}
    objs = site_objects(project, "Site_A@Org", DeployOptions(), kit)
    deployment = objs["deployment.yaml"][0]
    assert deployment["metadata"]["name"] == "secagg-site-a-org"
    assert deployment["metadata"]["annotations"]["secagg.io/participant"] == "Site_A@Org"
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    clash = make_project().model_copy(update={"sites": [SiteSpec(name="Site.A"), SiteSpec(name="site-a")]})
    with pytest.raises(ConfigError, match="both become 'site-a'"):
        site_objects(clash, "site-a", DeployOptions(), kit)


def test_policy_placeholder_is_refused_by_the_policy_loader(deployed: Path, tmp_path: Path) -> None:
    """Until a site puts its own policy in the ConfigMap, the agent must refuse to start."""
    from secagg.policy.check import load_policy

    placeholder = tmp_path / "policy.yaml"
    placeholder.write_text(_objects(deployed, "site-1")["ConfigMap"]["data"]["policy.yaml"])
    with pytest.raises(ConfigError, match="not usable"):
        load_policy(placeholder)
