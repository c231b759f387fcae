"""``secagg health`` exit codes: 0 only when the kit loads, the store passes quick_check and (for the
aggregator) the gRPC port completes an mTLS handshake presenting the aggregator's own certificate."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from secagg.aggregator.service import AggregatorServer
from secagg.cli import main
from secagg.provision.kit import load_kit


@pytest.fixture()
def agg(tmp_path: Path, workspace: Path) -> tuple[Path, Path]:
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    return ws / "aggregator", tmp_path / "state"


def _health(kit: Path, state: Path, port: int | None, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    argv = ["health", "--kit", str(kit), "--state", str(state), "--timeout", "5"]
    if port is not None:
        argv += ["--port", str(port)]
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def test_running_aggregator_is_healthy(agg: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    kit, state = agg
    server = AggregatorServer(load_kit(kit), state, port=0, host="127.0.0.1")
    server.start()
    try:
        code, out = _health(kit, state, server.port, capsys)
    finally:
        server.stop(grace=0.2)
    assert code == 0, out
    assert "quick_check" not in out and "TLS handshake" in out and "aggregator.sqlite" in out


def test_closed_port_is_unhealthy(agg: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    kit, state = agg
    server = AggregatorServer(load_kit(kit), state, port=0, host="127.0.0.1")
    server.start()
    port = server.port
    server.stop(grace=0.2)
    code, out = _health(kit, state, port, capsys)
    assert code == 1
    assert out.startswith("secagg: unhealthy: ") and "does not answer a TLS handshake" in out


def test_port_of_another_project_is_unhealthy(
    agg: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A different project's aggregator on the port refuses our certificate (and we its)."""
    from secagg.provision.writer import provision
    from tests.conftest import make_project

    kit, state = agg
    other_ws = tmp_path / "other"
    provision(make_project(name="other-project"), other_ws)
    other = AggregatorServer(
        load_kit(other_ws / "aggregator"), tmp_path / "other-state", port=0, host="127.0.0.1"
    )
    other.start()
    try:
        AggregatorServer(load_kit(kit), state, port=0, host="127.0.0.1").fed.store.close()  # make our store
        code, out = _health(kit, state, other.port, capsys)
    finally:
        other.stop(grace=0.2)
    assert code == 1 and "TLS handshake" in out


def test_corrupt_store_is_unhealthy(agg: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    kit, state = agg
    state.mkdir(parents=True)
    (state / "aggregator.sqlite").write_bytes(b"this is not a database" * 200)
    code, out = _health(kit, state, 1, capsys)
    assert code == 1 and "aggregator.sqlite" in out and "unhealthy" in out


def test_missing_state_is_unhealthy(agg: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    kit, state = agg
    code, out = _health(kit, state, 1, capsys)
    assert code == 1 and "does not exist" in out


def test_kit_with_exposed_key_is_unhealthy(
    agg: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    kit, state = agg
    (kit / "key.pem").chmod(0o644)
    code, out = _health(kit, state, 1, capsys)
    assert code == 1 and "does not load" in out and "chmod 600" in out


def test_site_kit_checks_its_stores(
    tmp_path: Path, workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    state = tmp_path / "site-state"
    state.mkdir()
    db = sqlite3.connect(state / "privacy-ledger.sqlite")
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    code, out = _health(workspace / "site-1", state, None, capsys)
    assert code == 0 and "privacy-ledger.sqlite" in out and "TLS" not in out
    (state / "privacy-ledger.sqlite").write_bytes(b"garbage" * 1000)
    code, out = _health(workspace / "site-1", state, None, capsys)
    assert code == 1 and "privacy-ledger.sqlite" in out
