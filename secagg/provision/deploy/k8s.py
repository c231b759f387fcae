"""Kubernetes manifests, one set per participant: pure functions returning ``{file name: [objects]}``.

Each participant runs as a one-replica Deployment (``Recreate``, so two pods never share the state
volume) with a PersistentVolumeClaim for its state. Its kit is a Secret; kubelet can only hand a
Secret to a non-root pod group-readable (``fsGroup``), and the kit loader refuses a group-readable
key, so an init container copies the kit into a memory-backed ``emptyDir`` with mode 0600 and the main
container mounts that read-only. A NetworkPolicy admits only the gRPC port to the aggregator, nothing
to a site, and lets a site reach only the aggregator's port (and DNS where the aggregator is a name).

The Secret file holds the participant's private key, as the kit does: it is written with mode 0600.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from typing import Any

from secagg.provision.deploy import layout
from secagg.provision.deploy.names import dns_label, unique
from secagg.provision.project import Project

#: file that holds the kit Secret; the writer gives it mode 0600
SECRET_FILE = "secret-kit.yaml"  # noqa: S105 - a file name, not a secret

Objects = dict[str, list[dict[str, Any]]]


def _labels(project: Project, name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "secagg",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": dns_label(project.name),
    }


def _meta(name: str, labels: dict[str, str], participant: str) -> dict[str, Any]:
    return {"name": name, "labels": labels, "annotations": {"secagg.io/participant": participant}}


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": layout.UID,
        "runAsGroup": layout.GID,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _secret(meta: dict[str, Any], kit_files: Mapping[str, bytes]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "data": {f: base64.b64encode(kit_files[f]).decode() for f in layout.KIT_FILES},
    }


def _pvc(meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta,
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


def _deployment(
    meta: dict[str, Any],
    *,
    base: str,
    image: str,
    container: str,
    args: list[str],
    ports: list[dict[str, Any]],
    extra_mounts: list[dict[str, Any]],
    extra_volumes: list[dict[str, Any]],
) -> dict[str, Any]:
    labels = meta["labels"]
    selector = {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}
    probe = {
        "exec": {"command": layout.health_command()},
        "periodSeconds": 30,
        "timeoutSeconds": 10,
        "failureThreshold": 3,
    }
    main: dict[str, Any] = {
        "name": container,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "kit", "mountPath": layout.KIT_DIR, "readOnly": True},
            {"name": "state", "mountPath": layout.STATE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - a private emptyDir, not the host's /tmp
            *extra_mounts,
        ],
        "startupProbe": {**probe, "periodSeconds": 5, "failureThreshold": 24},
        "livenessProbe": probe,
        "readinessProbe": probe,
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
    }
    if ports:
        main["ports"] = ports
    copy_kit = {
        "name": "kit",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": [
            "install",
            "-m",
            "0600",
            "-t",
            layout.KIT_DIR,
            *(f"{layout.KIT_SECRET_DIR}/{f}" for f in layout.KIT_FILES),
        ],
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "kit-secret", "mountPath": layout.KIT_SECRET_DIR, "readOnly": True},
            {"name": "kit", "mountPath": layout.KIT_DIR},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": layout.UID,
                        "runAsGroup": layout.GID,
                        "fsGroup": layout.GID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "initContainers": [copy_kit],
                    "containers": [main],
                    "volumes": [
                        {"name": "kit-secret", "secret": {"secretName": f"{base}-kit", "defaultMode": 0o440}},
                        {"name": "kit", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                        {"name": "state", "persistentVolumeClaim": {"claimName": f"{base}-state"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                        *extra_volumes,
                    ],
                },
            },
        },
    }


def _network_policy(meta: dict[str, Any], ingress: list[Any], egress: list[Any]) -> dict[str, Any]:
    labels = meta["labels"]
    selector = {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta,
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }


def aggregator_objects(
    project: Project, options: layout.DeployOptions, kit_files: Mapping[str, bytes]
) -> Objects:
    agg = project.aggregator
    base = f"secagg-{_names(project)[agg.name]}"
    labels = _labels(project, base, "aggregator")
    ports = [{"name": "grpc", "containerPort": agg.port, "protocol": "TCP"}]
    if agg.metrics_port is not None:
        ports.append({"name": "metrics", "containerPort": agg.metrics_port, "protocol": "TCP"})
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(base, labels, agg.name),
        "spec": {
            "type": "ClusterIP",
            "selector": {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")},
            "ports": [{"name": "grpc", "port": agg.port, "targetPort": "grpc", "protocol": "TCP"}],
        },
    }
    grpc_only = [{"ports": [{"protocol": "TCP", "port": agg.port}]}]
    return {
        SECRET_FILE: [_secret(_meta(f"{base}-kit", labels, agg.name), kit_files)],
        "pvc-state.yaml": [_pvc(_meta(f"{base}-state", labels, agg.name))],
        "deployment.yaml": [
            _deployment(
                _meta(base, labels, agg.name),
                base=base,
                image=options.image,
                container="aggregator",
                args=layout.aggregator_args(),
                ports=ports,
                extra_mounts=[],
                extra_volumes=[],
            )
        ],
        "service.yaml": [service],
        # the aggregator only answers: no egress at all
        "networkpolicy.yaml": [_network_policy(_meta(base, labels, agg.name), grpc_only, [])],
    }


POLICY_PLACEHOLDER = (
    "# Replace this file with your site's policy (see policies/ and `secagg policy check`).\n"
    "# Until you do, the agent refuses to start: this placeholder is not a valid policy.\n"
)


def site_objects(
    project: Project, site: str, options: layout.DeployOptions, kit_files: Mapping[str, bytes]
) -> Objects:
    base = f"secagg-{_names(project)[site]}"
    labels = _labels(project, base, "site-agent")
    agg = project.aggregator
    to_agg: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": agg.port}]}
    egress: list[dict[str, Any]] = [to_agg]
    try:
        ip = ipaddress.ip_address(agg.host)
        to_agg["to"] = [{"ipBlock": {"cidr": f"{ip}/{ip.max_prefixlen}"}}]
    except ValueError:
        # a host name must be resolved first; the address behind it is not known here
        egress.append({"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]})
    policy = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(f"{base}-policy", labels, site),
        "data": {"policy.yaml": POLICY_PLACEHOLDER},
    }
    return {
        SECRET_FILE: [_secret(_meta(f"{base}-kit", labels, site), kit_files)],
        "configmap-policy.yaml": [policy],
        "pvc-state.yaml": [_pvc(_meta(f"{base}-state", labels, site))],
        "deployment.yaml": [
            _deployment(
                _meta(base, labels, site),
                base=base,
                image=options.image,
                container="agent",
                args=layout.agent_args(),
                ports=[],
                extra_mounts=[
                    {"name": "policy", "mountPath": layout.POLICY_DIR, "readOnly": True},
                    {"name": "data", "mountPath": layout.DATA_DIR, "readOnly": True},
                ],
                extra_volumes=[
                    {"name": "policy", "configMap": {"name": f"{base}-policy", "defaultMode": 0o444}},
                    # placeholder: the site's IT creates this claim for the training data (see README)
                    {
                        "name": "data",
                        "persistentVolumeClaim": {"claimName": f"{base}-data", "readOnly": True},
                    },
                ],
            )
        ],
        # nothing may connect to a site; a site may connect only to the aggregator
        "networkpolicy.yaml": [_network_policy(_meta(base, labels, site), [], egress)],
    }


def _names(project: Project) -> dict[str, str]:
    return unique([project.aggregator.name] + [s.name for s in project.sites], dns_label)
