"""The training worker process: confine itself, then serve the job's tasks to its script.

``python -P -m secagg.agent.worker_main --fd N SCRIPT [ARGS...]`` is what
:class:`secagg.agent.worker.TrainingWorker` starts, with its end of a socketpair as file descriptor N
(``-P``: the job package, the working directory, is not put on ``sys.path``, so nothing of the job is
imported before the confinement). On the channel (:mod:`secagg.agent.channel`):

1. the agent sends ``{"type": "confine", "confinement": ...}``; the worker applies it with
   :func:`secagg.agent.sandbox.confine` *before any job code is imported or run* (``null`` only in tests
   of the loop mechanics) and answers ``{"type": "ready", "pid": ...}``, or ``refused`` with
   ``sandbox_unavailable`` when the kernel cannot confine it;
2. the agent sends ``{"type": "task", "task": {...}}``; the worker installs the DP-SGD runtime if the
   task asks for it and runs SCRIPT as ``python SCRIPT`` would (same ``__main__``, ``sys.argv``,
   ``sys.path[0]``), serving the task to :mod:`secagg.client`;
3. each task is answered with one frame: ``done`` (``round``, ``task``, ``result``, ``local_bytes``,
   ``last``), ``refused`` (``code``, ``reason``) or ``error`` (``code``, ``reason``, ``status``).

A script in the loop form (``for task in client.tasks(): ...``) answers ``done`` with ``last: false``
when its loop asks for the next task, and then waits for the next ``task`` frame; the agent closing the
channel ends the loop and the script exits normally. A one-round script answers when it returns (``last:
true``) and the process exits; so does a loop that the script leaves early. ``refused`` and ``error``
always end the process.

DP-SGD per round: :func:`secagg.privacy.dpsgd_runtime.install` patches the process for one run (one
accountant, one model, one optimizer, one loader). A long-lived worker installs it at the start of
each task that requires it and takes it out again when the task is answered (patches restored,
optimizer hooks and Opacus' per-example hooks removed), so every round has a fresh run and accountant,
a round without DP-SGD has none, and a refused round leaves nothing behind for the next.

The script can reach the channel's file descriptor (it runs in this process): what it could forge
there is only what it could hand to ``client.send`` anyway, and the agent checks every frame's sizes
and fields as untrusted input.
"""

from __future__ import annotations

import contextlib
import os
import re
import runpy
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Only the standard library and these two small modules before the confinement: secagg.client imports
# numpy, whose BLAS may start threads, and confine() must run in a single-threaded process.
from secagg.agent.channel import Channel, ChannelClosed
from secagg.agent.worker_codes import WorkerError
from secagg.errors import PolicyRefusal
from secagg.reasons import Reason

#: exit status of a worker whose task ended in an error frame
FAILED = 1
#: exit status of a worker whose task was refused (as :data:`secagg.agent.launch.REFUSED`)
REFUSED = 3
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def _code(value: str) -> str:
    return value if _CODE.match(value) else "refused"


class _DpSgd:
    """The DP-SGD runtime of the current task: installed for it, taken out when it is answered."""

    def __init__(self) -> None:
        self._undo: Callable[[], None] | None = None
        self._run: Any = None

    def begin(self, task: dict[str, Any]) -> None:
        self.end()
        if task.get("task") == "train" and task.get("dpsgd"):
            self._run, self._undo = _install_dpsgd(task["dpsgd"])

    def end(self) -> None:
        if self._undo is not None:
            self._undo()
        self._undo = self._run = None

    def refused(self) -> str | None:
        """The reason DP-SGD refused this task, even where the script caught the exception."""
        return getattr(self._run, "refused", None)


def _install_dpsgd(spec: dict[str, Any]) -> tuple[Any, Callable[[], None]]:
    import torch
    from torch.utils.data import DataLoader

    from secagg.privacy import dpsgd_runtime as rt

    saved_load, saved_iter = torch.nn.Module.load_state_dict, DataLoader.__iter__
    handles: list[Any] = []
    pre, post = rt.register_optimizer_step_pre_hook, rt.register_optimizer_step_post_hook

    def keeping(register: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def wrapped(hook: Any) -> Any:
            handle = register(hook)
            handles.append(handle)
            return handle

        return wrapped

    rt.register_optimizer_step_pre_hook = keeping(pre)  # type: ignore[assignment]
    rt.register_optimizer_step_post_hook = keeping(post)  # type: ignore[assignment]
    try:
        run = rt.install(rt.DpSgdSettings.of(spec))
    finally:
        rt.register_optimizer_step_pre_hook, rt.register_optimizer_step_post_hook = pre, post

    def undo() -> None:
        for handle in handles:
            handle.remove()
        torch.nn.Module.load_state_dict = saved_load  # type: ignore[method-assign]
        DataLoader.__iter__ = saved_iter  # type: ignore[method-assign]
        if run.hooks is not None:
            run.hooks.remove_hooks()
        if run.model is not None:
            for p in run.model.parameters():
                for attr in ("grad_sample", "summed_grad"):
                    if hasattr(p, attr):
                        setattr(p, attr, None)
        rt._RUN = None

    return run, undo


class _Worker:
    """Serves tasks from the agent's channel to :mod:`secagg.client` (its ``_Driver``)."""

    def __init__(self, chan: Channel) -> None:
        self.chan = chan
        self.dpsgd = _DpSgd()

    def begin(self, task: dict[str, Any]) -> None:
        self.dpsgd.begin(task)

    def next_task(self, finished: Any) -> dict[str, Any] | None:
        self.dpsgd.end()
        try:
            self.chan.send(_done(finished, last=False))
            frame = self.chan.recv()
        except ChannelClosed:
            return None  # the job is over
        task = _task_of(frame.header)
        self.begin(task)
        return task


def _done(cur: Any, *, last: bool) -> dict[str, Any]:
    return {
        "type": "done",
        "round": cur.spec.get("round"),
        "task": cur.spec.get("task"),
        "result": cur.result,
        "local_bytes": cur.local_bytes,
        "last": last,
    }


def _task_of(header: dict[str, Any]) -> dict[str, Any]:
    task = header.get("task")
    if header.get("type") != "task" or not isinstance(task, dict):
        raise SystemExit(f"secagg worker: expected a task frame, got {header.get('type')!r}")
    return task


def _error(code: str, reason: str, status: int = FAILED) -> dict[str, Any]:
    return {"type": "error", "code": code, "reason": reason[:500], "status": status, "last": True}


def _refused(code: str, reason: str) -> dict[str, Any]:
    return {"type": "refused", "code": _code(code), "reason": reason[:500], "last": True}


def _run_script(script: Path, args: list[str], worker: _Worker) -> dict[str, Any] | None:
    """Run the script to its end; the frame that answers the task still open, if any."""
    from secagg import client
    from secagg.client import NotSent, TrainingRefused

    sys.argv = [str(script), *args]
    sys.path.insert(0, str(script.parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            if isinstance(exc.code, int):
                return _error(WorkerError.EXIT, f"the script exited with {exc.code}", exc.code)
            print(exc.code, file=sys.stderr)
            return _error(WorkerError.EXIT, "the script exited with a message", FAILED)
    except TrainingRefused as exc:
        print(f"secagg: {exc}", file=sys.stderr)
        return _refused(exc.code, str(exc))
    except NotSent as exc:
        print(f"secagg: {exc}", file=sys.stderr)
        return _dp_refusal(worker) or _error(WorkerError.NO_SEND_LOOP, str(exc))
    except MemoryError:
        traceback.print_exc()
        return _error(WorkerError.LIMIT, "MemoryError")
    except BaseException as exc:  # anything the script raised ends this worker, never the agent
        traceback.print_exc()
        return _dp_refusal(worker) or _error(WorkerError.SCRIPT_ERROR, f"{type(exc).__name__}: {exc}")
    cur = client._current
    if client._over or cur is None:
        return None  # the loop ended because the agent closed the channel: nothing is open
    refusal = _dp_refusal(worker)
    if refusal is not None:
        return refusal
    if cur.result is None:
        return _error(WorkerError.NO_SEND, "the script finished without calling client.send()")
    worker.dpsgd.end()
    return _done(cur, last=True)


def _dp_refusal(worker: _Worker) -> dict[str, Any] | None:
    reason = worker.dpsgd.refused()
    return _refused(Reason.DPSGD_REFUSED, reason) if reason else None


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] != "--fd":
        print("usage: python -P -m secagg.agent.worker_main --fd N SCRIPT [ARGS...]", file=sys.stderr)
        return 2
    chan = Channel.from_fd(int(argv[1]))
    script = Path(argv[2]).resolve()
    try:
        first = chan.recv()
        if first.type != "confine":
            raise SystemExit(f"secagg worker: expected a confine frame, got {first.type!r}")
        spec = first.header.get("confinement")
        if spec is not None:
            from secagg.agent.sandbox import Confinement, confine

            try:
                applied = confine(Confinement.from_json(spec))
            except PolicyRefusal as exc:  # SandboxUnavailable: sandbox_unavailable
                print(f"secagg: {exc}", file=sys.stderr)
                chan.send(_refused(exc.code, str(exc)))
                return REFUSED
            for line in applied.lines():
                print(f"secagg worker: {line}", file=sys.stderr)
            sandbox = applied.to_dict()
        else:
            print("secagg worker: UNCONFINED (no confinement given: tests only)", file=sys.stderr)
            sandbox = None
        chan.send({"type": "ready", "pid": os.getpid(), "sandbox": sandbox})
        task = _task_of(chan.recv().header)
    except ChannelClosed:
        return 0  # the agent gave up before the first task
    from secagg import client  # job code and numpy only from here on

    worker = _Worker(chan)
    worker.begin(task)
    client._serve(worker, task)
    final = _run_script(script, argv[3:], worker)
    if final is None:
        return 0
    with contextlib.suppress(ChannelClosed):
        chan.send(final)
    if final["type"] == "done":
        return 0
    return REFUSED if final["type"] == "refused" else int(final["status"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
