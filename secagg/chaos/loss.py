"""Real packet loss on a namespace's veth with nftables: what ``tc netem loss`` does, for a kernel
without ``sch_netem`` but with nf_tables (``numgen random``).

Every packet in and out of the interface is dropped with probability ``percent``/100, each drop
counted, so a run can show that the loss happened (a loss that never dropped a packet measured
nothing). TCP sees the drops as a lossy link does: retransmissions, not errors.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass

TABLE = "secagg_chaos"


def available() -> str | None:
    """None when ``nft`` can be run here, else why not (the scenario then refuses with this line)."""
    if shutil.which("nft") is None:
        return "no nft command (apt-get install -y nftables)"
    return None


def ruleset(iface: str, percent: int) -> str:
    """The table: one input and one output chain, each dropping ``percent``% of ``iface``'s packets."""
    if not 0 < percent < 100:
        raise ValueError(f"loss must be 1-99 %, not {percent}")
    chains = []
    for chain, hook, match in (("lossin", "input", "iifname"), ("lossout", "output", "oifname")):
        chains.append(
            f"  chain {chain} {{\n"
            f"    type filter hook {hook} priority 0; policy accept;\n"
            f'    {match} "{iface}" numgen random mod 100 < {percent} counter drop\n'
            f'    {match} "{iface}" counter accept\n'
            "  }\n"
        )
    return f"table inet {TABLE} {{\n{''.join(chains)}}}\n"


@dataclass(frozen=True)
class Counts:
    dropped_in: int = 0
    dropped_out: int = 0
    passed_in: int = 0
    passed_out: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_in + self.dropped_out


def parse_counts(listing: str) -> Counts:
    """The counters of ``nft -j list table inet TABLE``: (chain, verdict) -> packets."""
    got: dict[tuple[str, str], int] = {}
    for item in json.loads(listing).get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        packets = next((e["counter"]["packets"] for e in rule["expr"] if "counter" in e), 0)
        verdict = "drop" if any("drop" in e for e in rule["expr"]) else "accept"
        got[(rule["chain"], verdict)] = int(packets)
    return Counts(
        got.get(("lossin", "drop"), 0),
        got.get(("lossout", "drop"), 0),
        got.get(("lossin", "accept"), 0),
        got.get(("lossout", "accept"), 0),
    )


@dataclass(frozen=True)
class Loss:
    """The table in the namespace entered with ``prefix`` (:meth:`secagg.chaos.net.Link.prefix`)."""

    prefix: tuple[str, ...]
    iface: str
    percent: int

    def _nft(self, *args: str, stdin: str | None = None) -> str:
        p = subprocess.run(  # noqa: S603
            [*self.prefix, "nft", *args], input=stdin, capture_output=True, text=True, timeout=30
        )
        if p.returncode != 0:
            raise RuntimeError(f"nft {' '.join(args)}: {p.stderr.strip()}")
        return p.stdout

    def install(self) -> None:
        self._nft("-f", "-", stdin=ruleset(self.iface, self.percent))

    def counts(self) -> Counts:
        return parse_counts(self._nft("-j", "list", "table", "inet", TABLE))
