"""A malicious or curious aggregator: what sites refuse, and what the aggregator gets to see."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secagg.errors import IdentityError, IntegrityError
from secagg.mask import MaskClient, MaskConfig, MaskServer, keys
from secagg.mask.errors import ProtocolViolation, RoundAborted, UnmaskRefused
from secagg.mask.messages import MaskedInput, UnmaskRequest
from secagg.mask.quantize import quantize
from secagg.mask.sim import Participant, make_participants, run_round
from secagg.provision.kit import load_kit

JOB, ROUND = "job-a", 4
CFG = MaskConfig(threshold=2, neighbours=2, clip=1.0, frac_bits=16)
SITES = ["site-1", "site-2", "site-3"]


@pytest.fixture(scope="module")
def kits(workspace):
    return {n: load_kit(workspace / n) for n in [*SITES, "aggregator"]}


def _clients(kits):
    ca = kits["site-1"].ca_cert
    return {
        n: MaskClient(n, kits[n].private_key, kits[n].cert, ca, CFG, JOB, ROUND, sites=SITES) for n in SITES
    }


def _to_unmask(kits):
    clients = _clients(kits)
    server = MaskServer(CFG, SITES, JOB, ROUND, 8)
    for c in clients.values():
        server.collect_keys(c.advertise())
    roster = server.roster()
    for n, c in clients.items():
        server.collect_shares(n, c.share_keys(roster))
    routed = server.route_shares()
    for n, c in clients.items():
        server.collect_masked(c.masked_input(np.full(8, 0.25), 0.5, routed[n]))
    return clients, server


def test_site_refuses_request_for_both_shares_of_one_site(kits):
    clients, _ = _to_unmask(kits)
    evil = UnmaskRequest(JOB, ROUND, ("site-1", "site-2", "site-3"), ("site-2",))
    with pytest.raises(UnmaskRefused, match="both"):
        clients["site-1"].unmask(evil)


def test_site_refuses_to_flip_a_site_between_requests(kits):
    clients, _ = _to_unmask(kits)
    first = UnmaskRequest(JOB, ROUND, ("site-1", "site-2", "site-3"), ())
    resp = clients["site-1"].unmask(first)
    assert set(resp.self_mask_shares) == set(SITES) and not resp.mask_key_shares
    assert clients["site-1"].unmask(first) == resp  # a retransmitted request is answered the same
    # now claim site-2 dropped, to get its mask key and so strip its pairwise masks
    second = UnmaskRequest(JOB, ROUND, ("site-1", "site-3"), ("site-2",))
    with pytest.raises(UnmaskRefused, match="contradicts"):
        clients["site-1"].unmask(second)
    # and the reverse order: key share first, then a self-mask share
    clients2, _ = _to_unmask(kits)
    resp = clients2["site-3"].unmask(second)
    assert set(resp.mask_key_shares) == {"site-2"}
    with pytest.raises(UnmaskRefused):
        clients2["site-3"].unmask(first)


def test_site_refuses_request_that_calls_it_dropped_or_too_small(kits):
    clients, _ = _to_unmask(kits)
    with pytest.raises(UnmaskRefused, match="uploaded"):
        clients["site-1"].unmask(UnmaskRequest(JOB, ROUND, ("site-2", "site-3"), ("site-1",)))
    with pytest.raises(RoundAborted):
        clients["site-1"].unmask(UnmaskRequest(JOB, ROUND, ("site-1",), ("site-2", "site-3")))
    with pytest.raises(ProtocolViolation):
        clients["site-1"].unmask(UnmaskRequest(JOB, ROUND + 1, tuple(SITES), ()))


def _substituted(msg, **changes):
    return dataclasses.replace(msg, **changes)


def _raw_pk() -> bytes:
    return (
        X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def test_aggregator_cannot_substitute_a_public_key(kits):
    agg = kits["aggregator"]
    cases = {}
    # 1. swap site-2's mask key, keep its signature
    cases["swap"] = lambda m: _substituted(m, mask_pk=_raw_pk())
    # 2. swap the key and re-sign with the aggregator's own certificate key

    def resign(m):
        pk = _raw_pk()
        payload = keys.advert_payload(JOB, ROUND, m.site, pk, m.share_pk)
        return _substituted(
            m,
            mask_pk=pk,
            cert_der=agg.cert.public_bytes(serialization.Encoding.DER),
            signature=keys.sign(agg.private_key, payload),
        )

    cases["aggregator-signed"] = resign

    # 3. a "site-2" certificate from another CA, signing the aggregator's keys
    _, foreign = make_participants(2, project="other")

    def foreign_ca(m):
        pk = _raw_pk()
        payload = keys.advert_payload(JOB, ROUND, m.site, pk, m.share_pk)
        return _substituted(
            m,
            mask_pk=pk,
            cert_der=foreign[1].cert.public_bytes(serialization.Encoding.DER),
            signature=keys.sign(foreign[1].key, payload),
        )

    cases["other-ca"] = foreign_ca
    # 4. replay site-2's keys from another round (signature binds the round)
    cases["other-round"] = lambda m: _substituted(m, round=ROUND + 1)
    expected = {
        "swap": IntegrityError,
        "aggregator-signed": IdentityError,
        "other-ca": IdentityError,
        "other-round": ProtocolViolation,
    }
    for name, tamper in cases.items():
        clients = _clients(kits)
        roster = [c.advertise() for c in clients.values()]
        roster = [tamper(m) if m.site == "site-2" else m for m in roster]
        with pytest.raises(expected[name]):
            clients["site-1"].share_keys(roster)


def test_site_refuses_roster_with_its_own_key_replaced(kits):
    clients = _clients(kits)
    roster = [c.advertise() for c in clients.values()]
    roster = [_substituted(m, share_pk=_raw_pk()) if m.site == "site-1" else m for m in roster]
    with pytest.raises(IntegrityError, match="did not advertise"):
        clients["site-1"].share_keys(roster)


def test_tampered_or_rerouted_share_is_refused(kits):
    clients = _clients(kits)
    server = MaskServer(CFG, SITES, JOB, ROUND, 8)
    for c in clients.values():
        server.collect_keys(c.advertise())
    roster = server.roster()
    out = {n: c.share_keys(roster) for n, c in clients.items()}
    share = out["site-2"]["site-1"]
    flipped = _substituted(share, ciphertext=bytes([share.ciphertext[0] ^ 0x80]) + share.ciphertext[1:])
    with pytest.raises(IntegrityError, match="AES-GCM"):
        clients["site-1"].masked_input(np.zeros(8), 0.5, [out["site-3"]["site-1"], flipped])
    # site-3's share for site-2, relabelled as a share for site-1
    rerouted = _substituted(out["site-3"]["site-2"], recipient="site-1")
    clients = _clients(kits)  # fresh state
    with pytest.raises(ProtocolViolation):
        clients["site-1"].masked_input(np.zeros(8), 0.5, [rerouted])


def test_site_refuses_to_upload_without_enough_masking_neighbours(kits):
    clients, server = _clients(kits), MaskServer(CFG, SITES, JOB, ROUND, 8)
    for c in clients.values():
        server.collect_keys(c.advertise())
    roster = server.roster()
    for c in clients.values():
        c.share_keys(roster)
    # the aggregator withholds every share from site-1: its input would carry only the self mask
    with pytest.raises(RoundAborted, match="expose"):
        clients["site-1"].masked_input(np.zeros(8), 0.5, [])


def _chi2_bytes(data: bytes) -> float:
    hist = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    expected = len(data) / 256
    return float(((hist - expected) ** 2 / expected).sum())


def test_aggregator_view_holds_no_plaintext_and_masked_inputs_look_uniform():
    ca, parts = make_participants(6)
    cfg = MaskConfig(threshold=3, neighbours=4, clip=1.0, frac_bits=16)
    n = 4096
    ramp = np.linspace(-0.5, 0.5, n)
    base = {p.name: (ramp * (i + 1) / 8, 0.5) for i, p in enumerate(parts)}
    # same sum, different individual updates: move 0.1 from site-2 to site-3
    moved = dict(base)
    moved["site-2"] = (base["site-2"][0] + 0.1, 0.5)
    moved["site-3"] = (base["site-3"][0] - 0.1, 0.5)
    views = []
    for inputs in (base, moved):
        result = run_round(ca, parts, cfg, inputs, drop={"site-6": "upload"})
        expect = np.sum([inputs[s][0] for s in result.survivors], axis=0)
        assert np.max(np.abs(result.sum - expect)) <= 1e-3
        views.append(result.view)
        whole = b"".join(d for _, _, d in result.view)
        for site, (vec, _) in inputs.items():
            raw = quantize(vec, cfg.clip, cfg.frac_bits).astype("<u4").tobytes()
            # no 16-byte window of any site's quantised update appears anywhere the aggregator looked
            for off in range(0, len(raw) - 16, 997):
                assert raw[off : off + 16] not in whole, site
            assert _chi2_bytes(raw) > 5000  # the plaintext itself is far from uniform ...
        for _, _, d in result.view:
            if d[5:].startswith(MaskedInput.TAG.encode()):
                masked = MaskedInput.from_bytes(d).data
                assert _chi2_bytes(masked) < 400  # ... while each masked input is not (255 dof)
    # the two views have the same shape: the same messages between the same parties (sizes differ only
    # in DER-encoded ECDSA signatures)
    assert [(d, s, b[:40]) for d, s, b in views[0]] == [(d, s, b[:40]) for d, s, b in views[1]]
    # and a masked input is not the plaintext difference away from the other run's
    m0 = [MaskedInput.from_bytes(b) for _, _, b in views[0] if b[5:].startswith(MaskedInput.TAG.encode())]
    m1 = [MaskedInput.from_bytes(b) for _, _, b in views[1] if b[5:].startswith(MaskedInput.TAG.encode())]
    assert len(m0) == 5
    for a, b in zip(m0, m1, strict=True):
        assert len(a.data) == len(b.data) == 4 * (n + 1)
        diff = (b.vector.astype(np.uint32) - a.vector.astype(np.uint32)).astype("<u4").tobytes()
        assert _chi2_bytes(diff) < 400


def test_unused_participant_helper_names():
    ca, parts = make_participants(2)
    assert [p.name for p in parts] == ["site-1", "site-2"] and isinstance(parts[0], Participant)
    assert ca.subject != parts[0].cert.subject
