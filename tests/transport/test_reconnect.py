"""A client channel dials a lost peer again within seconds (issue #18): the agent retries a lost
aggregator every second, which means nothing if the channel itself waits up to gRPC's default 120 s
between dials (`secagg chaos --scenario partition-timeout`: a site whose link came back stayed away
10-23 s and missed its job's final model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from secagg.provision.kit import load_kit
from secagg.transport import tls


def test_every_client_channel_caps_its_reconnect_backoff(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[dict[str, Any]] = []
    real = grpc.secure_channel

    def capture(target: str, creds: Any, options: Any = None, **kw: Any) -> Any:
        made.append(dict(options or []))
        return real(target, creds, options=options, **kw)

    monkeypatch.setattr(grpc, "secure_channel", capture)
    ch = tls.channel(load_kit(workspace / "site-1"))
    ch.close()
    (opts,) = made
    # the agent's own retry (1 s) and the aggregator's owed-final window (two round timeouts) are
    # seconds: the channel must not wait longer than a few between two dials
    assert opts["grpc.max_reconnect_backoff_ms"] == tls.MAX_RECONNECT_BACKOFF_MS <= 5_000
    assert opts["grpc.initial_reconnect_backoff_ms"] <= opts["grpc.max_reconnect_backoff_ms"]
