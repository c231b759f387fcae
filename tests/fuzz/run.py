"""The long fuzz campaign (``make fuzz``): every target of tests/fuzz for N executions each.

A plain mutation loop over the same :class:`~tests.fuzz._harness.Target` objects the hypothesis smoke
tests use, because hypothesis spends most of its time generating and shrinking (tens of inputs a
second) where this loop runs thousands. Per target it records executions, distinct crashes (by
exception type and innermost source line; the first input of each is saved), wall time and the
process's RSS growth, and writes ``results.json`` and ``results.md`` under ``--out``.

A crash is: an exception outside the target's allowed ones, an input over its time bound, an input
still running at twice the bound (a hang, stopped by SIGALRM), or RSS growing past ``--max-rss-mib``.

    python -m tests.fuzz.run --execs 1000000 --out fuzz-out            # the full campaign
    python -m tests.fuzz.run --execs 1000000 --max-seconds 60 snp_report  # one target, time-boxed
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import pkgutil
import random
import signal
import sys
import time
import traceback
from pathlib import Path
from types import FrameType

import psutil

from tests.fuzz._harness import Target

_HERE = Path(__file__).resolve().parent


class Hang(Exception):
    pass


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang("input still running at twice the time bound")


def all_targets() -> list[Target]:
    out: list[Target] = []
    for info in sorted(pkgutil.iter_modules([str(_HERE)]), key=lambda i: i.name):
        if info.name.startswith("test_fuzz_"):
            out.extend(importlib.import_module(f"tests.fuzz.{info.name}").TARGETS)
    return out


def _signature(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/secagg/" in f.filename or "/attestation/" in f.filename] or frames
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    return f"{type(exc).__name__} at {where}"


def run_target(
    t: Target, execs: int, max_seconds: float, seed: int, out: Path, max_rss: int, keep_current: bool = False
) -> dict:
    current = out / f"current-{t.name}.bin" if keep_current else None
    seeds = [bytes(s) for s in t.seeds()]
    rng = random.Random(f"{seed}:{t.name}")
    t.warm_up()  # a one-time import: outside the per-input alarm, the time box and the RSS baseline
    proc = psutil.Process()
    rss0 = peak = proc.memory_info().rss
    crashes: dict[str, dict] = {}
    n = 0
    t0 = time.monotonic()
    signal.signal(signal.SIGALRM, _on_alarm)
    while n < execs and time.monotonic() - t0 < max_seconds:
        # each seed as is first, then mutations
        data = seeds[n] if n < len(seeds) else t.generate(seeds, rng)
        n += 1
        if current is not None:  # survives a crash of the process itself (an abort in native code)
            current.write_bytes(data)
        signal.setitimer(signal.ITIMER_REAL, 2 * t.time_bound)
        try:
            t.check(data)
        except (Exception, Hang) as exc:  # noqa: BLE001 - every escape is what we count
            sig = _signature(exc)
            if sig not in crashes:
                name = f"{t.name}-{hashlib.sha256(sig.encode()).hexdigest()[:10]}.bin"
                (out / "crashes").mkdir(parents=True, exist_ok=True)
                (out / "crashes" / name).write_bytes(data)
                crashes[sig] = {"count": 0, "input": f"crashes/{name}", "message": str(exc)[:300]}
            crashes[sig]["count"] += 1
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if n % 500 == 0:
            peak = max(peak, proc.memory_info().rss)
            if peak - rss0 > max_rss:
                crashes.setdefault("memory growth", {"count": 0, "input": "", "message": ""})
                crashes["memory growth"]["count"] += 1
                crashes["memory growth"]["message"] = f"RSS grew {(peak - rss0) >> 20} MiB"
                break
    wall = time.monotonic() - t0
    peak = max(peak, proc.memory_info().rss)
    return {
        "target": t.name,
        "executions": n,
        "crashes": sum(c["count"] for c in crashes.values()),
        "distinct_crashes": len(crashes),
        "crash_details": crashes,
        "wall_s": round(wall, 1),
        "exec_per_s": round(n / wall, 1) if wall else 0.0,
        "rss_growth_mib": round((peak - rss0) / 2**20, 1),
        "complete": n >= execs,
    }


def markdown(rows: list[dict], execs: int) -> str:
    lines = [
        f"| target | executions | of {execs:,} | crashes | wall (s) | exec/s | RSS growth (MiB) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        done = "all" if r["complete"] else f"{100 * r['executions'] / execs:.1f} %"
        lines.append(
            f"| {r['target']} | {r['executions']:,} | {done} | {r['crashes']} | {r['wall_s']} | "
            f"{r['exec_per_s']:,} | {r['rss_growth_mib']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("targets", nargs="*", help="target names (default: all)")
    ap.add_argument("--execs", type=int, default=1_000_000, help="executions per target")
    ap.add_argument("--max-seconds", type=float, default=float("inf"), help="time box per target")
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--max-rss-mib", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=Path("fuzz-out"))
    ap.add_argument(
        "--keep-current", action="store_true", help="write each input to OUT/current-<target>.bin first"
    )
    args = ap.parse_args(argv)
    # a stopped campaign still runs the targets' atexit clean-up (the RPC targets' tmpfs projects)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    targets = all_targets()
    if args.targets:
        unknown = set(args.targets) - {t.name for t in targets}
        if unknown:
            ap.error(f"unknown targets: {', '.join(sorted(unknown))}")
        targets = [t for t in targets if t.name in args.targets]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for t in targets:
        row = run_target(
            t, args.execs, args.max_seconds, args.seed, args.out, args.max_rss_mib << 20, args.keep_current
        )
        rows.append(row)
        print(
            f"{t.name}: {row['executions']:,} executions, {row['crashes']} crashes, {row['wall_s']} s "
            f"({row['exec_per_s']:,}/s)",
            flush=True,
        )
        for sig, c in row["crash_details"].items():
            print(f"    {sig} x{c['count']}: {c['message'][:160]}", flush=True)
        (args.out / "results.json").write_text(json.dumps(rows, indent=1))
        (args.out / "results.md").write_text(markdown(rows, args.execs))
    return 1 if any(r["crashes"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
