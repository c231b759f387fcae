"""``tee`` under ``distributed_gaussian``: the enclave sums sealed integer shares as ``mask`` does.

The reference is the mask protocol itself, run on the same integer shares: its unmasked sum (in
units 2^-F, with weight 2^-(F-f) a site) scaled to 2^-f is bit for bit the tee enclave's windowed sum,
wrap-around mod 2^32 included, and the enclave's total weight is the share count where mask's is
``n 2^-(F-f)``: the same uniform mean. A round mixing shares with weighted updates, or two fixed
points, refuses the odd upload (``share_mismatch``); a share must be U32 residues throughout.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.agent.protect import protect_plain, protect_share, share_size
from secagg.aggregator.modes import BadUpload, ModeContext
from secagg.aggregator.modes.tee import TeeCombiner, TeeMode, round_kind
from secagg.aggregator.modes.windows import BytesSource, Layout
from secagg.bundle import BundleSpec
from secagg.errors import UpdateRejected
from secagg.framing import frame
from secagg.jobs.spec import JobSpec
from secagg.mask.messages import AdvertiseKeys, EncryptedShare, UnmaskRequest
from secagg.mask.spooled import MaskedSource
from secagg.privacy.shares import FRAC_BITS_KEY, SHARE_KEY, read_sum, residues
from secagg.tee import DevTeeAttester, Enclave, sealing, suites

SHAPES = {"w": (37, 29), "empty": (0, 3), "b": (11,), "s": ()}
SPEC = BundleSpec(tuple(BundleSpec.of({k: np.zeros(v) for k, v in SHAPES.items()}).tensors))
SITES = ["site-1", "site-2", "site-3"]
F = 16


@pytest.fixture(scope="module")
def enclave() -> Enclave:
    return Enclave(DevTeeAttester(ec.generate_private_key(ec.SECP384R1()), b"\x11" * 32))


def _seal(enclave: Enclave, pieces: Any, site: str, size: int | None = None) -> bytes:
    suite = enclave.announcement.hpke_keys[0][0]
    public = suites.load_public(suite, enclave.announcement.public_key(suite))
    ctx = sealing.Context("job-1", 2, site, enclave.announcement.digest())
    return b"".join(frame(sealing.seal_chunks(pieces, public, suite, ctx, size=size, chunk_size=1500)))


def _shares(big: bool = False) -> dict[str, np.ndarray]:
    """Integer shares with noise-like spread; ``big``: entries whose sum leaves the signed 32-bit range."""
    rng = np.random.default_rng(7)
    out = {s: rng.integers(-(2**20), 2**20, SPEC.size, dtype=np.int64) for s in SITES}
    if big:
        for s in SITES:
            out[s][:4] = 2**30  # three of these sum to 3 * 2^30: wraps, as it would in mask
    return out


def _write(tmp: Path, enclave: Enclave, shares: dict[str, np.ndarray], frac_bits: int = F) -> dict[str, Path]:
    paths = {}
    for s, k in shares.items():
        paths[s] = tmp / f"{s}.upload"
        body = b"".join(protect_share(SPEC, k, frac_bits))
        assert len(body) == share_size(SPEC, frac_bits)
        paths[s].write_bytes(_seal(enclave, body, s))
    return paths


def _mask_sum(shares: dict[str, np.ndarray], mask_frac_bits: int) -> tuple[np.ndarray, float]:
    """mask's unmasked sum of the same shares (each sent with weight 2^-(F_mask - f)) and its weight."""
    from secagg.mask import MaskClient, MaskConfig, MaskServer
    from secagg.mask.sim import make_participants

    cfg = MaskConfig.recommended(len(SITES), clip=1.0, frac_bits=mask_frac_bits)
    ca, parts = make_participants(len(SITES), project="w")
    names = [p.name for p in parts]
    server = MaskServer(cfg, names, "job", 1, SPEC.size)
    clients = [MaskClient(p.name, p.key, p.cert, ca, cfg, "job", 1, sites=names) for p in parts]
    for c in clients:
        server.collect_keys(AdvertiseKeys.from_bytes(c.advertise().to_bytes()))
    roster = server.roster()
    for c in clients:
        server.collect_shares(c.name, c.share_keys(roster))
    routed = server.route_shares()
    weight = 2.0 ** -(mask_frac_bits - F)
    for c, k in zip(clients, shares.values(), strict=True):
        mine = [EncryptedShare.from_bytes(s.to_bytes()) for s in routed[c.name]]
        msg = c.masked_input(None, weight, mine, integers=k)  # type: ignore[arg-type]
        server.collect_masked_source(MaskedSource(BytesSource(msg.to_bytes())))
    request = UnmaskRequest.from_bytes(server.unmask_request().to_bytes())
    unmasked = server.finish_windows([c.unmask(request) for c in clients], 1000)
    total = np.concatenate([w.copy() for _s, w in unmasked.windows])
    server.close()
    return total, unmasked.weight


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("window", [8, 100, 1 << 20])
def test_the_enclave_sums_shares_bit_for_bit_as_mask_does(
    tmp_path: Path, enclave: Enclave, big: bool, window: int
) -> None:
    shares = _shares(big)
    paths = _write(tmp_path, enclave, shares)
    comb = TeeCombiner(SPEC, window, enclave, "job-1")
    for s in SITES:
        comb.check(s, 2, paths[s])
    got = np.array(comb.sum(2, paths, tmp_path / "sum.partial"))
    assert 2 in comb.share_rounds
    # the definition: residues added mod 2^32, read signed, times 2^-f
    total = np.zeros(SPEC.size, np.uint32)
    for k in shares.values():
        np.add(total, residues(k), out=total)
    assert got.tobytes() == read_sum(total, F).tobytes()
    exact = sum(shares.values()) * 2.0**-F
    assert np.array_equal(got, exact) != big  # the wrapped entries differ from the exact sum
    # mask on the same shares: its sum at 2^-F_mask, its weight n 2^-(F_mask - f)
    mask_total, mask_weight = _mask_sum(shares, 20)
    assert (mask_total * 2.0**4).tobytes() == got.tobytes()
    assert mask_weight == len(SITES) * 2.0**-4


def _mode(enclave: Enclave) -> TeeMode:
    spec = JobSpec.model_validate(
        {"name": "j", "rounds": 1, "min_sites": 2, "mode": "tee", "model": "m", "entry": "t.py"}
    )
    ctx = ModeContext("job-1", spec, SPEC, None, None, threading.Condition(), enclave)  # type: ignore[arg-type]
    return TeeMode(ctx)


def test_a_share_round_averages_uniformly_and_a_weighted_one_by_the_roster(
    tmp_path: Path, enclave: Enclave
) -> None:
    mode = _mode(enclave)
    weights = {"site-1": 0.2, "site-2": 0.3, "site-3": 0.5}
    paths = _write(tmp_path, enclave, _shares())
    mode.combine(2, paths, tmp_path / "sum.partial")
    assert mode.total_weight(2, paths, weights) == 3.0
    floats = {}
    for i, s in enumerate(SITES):
        floats[s] = tmp_path / f"{s}.float"
        vec = np.full(SPEC.size, 0.1 * (i + 1))
        floats[s].write_bytes(_seal(enclave, b"".join(protect_plain(SPEC, vec)), s))
    mode.combine(2, floats, tmp_path / "sum.partial")
    assert mode.total_weight(2, floats, weights) == pytest.approx(1.0)


def test_a_mixed_round_refuses_the_odd_upload(tmp_path: Path, enclave: Enclave) -> None:
    shares = _shares()
    paths = _write(tmp_path, enclave, shares)
    odd = tmp_path / "odd.upload"
    odd.write_bytes(_seal(enclave, b"".join(protect_plain(SPEC, np.zeros(SPEC.size))), "site-2"))
    comb = TeeCombiner(SPEC, 4096, enclave, "job-1")
    with pytest.raises(BadUpload) as err:
        comb.sum(2, {**paths, "site-2": odd}, tmp_path / "sum.partial")
    assert err.value.site == "site-2" and getattr(err.value.reason, "code", "") == "share_mismatch"
    # another fixed point is another kind: the two at 2^-16 win over the one at 2^-12
    (tmp_path / "o").mkdir()
    other = _write(tmp_path / "o", enclave, {"site-3": shares["site-3"]}, frac_bits=12)
    with pytest.raises(BadUpload) as err:
        comb.sum(2, {**paths, **other}, tmp_path / "sum.partial")
    assert err.value.site == "site-3" and getattr(err.value.reason, "code", "") == "share_mismatch"


def test_round_kind_is_the_majority_and_a_tie_goes_to_shares() -> None:
    assert round_kind({"a": None, "b": None, "c": 16}) is None
    assert round_kind({"a": None, "b": 16}) == 16
    assert round_kind({"a": 12, "b": 16}) == 16


def _edited(edit: Any) -> bytes:
    """A share's stream with its header edited."""
    body = b"".join(protect_share(SPEC, _shares()["site-1"], F))
    n = int.from_bytes(body[:8], "little")
    head = json.loads(body[8 : 8 + n])
    edit(head)
    text = json.dumps(head, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + body[8 + n :]


@pytest.mark.parametrize(
    ("edit", "code"),
    [
        (lambda h: h["__metadata__"].update({SHARE_KEY: "gaussian"}), "malformed"),
        (lambda h: h["__metadata__"].update({FRAC_BITS_KEY: "31"}), "malformed"),
        (lambda h: h["__metadata__"].update({FRAC_BITS_KEY: "-1"}), "malformed"),
        (lambda h: h["__metadata__"].pop(SHARE_KEY), "malformed"),  # a fixed point without a share
        (lambda h: h["b"].update({"dtype": "I32"}), "dtype"),
    ],
)
def test_a_share_that_is_not_one_is_refused_when_it_arrives(
    tmp_path: Path, enclave: Enclave, edit: Any, code: str
) -> None:
    path = tmp_path / "up"
    path.write_bytes(_seal(enclave, _edited(edit), "site-1"))
    with pytest.raises(UpdateRejected) as err:
        TeeCombiner(SPEC, 4096, enclave, "job-1").check("site-1", 2, path)
    assert err.value.code == code


def test_the_sites_share_stream_names_itself_and_carries_residues() -> None:
    k = _shares()["site-1"]
    k[:3] = [-1, -(2**31), 2**31 - 1]
    body = b"".join(protect_share(SPEC, k, F))
    layout = Layout.parse(BytesSource(body))
    layout.check(SPEC)
    assert layout.meta[SHARE_KEY] == "distributed_gaussian" and layout.meta[FRAC_BITS_KEY] == "16"
    assert {e.dtype.str for e in layout.entries.values()} == {"<u4"}
    first = layout.entries[layout.order[0]]
    vals = np.frombuffer(body[first.start : first.start + 12], "<u4")
    assert vals.tolist() == [2**32 - 1, 2**31, 2**31 - 1]
