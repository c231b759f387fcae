"""The aggregator's own checks: order, shape, duplicates, and consistency of what sites reveal."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from secagg.errors import ConfigError, IntegrityError
from secagg.mask import MaskClient, MaskConfig, MaskServer
from secagg.mask.errors import ProtocolViolation
from secagg.mask.messages import MaskedInput
from secagg.mask.sim import make_participants

CFG = MaskConfig(threshold=3, neighbours=4, clip=1.0, frac_bits=16)


@pytest.fixture(scope="module")
def five():
    return make_participants(5)


def _setup(five, length=4):
    ca, parts = five
    names = [p.name for p in parts]
    clients = {p.name: MaskClient(p.name, p.key, p.cert, ca, CFG, "j", 1, sites=names) for p in parts}
    return clients, MaskServer(CFG, names, "j", 1, length)


def test_server_refuses_out_of_order_duplicate_and_misshapen(five):
    clients, server = _setup(five)
    with pytest.raises(ProtocolViolation, match="phase"):
        server.route_shares()
    adv = clients["site-1"].advertise()
    server.collect_keys(adv)
    with pytest.raises(ProtocolViolation, match="twice"):
        server.collect_keys(adv)
    with pytest.raises(ProtocolViolation, match="job"):
        server.collect_keys(dataclasses.replace(clients["site-2"].advertise(), job="other"))
    for n in ("site-3", "site-4", "site-5"):
        server.collect_keys(clients[n].advertise())
    roster = server.roster()
    assert [m.site for m in roster] == ["site-1", "site-3", "site-4", "site-5"]
    with pytest.raises(ProtocolViolation, match="did not advertise"):
        server.collect_shares("site-2", {})
    for n in ("site-1", "site-3", "site-4", "site-5"):
        server.collect_shares(n, clients[n].share_keys(roster))
    routed = server.route_shares()
    msg = clients["site-1"].masked_input(np.zeros(4), 0.5, routed["site-1"])
    with pytest.raises(ProtocolViolation, match="elements"):
        server.collect_masked(dataclasses.replace(msg, data=msg.data + b"\0\0\0\0"))
    server.collect_masked(msg)
    with pytest.raises(ProtocolViolation, match="twice"):
        server.collect_masked(msg)
    with pytest.raises(ProtocolViolation, match="did not distribute"):
        server.collect_masked(MaskedInput("site-2", "j", 1, bytes(20)))


def test_server_detects_a_corrupted_share(five):
    clients, server = _setup(five)
    for c in clients.values():
        server.collect_keys(c.advertise())
    roster = server.roster()
    for n, c in clients.items():
        server.collect_shares(n, c.share_keys(roster))
    routed = server.route_shares()
    for n, c in clients.items():
        server.collect_masked(c.masked_input(np.full(4, 0.1), 0.5, routed[n]))
    req = server.unmask_request()
    responses = [c.unmask(req) for c in clients.values()]
    idx, value = responses[0].self_mask_shares["site-2"]
    responses[0].self_mask_shares["site-2"] = (idx, bytes(32))
    with pytest.raises(IntegrityError, match="inconsistent"):
        server.finish(responses)


def test_server_checks_parameters_for_its_site_count():
    with pytest.raises(ConfigError, match="majority"):
        MaskServer(
            MaskConfig(threshold=2, neighbours=4, clip=1.0, frac_bits=8),
            [f"s{i}" for i in range(8)],
            "j",
            1,
            4,
        )
