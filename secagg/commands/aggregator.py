"""``secagg aggregator serve --kit DIR``."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from secagg.provision.kit import load_kit

if TYPE_CHECKING:
    from secagg.aggregator.hub import FederationHub
    from secagg.aggregator.rounds import JobRun


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("aggregator", help="run the aggregator")
    s = p.add_subparsers(dest="aggregator_command", metavar="ACTION", required=True)
    serve = s.add_parser("serve", help="serve the federation over gRPC with mTLS")
    serve.add_argument("--kit", type=Path, required=True, help="the aggregator's startup kit")
    serve.add_argument("--state", type=Path, help="state folder (default: ./state/<kit name>)")
    serve.add_argument("--job", type=Path, help="start this job (a job folder) if none is running")
    serve.add_argument("--port", type=int, help="override the kit's port (0: any free port)")
    serve.add_argument("--host", default="0.0.0.0", help="address to bind (default: all)")  # noqa: S104
    tee = serve.add_mutually_exclusive_group()
    tee.add_argument(
        "--tee",
        choices=["configfs"],
        help="run tee jobs with hardware evidence (SEV-SNP/TDX via configfs-tsm)",
    )
    tee.add_argument(
        "--insecure-dev-tee",
        action="store_true",
        help="INSECURE: answer tee challenges with software-signed dev-TEE evidence (demos and tests only)",
    )
    serve.add_argument("--exit-when-done", action="store_true", help="stop once the job has finished")
    serve.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from secagg.aggregator.service import AggregatorServer
    from secagg.commands._jobs import submit_verified
    from secagg.malloc import limit_arenas

    limit_arenas()  # before the server's threads: peak memory flat in the number of sites
    kit = load_kit(args.kit, kind="aggregator")
    state = args.state or Path("state") / kit.name
    server = AggregatorServer(kit, state, port=args.port, host=args.host, enclave=_enclave(args, state))
    if args.job is not None and server.fed.job is None:
        submit_verified(server.fed, args.job, kit)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    print(f"aggregator {kit.name} serving project {kit.config.project} on port {server.port}", flush=True)
    try:
        while not stop.wait(0.5):
            job = all_ended(server.fed)
            if args.exit_when_done and job is not None:
                # a site that crashed near the end and is coming back is still owed the final model:
                # wait for it a round timeout at most (a site seen in the last two is coming back)
                timeout = job.spec.round_timeout
                until = time.monotonic() + timeout
                while server.fed.owed_final(2 * timeout) and time.monotonic() < until and not stop.wait(0.5):
                    pass
                stop.wait(3.0)  # let sites fetch their stop task
                break
    finally:
        server.stop()
    return 0


def all_ended(fed: FederationHub) -> JobRun | None:
    """The job that ended last once every job has ended (finished, aborted, failed) and none waits in
    the queue; None while one runs or waits, or before any ran. Running and queued are read as one
    snapshot: a queued job being started after another ended is never missed (``--exit-when-done``
    would stop the aggregator with it running)."""
    live, queued = fed.scheduler.snapshot()
    if live or queued:
        return None
    job = fed.job
    return job if job is not None and job.state.terminal else None


def _enclave(args: argparse.Namespace, state: Path) -> object | None:
    """The in-TEE keys and attester, or None when this aggregator serves no tee jobs.

    The dev TEE keeps each job's keys sealed to its stand-in sealing key (``STATE/dev-tee``), so a
    restarted aggregator resumes its tee jobs with the keys the sites pinned (RELIABILITY.md F7).
    configfs-tsm offers no sealing key: there, job keys live in memory only, and a restart mid-job
    ends the job once its sites refuse the new keys (``tee_key_changed``)."""
    if not (args.tee or args.insecure_dev_tee):
        return None
    from secagg.tee.enclave import Enclave

    if args.tee == "configfs":
        from secagg.tee.attester import ConfigfsTsmAttester

        return Enclave(ConfigfsTsmAttester())
    import hashlib

    from cryptography.hazmat.primitives.asymmetric import ec

    import secagg
    from secagg.tee.attester import DevTeeAttester
    from secagg.tee.vault import DevTeeSealingKey, JobKeyVault

    print("WARNING: INSECURE dev TEE: evidence is signed by a software key, not a hardware TEE", flush=True)
    measurement = hashlib.sha384(f"secagg-aggregator {secagg.__version__}".encode()).digest()
    vault = JobKeyVault(state / "jobs", DevTeeSealingKey.open(state / "dev-tee", measurement))
    return Enclave(DevTeeAttester(ec.generate_private_key(ec.SECP384R1()), measurement), vault=vault)
