"""TEST-ONLY launcher: ``python -m secagg.chaos.shim ARGS...`` runs ``secagg ARGS...`` exactly as the
production CLI does, after installing one kill point named by ``SECAGG_CHAOS_KILL=POINT@ROUND``.

The process SIGKILLs itself (no cleanup, no atexit, as ``kill -9`` does) when it reaches POINT in
round ROUND, after appending ``POINT ROUND`` to the file named by ``SECAGG_CHAOS_MARK`` so the harness
knows the fault hit where it was meant to. Only the chaos harness sets these variables; the
aggregator and agent modules do not read them and are not changed: the points are wrappers around
their methods, installed here.

Points (see :data:`POINTS`): in the aggregator ``agg-train`` (train tasks handed out, sites training),
``agg-upload`` (an upload half spooled), ``agg-combine`` (combining, partial result written),
``agg-publish`` (the round's result written, not yet committed to the store); in a site
``site-train`` (its worker training), ``site-debit`` (budget debited, nothing uploaded),
``site-upload`` (first chunk of the upload streamed), ``site-uploaded`` (upload accepted, not yet
recorded by the site); in a cross-site evaluation, ``agg-xsite`` (the aggregator has kept and recorded
the first sealed local model, the others are still to come; ROUND is ignored).

``SECAGG_CHAOS_CLOCK=SECONDS`` (issue #18: clock skew) runs the process with its wall clock moved by
SECONDS (negative: behind): ``time.time`` and ``datetime.datetime.now`` / ``utcnow`` read the real
clock plus the offset, installed before any secagg module is imported, so certificate validity,
dev-TEE evidence age, audit and ledger times all see the skewed clock. Monotonic clocks and the TLS
library's own (C) clock are not moved: the TLS handshake checks certificates at the real time.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

ENV_KILL = "SECAGG_CHAOS_KILL"
ENV_MARK = "SECAGG_CHAOS_MARK"
ENV_CLOCK = "SECAGG_CHAOS_CLOCK"

AGGREGATOR_POINTS = ("agg-train", "agg-upload", "agg-combine", "agg-publish")
SITE_POINTS = ("site-train", "site-debit", "site-upload", "site-uploaded")
#: only a job with ``evaluation: cross_site`` reaches these (not part of the rounds' scenarios)
XSITE_POINTS = ("agg-xsite",)
POINTS = AGGREGATOR_POINTS + SITE_POINTS + XSITE_POINTS
#: seconds after the train tasks are handed out (or the worker starts) before the kill
TRAIN_DELAY_S = 0.3


#: the first thread to reach the point kills the process; others reaching it meanwhile (uploads
#: spooled at once) wait for the kill, so the point is hit, and marked, exactly once
_DYING = threading.Lock()


def die(point: str, round_: int) -> None:
    if not _DYING.acquire(blocking=False):
        threading.Event().wait()  # the kill is on its way
    mark = os.environ.get(ENV_MARK)
    if mark:
        with open(mark, "a") as fh:
            fh.write(f"{point} {round_}\n")
            fh.flush()
            os.fsync(fh.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def _wrap(cls: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    orig = getattr(cls, name)
    setattr(cls, name, functools.wraps(orig)(make(orig)))


def install(point: str, round_: int) -> None:
    """Wrap the one method where ``point`` lies (imports only the side it concerns)."""
    if point not in POINTS:
        raise SystemExit(f"secagg.chaos.shim: unknown point {point!r} (known: {', '.join(POINTS)})")
    if point.startswith("agg-"):
        _install_aggregator(point, round_)
    else:
        _install_site(point, round_)


def _install_aggregator(point: str, round_: int) -> None:
    from secagg.aggregator.federation import Federation
    from secagg.aggregator.spool import Spool
    from secagg.aggregator.store import StateStore

    if point == "agg-xsite":
        from secagg.aggregator.evaluation import CrossSite

        def store_model(orig: Callable[..., Any]) -> Callable[..., Any]:
            def f(self: Any, *a: Any, **k: Any) -> Any:
                note = orig(self, *a, **k)
                die(point, round_)  # recorded in the state file; its audit line and reply never go
                return note

            return f

        _wrap(CrossSite, "store_model", store_model)
    elif point == "agg-train":

        def next_task(orig: Callable[..., Any]) -> Callable[..., Any]:
            def f(self: Any, *a: Any, **k: Any) -> Any:
                task = orig(self, *a, **k)
                if task.get("kind") == "train" and task.get("round") == round_:
                    threading.Timer(TRAIN_DELAY_S, die, (point, round_)).start()
                return task

            return f

        _wrap(Federation, "next_task", next_task)
    elif point == "agg-upload":

        def receive(orig: Callable[..., Any]) -> Callable[..., Any]:
            def f(self: Any, site: str, job_id: str, r: int, attempt: int, fill: Callable[..., Any]) -> Any:
                if int(r) != round_:
                    return orig(self, site, job_id, r, attempt, fill)

                def half(fh: Any) -> None:
                    fill(fh)
                    fh.flush()
                    die(point, round_)  # the spooled bytes are in a temp file, not yet renamed

                return orig(self, site, job_id, r, attempt, half)

            return f

        _wrap(Spool, "receive", receive)
    elif point == "agg-combine":

        def follow(orig: Callable[..., Any]) -> Callable[..., Any]:
            def f(self: Any, job: Any, cur: Any, step: Any) -> Any:
                if cur.round == round_ and step.summed is not None:
                    die(point, round_)  # a mode that sums in its own phases (mask): at the sum
                if cur.round == round_ and step.combine and self.mode is not None:
                    combine = self.mode.combine

                    def killed_after(*a: Any, **k: Any) -> Any:
                        combine(*a, **k)
                        die(point, round_)

                    self.mode.combine = killed_after
                return orig(self, job, cur, step)

            return f

        _wrap(Federation, "_follow", follow)
    else:  # agg-publish

        def add_round(orig: Callable[..., Any]) -> Callable[..., Any]:
            def f(self: Any, job_id: str, r: int, *a: Any, **k: Any) -> Any:
                if int(r) == round_:
                    die(point, round_)
                return orig(self, job_id, r, *a, **k)

            return f

        _wrap(StateStore, "add_round", add_round)


def _install_site(point: str, round_: int) -> None:
    from secagg.agent.relay import Relay
    from secagg.agent.release import Releaser
    from secagg.agent.training import Trainer

    if point == "site-train":

        def run(orig: Callable[..., Any]) -> Callable[..., Any]:
            def f(self: Any, adm: Any, job_id: str, kind: str, r: int, *a: Any, **k: Any) -> Any:
                if kind == "train" and r == round_:
                    threading.Timer(TRAIN_DELAY_S, die, (point, round_)).start()
                return orig(self, adm, job_id, kind, r, *a, **k)

            return f

        _wrap(Trainer, "run", run)
    elif point == "site-debit":

        def release(orig: Callable[..., Any]) -> Callable[..., Any]:
            def f(self: Any, adm: Any, policy: Any, job_id: str, r: int, *a: Any, **k: Any) -> Any:
                out = orig(self, adm, policy, job_id, r, *a, **k)
                if r == round_:
                    die(point, round_)
                return out

            return f

        _wrap(Releaser, "release", release)
    elif point == "site-upload":

        def upload(orig: Callable[..., Any]) -> Callable[..., Any]:
            def f(self: Any, header: dict[str, Any], parts: Iterable[bytes]) -> Any:
                if int(header.get("round", -1)) != round_:
                    return orig(self, header, parts)

                def first_then_die() -> Iterator[bytes]:
                    for piece in parts:
                        yield piece
                        die(point, round_)

                return orig(self, header, first_then_die())

            return f

        _wrap(Relay, "upload", upload)
    else:  # site-uploaded

        def uploaded(orig: Callable[..., Any]) -> Callable[..., Any]:
            def f(self: Any, release: Any, job_id: str, r: int, *a: Any, **k: Any) -> Any:
                if r == round_:
                    die(point, round_)
                return orig(self, release, job_id, r, *a, **k)

            return f

        _wrap(Releaser, "uploaded", uploaded)


def skew_clock(offset_s: float) -> None:
    """Move this process's wall clock (as Python reads it) by ``offset_s`` seconds."""
    import datetime as dt
    import time

    real_time = time.time
    delta = dt.timedelta(seconds=offset_s)
    real_datetime = dt.datetime

    class SkewedDatetime(dt.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return real_datetime.now(tz) + delta

        @classmethod
        def utcnow(cls) -> Any:
            return real_datetime.now(dt.UTC).replace(tzinfo=None) + delta

    time.time = lambda: real_time() + offset_s
    dt.datetime = SkewedDatetime  # type: ignore[misc]


def main(argv: list[str]) -> int:
    clock = os.environ.get(ENV_CLOCK, "")
    if clock:
        skew_clock(float(clock))
    spec = os.environ.get(ENV_KILL, "")
    if spec:
        point, _, r = spec.partition("@")
        install(point, int(r or 1))
    from secagg.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
