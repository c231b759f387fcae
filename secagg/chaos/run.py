"""One bounded federation of real processes with (at most) one injected fault, restarted on the same
state: provisioning, signing and process start-up are the local engine's (:mod:`secagg.demo.engine`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from secagg.chaos import job as chaos_job
from secagg.chaos import net
from secagg.chaos.disk import SmallDisk
from secagg.chaos.shim import ENV_CLOCK, ENV_KILL, ENV_MARK, POINTS
from secagg.chaos.slow import SlowLink
from secagg.demo.engine import (
    SimSite,
    dev_policy,
    free_port,
    prepare_job,
    start_logged,
    stop_processes,
    write_policies,
)
from secagg.modes import traits

SUBMITTER = "submitter@chaos"
#: an upload is cut once the aggregator has spooled this much of it (bytes are flowing, not just
#: the stream opened)
CUT_AFTER_BYTES = 1 << 20
#: the budget and filter of a run with ``dp`` (what a site kill after its debit is about)
DP_POLICY = """\
privacy:
  required:
    - {name: gaussian, clip: 1.0, noise_multiplier: 1.1}
  budget: {epsilon: 50.0, delta: 1.0e-5}
"""


@dataclass(frozen=True)
class RunSpec:
    mode: str
    sites: int = 5
    rounds: int = 3
    #: ``POINT@ROUND`` (see :mod:`secagg.chaos.shim`), or None for a fault-free run
    fault: str | None = None
    #: who the fault hits: ``aggregator`` or a site name
    target: str = "aggregator"
    dp: bool = False
    #: seconds each site's training sleeps (the window for a kill while sites train)
    sleep: float = 0.0
    round_timeout: float = 30.0
    #: seconds the target's link is cut (its own network namespace), from the end of round 1; the
    #: target may be the aggregator: then every site loses it at once
    partition_s: float | None = None
    #: when the cut begins: once round 1 has completed (between rounds), once every site but the
    #: last has posted its ready of round 2 (``"readies"``; the last site trains ``slow_last_s`` longer):
    #: the round then has readies but no uploads, so it can time out and be retried, or once the
    #: aggregator is receiving the target site's upload of round 2 (``"upload"``: its spool holds
    #: the site's partial file; with a ``big`` model the upload lasts long enough to be cut in)
    partition_at: str = "after_round_1"
    #: seconds the last site trains longer than the others
    slow_last_s: float = 0.0
    #: a slow, lossy link for the target, a site or the aggregator (:mod:`secagg.chaos.slow`):
    #: seconds of delay each way
    delay_s: float | None = None
    #: and the percentage of its packets dropped each way (with ``delay_s``)
    loss_pct: int = 0
    #: the job's min_sites (default: every site)
    min_sites: int | None = None
    #: the whole run's bound; past it every process is killed and the run reported as timed out
    timeout: float = 300.0
    #: seconds the target site's wall clock is moved (see :func:`secagg.chaos.shim.skew_clock`)
    clock_skew_s: float | None = None
    #: seconds the aggregator's state disk (a tmpfs of ``disk_mb``) stays full, from the end of round 1
    disk_full_s: float | None = None
    disk_mb: int = 64
    #: the job's ``evaluation`` (``cross_site``: the development policy shares local models)
    evaluation: str = "global"
    #: float32 parameters added to the job's model (a large model: :func:`secagg.chaos.job.model`)
    big: int = 0
    #: before the killed aggregator restarts, delete its sealed tee job keys: it comes back with fresh
    #: ones, as on a TEE without a sealing key (configfs-tsm); the sites must refuse them and the job
    #: fail with their reason (RELIABILITY.md F7 b)
    drop_sealed_keys: bool = False

    @property
    def names(self) -> list[str]:
        return [f"site-{i}" for i in range(1, self.sites + 1)]


@dataclass
class Outcome:
    spec: RunSpec
    out: Path
    seconds: float
    timed_out: bool
    #: every exit of every process: (name, return code); -9 is the injected kill
    exits: list[tuple[str, int]] = field(default_factory=list)
    #: the kill points reached (lines of the mark file)
    hits: list[str] = field(default_factory=list)
    restarts: int = 0
    #: seconds into the run at which the partition began and ended
    partition: list[float] = field(default_factory=list)
    #: with ``partition_at="upload"``: bytes of the target's upload the aggregator had spooled when
    #: the link went down, and whether that partial upload was still unfinished just after the cut
    cut_at_bytes: int = 0
    cut_mid_upload: bool = False
    #: the aggregator's peak resident set (VmHWM), bytes, over all its incarnations
    peak_rss: int = 0
    #: seconds into the run at which the aggregator's disk was filled and freed
    disk_full: list[float] = field(default_factory=list)
    #: whether libtorch was ever seen mapped into the aggregator (RELIABILITY.md F6: it must not be)
    torch_loaded: bool = False
    #: a slow link's evidence: connections through its delay relay, packets dropped and passed
    relayed: int = 0
    dropped: int = 0
    passed: int = 0

    @property
    def state(self) -> Path:
        return self.out / "state"

    @property
    def workspace(self) -> Path:
        return self.out / "workspace"


def _policy(dp: bool) -> str:
    """The development policy, with the budget and filter of ``DP_POLICY`` in its ``privacy`` section
    (one section: a policy with the key twice is refused)."""
    text = dev_policy(SUBMITTER)
    if not dp:
        return text
    head, body = "privacy:\n", DP_POLICY.removeprefix("privacy:\n")
    if f"\n{head}" in text:
        return text.replace(f"\n{head}", f"\n{head}{body}", 1)
    return text + DP_POLICY


def _vm_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _maps_torch(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text(errors="replace")
    except OSError:
        return False


def _partition(link: net.Link, spec: RunSpec, out: Path, started: float, result: Outcome, log) -> None:  # noqa: ANN001
    """Cut the link once round 1 has completed (or at round 2's roster); mend it ``partition_s`` later."""
    now = time.monotonic() - started
    seconds = spec.partition_s or 0.0
    if not result.partition:
        if spec.partition_at == "upload":
            partial = _partial_upload(out, spec.target, 2)
            if partial is None or _size(partial) < CUT_AFTER_BYTES:
                return
            link.cut()
            result.partition.append(now)
            result.cut_at_bytes = _size(partial)
            # the cut counts as mid-upload only if the aggregator still had not got the whole of it
            result.cut_mid_upload = partial.exists()
            log(
                f"    {link.ns}: link cut for {seconds:.0f} s, {result.cut_at_bytes / 2**20:.1f} MiB into "
                f"{spec.target}'s upload{'' if result.cut_mid_upload else ' (which had just ended)'}"
            )
        elif (
            _round_completed(out)
            if spec.partition_at == "after_round_1"
            else _readies(out, 2) >= spec.sites - 1
        ):
            link.cut()
            result.partition.append(now)
            log(f"    {link.ns}: link cut for {seconds:.0f} s")
    elif len(result.partition) == 1 and now - result.partition[0] >= seconds:
        link.mend()
        result.partition.append(now)
        log(f"    {link.ns}: link mended")


def _partial_upload(out: Path, site: str, round_: int) -> Path | None:
    """The aggregator's partial spool file of ``site``'s upload of ``round_`` (any attempt), if one
    is being received (:mod:`secagg.aggregator.spool`'s ``.SITE-XXXX.part``)."""
    from secagg.aggregator.spool import PART_SUFFIX

    spool = out / "state" / "aggregator" / "spool"
    found = sorted(spool.glob(f"*/{round_}-*/.{site}-*{PART_SUFFIX}")) if spool.is_dir() else []
    return found[0] if found else None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _readies(out: Path, round_: int) -> int:
    """How many sites the aggregator has logged as ready for ``round_`` (any attempt)."""
    agg_log = out / "state" / "aggregator" / "audit.jsonl"
    text = agg_log.read_text(errors="replace") if agg_log.is_file() else ""
    return sum('"event":"site_ready"' in x and f'"round":{round_},' in x for x in text.splitlines())


def _round_completed(out: Path) -> bool:
    agg_log = out / "state" / "aggregator" / "audit.jsonl"
    text = agg_log.read_text(errors="replace") if agg_log.is_file() else ""
    return '"event":"round_completed"' in text


def _disk_full(disk: SmallDisk, seconds: float, out: Path, started: float, result: Outcome, log) -> None:  # noqa: ANN001
    """Fill the aggregator's disk once round 1 has completed; free it ``seconds`` later."""
    now = time.monotonic() - started
    if not result.disk_full:
        if _round_completed(out):
            n = disk.fill()
            result.disk_full.append(now)
            log(f"    aggregator disk full ({n / 2**20:.1f} MiB of filler) for {seconds:.0f} s")
    elif len(result.disk_full) == 1 and now - result.disk_full[0] >= seconds:
        disk.free()
        result.disk_full.append(now)
        log(f"    aggregator disk freed ({disk.free_bytes() / 2**20:.1f} MiB free)")


def _aggregator_bind(host: str, slow: SlowLink | None) -> str:
    """The address the aggregator listens on: its provisioned one, or behind a slow link the
    address the relay forwards to (a site's relay dials the host's second address, so every address;
    the aggregator's own relay, in its namespace, dials loopback)."""
    if slow is None:
        return host
    return "127.0.0.1" if slow.behind == "aggregator" else "0.0.0.0"  # noqa: S104


def run(spec: RunSpec, out: Path, log=print) -> Outcome:  # noqa: ANN001, C901
    """Provision, sign, start, inject ``spec.fault``, restart the killed process once, stop by itself."""
    from secagg.jobs.sign import sign_job
    from secagg.provision.kit import load_kit
    from secagg.provision.project import AdminSpec, AggregatorSpec, Project, SiteSpec
    from secagg.provision.writer import provision

    if spec.fault is not None and spec.fault.partition("@")[0] not in POINTS:
        raise ValueError(f"unknown fault {spec.fault}")
    out.mkdir(parents=True, exist_ok=True)
    names = spec.names
    src = chaos_job.write_job(
        out / "job-src",
        mode=spec.mode,
        rounds=spec.rounds,
        min_sites=spec.min_sites or spec.sites,
        round_timeout=spec.round_timeout,
        sleep=spec.sleep,
        evaluation=spec.evaluation,
        big=spec.big,
        slow_site=spec.names[-1] if spec.slow_last_s else None,
        slow_s=spec.slow_last_s,
    )
    prepare_job(src, out / "job", n_sites=spec.sites)
    if spec.partition_at not in ("after_round_1", "readies", "upload"):
        raise ValueError(f"unknown partition_at {spec.partition_at!r}")
    link = net.Link.make("chaos") if spec.partition_s is not None or spec.delay_s is not None else None
    # the aggregator behind its own link is dialled at the namespace's address (its TLS name); a site
    # behind one dials the host side's address (through the relay, for a slow link)
    host = "127.0.0.1" if link is None else link.site_ip if spec.target == "aggregator" else link.host_ip
    port = free_port()
    behind = "aggregator" if spec.target == "aggregator" else "site"
    slow = (
        SlowLink(link, port, spec.delay_s, spec.loss_pct, out / "link", behind)
        if link is not None and spec.delay_s is not None
        else None
    )
    ws = out / "workspace"
    provision(
        Project(
            name=f"chaos-{spec.mode}",
            aggregator=AggregatorSpec(host=host, port=port),
            sites=[SiteSpec(name=n, org=f"org-{n}") for n in names],
            admins=[AdminSpec(name=SUBMITTER, org="chaos", role="lead")],
            key_holder=names[0],
        ),
        ws,
        force=True,
    )
    sign_job(out / "job", load_kit(ws / SUBMITTER))
    sims = [SimSite(n, chaos_job.write_data(out / "data" / n, n)) for n in names]
    policies = write_policies(out / "policies", sims, _policy(spec.dp))
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    mark = out / "kills.txt"
    base_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    base_env.pop(ENV_KILL, None)
    base_env.pop(ENV_CLOCK, None)
    cmds: dict[str, list[str]] = {
        "aggregator": [
            "aggregator",
            "serve",
            "--kit",
            str(ws / "aggregator"),
            "--state",
            str(out / "state" / "aggregator"),
            "--job",
            str(out / "job"),
            "--host",
            _aggregator_bind(host, slow),
            "--exit-when-done",
            *(["--insecure-dev-tee"] if traits(spec.mode).attested else []),
        ]
    }
    for s in sims:
        cmds[s.name] = [
            "agent",
            "run",
            "--kit",
            str(ws / s.name),
            "--data",
            str(s.data),
            "--state",
            str(out / "state" / s.name),
            "--policy",
            str(policies[s.name]),
        ]

    def start(name: str, faulty: bool, n: int) -> subprocess.Popen[bytes]:
        env = dict(base_env)
        if faulty and spec.fault is not None:
            env[ENV_KILL], env[ENV_MARK] = spec.fault, str(mark)
        skewed = spec.clock_skew_s is not None and name == spec.target
        if skewed:
            env[ENV_CLOCK] = str(spec.clock_skew_s)
        launcher = "secagg.chaos.shim" if faulty or skewed else "secagg.cli"
        inside = link.prefix() if link is not None and name == spec.target else []
        return start_logged(
            [*inside, sys.executable, "-m", launcher, *cmds[name]], logs / f"{name}.{n}.log", env
        )

    result = Outcome(spec, out, 0.0, False)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    started = time.monotonic()
    disk = SmallDisk(out / "state" / "aggregator", spec.disk_mb) if spec.disk_full_s is not None else None
    if disk is not None:
        disk.__enter__()
    try:
        if slow is not None:
            slow.start()
            log(f"    {slow.link.ns}: {slow.delay * 1000:.0f} ms each way, {slow.percent}% loss each way")
        faulty = spec.fault is not None
        procs["aggregator"] = start("aggregator", faulty and spec.target == "aggregator", 0)
        for n in names:
            procs[n] = start(n, faulty and spec.target == n, 0)
        deadline = started + spec.timeout
        agg_done_at: float | None = None
        maps_at = 0.0
        while True:
            result.peak_rss = max(result.peak_rss, _vm_hwm(procs["aggregator"].pid))
            if not result.torch_loaded and time.monotonic() - maps_at > 1.0:  # a few 100 KiB to read
                maps_at = time.monotonic()
                result.torch_loaded = _maps_torch(procs["aggregator"].pid)
            if link is not None and spec.partition_s is not None:
                _partition(link, spec, out, started, result, log)
            if disk is not None and spec.disk_full_s is not None:
                _disk_full(disk, spec.disk_full_s, out, started, result, log)
            for name, p in list(procs.items()):
                rc = p.poll()
                if rc is None or getattr(p, "_chaos_seen", False):
                    continue
                p._chaos_seen = True  # type: ignore[attr-defined]
                result.exits.append((name, rc))
                if rc == -9 and name == spec.target and result.restarts == 0:
                    result.restarts += 1
                    log(f"    {name} killed ({spec.fault}); restarting on the same state")
                    if spec.drop_sealed_keys and name == "aggregator":
                        for sealed in (out / "state" / "aggregator" / "jobs").glob("*/tee-keys.sealed"):
                            sealed.unlink()
                            log(f"    {sealed.name} of {sealed.parent.name} deleted: fresh enclave keys")
                    procs[name] = start(name, False, result.restarts)
            agg = procs["aggregator"]
            if agg.poll() is not None and getattr(agg, "_chaos_seen", False):
                agg_done_at = agg_done_at or time.monotonic()
            if all(p.poll() is not None for p in procs.values()) and all(
                getattr(p, "_chaos_seen", False) for p in procs.values()
            ):
                break
            # sites get a few seconds after the aggregator has gone to finish (they poll for "stop")
            if agg_done_at is not None and time.monotonic() - agg_done_at > 20:
                break
            if time.monotonic() > deadline:
                result.timed_out = True
                break
            # waiting to cut an upload short: look at the spool often enough to catch it
            cutting = spec.partition_at == "upload" and not result.partition
            time.sleep(0.01 if cutting else 0.1)
    finally:
        alive = [(n, p) for n, p in procs.items() if p.poll() is None]
        stop_processes(alive)
        for n, p in alive:
            result.exits.append((n, p.returncode))
        if slow is not None:
            result.relayed = slow.accepted()
            try:
                c = slow.counts()
                result.dropped, result.passed = c.dropped, c.passed_in + c.passed_out
            except RuntimeError as exc:  # the table never made it: the run reports no drops
                log(f"    {exc}")
            slow.stop()
        if link is not None:
            link.close()
        if disk is not None:
            disk.__exit__(None, None, None)
    result.seconds = time.monotonic() - started
    result.hits = mark.read_text().split("\n")[:-1] if mark.is_file() else []
    return result
