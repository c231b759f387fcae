"""``secagg agent run --kit DIR --data DIR --policy FILE``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from secagg.errors import UsageError
from secagg.provision.kit import load_kit


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("agent", help="run the site agent")
    s = p.add_subparsers(dest="agent_command", metavar="ACTION", required=True)
    run = s.add_parser("run", help="connect to the aggregator and run the jobs this site admits")
    run.add_argument("--kit", type=Path, required=True, help="this site's startup kit")
    run.add_argument("--data", type=Path, required=True, help="this site's data folder (read only)")
    run.add_argument("--policy", type=Path, required=True, help="this site's policy (YAML, see policies/)")
    run.add_argument("--state", type=Path, help="state folder (default: ./state/<kit name>)")
    run.add_argument("--target", help="override the aggregator address host:port")
    run.add_argument(
        "--simulate-dropout",
        metavar="ROUND:PHASE",
        help="demos only: vanish in ROUND before PHASE (upload or unmask), as a crashed site would",
    )
    run.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (loopback)")
    run.add_argument("--forever", action="store_true", help="keep serving jobs after one finishes")
    run.set_defaults(func=run_agent)


def run_agent(args: argparse.Namespace) -> int:
    import grpc

    from secagg.agent.relay import AggregatorRefusedCall
    from secagg.agent.site import SimulatedDropout, SiteAgent

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    kit = load_kit(args.kit, kind="site")
    state = args.state or Path("state") / kit.name
    agent = SiteAgent(kit, args.data, state, policy_path=args.policy, target=args.target)
    from secagg.agent.sandbox import SandboxUnavailable, describe, require_available

    # what a job's code will be allowed here, before any job arrives: the security officer's check
    settings = agent.admission.load_policy().sandbox
    for line in describe(settings):
        print(line, flush=True)
    try:
        require_available(settings)
    except SandboxUnavailable as exc:
        print(f"WARNING: every job will be refused here: {exc}", flush=True)
    if args.simulate_dropout:
        round_text, _, phase = args.simulate_dropout.partition(":")
        if not round_text.isdigit() or phase not in ("upload", "unmask"):
            raise UsageError("--simulate-dropout takes ROUND:PHASE, PHASE upload or unmask (e.g. 2:upload)")
        agent.simulate_dropout = (int(round_text), phase)
    if args.metrics_port:
        agent.metrics.serve(args.metrics_port)
    try:
        agent.run(stop_after_job=not args.forever)
    except grpc.RpcError as exc:  # a refusal no part of the agent handles: one line, not a traceback
        raise AggregatorRefusedCall(exc) from None
    except SimulatedDropout as exc:
        print(f"site {kit.name}: {exc}", flush=True)
        return 0
    finally:
        agent.close()
    print(f"site {kit.name}: done", flush=True)
    return 0
