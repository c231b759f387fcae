"""The aggregator's part of cross-site evaluation, without the network: what it takes, when each phase
closes, what it publishes to whom, and the matrix it makes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secagg.aggregator.evaluation import STATE_FILE, CrossSite, receive_sealed
from secagg.aggregator.rounds import Signal
from secagg.crossval import wire
from secagg.crossval.seal import Consent, Envelope, EnvelopeError, seal_model
from secagg.errors import UpdateRejected
from secagg.provision.kit import Kit, load_kit
from secagg.reasons import Reason
from secagg.transport.chunks import encode_stream

SITES = ["site-1", "site-2", "site-3"]


@pytest.fixture(scope="module")
def kits(workspace: Path) -> dict[str, Kit]:
    return {s: load_kit(workspace / s) for s in SITES}


def _consent(kits: dict[str, Kit], site: str, share: bool = True, job: str = "job-1") -> bytes:
    k = kits[site]
    code = Reason.OK if share else Reason.XSITE_NOT_SHARED
    return json.dumps(
        Consent(job, site, share, code).signed(k.private_key, k.config.project).to_dict()
    ).encode()


def _post(x: CrossSite, kits: dict[str, Kit], site: str, topic: str, payload: bytes) -> None:
    x.post(site, kits[site].cert, kits[site].config.project, topic, payload)


MODEL = b"model" * 1000


def _model(kits: dict[str, Kit], sender: str, to: str) -> tuple[Envelope, bytes]:
    k = kits[sender]
    return seal_model(
        MODEL,
        project=k.config.project,
        job="job-1",
        sender=sender,
        sender_key=k.private_key,
        recipient=to,
        recipient_cert=kits[to].cert,
    )


def _upload(
    x: CrossSite, kits: dict[str, Kit], site: str, env: Envelope, sealed: bytes, *, cut: bool = False
) -> None:
    """What the federation does with a sealed-model upload: envelope checked, ciphertext received
    in chunks into a temporary file, then kept."""
    k = kits[site]
    checked = x.begin_model(site, k.cert, k.config.project, {"envelope": env.to_dict()}, max_plain=1 << 20)
    stream = list(encode_stream({}, [sealed]))[1:]
    received = receive_sealed(x.folder, checked, iter(stream[:-1] if cut else stream))
    x.store_model(site, checked, received)


def _consented(tmp: Path, kits: dict[str, Kit], shares: dict[str, bool]) -> CrossSite:
    x = CrossSite("job-1", tmp, round_timeout=30, started=0.0)
    for site, share in shares.items():
        _post(x, kits, site, wire.CONSENT, _consent(kits, site, share))
    assert x.advance(set(SITES), now=1.0)[0] is False
    return x


def test_consents_are_fixed_when_every_site_answered(tmp_path: Path, kits: dict[str, Kit]) -> None:
    x = CrossSite("job-1", tmp_path, round_timeout=30, started=0.0)
    _post(x, kits, "site-1", wire.CONSENT, _consent(kits, "site-1"))
    assert x.collect("site-1", wire.CONSENTS) is None  # not fixed yet
    assert x.advance(set(SITES), now=1.0) == (False, [])
    _post(x, kits, "site-2", wire.CONSENT, _consent(kits, "site-2"))
    _post(x, kits, "site-3", wire.CONSENT, _consent(kits, "site-3"))
    done, notes = x.advance(set(SITES), now=2.0)
    assert not done and notes[0][1]["share"] is True
    published = json.loads(x.collect("site-2", wire.CONSENTS))  # type: ignore[arg-type]
    assert sorted(published) == SITES
    again = x.post(
        "site-3", kits["site-3"].cert, kits["site-3"].config.project, wire.CONSENT, _consent(kits, "site-3")
    )
    assert again[1]["again"] is True  # the same answer again (its reply was lost): taken, nothing changes
    with pytest.raises(UpdateRejected) as other:
        _post(x, kits, "site-3", wire.CONSENT, _consent(kits, "site-3", share=False))
    assert other.value.code == Reason.DUPLICATE
    late = CrossSite("job-1", tmp_path / "late", round_timeout=30, started=0.0)
    _post(late, kits, "site-1", wire.CONSENT, _consent(kits, "site-1"))
    late.advance(set(SITES), now=31.0)
    with pytest.raises(UpdateRejected) as too_late:
        _post(late, kits, "site-3", wire.CONSENT, _consent(kits, "site-3"))
    assert too_late.value.code == Reason.LATE


def test_a_site_silent_past_the_timeout_is_left_out(tmp_path: Path, kits: dict[str, Kit]) -> None:
    x = CrossSite("job-1", tmp_path, round_timeout=30, started=0.0)
    for site in ("site-1", "site-2"):
        _post(x, kits, site, wire.CONSENT, _consent(kits, site))
    assert x.advance(set(SITES), now=10.0)[0] is False and x.fixed is None
    _, notes = x.advance(set(SITES), now=31.0)
    assert notes[0][1]["missing"] == ["site-3"] and x.sharing == ["site-1", "site-2"]
    assert x.collect("site-3", wire.CONSENTS) == Signal.NOT_FOR_YOU
    assert x.matrix(SITES, {}).not_shared == {"site-3": "late"}


def test_a_consent_for_someone_else_or_unsigned_is_refused(tmp_path: Path, kits: dict[str, Kit]) -> None:
    x = CrossSite("job-1", tmp_path, round_timeout=30, started=0.0)
    with pytest.raises(UpdateRejected) as other:
        _post(x, kits, "site-1", wire.CONSENT, _consent(kits, "site-2"))  # site-1 posting site-2's
    assert other.value.code == Reason.XSITE_ENVELOPE
    with pytest.raises(UpdateRejected):
        _post(x, kits, "site-1", wire.CONSENT, _consent(kits, "site-1", job="job-2"))
    forged = json.loads(_consent(kits, "site-1"))
    forged["share"] = False  # changed after signing
    with pytest.raises(EnvelopeError):
        _post(x, kits, "site-1", wire.CONSENT, json.dumps(forged).encode())


def test_no_model_travels_when_one_site_refuses(tmp_path: Path, kits: dict[str, Kit]) -> None:
    x = _consented(tmp_path, kits, {"site-1": True, "site-2": True, "site-3": False})
    assert x.share_all is False and x.sharing == []
    with pytest.raises(UpdateRejected) as refused:
        _upload(x, kits, "site-1", *_model(kits, "site-1", "site-2"))
    assert refused.value.code == Reason.XSITE_PROTOCOL
    assert x.collect("site-1", wire.INBOX) == Signal.NOT_FOR_YOU
    assert [p.name for p in (tmp_path / "xsite").iterdir()] == [STATE_FILE]


def test_models_are_relayed_sealed_and_published_per_recipient(tmp_path: Path, kits: dict[str, Kit]) -> None:
    x = _consented(tmp_path, kits, dict.fromkeys(SITES, True))
    pairs = [(a, b) for a in SITES for b in SITES if a != b]
    for a, b in pairs[:-1]:
        _upload(x, kits, a, *_model(kits, a, b))
    last_a, last_b = pairs[-1]
    assert x.collect(last_b, wire.INBOX) is None  # one envelope for it still missing
    with pytest.raises(UpdateRejected) as misrouted:  # a site cannot upload as another's sender
        _upload(x, kits, last_b, *_model(kits, last_a, last_b))
    assert misrouted.value.code == Reason.XSITE_ENVELOPE
    env, sealed = _model(kits, last_a, last_b)
    with pytest.raises(UpdateRejected):  # cut short: nothing kept, nothing left
        _upload(x, kits, last_a, env, sealed, cut=True)
    other, _ = _model(kits, last_a, last_b)
    with pytest.raises(UpdateRejected) as swapped:  # ciphertext that is not the one signed
        _upload(x, kits, last_a, other, sealed)
    assert swapped.value.code == Reason.XSITE_ENVELOPE
    assert not list((tmp_path / "xsite").glob(".*"))
    _upload(x, kits, last_a, env, sealed)
    with pytest.raises(UpdateRejected) as twice:
        _upload(x, kits, last_a, env, sealed)
    assert twice.value.code == Reason.DUPLICATE
    inbox = json.loads(x.collect(last_b, wire.INBOX))  # type: ignore[arg-type]
    assert sorted(inbox) == sorted(s for s in SITES if s != last_b)
    assert Envelope.from_dict(inbox[last_a]) == env  # headers only: the ciphertext is fetched in chunks
    got = x.sealed_for(last_b, last_a)
    assert not isinstance(got, Signal)
    with got[1] as fh:
        assert fh.read() == sealed
    assert x.sealed_for(last_b, last_b) == Signal.NOT_FOR_YOU  # none sealed to itself
    assert all(MODEL[:50] not in p.read_bytes() for p in (tmp_path / "xsite").iterdir())
    assert x.advance(set(SITES), now=2.0) == (False, []) and x.models_closed


def test_metrics_are_bounded_and_only_for_models_given(tmp_path: Path, kits: dict[str, Kit]) -> None:
    x = _consented(tmp_path, kits, {"site-1": True, "site-2": True, "site-3": False})
    with pytest.raises(UpdateRejected):  # no local model travelled: only the global one is measured
        _post(x, kits, "site-1", wire.METRICS, json.dumps({"results": {"site-2": {"auc": 0.5}}}).encode())
    too_many = {f"m{i}": 1.0 for i in range(wire.MAX_METRICS + 1)}
    with pytest.raises(UpdateRejected) as bounded:
        _post(x, kits, "site-1", wire.METRICS, json.dumps({"results": {"global": too_many}}).encode())
    assert bounded.value.code == Reason.OUT_OF_RANGE
    for site in SITES:
        body = {"results": {"global": {"auc": 0.123456789, "n": 10}}}
        _post(x, kits, site, wire.METRICS, json.dumps(body).encode())
    assert x.advance(set(SITES), now=2.0) == (True, [])
    matrix, written = x.finish(SITES, {})
    assert [p.name for p in written] == ["cross_site.json", "cross_site.png"]
    assert matrix.cells == {"global": {s: {"auc": 0.123457, "n": 10.0} for s in SITES}}
    assert matrix.not_shared == {"site-3": "xsite_not_shared"} and matrix.models == ["global"]
    assert x.collect("site-1", wire.CONSENTS) == Signal.CANCELLED
    x.discard()
    assert not (tmp_path / "xsite").exists()


def test_a_killed_evaluation_resumes_from_its_state_file(tmp_path: Path, kits: dict[str, Kit]) -> None:
    """What a kill -9 leaves (the last atomic state, an upload cut short, a sealed file renamed but not
    recorded, a state write cut short) loads as the evaluation was, and the folder holds only that."""
    x = _consented(tmp_path, kits, dict.fromkeys(SITES, True))
    env, sealed = _model(kits, "site-1", "site-2")
    _upload(x, kits, "site-1", env, sealed)
    x.note_final("site-2", {"auc": 0.7})
    _post(x, kits, "site-3", wire.METRICS, json.dumps({"results": {"global": {"auc": 0.5}}}).encode())
    folder = tmp_path / "xsite"
    (folder / ".site-2--site-1-abcd.part").write_bytes(b"half an upload")
    (folder / "site-2--site-3.sealed").write_bytes(b"renamed, not recorded")
    (folder / f".{STATE_FILE}.0123456789abcdef.tmp").write_bytes(b"{")
    again = CrossSite.load("job-1", tmp_path, round_timeout=30, now=100.0)
    assert again is not None
    assert again.to_dict() == x.to_dict()
    assert sorted(p.name for p in folder.iterdir()) == ["site-1--site-2.sealed", STATE_FILE]
    assert again.held("site-1") == {
        "final": False,
        "consent": True,
        "sealed_to": ["site-2"],
        "metrics": False,
    }
    assert again.owes("site-1") and not again.owes("site-3")
    assert again.advance(set(SITES), now=129.0) == (False, [])  # the phase's timeout starts again
    assert again.advance(set(SITES), now=131.0) == (False, []) and again.models_closed
    assert CrossSite.load("job-1", tmp_path / "none", round_timeout=30, now=0.0) is None


def test_a_change_that_cannot_be_saved_is_not_taken(
    tmp_path: Path, kits: dict[str, Kit], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk refuses the post (the site sends it again) and leaves the state as it was."""
    x = _consented(tmp_path, kits, dict.fromkeys(SITES, True))
    saved = x.to_dict()

    def full(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("secagg.aggregator.evaluation.atomic_write", full)
    env, sealed = _model(kits, "site-1", "site-2")
    with pytest.raises(OSError):
        _upload(x, kits, "site-1", env, sealed)
    with pytest.raises(OSError):
        _post(x, kits, "site-1", wire.METRICS, json.dumps({"results": {"global": {"auc": 0.5}}}).encode())
    with pytest.raises(OSError):
        x.advance(set(SITES), now=100.0)  # the models' phase would close
    assert x.to_dict() == saved and not x.models_closed
    assert not list((tmp_path / "xsite").glob("*.sealed")) and not list((tmp_path / "xsite").glob(".*"))
    monkeypatch.undo()
    _upload(x, kits, "site-1", env, sealed)  # sent again once there is space
    assert ("site-1", "site-2") in x.envelopes


def test_a_silent_evaluator_keeps_its_final_metrics_as_the_global_cell(
    tmp_path: Path, kits: dict[str, Kit]
) -> None:
    x = _consented(tmp_path, kits, dict.fromkeys(SITES, False))
    m = x.matrix(SITES, {"site-2": {"auc": 0.7, "label": "dropped"}})
    assert m.cells == {"global": {"site-2": {"auc": 0.7}}}


@pytest.mark.parametrize(
    "bad", [{"x": float("inf")}, {"x": 1e16}, {"bad name": 1.0}, {"x": True}, {"x": "1"}]
)
def test_bounded_metrics_refuses(bad: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(wire.BadMetrics):
        wire.bounded_metrics(bad)
