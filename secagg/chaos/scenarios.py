"""The scenarios of issue #18 as lists of runs, and the suite that runs them and tabulates the checks.

Each scenario expands to one :class:`~secagg.chaos.run.RunSpec` per mode (and per kill point); every
run is bounded (``RunSpec.timeout``) and checked by :func:`secagg.chaos.checks.check`. A mode's
fault-free run is its reference: a faulty run of a deterministic mode must match it bit for bit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from secagg.chaos.checks import DETERMINISTIC, Report, check, final_models
from secagg.chaos.run import Outcome, RunSpec, run
from secagg.chaos.shim import AGGREGATOR_POINTS, SITE_POINTS

MODES = ("plain", "he", "mask", "tee")


@dataclass(frozen=True)
class Partition:
    """One partition scenario: whose link is cut, for how long, under which round timeout."""

    cut_s: float
    round_timeout: float
    #: whether the rounds may go on without the cut node (min_sites one less than every site)
    go_on: bool
    target: str = "site-2"
    #: when the cut begins (:attr:`secagg.chaos.run.RunSpec.partition_at`)
    at: str = "after_round_1"
    #: seconds the last site trains longer (with ``at="readies"``: the cut lands between the others'
    #: readies and its own)
    slow_last_s: float = 0.0
    #: float32 parameters added to the model (with ``at="upload"``: an upload long enough to cut)
    big: int = 0


#: the large model's extra parameters in the partition-upload scenarios (32 MiB of float32)
UPLOAD_BIG = 8 << 20
#: a site's partition (site-2) and the aggregator's. The aggregator's cut takes every site away at
#: once. Cut between rounds (10 s, 60 s, every site required) the next round waits for its readies:
#: a round with fewer than min_sites readies has no timeout, nothing to retry. Cut for longer than
#: the round timeout once all sites but the slow last one are ready for round 2 (min_sites one less
#: than every site): past the timeout the roster names the ready sites, their uploads cannot come,
#: the round times out and is retried (``round_retry``), and the new attempt waits for the sites to
#: come back: nothing is lost (RELIABILITY.md, "A partition of the aggregator and a slow, lossy link")
PARTITIONS = {
    "partition-10s": Partition(10.0, 30.0, go_on=False),
    "partition-60s": Partition(60.0, 30.0, go_on=False),
    "partition-timeout": Partition(45.0, 15.0, go_on=True),
    "partition-aggregator-10s": Partition(10.0, 30.0, go_on=False, target="aggregator"),
    "partition-aggregator-60s": Partition(60.0, 30.0, go_on=False, target="aggregator"),
    "partition-aggregator-timeout": Partition(
        45.0, 15.0, go_on=True, target="aggregator", at="readies", slow_last_s=3.0
    ),
    # site-2's link cut in the middle of its upload of a 32 MiB model (8M float32), every site
    # required; the round timeout outlasts the cut, so what is measured is the upload's fate
    "partition-upload-10s": Partition(10.0, 90.0, go_on=False, at="upload", big=UPLOAD_BIG),
    "partition-upload-60s": Partition(60.0, 150.0, go_on=False, at="upload", big=UPLOAD_BIG),
}
#: slow-link: issue #18's ``netem delay 200ms loss 2%`` for site-2, each way (without netem:
#: :mod:`secagg.chaos.slow`); the round timeout leaves room for a 0.4 s round trip per call.
#: slow-link-aggregator: the same on the aggregator's link, so every site's traffic is slowed at once
SLOW_DELAY_S, SLOW_LOSS_PCT, SLOW_ROUND_TIMEOUT = 0.2, 2, 60.0
SLOW_LINKS = {"slow-link": "site-2", "slow-link-aggregator": "aggregator"}
#: clock-skew: seconds the site's wall clock is moved (ahead, behind)
SKEWS = (600.0, -600.0)
#: disk-full: seconds the aggregator's state disk stays full (from the end of round 1)
DISK_FULL_S = 20.0
SCENARIOS = (
    "baseline",
    "kill-aggregator",
    "kill-site",
    *PARTITIONS,
    *SLOW_LINKS,
    "clock-skew",
    "disk-full",
    "load",
)
#: the round every kill hits (not the first, so a restart has a committed round to resume from)
KILL_ROUND = 2
#: the site every site kill hits
KILL_SITE = "site-2"
LOAD_SITES = (10, 25, 50)


@dataclass(frozen=True)
class Planned:
    scenario: str
    label: str  #: the kill point or the size, for the table
    spec: RunSpec


def plan(
    scenarios: Iterable[str],
    modes: Iterable[str],
    *,
    sites: int = 5,
    rounds: int = 3,
    points: Iterable[str] | None = None,
    load_sites: Iterable[int] = LOAD_SITES,
    load_rounds: int = 10,
) -> list[Planned]:
    want = set(points) if points is not None else None
    out: list[Planned] = []
    for mode in modes:
        for sc in scenarios:
            if sc == "baseline":
                out.append(Planned(sc, "none", RunSpec(mode, sites, rounds)))
            elif sc in ("kill-aggregator", "kill-site"):
                agg = sc == "kill-aggregator"
                for point in AGGREGATOR_POINTS if agg else SITE_POINTS:
                    if want is not None and point not in want:
                        continue
                    spec = RunSpec(
                        mode,
                        sites,
                        rounds,
                        fault=f"{point}@{KILL_ROUND}",
                        target="aggregator" if agg else KILL_SITE,
                        dp=not agg,  # a site's kill is about its ledger: give it a budget to spend
                        sleep=1.0,
                    )
                    out.append(Planned(sc, point, spec))
            elif sc in PARTITIONS:
                part = PARTITIONS[sc]
                spec = RunSpec(
                    mode,
                    sites,
                    rounds,
                    target=part.target,
                    partition_s=part.cut_s,
                    partition_at=part.at,
                    slow_last_s=part.slow_last_s,
                    round_timeout=part.round_timeout,
                    min_sites=sites - 1 if part.go_on else None,
                    timeout=300.0 + part.cut_s,
                    big=part.big,
                )
                where = {"readies": " at ready 2", "upload": " mid-upload"}.get(part.at, "")
                out.append(Planned(sc, f"{part.cut_s:.0f} s cut{where}", spec))
            elif sc in SLOW_LINKS:
                spec = RunSpec(
                    mode,
                    sites,
                    rounds,
                    target=SLOW_LINKS[sc],
                    delay_s=SLOW_DELAY_S,
                    loss_pct=SLOW_LOSS_PCT,
                    round_timeout=SLOW_ROUND_TIMEOUT,
                    timeout=600.0,
                )
                out.append(Planned(sc, f"{SLOW_DELAY_S * 1000:.0f} ms {SLOW_LOSS_PCT}% loss", spec))
            elif sc == "clock-skew":
                for skew in SKEWS:
                    # the skewed site may be refused (or refuse): the job goes on without it
                    spec = RunSpec(
                        mode,
                        sites,
                        rounds,
                        target=KILL_SITE,
                        clock_skew_s=skew,
                        min_sites=sites - 1,
                        round_timeout=20.0,
                    )
                    out.append(Planned(sc, f"{skew:+.0f} s", spec))
            elif sc == "disk-full":
                spec = RunSpec(mode, sites, rounds, sleep=1.0, disk_full_s=DISK_FULL_S, timeout=400.0)
                out.append(Planned(sc, f"{DISK_FULL_S:.0f} s full", spec))
            elif sc == "load":
                for n in load_sites:
                    t = 120.0 + 30.0 * n
                    out.append(
                        Planned(
                            sc,
                            f"{n} sites",
                            RunSpec(mode, n, load_rounds, round_timeout=t, timeout=60 + load_rounds * t),
                        )
                    )
            else:
                raise ValueError(f"unknown scenario {sc!r} (known: {', '.join(SCENARIOS)})")
    return out


@dataclass
class Row:
    scenario: str
    label: str
    mode: str
    sites: int
    rounds: int
    seconds: float
    round_seconds: float  #: median seconds per completed round (the aggregator's own measure)
    peak_rss: int
    hit: bool  #: the fault reached its point (always True for a fault-free run)
    restarts: int
    report: dict[str, Any]
    #: a slow link's evidence (connections through the relay, packets dropped and passed), or an
    #: upload's cut (bytes the aggregator had of it); else empty
    link: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.report["ok"]) and self.hit


def _round_seconds(o: Outcome) -> float:
    from secagg.chaos.checks import records
    from secagg.events import Event

    xs = sorted(
        float(x.get("seconds", 0.0))
        for x in records(o.state / "aggregator" / "audit.jsonl")
        if x.get("event") == Event.ROUND_COMPLETED
    )
    return xs[len(xs) // 2] if xs else float("nan")


def run_suite(planned: list[Planned], out: Path, log: Callable[[str], object] = print) -> list[Row]:
    """Run every planned run in order (a mode's baseline first, as its reference), check each, write
    ``results.json`` and ``results.md`` after every run (a long suite can be read while it runs)."""
    out.mkdir(parents=True, exist_ok=True)
    refs: dict[tuple[str, int, int], dict[str, Any]] = {}
    rows: list[Row] = []
    for i, p in enumerate(planned, 1):
        s = p.spec
        key = (s.mode, s.sites, s.rounds)
        # only a deterministic mode is held to its fault-free run bit for bit; he and mask to the bound
        if s.fault is not None and not s.dp and s.mode in DETERMINISTIC and key not in refs:
            log(f"[{i}/{len(planned)}] reference: {s.mode}, {s.sites} sites x {s.rounds} rounds, no fault")
            ref = run(RunSpec(s.mode, s.sites, s.rounds), out / f"ref-{s.mode}-{s.sites}x{s.rounds}", log)
            models = final_models(ref)
            refs[key] = next(iter(models.values())) if models else {}
        log(f"[{i}/{len(planned)}] {p.scenario} {p.label}: {s.mode}, {s.sites} sites x {s.rounds} rounds")
        started = time.monotonic()
        o = run(s, out / f"{i:03d}-{p.scenario}-{p.label.replace(' ', '')}-{s.mode}", log)
        rep: Report = check(o, refs.get(key))
        if p.scenario == "baseline" and not s.dp:
            models = final_models(o)
            if models:
                refs.setdefault(key, next(iter(models.values())))
        hit = (
            (s.fault is None or bool(o.hits))
            and (s.partition_s is None or len(o.partition) == 2)
            and (s.disk_full_s is None or len(o.disk_full) == 2)
            # a slow link counts when the site's traffic went through the relay and packets were lost
            and (s.delay_s is None or (o.relayed > 0 and o.dropped > 0))
            # a cut of an upload counts when the aggregator was still receiving it as the link went
            and (s.partition_at != "upload" or o.cut_mid_upload)
        )
        evidence: dict[str, int] = {}
        if s.delay_s is not None:
            evidence = {"relayed": o.relayed, "dropped": o.dropped, "passed": o.passed}
        elif s.partition_at == "upload":
            evidence = {"cut_at_bytes": o.cut_at_bytes}
        row = Row(
            p.scenario,
            p.label,
            s.mode,
            s.sites,
            s.rounds,
            o.seconds,
            _round_seconds(o),
            o.peak_rss,
            hit,
            o.restarts,
            rep.to_dict(),
            evidence,
        )
        rows.append(row)
        verdict = "ok" if row.ok else "FAILED"
        log(
            f"    {verdict} in {time.monotonic() - started:.0f} s: {rep.completed}/{s.rounds} rounds, "
            f"model {rep.model_note or '?'}, audit {rep.audit_ok}/{rep.audit_total}, "
            f"leftovers {len(rep.leftovers)}, overspent {rep.overspent}, "
            f"double debits {len(rep.double_debits)}"
            + (f", internal errors {len(rep.internal)}" if rep.internal else "")
            + "".join(f", {k} {v}" for k, v in row.link.items())
            + ("" if hit else ", the fault never hit its point")
        )
        write(out, rows)
    return rows


def unavailable(scenarios: Iterable[str]) -> str | None:
    """Why the named scenarios cannot run on this machine (one line), or None: partitions need network
    namespaces, the slow link nftables too."""
    from secagg.chaos import net, slow

    for sc in scenarios:
        why = slow.available() if sc in SLOW_LINKS else net.available() if sc in PARTITIONS else None
        if why is not None:
            return f"scenario {sc} cannot run here: {why}"
    return None


def command(scenario: str, mode: str, label: str, sites: int, rounds: int) -> str:
    if scenario == "load":
        n = label.split()[0]
        return f"secagg chaos --scenario load --modes {mode} --load-sites {n} --load-rounds {rounds}"
    if scenario in ("clock-skew", "disk-full"):
        return f"secagg chaos --scenario {scenario} --modes {mode} --sites {sites} --rounds {rounds}"
    extra = f" --points {label}" if scenario.startswith("kill") else ""
    return f"secagg chaos --scenario {scenario} --modes {mode} --sites {sites} --rounds {rounds}{extra}"


def table(rows: list[Row]) -> list[str]:
    """One line per (scenario, point, mode): the columns RELIABILITY.md publishes."""
    lines = [
        "| scenario | point | mode | runs | rounds completed | rounds lost | budget overspent | "
        "audit chains verified | leftovers | final model | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rep = r.report
        left = len(rep["leftovers"])
        model = rep["model_note"] or ("ok" if rep["model_ok"] else "?")
        over = rep["overspent"]
        lines.append(
            f"| {r.scenario} | {r.label} | {r.mode} | 1 | {rep['completed']}/{r.rounds} | {rep['lost']} | "
            f"{over} | {rep['audit_ok']}/{rep['audit_total']} | {left} | {model} | "
            f"`{command(r.scenario, r.mode, r.label, r.sites, r.rounds)}` |"
        )
    return lines


def load_table(rows: list[Row]) -> list[str]:
    lines = [
        "| mode | sites | rounds | median round (s) | aggregator peak RSS (MiB) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r.scenario == "load":
            lines.append(
                f"| {r.mode} | {r.sites} | {r.report['completed']}/{r.rounds} | "
                f"{r.round_seconds:.2f} | {r.peak_rss / 2**20:.0f} |"
            )
    return lines


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in MODES:
        pts = sorted(
            (r.sites, r.round_seconds, r.peak_rss / 2**20)
            for r in rows
            if r.scenario == "load" and r.mode == mode
        )
        if pts:
            a.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=mode)
            b.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=mode)
    a.set(xlabel="sites", ylabel="median round time (s)", title="round time")
    b.set(xlabel="sites", ylabel="aggregator peak RSS (MiB)", title="aggregator memory")
    a.set_ylim(bottom=0)
    b.set_ylim(bottom=0)
    a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_rows(path: Path) -> list[Row]:
    """The rows a suite wrote to ``results.json`` (to tabulate several suites together)."""
    fields = set(Row.__dataclass_fields__)
    return [Row(**{k: v for k, v in d.items() if k in fields}) for d in json.loads(path.read_text())]


def write(out: Path, rows: list[Row]) -> None:
    (out / "results.json").write_text(
        json.dumps([asdict(r) | {"ok": r.ok} for r in rows], indent=1, default=str)
    )
    text = ["# secagg chaos results", "", *table(rows), ""]
    if any(r.scenario == "load" for r in rows):
        text += ["## Load", "", *load_table(rows), "", "![load](load.png)", ""]
        plot(rows, out / "load.png")
    findings = [f"- {r.scenario} {r.label} {r.mode}: {'; '.join(why(r))}" for r in rows if not r.ok]
    if findings:
        text += ["## Not ok", "", *findings, ""]
    (out / "results.md").write_text("\n".join(text))


def why(r: Row) -> list[str]:
    rep = r.report
    why = []
    if not r.hit:
        why.append("the fault never reached its point")
    if not rep["finished"]:
        why.append("job did not finish")
    if rep["lost"]:
        why.append(f"{rep['lost']} rounds lost")
    if rep["model_ok"] is False:
        why.append(f"model: {rep['model_note']}")
    if rep["overspent"]:
        why.append(f"{rep['overspent']} ledgers over budget")
    if rep["double_debits"]:
        why.append(f"rounds debited twice (retry): {', '.join(rep['double_debits'])}")
    if rep["audit_errors"]:
        why.append(f"audit: {' | '.join(rep['audit_errors'])}")
    if rep["leftovers"]:
        why.append(f"left behind: {', '.join(rep['leftovers'][:5])}")
    if rep.get("internal"):  # rows written before the check have none
        why.append(f"internal errors: {' | '.join(rep['internal'][:5])}")
    why += rep["refusals"][:5]
    return why
