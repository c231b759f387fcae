"""End-to-end rounds: correctness within the quantisation bound, dropouts, and clean aborts."""

from __future__ import annotations

import numpy as np
import pytest

from secagg.mask import MaskConfig, quantisation_bound
from secagg.mask.errors import RoundAborted
from secagg.mask.messages import UnmaskResponse
from secagg.mask.sim import PHASES, Participant, make_participants, run_round
from secagg.provision.kit import load_kit

FRAC = 16


@pytest.fixture(scope="module")
def eight():
    return make_participants(8)


def _inputs(names, length=64, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for s in names:
        w = float(rng.uniform(0.1, 1.0))
        out[s] = (w * rng.uniform(-1, 1, length), w)
    return out


def _check(result, inputs):
    survivors = result.survivors
    expect = np.sum([inputs[s][0] for s in survivors], axis=0)
    assert np.max(np.abs(result.sum - expect)) <= quantisation_bound(len(survivors), FRAC)
    assert abs(result.total_weight - sum(inputs[s][1] for s in survivors)) <= quantisation_bound(
        len(survivors), FRAC
    )


def _responses(view):
    return [UnmaskResponse.from_bytes(d) for _, _, d in view if d.startswith(_TAG)]


_TAG = UnmaskResponse("a", "j", 0, {}, {}).to_bytes()[: 5 + len(UnmaskResponse.TAG)]


def test_three_provisioned_sites_weighted_sum(workspace):
    kits = [load_kit(workspace / f"site-{i}") for i in (1, 2, 3)]
    parts = [Participant(k.name, k.private_key, k.cert) for k in kits]
    cfg = MaskConfig(threshold=2, neighbours=2, clip=1.0, frac_bits=FRAC)
    inputs = _inputs([p.name for p in parts])
    result = run_round(kits[0].ca_cert, parts, cfg, inputs)
    assert result.survivors == ["site-1", "site-2", "site-3"]
    _check(result, inputs)
    avg = result.sum / result.total_weight  # what the aggregator does with it
    expect = sum(inputs[s][0] for s in inputs) / sum(inputs[s][1] for s in inputs)
    assert np.allclose(avg, expect, atol=1e-3)


@pytest.mark.parametrize("phase", PHASES)
def test_one_dropout_at_each_phase_is_survived(eight, phase):
    ca, parts = eight
    cfg = MaskConfig(threshold=3, neighbours=4, clip=1.0, frac_bits=FRAC)
    inputs = _inputs([p.name for p in parts], seed=1)
    result = run_round(ca, parts, cfg, inputs, drop={"site-3": phase})
    expected_in = phase == "unmask"  # it uploaded, so it counts; its self mask comes from neighbours
    assert ("site-3" in result.survivors) is expected_in
    _check(result, inputs)
    # no site ever had both its self-mask and its mask-key shares revealed
    revealed_self = {o for r in _responses(result.view) for o in r.self_mask_shares}
    revealed_key = {o for r in _responses(result.view) for o in r.mask_key_shares}
    assert not revealed_self & revealed_key
    if phase == "upload":
        assert revealed_key == {"site-3"}


def test_dropouts_at_every_phase_at_once_full_graph():
    ca, parts = make_participants(10)
    cfg = MaskConfig(threshold=6, neighbours=9, clip=1.0, frac_bits=FRAC)
    inputs = _inputs([p.name for p in parts], seed=2)
    drop = {"site-1": "advertise", "site-2": "share", "site-5": "upload", "site-8": "unmask"}
    result = run_round(ca, parts, cfg, inputs, drop=drop)
    assert result.survivors == ["site-10", "site-3", "site-4", "site-6", "site-7", "site-8", "site-9"]
    _check(result, inputs)
    # one more dropout leaves 5 < t answering: clean abort
    with pytest.raises(RoundAborted, match="answered"):
        run_round(ca, parts, cfg, inputs, drop=drop | {"site-9": "unmask"})


@pytest.mark.parametrize(
    ("drop", "where"),
    [
        ({"site-1": "advertise", "site-2": "advertise"}, "advertised"),
        ({"site-1": "share", "site-2": "share"}, "distributed shares"),
        ({"site-1": "upload", "site-2": "upload"}, "uploaded"),
        ({"site-1": "unmask", "site-2": "unmask"}, "answered"),
    ],
)
def test_below_threshold_aborts_and_reveals_nothing(workspace, drop, where):
    kits = [load_kit(workspace / f"site-{i}") for i in (1, 2, 3)]
    parts = [Participant(k.name, k.private_key, k.cert) for k in kits]
    cfg = MaskConfig(threshold=2, neighbours=2, clip=1.0, frac_bits=FRAC)
    view: list = []
    with pytest.raises(RoundAborted, match=where):
        run_round(kits[0].ca_cert, parts, cfg, _inputs([p.name for p in parts]), drop=drop, view=view)
    # fewer than t shares of any secret ever reached the aggregator
    counts: dict[tuple[str, str], int] = {}
    for r in _responses(view):
        for o in r.self_mask_shares:
            counts[("b", o)] = counts.get(("b", o), 0) + 1
        for o in r.mask_key_shares:
            counts[("c", o)] = counts.get(("c", o), 0) + 1
    assert all(c < cfg.threshold for c in counts.values())


def test_sixteen_sites_client_cost_follows_neighbourhood():
    ca, parts = make_participants(16)
    cfg = MaskConfig(threshold=3, neighbours=4, clip=1.0, frac_bits=FRAC)
    inputs = _inputs([p.name for p in parts], length=16, seed=3)
    result = run_round(ca, parts, cfg, inputs, drop={"site-9": "upload", "site-12": "unmask"})
    _check(result, inputs)
    from secagg.mask.messages import EncryptedShare

    per_sender: dict[str, int] = {}
    for _, site, data in result.view:
        if site and data.startswith(EncryptedShare.TAG.encode(), 5):
            per_sender[site] = per_sender.get(site, 0) + 1
    assert set(per_sender.values()) == {4}  # k shares each, not n - 1


def test_a_streamed_masked_input_unmasks_like_one_made_in_memory(workspace) -> None:
    """``masked_input_to`` (windows of 3 values, masks at their offsets) writes what the server reads
    as a masked input: mixed with in-memory ones, the round unmasks to the same sum."""
    import io

    from secagg.mask import MaskClient, MaskedInput, MaskServer
    from secagg.provision.kit import load_kit

    cfg = MaskConfig(threshold=2, neighbours=2, clip=1.0, frac_bits=16)
    sites = ["site-1", "site-2", "site-3"]
    kits = {n: load_kit(workspace / n) for n in sites}
    ca = kits["site-1"].ca_cert
    clients = {
        n: MaskClient(n, kits[n].private_key, kits[n].cert, ca, cfg, "j", 1, sites=sites) for n in sites
    }
    server = MaskServer(cfg, sites, "j", 1, 10)
    for c in clients.values():
        server.collect_keys(c.advertise())
    roster = server.roster()
    for n, c in clients.items():
        server.collect_shares(n, c.share_keys(roster))
    routed = server.route_shares()
    vecs = {n: np.linspace(-0.5, 0.5, 10) * (i + 1) / 4 for i, n in enumerate(sites)}
    for n, c in clients.items():
        if n == "site-2":
            buf = io.BytesIO()
            windows = ((s, vecs[n][s : s + 3]) for s in range(0, 10, 3))
            written = c.masked_input_to(buf, windows, 10, 0.25, routed[n])
            assert written == len(buf.getvalue())
            server.collect_masked(MaskedInput.from_bytes(buf.getvalue()))
        else:
            server.collect_masked(c.masked_input(vecs[n], 0.25, routed[n]))
    request = server.unmask_request()
    total, weight = server.finish([c.unmask(request) for c in clients.values()])
    assert weight == pytest.approx(0.75)
    assert np.max(np.abs(total - sum(vecs.values()))) < 3 * 2**-16
