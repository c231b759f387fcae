"""The slow link's parts without a namespace: the delay relay on loopback (bytes pass unchanged both
ways, a round trip waits at least twice the delay, a close reaches the other side, a refused
upstream closes the client) and the loss table's text and counters. Timing is bounded below only."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from secagg.chaos import loss
from secagg.chaos.relay import Relay, RelayThread
from secagg.chaos.scenarios import plan, unavailable

DELAY = 0.2


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return got


class _Upstream:
    """A one-connection server: greets, then echoes every byte back reversed in blocks (so an
    unchanged echo cannot be mistaken for a loop inside the relay), and records when it saw EOF."""

    GREETING = b"hello from upstream\n"

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.eof = threading.Event()
        self.received = b""
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.sendall(self.GREETING)
            while data := conn.recv(65536):
                self.received += data
                conn.sendall(data[::-1])
            self.eof.set()

    def close(self) -> None:
        self.sock.close()
        self._thread.join(timeout=10)


@pytest.fixture
def upstream() -> Iterator[_Upstream]:
    up = _Upstream()
    yield up
    up.close()


def test_bytes_pass_unchanged_both_ways_and_a_round_trip_takes_twice_the_delay(upstream: _Upstream) -> None:
    relay = Relay(("127.0.0.1", 0), ("127.0.0.1", upstream.port), DELAY)
    with RelayThread(relay) as r, socket.create_connection(("127.0.0.1", r.port), timeout=30) as c:
        # upstream -> client: the greeting, one delay late
        assert _recv_exactly(c, len(_Upstream.GREETING)) == _Upstream.GREETING
        payload = bytes(range(256)) * 4096  # 1 MiB, several chunks
        t0 = time.monotonic()
        c.sendall(b"x")
        assert _recv_exactly(c, 1) == b"x"
        assert time.monotonic() - t0 >= 2 * DELAY  # a lower bound only
        c.sendall(payload)
        echoed = _recv_exactly(c, len(payload))
        # the upstream reverses each block it reads: the bytes it got are the payload, unchanged
        assert upstream.received == b"x" + payload
        assert len(echoed) == len(payload) and sorted(echoed) == sorted(payload)
        assert r.accepted == 1


def test_a_close_reaches_the_other_side(upstream: _Upstream) -> None:
    relay = Relay(("127.0.0.1", 0), ("127.0.0.1", upstream.port), DELAY)
    with RelayThread(relay) as r:
        c = socket.create_connection(("127.0.0.1", r.port), timeout=30)
        assert _recv_exactly(c, len(_Upstream.GREETING)) == _Upstream.GREETING
        c.shutdown(socket.SHUT_WR)  # client -> upstream: EOF
        assert upstream.eof.wait(timeout=30)
        # the upstream then closes: the client reads EOF
        assert c.recv(1) == b""
        c.close()


def test_a_refused_upstream_closes_the_client() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens here once closed
    relay = Relay(("127.0.0.1", 0), ("127.0.0.1", dead), DELAY)
    with RelayThread(relay) as r, socket.create_connection(("127.0.0.1", r.port), timeout=30) as c:
        assert c.recv(1) == b""


def test_the_loss_table_drops_a_share_of_each_direction_and_counts() -> None:
    text = loss.ruleset("veth0b", 2)
    assert 'iifname "veth0b" numgen random mod 100 < 2 counter drop' in text
    assert 'oifname "veth0b" numgen random mod 100 < 2 counter drop' in text
    assert "hook input" in text and "hook output" in text
    with pytest.raises(ValueError, match="loss must be"):
        loss.ruleset("veth0b", 0)
    # the shape of `nft -j list table inet secagg_chaos`
    listing = {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": loss.TABLE}},
            *[
                {
                    "rule": {
                        "chain": chain,
                        "expr": [{"match": {}}, {"counter": {"packets": n, "bytes": 1}}, {v: None}],
                    }
                }
                for chain, n, v in (("lossin", 3, "drop"), ("lossin", 97, "accept"), ("lossout", 2, "drop"))
            ],
        ]
    }
    c = loss.parse_counts(json.dumps(listing))
    assert (c.dropped_in, c.passed_in, c.dropped_out, c.passed_out, c.dropped) == (3, 97, 2, 0, 5)


def test_slow_link_plans_the_issues_figures_and_says_why_it_cannot_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (p,) = plan(["slow-link"], ["plain"], sites=3)
    assert (p.spec.target, p.spec.delay_s, p.spec.loss_pct) == ("site-2", 0.2, 2)
    monkeypatch.setattr(loss.shutil, "which", lambda name: None)
    why = unavailable(["baseline", "slow-link"])
    assert why is not None and "slow-link" in why
    assert "no ip command" in why or "no nft command" in why or "not root" in why


def test_aggregator_partitions_cut_the_aggregator_and_keep_every_site_required() -> None:
    runs = plan(
        ["partition-aggregator-10s", "partition-aggregator-60s", "partition-aggregator-timeout"],
        ["he"],
        sites=3,
    )
    assert [(p.spec.target, p.spec.partition_s, p.spec.min_sites) for p in runs] == [
        ("aggregator", 10.0, None),
        ("aggregator", 60.0, None),
        ("aggregator", 45.0, 2),
    ]
    # "longer than the round timeout": cut while the sites train, for longer than the round timeout,
    # so the round's uploads time out and the round is retried, not given up
    timeout = runs[2].spec
    assert timeout.partition_s is not None and timeout.partition_s > timeout.round_timeout
    assert (timeout.partition_at, runs[2].label) == ("readies", "45 s cut at ready 2")
    assert timeout.slow_last_s > 0 and {p.spec.partition_at for p in runs[:2]} == {"after_round_1"}


def test_the_cut_at_ready_counts_that_rounds_readies(tmp_path: Path) -> None:
    from secagg.chaos.run import _readies

    log = tmp_path / "state" / "aggregator" / "audit.jsonl"
    log.parent.mkdir(parents=True)
    assert _readies(tmp_path, 2) == 0
    log.write_text(
        '{"event":"site_ready","round":1,"site":"site-1"}\n{"event":"roster","round":2,"seq":4}\n'
        '{"event":"site_ready","round":2,"site":"site-1"}\n{"event":"site_ready","round":12,"site":"site-2"}\n'
    )
    assert _readies(tmp_path, 2) == 1


def test_a_slow_last_site_trains_longer_in_the_job(tmp_path: Path) -> None:
    import yaml

    from secagg.chaos import job

    job.write_job(
        tmp_path / "j",
        mode="plain",
        rounds=1,
        min_sites=2,
        round_timeout=5,
        sleep=0,
        slow_site="site-3",
        slow_s=3.0,
    )
    params = yaml.safe_load((tmp_path / "j" / "job.yaml").read_text())["params"]
    assert params == {"sleep": 0, "slow_site": "site-3", "slow_s": 3.0}
    assert 'task.params.get("slow_site")' in (tmp_path / "j" / "train.py").read_text()


def test_the_aggregators_slow_link_slows_every_site_at_once() -> None:
    (p,) = plan(["slow-link-aggregator"], ["mask"], sites=5)
    assert (p.spec.target, p.spec.delay_s, p.spec.loss_pct) == ("aggregator", 0.2, 2)
    assert p.spec.min_sites is None  # every site required: each one's traffic crosses the slow link


def test_the_relay_sits_on_the_path_of_whoever_is_behind_the_link() -> None:
    from secagg.chaos.net import Link
    from secagg.chaos.run import _aggregator_bind
    from secagg.chaos.slow import SlowLink, relay_ends

    link = Link("chaos7", "chaos7a", "chaos7b", "10.231.7.1", "10.231.7.2")
    # a site's: its dial of the aggregator's address lands on the relay, which goes out over the veth
    assert relay_ends(link, 4000, "site") == ("10.231.7.1:4000", "10.231.7.3:4000")
    # the aggregator's: every site dials the namespace's address, the relay forwards to loopback
    assert relay_ends(link, 4000, "aggregator") == ("10.231.7.2:4000", "127.0.0.1:4000")
    with pytest.raises(ValueError, match="not 'admin'"):
        relay_ends(link, 4000, "admin")
    # the aggregator must not listen where its relay does, nor be reachable around it
    agg = SlowLink(link, 4000, 0.2, 2, Path("unused"), "aggregator")
    site = SlowLink(link, 4000, 0.2, 2, Path("unused"))
    assert _aggregator_bind("10.231.7.2", agg) == "127.0.0.1"
    assert _aggregator_bind("10.231.7.1", site) == "0.0.0.0"
    assert _aggregator_bind("127.0.0.1", None) == "127.0.0.1"
