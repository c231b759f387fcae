"""A startup kit: the files one participant needs, and nothing of anyone else's.

Layout of ``WORKSPACE/<name>/``::

    ca.pem      project CA certificate (the only trust anchor)
    cert.pem    this participant's certificate (CN=name, O=org, OU=role)
    key.pem     this participant's private key, PKCS#8 PEM, mode 0600
    kit.yaml    project name, own name/kind/role/org, aggregator address, the project's sites
    peers/      (site kits) the other sites' certificates, to seal the HE key to them
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, Field

from secagg import safeyaml, userfile, validation
from secagg.errors import ConfigError
from secagg.provision.identity import Identity, load_cert, verify_cert
from secagg.windowsize import DEFAULT_WINDOW_BYTES, MAX_WINDOW_BYTES, MIN_WINDOW_BYTES


class KitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str
    name: str
    kind: Literal["aggregator", "site", "admin"]
    org: str
    role: str
    aggregator_host: str
    aggregator_port: int
    sites: list[str]
    key_holder: str
    metrics_port: int | None = None
    #: aggregator kits: jobs run at once (the project file's ``aggregator.max_jobs``)
    max_jobs: int = Field(default=2, ge=1, le=64)
    #: the project's ``aggregator.window_bytes``: the aggregator combines and applies the server step a
    #: window at a time; kits written before the setting existed get the default
    window_bytes: int = Field(default=DEFAULT_WINDOW_BYTES, ge=MIN_WINDOW_BYTES, le=MAX_WINDOW_BYTES)
    #: aggregator kits: the project's admin authorization table (role -> action -> scope); None: defaults
    authorization: dict[str, dict[str, str]] | None = None


#: the most read from one of a kit's PEM files: a certificate or an EC key is about a kilobyte
MAX_PEM_BYTES = 1 << 20


def _read_pem(path: Path) -> bytes:
    """A kit's PEM file, read by kind and bounded: a kit comes from elsewhere, and a FIFO or
    ``/dev/zero`` in its place must be refused, not waited on or read without end."""
    return userfile.read_file(path, MAX_PEM_BYTES, "kit file")


@dataclass(frozen=True)
class Kit:
    path: Path
    config: KitConfig

    @property
    def name(self) -> str:
        return self.config.name

    @cached_property
    def ca_pem(self) -> bytes:
        return _read_pem(self.path / "ca.pem")

    @cached_property
    def cert_pem(self) -> bytes:
        return _read_pem(self.path / "cert.pem")

    @cached_property
    def key_pem(self) -> bytes:
        return _read_pem(self.path / "key.pem")

    @cached_property
    def ca_cert(self) -> x509.Certificate:
        return load_cert(self.ca_pem)

    @cached_property
    def cert(self) -> x509.Certificate:
        return load_cert(self.cert_pem)

    @cached_property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{self.path}/key.pem is not an EC private key")
        return key

    @cached_property
    def identity(self) -> Identity:
        return verify_cert(self.cert, self.ca_cert)

    def peer_certs(self) -> dict[str, x509.Certificate]:
        """The other sites' certificates (site kits only), each verified against the CA and its name."""
        peers: dict[str, x509.Certificate] = {}
        folder = self.path / "peers"
        for name in self.config.sites:
            if name == self.name:
                continue
            pem = folder / f"{name}.pem"
            if not pem.exists():
                raise ConfigError(f"startup kit {self.path} has no certificate for peer site {name}")
            cert = load_cert(_read_pem(pem))
            ident = verify_cert(cert, self.ca_cert)
            if ident.name != name or ident.role != "site":
                raise ConfigError(f"{pem} is the certificate of {ident.name} ({ident.role}), not site {name}")
            peers[name] = cert
        return peers

    @property
    def target(self) -> str:
        return f"{self.config.aggregator_host}:{self.config.aggregator_port}"


def load_kit(path: Path | str, kind: str | None = None) -> Kit:
    """Load and check a kit; ``kind`` refuses the wrong kit for a role (a site kit for the aggregator)."""
    path = Path(path)
    cfg_file = path / "kit.yaml"
    if not cfg_file.is_file():
        raise ConfigError(f"{path} is not a startup kit (no kit.yaml)")
    for required in ("ca.pem", "cert.pem", "key.pem"):
        if not (path / required).exists():  # one of another kind is named when it is read
            raise ConfigError(f"startup kit {path} is missing {required}")
    key_mode = (path / "key.pem").stat().st_mode & 0o077
    if key_mode and os.name == "posix":
        raise ConfigError(f"{path}/key.pem is readable by group or others; chmod 600 it")
    # a kit comes from the project's provisioner, not from this machine: read it bounded, no aliases
    raw = safeyaml.load_file(cfg_file, what="kit config")
    try:
        config = validation.validate(KitConfig, raw)
    except validation.FieldProblems as exc:
        raise ConfigError(f"{cfg_file}: invalid kit config: {exc.line()}") from None
    if kind is not None and config.kind != kind:
        raise ConfigError(f"{path} is a {config.kind} kit, not a {kind} kit")
    kit = Kit(path=path, config=config)
    if kit.identity.name != config.name:
        raise ConfigError(f"{path}: certificate name {kit.identity.name!r} does not match kit.yaml")
    return kit
