"""A site started before its aggregator waits for it for the agent's whole reconnect window, not 60 s
(RELIABILITY.md F15: a 50-site load run lost 4 sites whose aggregator took longer to listen)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from secagg.agent import site as site_module
from secagg.agent.site import SiteAgent
from secagg.errors import ConfigError
from tests.agent.bare_agent import bare_agent


class _Down(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "failed to connect to all addresses"


class _Clock:
    """The site module's clock: sleeping moves it, nothing waits."""

    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, s: float) -> None:
        self.now += s

    def monotonic(self) -> float:
        return self.now


class _LateAggregator:
    """Refuses to connect until ``up_at`` seconds of the fake clock have passed."""

    def __init__(self, clock: _Clock, up_at: float, site: str) -> None:
        self.clock, self.up_at, self.site, self.tries = clock, up_at, site, 0

    def register(self, version: str) -> Any:
        self.tries += 1
        if self.clock.now < self.up_at:
            raise _Down()
        return SimpleNamespace(site=self.site, project="p")


@pytest.fixture
def agent(tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    a: Any = bare_agent(tmp_path, workspace)
    a.clock = _Clock()
    monkeypatch.setattr(site_module, "time", a.clock)
    yield a
    a.close()


def test_run_waits_its_reconnect_window_for_an_aggregator_that_listens_late(agent: Any) -> None:
    agent.relay = _LateAggregator(agent.clock, up_at=90.0, site="site-1")
    seen: list[float] = []

    def register_then_stop(wait_s: float = 60.0) -> Any:
        seen.append(wait_s)
        SiteAgent.register(agent, wait_s)
        raise KeyboardInterrupt  # registered: the rest of the loop is not this test's

    agent.register = register_then_stop
    with pytest.raises(KeyboardInterrupt):
        agent.run(reconnect_s=300.0)
    assert seen == [300.0]
    assert agent.clock.now >= 90.0 and agent.relay.tries > 100  # it kept trying past the old 60 s


def test_register_still_gives_up_with_one_line_past_its_window(agent: Any) -> None:
    agent.relay = _LateAggregator(agent.clock, up_at=1e9, site="site-1")
    with pytest.raises(ConfigError, match="cannot register with the aggregator"):
        agent.register(wait_s=300.0)
    assert 300.0 <= agent.clock.now < 301.0
