"""Write a workspace of startup kits from a project. All-or-nothing: kits are built in a temporary
folder beside the target and moved into place only when every file is written."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.errors import ConfigError
from secagg.provision.ca import issue_cert, make_ca
from secagg.provision.identity import cert_pem
from secagg.provision.kit import KitConfig
from secagg.provision.project import Project


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def provision(project: Project, workspace: Path, *, force: bool = False) -> list[Path]:
    """Create the CA and one kit per participant under ``workspace``; return the kit folders."""
    workspace = workspace.resolve()
    if workspace.exists() and any(workspace.iterdir()) and not force:
        raise ConfigError(f"{workspace} is not empty; use --force to replace its kits")
    workspace.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".provision-", dir=workspace.parent))
    try:
        kits = _build(project, staging)
        if workspace.exists():
            shutil.rmtree(workspace)
        staging.rename(workspace)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [workspace / k for k in kits]


def _build(project: Project, root: Path) -> list[str]:
    ca_key, ca_cert = make_ca(project.name, project.cert_validity_days)
    ca_pem = cert_pem(ca_cert)
    private = root / ".provisioner"
    private.mkdir(mode=0o700)
    _write_private(private / "ca.key", _key_pem(ca_key))
    (private / "ca.pem").write_bytes(ca_pem)
    (private / "project.yaml").write_text(yaml.safe_dump(project.model_dump(mode="json"), sort_keys=False))

    agg = project.aggregator
    sites = [s.name for s in project.sites]
    people: list[tuple[str, str, str, str, list[str] | None]] = [
        (agg.name, agg.org, "aggregator", "aggregator", [agg.host, "localhost", "127.0.0.1"])
    ]
    people += [(s.name, s.org, "site", "site", None) for s in project.sites]
    people += [(a.name, a.org, "admin", a.role, None) for a in project.admins]
    names = []
    site_certs: dict[str, bytes] = {}
    for name, org, kind, role, hosts in people:
        key, cert = issue_cert(
            ca_key,
            ca_cert,
            name=name,
            org=org,
            role=role,
            days=project.cert_validity_days,
            server_hosts=list(dict.fromkeys(hosts)) if hosts else None,
        )
        kit = root / name
        kit.mkdir(mode=0o700)
        (kit / "ca.pem").write_bytes(ca_pem)
        (kit / "cert.pem").write_bytes(cert_pem(cert))
        _write_private(kit / "key.pem", _key_pem(key))
        config = KitConfig(
            project=project.name,
            name=name,
            kind=kind,  # type: ignore[arg-type]
            org=org,
            role=role,
            aggregator_host=agg.host,
            aggregator_port=agg.port,
            sites=sites,
            key_holder=project.he_key_holder,
            metrics_port=agg.metrics_port if kind == "aggregator" else None,
            max_jobs=agg.max_jobs,
            window_bytes=agg.window_bytes,
            authorization=project.authorization.model_dump(mode="json") if kind == "aggregator" else None,
        )
        (kit / "kit.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        names.append(name)
        if kind == "site":
            site_certs[name] = cert_pem(cert)
    for site in site_certs:
        peers = root / site / "peers"
        peers.mkdir()
        for other, pem in site_certs.items():
            if other != site:
                (peers / f"{other}.pem").write_bytes(pem)
    return names
