"""A site's part of cross-site evaluation against a hostile relay: it shares only where every signed
consent shares, evaluates only what its sender sealed and signed, and never crashes on what the relay
sends."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from secagg.agent.evaluation import LOCAL_FILE, CrossSiteEvaluation, keep_local_model
from secagg.agent.state import SiteState
from secagg.agent.worker import RunResult
from secagg.auditlog import AuditLog
from secagg.bundle import BundleSpec, to_safetensors
from secagg.crossval import wire
from secagg.crossval.seal import Consent, Envelope, open_model, seal_model
from secagg.jobs.spec import JobSpec
from secagg.policy.model import SitePolicy
from secagg.privacy.streamed import UpdateFile
from secagg.provision.kit import Kit, load_kit
from tests.integration.harness import INIT

JOB = "job-1"
SITES = ["site-1", "site-2", "site-3"]


@pytest.fixture(scope="module")
def kits(workspace: Path) -> dict[str, Kit]:
    return {s: load_kit(workspace / s) for s in SITES}


class FakeRelay:
    """Records what the site posts; answers collects from ``answers`` (topic -> bytes)."""

    def __init__(self, answers: dict[str, bytes]) -> None:
        self.answers, self.posted = answers, []  # type: ignore[var-annotated]
        #: what the site uploaded: (header, ciphertext)
        self.uploaded: list[tuple[dict[str, Any], bytes]] = []
        #: the ciphertext the relay serves, by sender
        self.sealed: dict[str, bytes] = {}

    def post(self, topic: str, payload: bytes, **_: Any) -> None:
        self.posted.append((topic, payload))

    def upload(self, header: dict[str, Any], parts: Any) -> bool:
        self.uploaded.append((header, b"".join(parts)))
        return True

    def fetch_sealed(self, job_id: str, topic: str, sender: str, sink: Any, *, max_bytes: int) -> int:
        data = self.sealed[sender][:max_bytes]
        sink.write(data)
        return len(data)

    def collect(self, topic: str, **_: Any) -> bytes:
        return self.answers[topic]

    def sent(self, topic: str) -> list[bytes]:
        return [p for t, p in self.posted if t == topic]


class FakeTrainer:
    def __init__(self) -> None:
        self.evaluated: list[str] = []

    def run(self, adm: Any, job_id: str, kind: str, round_: int, data: bytes, *, model: str) -> RunResult:
        self.evaluated.append(model)
        return RunResult(local_path=None, num_samples=None, metrics={"auc": 0.123456789})


def _consent(kits: dict[str, Kit], site: str, share: bool) -> dict[str, Any]:
    k = kits[site]
    return (
        Consent(JOB, site, share, "ok" if share else "xsite_not_shared")
        .signed(k.private_key, k.config.project)
        .to_dict()
    )


def _site(
    tmp: Path, kits: dict[str, Kit], answers: dict[str, bytes], share: bool = True
) -> tuple[CrossSiteEvaluation, FakeRelay, FakeTrainer, Any]:
    kit = kits["site-1"]
    state = SiteState(tmp / "state")
    # as the agent keeps it: the global model's file and the released update's file
    spec = BundleSpec.of(INIT)
    glob = tmp / "global.safetensors"
    glob.write_bytes(to_safetensors(INIT))
    upd = UpdateFile.of(tmp / "update.safetensors", spec, {k: v * 0 + 0.5 for k, v in INIT.items()})
    keep_local_model(state, JOB, glob, upd)
    relay, trainer = FakeRelay(answers), FakeTrainer()
    policy = SitePolicy.model_validate(
        {
            "version": 1,
            "signers": {"submitters": ["x"]},
            "modes": ["plain"],
            "privacy": {"share_local_model_for_evaluation": share},
        }
    )
    spec = JobSpec.model_validate(
        {
            "name": "j",
            "rounds": 1,
            "min_sites": 2,
            "mode": "plain",
            "model": "m",
            "entry": "t.py",
            "evaluation": "cross_site",
        }
    )
    adm = SimpleNamespace(job=SimpleNamespace(spec=spec), decision=SimpleNamespace(effective_privacy=[]))
    audit = AuditLog(tmp / "audit.jsonl", key=kit.private_key, node=kit.name)
    x = CrossSiteEvaluation(
        kit=kit, state=state, relay=relay, audit=audit, trainer=trainer, load_policy=lambda: policy
    )  # type: ignore[arg-type]
    return x, relay, trainer, adm


def _own_consent(relay: FakeRelay) -> dict[str, Any]:
    return json.loads(relay.sent(wire.CONSENT)[0])


class EchoRelay(FakeRelay):
    """Publishes the site's own consent back (as an honest aggregator would) beside ``others``."""

    def __init__(self, others: dict[str, Any], inbox: dict[str, tuple[dict[str, Any], bytes]]) -> None:
        super().__init__({})
        self.others = others
        self.inbox = {s: e for s, (e, _) in inbox.items()}
        self.sealed = {s: c for s, (_, c) in inbox.items()}

    def collect(self, topic: str, **_: Any) -> bytes:
        if topic == wire.CONSENTS:
            own = next(iter(self.sent(wire.CONSENT)), None)
            mine = json.loads(own) if own is not None else self.others.pop("held-site-1")
            return json.dumps({"site-1": mine, **self.others}).encode()
        return json.dumps(self.inbox).encode()


def _envelope(kits: dict[str, Kit], sender: str, signer: str | None = None) -> tuple[dict[str, Any], bytes]:
    """A sealed model for site-1 (by ``signer``, named ``sender``'s): its header and ciphertext."""
    k = kits[signer or sender]
    env, sealed = seal_model(
        to_safetensors(INIT),
        project=k.config.project,
        job=JOB,
        sender=signer or sender,
        sender_key=k.private_key,
        recipient="site-1",
        recipient_cert=kits["site-1"].cert,
    )
    return {**env.to_dict(), "from": sender}, sealed


def _run(x: CrossSiteEvaluation, adm: Any) -> None:
    x.run(adm, JOB, 2, to_safetensors(INIT), {"auc": 0.5})


def test_shares_and_evaluates_only_what_its_sender_signed(tmp_path: Path, kits: dict[str, Kit]) -> None:
    x, _, trainer, adm = _site(tmp_path, kits, {})
    relay = EchoRelay(
        {s: _consent(kits, s, True) for s in ("site-2", "site-3")},
        # site-3's cell: a model site-2 sealed and passed off as site-3's (its sender field rewritten)
        {"site-2": _envelope(kits, "site-2"), "site-3": _envelope(kits, "site-3", signer="site-2")},
    )
    x.relay = relay  # type: ignore[assignment]
    _run(x, adm)
    sealed = [h["envelope"] for h, _ in relay.uploaded]
    assert sorted(e["to"] for e in sealed) == ["site-2", "site-3"]
    for header, data in relay.uploaded:  # the upload is the sealed model: its peer opens it
        assert header["topic"] == wire.MODEL and header["bytes"] == len(data)
        peer = kits[header["envelope"]["to"]]
        plain = open_model(
            Envelope.from_dict(header["envelope"]),
            data,
            project=peer.config.project,
            job=JOB,
            me=peer.name,
            my_key=peer.private_key,
            sender_cert=kits["site-1"].cert,
        )
        assert plain == (x.state.job_dir(JOB) / LOCAL_FILE).read_bytes()
    body = json.loads(relay.sent(wire.METRICS)[0])
    assert body["results"] == {"global": {"auc": 0.5}, "site-2": {"auc": 0.123457}}
    assert body["refused"] == {"site-3": "xsite_envelope"}
    assert trainer.evaluated == ["site-2"]
    assert not (x.state.job_dir(JOB) / "io" / "global.safetensors").exists()
    assert not list(x.state.job_dir(JOB).glob(".xsite-*"))  # no sealed scratch file stays


def test_a_site_back_after_a_restart_sends_only_what_is_missing(tmp_path: Path, kits: dict[str, Kit]) -> None:
    x, _, trainer, adm = _site(tmp_path, kits, {})
    k = kits["site-1"]
    # its consent as the killed aggregator kept it (signed then: the new signature differs)
    kept = Consent(JOB, "site-1", True, "ok").signed(k.private_key, k.config.project).to_dict()
    relay = EchoRelay(
        {"held-site-1": kept, **{s: _consent(kits, s, True) for s in ("site-2", "site-3")}},
        {"site-2": _envelope(kits, "site-2"), "site-3": _envelope(kits, "site-3")},
    )
    x.relay = relay  # type: ignore[assignment]
    held = {"final": True, "consent": True, "sealed_to": ["site-2"], "metrics": False}
    x.run(adm, JOB, 2, to_safetensors(INIT), {"auc": 0.5}, held)
    assert relay.sent(wire.CONSENT) == []  # held: not sent again
    assert [h["envelope"]["to"] for h, _ in relay.uploaded] == ["site-3"]
    assert json.loads(relay.sent(wire.METRICS)[0])["results"].keys() == {"global", "site-2", "site-3"}
    assert trainer.evaluated == ["site-2", "site-3"]


def test_nothing_travels_when_one_consent_refuses(tmp_path: Path, kits: dict[str, Kit]) -> None:
    x, _, trainer, adm = _site(tmp_path, kits, {})
    relay = EchoRelay(
        {"site-2": _consent(kits, "site-2", True), "site-3": _consent(kits, "site-3", False)}, {}
    )
    x.relay = relay  # type: ignore[assignment]
    _run(x, adm)
    assert relay.uploaded == [] and trainer.evaluated == []
    assert json.loads(relay.sent(wire.METRICS)[0]) == {"results": {"global": {"auc": 0.5}}, "refused": {}}


def test_a_forged_consent_ends_the_exchange_without_sharing(tmp_path: Path, kits: dict[str, Kit]) -> None:
    x, _, _, adm = _site(tmp_path, kits, {})
    forged = {**_consent(kits, "site-3", False), "share": True}  # the relay turns a refusal into consent
    relay = EchoRelay({"site-2": _consent(kits, "site-2", True), "site-3": forged}, {})
    x.relay = relay  # type: ignore[assignment]
    _run(x, adm)  # audited, not raised
    assert relay.uploaded == [] and relay.sent(wire.METRICS) == []
    assert any('"xsite_refused"' in line for line in (tmp_path / "audit.jsonl").read_text().splitlines())


def test_a_site_whose_policy_does_not_share_says_so_and_sends_nothing(
    tmp_path: Path, kits: dict[str, Kit]
) -> None:
    x, _, _, adm = _site(tmp_path, kits, {}, share=False)
    relay = EchoRelay({"site-2": _consent(kits, "site-2", True)}, {})
    x.relay = relay  # type: ignore[assignment]
    _run(x, adm)
    assert _own_consent(relay)["share"] is False and _own_consent(relay)["code"] == "xsite_not_shared"
    assert relay.uploaded == []
