"""``secagg health --kit DIR [--state DIR]``: a real check for container health checks.

A process that is up but cannot open its state, whose kit no longer loads (expired certificate,
key permissions) or whose gRPC port does not complete a TLS handshake is not healthy, whatever its
PID says. Exit 0 healthy, 1 with the first reason it is not.
"""

from __future__ import annotations

import argparse
import sqlite3
import ssl
from pathlib import Path

from secagg.aggregator.store import DB_NAME
from secagg.errors import IdentityError, SecaggError
from secagg.provision.identity import load_cert, verify_cert
from secagg.provision.kit import Kit, load_kit
from secagg.reasons import Reason
from secagg.transport.tls import probe_server_certificate

AGGREGATOR_DB = DB_NAME


class Unhealthy(SecaggError):
    code: str = Reason.UNHEALTHY


def check_store(db: Path) -> None:
    """Open read-only and run ``PRAGMA quick_check``: a corrupt or unreadable store is unhealthy."""
    if not db.is_file():
        raise Unhealthy(f"state store {db} does not exist")
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise Unhealthy(f"state store {db} cannot be read: {exc}") from None
    if rows != [("ok",)]:
        raise Unhealthy(f"state store {db} failed quick_check: {'; '.join(str(r[0]) for r in rows[:3])}")


def check_state(kit: Kit, state: Path) -> list[str]:
    if not state.is_dir():
        raise Unhealthy(f"state folder {state} does not exist")
    dbs = sorted(state.glob("*.sqlite"))
    if kit.config.kind == "aggregator" and state / AGGREGATOR_DB not in dbs:
        raise Unhealthy(f"state folder {state} has no {AGGREGATOR_DB}")
    for db in dbs:
        check_store(db)
    return [db.name for db in dbs]


def check_tls(kit: Kit, host: str, port: int, timeout: float) -> str:
    """Complete an mTLS handshake with the local gRPC port and check that the server presents the
    aggregator's own certificate from this project's CA."""
    try:
        der = probe_server_certificate(kit, host, port, timeout=timeout, server_hostname="localhost")
    except (OSError, ssl.SSLError) as exc:
        raise Unhealthy(f"gRPC port {host}:{port} does not answer a TLS handshake: {exc}") from None
    except IdentityError:
        raise Unhealthy(f"gRPC port {host}:{port} presented no certificate") from None
    ident = verify_cert(load_cert(der), kit.ca_cert)
    if ident.name != kit.name:
        raise Unhealthy(f"port {host}:{port} is served by {ident.name}, not {kit.name}")
    return ident.name


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("health", help="health check for containers: state store, kit, gRPC TLS port")
    p.add_argument("--kit", type=Path, required=True, help="the startup kit of this container")
    p.add_argument("--state", type=Path, help="state folder (default: ./state/<kit name>)")
    p.add_argument("--port", type=int, help="aggregator: the local gRPC port (default: the kit's)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds for the TLS handshake (default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        kit = load_kit(args.kit)
        _ = kit.identity, kit.private_key  # an expired certificate or unreadable key is unhealthy
    except SecaggError as exc:
        raise Unhealthy(f"kit {args.kit} does not load: {exc}") from None
    state = args.state or Path("state") / kit.name
    dbs = check_state(kit, state)
    parts = [
        f"kit {kit.name} ({kit.config.kind}) ok",
        f"state {state} ok ({', '.join(dbs) or 'no stores yet'})",
    ]
    if kit.config.kind == "aggregator":
        port = args.port or kit.config.aggregator_port
        check_tls(kit, "127.0.0.1", port, args.timeout)
        parts.append(f"gRPC TLS handshake on 127.0.0.1:{port} ok")
    print("healthy: " + "; ".join(parts))
    return 0
