"""A compose file for the whole federation on one Docker host: pure, returns the document as a dict.

The file lives at ``WORKSPACE/deploy/compose/compose.yaml``; paths in it are relative to that folder,
so the kits are at ``../../<name>`` and each site's policy and data are beside the file in
``policies/<site>.yaml`` and ``data/<site>/`` (the operator puts them there; compose refuses to start a
site whose bind source is missing, which is the safe failure).

Sites reach the aggregator at the address their kit names (the aggregator's certificate is issued for
it), so the network follows that address:

* a host name: sites and the aggregator share an ``internal`` network (no route out) on which the
  aggregator answers to that name;
* a loopback address (the example project's ``127.0.0.1``): each site joins the aggregator's network
  namespace, where the aggregator is on loopback;
* another IPv4 address: the internal network gets a /24 around it and the aggregator that address.

Only the aggregator's gRPC port is published, and only on loopback when the project says loopback.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from secagg.errors import ConfigError
from secagg.provision.deploy import layout
from secagg.provision.deploy.names import compose_name, unique
from secagg.provision.project import Project

FEDERATION_NET = "federation"
EDGE_NET = "edge"


def _hardening() -> dict[str, Any]:
    return {
        "user": f"{layout.UID}:{layout.GID}",
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "tmpfs": ["/tmp:rw,noexec,nosuid,nodev,size=512m"],  # noqa: S108 - the container's own tmpfs
        "restart": "unless-stopped",
        "init": True,
    }


def _bind(source: str, target: str) -> dict[str, Any]:
    return {"type": "bind", "source": source, "target": target, "read_only": True}


def _state(volume: str) -> dict[str, Any]:
    return {"type": "volume", "source": volume, "target": layout.STATE_DIR}


def compose_document(project: Project, options: layout.DeployOptions) -> dict[str, Any]:
    """The compose file as a dict (the caller serialises it)."""
    agg = project.aggregator
    names = unique([agg.name] + [s.name for s in project.sites], compose_name)
    agg_service = names[agg.name]
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(agg.host)
    except ValueError:
        ip = None
    loopback = ip is not None and ip.is_loopback

    port: dict[str, Any] = {"target": agg.port, "published": str(agg.port), "protocol": "tcp"}
    if loopback:
        port["host_ip"] = str(ip)
    aggregator: dict[str, Any] = {
        "image": options.image,
        "command": layout.aggregator_args(),
        **_hardening(),
        "volumes": [_bind(f"../../{agg.name}", layout.KIT_DIR), _state(f"{agg_service}-state")],
        "ports": [port],
    }
    if agg.metrics_port is not None:
        aggregator["expose"] = [str(agg.metrics_port)]  # reachable from the host's tooling, not published

    networks: dict[str, Any] = {}
    if not loopback:
        fed_net: dict[str, Any] = {}
        networks[FEDERATION_NET] = {"internal": True}
        if ip is None:
            fed_net["aliases"] = [agg.host]
        elif isinstance(ip, ipaddress.IPv4Address):
            subnet = ipaddress.ip_network(f"{ip}/24", strict=False)
            if ip in (subnet.network_address, subnet.broadcast_address, subnet.network_address + 1):
                raise ConfigError(
                    f"aggregator host {ip} is the network, gateway or broadcast address of {subnet}; "
                    "use a host name for a compose deployment"
                )
            networks[FEDERATION_NET]["ipam"] = {"config": [{"subnet": str(subnet)}]}
            fed_net["ipv4_address"] = str(ip)
        else:
            raise ConfigError(
                f"aggregator host {ip} is an IPv6 address; use a host name for a compose deployment"
            )
        networks[EDGE_NET] = {}
        aggregator["networks"] = {FEDERATION_NET: fed_net, EDGE_NET: {}}

    services: dict[str, Any] = {agg_service: aggregator}
    volumes: dict[str, Any] = {f"{agg_service}-state": {}}
    for site in project.sites:
        svc = names[site.name]
        service: dict[str, Any] = {
            "image": options.image,
            "command": layout.agent_args(),
            **_hardening(),
            "volumes": [
                _bind(f"../../{site.name}", layout.KIT_DIR),
                _bind(f"./policies/{site.name}.yaml", layout.POLICY_FILE),
                _bind(f"./data/{site.name}", layout.DATA_DIR),
                _state(f"{svc}-state"),
            ],
            "depends_on": {agg_service: {"condition": "service_healthy"}},
        }
        if loopback:
            service["network_mode"] = f"service:{agg_service}"
        else:
            service["networks"] = [FEDERATION_NET]
        services[svc] = service
        volumes[f"{svc}-state"] = {}

    doc: dict[str, Any] = {"name": compose_name(f"secagg-{project.name}"), "services": services}
    if networks:
        doc["networks"] = networks
    doc["volumes"] = volumes
    return doc
