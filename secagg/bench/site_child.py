"""One real site agent in a process of its own: ``python -m secagg.bench.site_child ARGS.json OUT.json``.

A fresh interpreter so that its peak RSS (VmHWM, :func:`secagg.bench.child.peak_rss_bytes`) is this
site's own: the agent's whole job (register, admit, every round's receive, training handover, release,
protect and upload, the finalize) runs here, exactly as ``secagg agent`` runs it. The training worker
is a child process with its own memory; its peak is reported beside (``worker_peak_rss_bytes``, the
largest reaped child's ``ru_maxrss``), never added in. ``phases``: the peak between one audit event
and the next (``[event, bytes]`` in order), to show which step of the round sets it.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import psutil

from secagg.bench.child import peak_rss_bytes, reset_peak_rss


def main(argv: list[str]) -> int:
    args = json.loads(Path(argv[0]).read_text())
    from secagg.agent.site import SiteAgent
    from secagg.provision.kit import load_kit

    agent = SiteAgent(
        load_kit(Path(args["kit"])),
        Path(args["data"]),
        Path(args["state"]),
        policy_path=Path(args["policy"]),
        target=args["target"],
    )
    baseline = psutil.Process().memory_info().rss
    phases: list[tuple[str, int]] = []
    if reset_peak_rss():
        # where the peak is: VmHWM since the previous audit event, read (and reset) at each event
        def phase(record: dict[str, object]) -> None:
            phases.append((str(record["event"]), peak_rss_bytes()))
            reset_peak_rss()

        agent.audit.listeners.append(phase)
    try:
        agent.run(max_idle_s=float(args.get("max_idle_s", 600)))
    finally:
        agent.close()
    Path(argv[1]).write_text(
        json.dumps(
            {
                "peak_rss_bytes": max([peak_rss_bytes(), *(p for _, p in phases)]),
                "phases": phases,
                "baseline_rss_bytes": baseline,
                "worker_peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
