"""Cross-site evaluation at a site: share the last local model sealed, evaluate the others' models.

For a job with ``evaluation: cross_site``, after the site evaluated the final global model
(:meth:`secagg.agent.site.SiteAgent._finalize`):

1. it decides whether it shares its last local model (:func:`secagg.policy.evaluation.share_decision`,
   from the policy as it is now, and whether it has such a model) and posts that as a signed consent;
2. it checks every site's signed consent as the aggregator fixed them: local models travel only if
   every one of them shares, so the aggregator cannot make a site's model go to a site that refused,
   nor give a refusing site the others';
3. if so, it seals its model to each other consenting site (:mod:`secagg.crossval.seal`, in chunks,
   into a 0600 file of its job folder) and uploads each through the rounds' streamed upload, then
   fetches the ones addressed to it in chunks, opens each (checking its sender's signature) and has
   the job's code evaluate each, one ``evaluate`` task each, with ``task.model`` naming the owner;
4. it posts the metrics: numbers only, bounded and rounded (:func:`secagg.crossval.wire.bounded_metrics`).

A lost aggregator (restarted) ends the exchange with a transient error; the agent then fetches its
finalize task again, which says what the aggregator already holds of this site (``xsite`` in the
header: its final metrics, consent, the models it sealed to whom, its metrics), and sends only the
rest.

What it shares is its *released* local model of the last round: the global model it trained from plus
its update after every filter of its policy (:func:`keep_local_model`, called when that upload was
accepted), never the raw trained weights; this is the release its ledger already debited, so sharing
spends no budget. A peer's model is written only to the job's confined I/O folder for the evaluation
and removed after it; it is never kept in the site's state.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc

from secagg.agent.admission import Admitted
from secagg.agent.relay import Relay, RoundMovedOn, is_stale, reason_of
from secagg.agent.roundfiles import model_spec, write_local_model
from secagg.agent.state import SiteState
from secagg.agent.training import Trainer
from secagg.auditlog import AuditLog
from secagg.bundle import BundleSpec, from_safetensors
from secagg.crossval import wire
from secagg.crossval.seal import Consent, Envelope, EnvelopeError, open_stream, seal_stream
from secagg.errors import SecaggError
from secagg.events import Event
from secagg.policy.evaluation import share_decision
from secagg.policy.model import SitePolicy
from secagg.privacy.streamed import UpdateFile
from secagg.provision.kit import Kit
from secagg.reasons import Reason

#: the site's last released local model of a cross-site job, in its job folder
LOCAL_FILE = "xsite-local.safetensors"
#: what the aggregator holds of this site when nothing is held (the first time)
NOTHING_HELD: Mapping[str, Any] = {"final": False, "consent": False, "sealed_to": [], "metrics": False}


def keep_local_model(state: SiteState, job_id: str, global_model: Path, update: UpdateFile) -> None:
    """Keep the last round's released local model (global + released update) for the evaluation,
    written a window at a time (:func:`secagg.agent.roundfiles.write_local_model`)."""
    path = state.job_dir(job_id) / LOCAL_FILE
    write_local_model(global_model, update, path)  # a temporary file of mode 0600, then renamed


class CrossSiteEvaluation:
    """One site's part of the workflow (see the module docstring)."""

    def __init__(
        self,
        *,
        kit: Kit,
        state: SiteState,
        relay: Relay,
        audit: AuditLog,
        trainer: Trainer,
        load_policy: Callable[[], SitePolicy],
    ) -> None:
        self.kit, self.state, self.relay, self.audit = kit, state, relay, audit
        self.trainer, self.load_policy = trainer, load_policy

    @property
    def me(self) -> str:
        return self.kit.name

    def run(
        self,
        adm: Admitted,
        job_id: str,
        round_: int,
        global_model: bytes | Path,
        global_metrics: dict[str, float],
        held: Mapping[str, Any] = NOTHING_HELD,
    ) -> None:
        """The whole exchange (``global_model``: the final model's file, or its bytes), less what the
        aggregator already ``held`` of it (after a restart). A round that moves on without this site
        ends it quietly, and what the aggregator relays that does not verify or parse ends it too
        (both audited, the agent goes on): the global model's cell then comes from the final metrics
        the site already sent. A transient error (a lost aggregator) is raised: the agent fetches the
        task again."""
        try:
            self._run(adm, job_id, round_, global_model, global_metrics, held)
        except RoundMovedOn as exc:
            self.audit.append(Event.XSITE_REFUSED, job=job_id, code=exc.code, reason=str(exc))
        except (EnvelopeError, ValueError) as exc:  # ValueError: JSON or base64 that does not parse
            code = getattr(exc, "code", Reason.MALFORMED)
            self.audit.append(Event.XSITE_REFUSED, job=job_id, code=code, reason=str(exc)[:500])
        except grpc.RpcError as exc:
            if not is_stale(exc):
                raise
            self.audit.append(Event.XSITE_REFUSED, job=job_id, code=Reason.LATE, reason=str(exc.details()))
        finally:
            # a peer's model never stays in the job's I/O folder; no sealed file stays either
            (self.state.job_dir(job_id) / "io" / "global.safetensors").unlink(missing_ok=True)
            for tmp in self.state.job_dir(job_id).glob(f".xsite-*{_TMP_SUFFIX}"):
                tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ the steps
    def _run(
        self,
        adm: Admitted,
        job_id: str,
        round_: int,
        global_model: bytes | Path,
        global_metrics: dict[str, float],
        held: Mapping[str, Any],
    ) -> None:
        project = self.kit.config.project
        share, code = self._my_share(adm, job_id)
        mine = Consent(job_id, self.me, share, code).signed(self.kit.private_key, project)
        if not held.get("consent"):
            self.relay.post(wire.CONSENT, json.dumps(mine.to_dict()).encode(), job_id=job_id, round_=round_)
        consents = self._consents(job_id, round_, mine)
        refusing = sorted(s for s, c in consents.items() if not c.share)
        travel = len(consents) >= 2 and not refusing
        if travel:
            done = set(held.get("sealed_to") or [])
            self._share(job_id, round_, sorted(s for s in consents if s != self.me and s not in done))
        else:
            self.audit.append(
                Event.XSITE_NOT_SHARED,
                job=job_id,
                code=code if not share else Reason.XSITE_NOT_SHARED,
                sites=refusing,
            )
        results: dict[str, dict[str, float]] = {}
        refused: dict[str, str] = {}
        try:
            results[wire.GLOBAL] = wire.bounded_metrics(global_metrics)
        except wire.BadMetrics:
            refused[wire.GLOBAL] = Reason.OUT_OF_RANGE
        if travel:
            bspec = (  # the agent hands its file over: only its header is read
                model_spec(global_model)
                if isinstance(global_model, Path)
                else BundleSpec.of(from_safetensors(global_model))
            )
            for sender, envelope in self._inbox(job_id, round_, set(consents)).items():
                try:
                    results[sender] = self._evaluate(adm, job_id, round_, bspec, sender, envelope)
                    self.audit.append(Event.XSITE_EVALUATED, job=job_id, model=sender)
                except (SecaggError, ValueError) as exc:  # BadMetrics and bad base64 are ValueErrors
                    default = Reason.OUT_OF_RANGE if isinstance(exc, wire.BadMetrics) else Reason.MALFORMED
                    why = getattr(exc, "code", default)
                    refused[sender] = why
                    self.audit.append(
                        Event.XSITE_REFUSED, job=job_id, model=sender, code=why, reason=str(exc)[:500]
                    )
        body = {"results": results, "refused": refused}
        self.relay.post(wire.METRICS, json.dumps(body).encode(), job_id=job_id, round_=round_)

    def _my_share(self, adm: Admitted, job_id: str) -> tuple[bool, str]:
        decision = share_decision(self.load_policy(), adm.job.spec, adm.decision.effective_privacy)
        if not decision.share:
            return False, decision.code
        local = self.state.job_dir(job_id) / LOCAL_FILE
        if not local.is_file():
            return False, Reason.XSITE_NO_LOCAL_MODEL
        return True, Reason.OK

    def _certs(self) -> dict[str, Any]:
        return {**self.kit.peer_certs(), self.me: self.kit.cert}

    def _consents(self, job_id: str, round_: int, mine: Consent) -> dict[str, Consent]:
        """Every consent the aggregator fixed, each checked against its site's certificate here."""
        raw = json.loads(self.relay.collect(wire.CONSENTS, job_id=job_id, round_=round_, attempt=1))
        if not isinstance(raw, dict):
            raise EnvelopeError("the consents are not a JSON object")
        certs, project = self._certs(), self.kit.config.project
        out: dict[str, Consent] = {}
        for site, doc in raw.items():
            c = Consent.from_dict(doc)
            if c.site != site or site not in certs or c.job != job_id:
                raise EnvelopeError(f"consent of {c.site} in {c.job} listed as {site}'s")
            c.verify(certs[site], project)
            out[site] = c
        own = out.get(self.me)  # the statement, not its signature (ECDSA: one per signing)
        if own is None or (own.job, own.share, own.code) != (mine.job, mine.share, mine.code):
            raise EnvelopeError("the consents the aggregator fixed do not hold this site's own")
        return out

    def _share(self, job_id: str, round_: int, peers: list[str]) -> None:
        """Seal the local model to each peer (a 0600 file of ciphertext, a chunk at a time) and upload
        it as a round's upload streams; one the aggregator already holds (DUPLICATE) is done."""
        local = self.state.job_dir(job_id) / LOCAL_FILE
        size = local.stat().st_size
        certs, project = self._certs(), self.kit.config.project
        for peer in peers:
            with _scratch(self.state.job_dir(job_id), f"out-{peer}") as path:
                with local.open("rb") as src, path.open("wb") as dst:
                    env = seal_stream(
                        src,
                        dst,
                        size,
                        project=project,
                        job=job_id,
                        sender=self.me,
                        sender_key=self.kit.private_key,
                        recipient=peer,
                        recipient_cert=certs[peer],
                    )
                header = {
                    "topic": wire.MODEL,
                    "job_id": job_id,
                    "round": round_,
                    "envelope": env.to_dict(),
                    "bytes": env.sealed_bytes,
                }
                try:
                    self.relay.upload(header, _pieces(path))
                except grpc.RpcError as exc:
                    if reason_of(exc) != Reason.DUPLICATE:
                        raise
        if peers:
            self.audit.append(Event.XSITE_SHARED, job=job_id, to=peers, bytes=size)

    def _inbox(self, job_id: str, round_: int, sites: set[str]) -> dict[str, Any]:
        """The envelopes addressed to this site (their headers; each checked as it is used: one bad
        entry costs one cell)."""
        raw = json.loads(self.relay.collect(wire.INBOX, job_id=job_id, round_=round_, attempt=1))
        if not isinstance(raw, dict):
            raise EnvelopeError("the inbox is not a JSON object")
        return {str(s): v for s, v in sorted(raw.items()) if s in sites and s != self.me}

    def _evaluate(
        self, adm: Admitted, job_id: str, round_: int, bspec: BundleSpec, sender: str, doc: Any
    ) -> dict[str, float]:
        env = Envelope.from_dict(doc)
        if env.sender != sender:
            raise EnvelopeError(f"the inbox lists {env.sender}'s sealed model as {sender}'s")
        limit = wire.max_model_bytes(bspec)
        if env.plain_bytes > limit:
            raise EnvelopeError(f"a sealed model of {env.plain_bytes} bytes; the job's has at most {limit}")
        with _scratch(self.state.job_dir(job_id), f"in-{sender}") as path:
            with path.open("wb") as fh:
                self.relay.fetch_sealed(job_id, wire.INBOX, sender, fh, max_bytes=env.sealed_bytes)
            model = io.BytesIO()
            open_stream(
                env,
                _pieces(path),
                model,
                project=self.kit.config.project,
                job=job_id,
                me=self.me,
                my_key=self.kit.private_key,
                sender_cert=self._certs()[sender],
            )
        data = model.getvalue()
        bspec.check(from_safetensors(data))  # the job's model, finite: nothing else goes to the job's code
        result = self.trainer.run(adm, job_id, "evaluate", round_, data, model=sender)
        return wire.bounded_metrics(result.metrics)


_TMP_SUFFIX = ".sealed.tmp"


@contextlib.contextmanager
def _scratch(folder: Path, what: str) -> Iterator[Path]:
    """A 0600 file of the job folder for one sealed model (ciphertext only), removed after use."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".xsite-{what}-", suffix=_TMP_SUFFIX)
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _pieces(path: Path, size: int = 4 << 20) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while piece := fh.read(size):
            yield piece


__all__ = ["LOCAL_FILE", "CrossSiteEvaluation", "keep_local_model"]
