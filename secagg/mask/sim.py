"""An in-memory driver: N sites and one aggregator run every phase, with sites dropping on cue.

It passes every message through ``to_bytes``/``from_bytes`` (as a transport would) and records each
payload the aggregator receives or sends, so tests can inspect exactly what the aggregator saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.mask.client import MaskClient
from secagg.mask.config import MaskConfig
from secagg.mask.messages import AdvertiseKeys, EncryptedShare, MaskedInput, UnmaskRequest, UnmaskResponse
from secagg.mask.server import MaskServer

#: the phase whose message a site never sends (it sends nothing after either):
#: "advertise" - never advertises keys; "share" - drops after key advertisement;
#: "upload" - drops after share distribution; "unmask" - drops after its masked upload, during unmasking
Phase = Literal["advertise", "share", "upload", "unmask"]
PHASES: tuple[Phase, ...] = ("advertise", "share", "upload", "unmask")


@dataclass(frozen=True)
class Participant:
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def make_participants(n: int, project: str = "mask-sim") -> tuple[x509.Certificate, list[Participant]]:
    """A throwaway CA and ``n`` site certificates named ``site-1`` ... ``site-n``."""
    from secagg.provision.ca import issue_cert, make_ca

    ca_key, ca_cert = make_ca(project, days=1)
    out = []
    for i in range(1, n + 1):
        key, cert = issue_cert(ca_key, ca_cert, name=f"site-{i}", org=f"org-{i}", role="site", days=1)
        out.append(Participant(f"site-{i}", key, cert))
    return ca_cert, out


@dataclass
class RoundResult:
    sum: np.ndarray
    total_weight: float
    survivors: list[str]
    #: every payload the aggregator received or sent, in order: (direction, message type, bytes)
    view: list[tuple[str, str, bytes]] = field(default_factory=list)
    #: bytes each site sent (keys + shares + masked input + unmask response)
    sent_bytes: dict[str, int] = field(default_factory=dict)


def run_round(
    ca_cert: x509.Certificate,
    participants: Sequence[Participant],
    config: MaskConfig,
    inputs: Mapping[str, tuple[np.ndarray, float]],
    *,
    job: str = "job-1",
    round: int = 1,
    drop: Mapping[str, Phase] | None = None,
    view: list[tuple[str, str, bytes]] | None = None,
) -> RoundResult:
    """Run one round; ``inputs[site] = (weight-scaled update, weight)``. Raises what the protocol raises
    (:class:`~secagg.mask.errors.RoundAborted` when too few remain); ``view`` is filled even then."""
    drop = dict(drop or {})
    bad = {s: p for s, p in drop.items() if p not in PHASES}
    if bad:
        raise ValueError(f"unknown drop phases {bad}; use one of {PHASES}")
    view = [] if view is None else view
    sent: dict[str, int] = {p.name: 0 for p in participants}
    names = [p.name for p in participants]
    length = len(next(iter(inputs.values()))[0])
    server = MaskServer(config, names, job, round, length)
    clients = {
        p.name: MaskClient(p.name, p.key, p.cert, ca_cert, config, job, round, sites=names)
        for p in participants
    }

    def up(site: str, data: bytes) -> bytes:
        view.append(("in", site, data))
        sent[site] += len(data)
        return data

    def down(data: bytes) -> bytes:
        view.append(("out", "", data))
        return data

    def alive(site: str, phase: Phase) -> bool:
        d = drop.get(site)
        return d is None or PHASES.index(phase) < PHASES.index(d)

    for s, c in clients.items():
        if alive(s, "advertise"):
            server.collect_keys(AdvertiseKeys.from_bytes(up(s, c.advertise().to_bytes())))
    roster_bytes = [down(m.to_bytes()) for m in server.roster()]
    for s, c in clients.items():
        if alive(s, "share") and s in {m.site for m in server.roster()}:
            shares = c.share_keys([AdvertiseKeys.from_bytes(b) for b in roster_bytes])
            wire = {r: EncryptedShare.from_bytes(up(s, sh.to_bytes())) for r, sh in shares.items()}
            server.collect_shares(s, wire)
    routed = server.route_shares()
    for s, lst in routed.items():
        if alive(s, "upload"):
            mine = [EncryptedShare.from_bytes(down(sh.to_bytes())) for sh in lst]
            vec, weight = inputs[s]
            msg = clients[s].masked_input(vec, weight, mine)
            server.collect_masked(MaskedInput.from_bytes(up(s, msg.to_bytes())))
    req_bytes = down(server.unmask_request().to_bytes())
    responses = []
    for s in server.survivors:
        if alive(s, "unmask"):
            resp = clients[s].unmask(UnmaskRequest.from_bytes(req_bytes))
            responses.append(UnmaskResponse.from_bytes(up(s, resp.to_bytes())))
    total, weight = server.finish(responses)
    return RoundResult(total, weight, server.survivors, view, sent)
