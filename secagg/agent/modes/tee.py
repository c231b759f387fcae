"""``tee``: the weighted update sealed (HPKE, RFC 9180) to keys bound into the enclave's fresh evidence.

The aggregator's enclave sees plaintext, so a site seals only after it has verified the enclave's
evidence for its own nonce and accepted it under its policy, and uses only models the bound key signed.
"""

from __future__ import annotations

import base64
import logging
import os
import ssl

from secagg.agent.modes.base import ModeContext, Outgoing, Sent, StoredGlobal, Task, upload
from secagg.agent.modes.shares import integer_share
from secagg.agent.protect import plain_size, protect_plain_windows, protect_share, share_size
from secagg.agent.relay import AggregatorUnreachable
from secagg.errors import IntegrityError, PolicyRefusal
from secagg.events import Event
from secagg.framing import frame
from secagg.fsio import atomic_write
from secagg.reasons import Reason
from secagg.tee.site import KeyPin, TrustedAggregator, verify_aggregator
from secagg.transport.tls import probe_server_certificate

log = logging.getLogger("secagg.agent")
PIN_FILE = "tee-key-pins.json"


class TeeMode(StoredGlobal):
    name = "tee"

    def __init__(self, ctx: ModeContext) -> None:
        super().__init__(ctx)
        self._trusted: TrustedAggregator | None = None

    def check_global(self, task: Task, model_fingerprint: str) -> None:
        self._trusted = self.attest_and_check_model(task, model_fingerprint)

    def attest_and_check_model(self, task: Task, model_fp: str) -> TrustedAggregator:
        """Invariant 4: fresh evidence for our own nonce, bound to the keys we will seal to and to the
        TLS certificate we see, accepted by our policy; and the global model signed by the bound key."""
        ctx, job_id, header = self.ctx, task.job_id, task.header
        policy = ctx.load_policy()
        if policy.attestation is None:
            raise PolicyRefusal(
                "this site's policy has no attestation section: it accepts no TEE",
                code=Reason.ATTESTATION_MISSING,
            )
        nonce = os.urandom(32)
        evidence = ctx.relay.attest(job_id, nonce)
        pin_file = ctx.state.root / PIN_FILE
        pin = KeyPin.from_json(pin_file.read_text()) if pin_file.is_file() else KeyPin()
        try:
            trusted = verify_aggregator(
                evidence,
                nonce,
                self._server_cert_der(),
                policy.attestation.validation_options(),
                allow_insecure_dev_tee=policy.attestation.allow_insecure_dev_tee,
                key_pin=pin,
                job=job_id,
            )
        except PolicyRefusal as exc:
            ctx.audit.append(Event.AGGREGATOR_REFUSED, job=job_id, code=exc.code, reason=str(exc))
            raise
        atomic_write(pin_file, pin.to_json().encode())
        if policy.attestation.allow_insecure_dev_tee:
            log.warning(
                "INSECURE dev TEE accepted by this site's policy: the aggregator is NOT hardware-isolated"
            )
        ctx.audit.append(
            Event.AGGREGATOR_ATTESTED,
            job=job_id,
            round=header.get("round"),
            insecure_dev_tee=policy.attestation.allow_insecure_dev_tee or None,
        )
        sig = header.get("model_signature")
        if not isinstance(sig, str):
            raise IntegrityError("the aggregator sent a tee-mode model without a signature")
        trusted.verify_model(base64.b64decode(sig), model_fp, job_id, int(header["base_round"]))
        return trusted

    def _server_cert_der(self) -> bytes:
        """The aggregator's certificate, read with a handshake of our own. A port that cannot be
        reached (a network cut between the evidence and this handshake) is a lost aggregator, retried
        as one; a certificate that fails the project CA's check is not: gRPC's channel passed the same
        check a moment ago, so a different server answering now ends the job."""
        host, _, port = self.ctx.target.rpartition(":")
        try:
            return probe_server_certificate(self.ctx.kit, host, int(port), timeout=10, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            raise IntegrityError(
                f"the aggregator at {host}:{port} presented a certificate that does not verify: {exc}"
            ) from None
        except OSError as exc:  # ssl.SSLError included: a handshake cut short
            raise AggregatorUnreachable(
                f"cannot reach the aggregator at {host}:{port} for its certificate: {exc}"
            ) from None

    def protect_and_send(self, out: Outgoing) -> Sent:
        trusted = self._trusted
        if trusted is None:  # only check_global of this very round may set it
            raise IntegrityError("no attested aggregator for this round: refusing to seal")
        self._trusted = None
        share = integer_share(self.ctx, out)
        # sealed as the plaintext bundle is made, a chunk at a time (its size is known up front); a
        # distributed_gaussian share goes as its residues mod 2^32, unweighted, for the enclave to sum
        # exactly as mask does and average uniformly (secagg.agent.modes.shares)
        if share is None:
            body, size = protect_plain_windows(out.bspec, out.weighted.windows()), plain_size(out.bspec)
        else:
            body = protect_share(out.bspec, share.integers, share.frac_bits)
            size = share_size(out.bspec, share.frac_bits)
        sealed = trusted.seal_update(body, out.job_id, out.round, self.ctx.site, size=size)
        return upload(self.ctx, out, self.name, frame(sealed))
