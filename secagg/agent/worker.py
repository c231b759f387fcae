"""The job's training worker, from the agent's side: one process per job, rounds over a socketpair.

:class:`TrainingWorker` starts ``python -P -m secagg.agent.worker_main`` (:mod:`secagg.agent.worker_main`)
lazily on the first :meth:`~TrainingWorker.run`, in a session and process group of its own, with a
cleared environment, the job package as working directory, stdout and stderr to the job's log and the
child's end of a socketpair as its only channel to the agent. The worker confines itself first
(:mod:`secagg.agent.sandbox`), then runs the job's script, which keeps running from round to round in
the loop form (``for task in client.tasks()``) or handles one task and exits in the one-round form, in
which case the next round starts a fresh worker in the same confinement.

The model travels by file in the I/O folder (``global.safetensors`` in, ``local.safetensors`` out);
the channel carries only control frames, each checked as untrusted input. Neither file passes through
the agent's memory: the global model is copied in, and the trained model out to a file of the agent's
own beside the I/O folder, by the kernel (``sendfile``), and the agent reads that copy a window at a
time (:mod:`secagg.agent.roundfiles`). The worker reads the model tensor by tensor into its arrays and
writes its result a tensor at a time (:mod:`secagg.client`).

Failures stay contained to one round: a worker that crashes, exits, hangs past the round's time limit,
is killed by a resource limit or breaks the protocol makes :meth:`~TrainingWorker.run` raise
:class:`TrainingFailed` (or its :class:`TrainingTimeout` / :class:`TrainingLimitExceeded`), its whole
process group is killed and reaped, and the next ``run`` starts a fresh worker. A refusal (DP-SGD could
not account for the round, the kernel cannot confine the worker) is a :class:`PolicyRefusal` with its
code. Nothing the script does raises anything else in the agent.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secagg.agent.channel import Channel, ChannelClosed, ChannelError, ChannelTimeout, Frame, socketpair
from secagg.agent.sandbox import Confinement, scratch_env
from secagg.agent.worker_codes import WorkerError
from secagg.bundle import from_safetensors
from secagg.client import IO_ENV
from secagg.errors import PolicyRefusal, SecaggError
from secagg.reasons import Reason

_KEEP_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "PYTHONHASHSEED",
)
#: output files of a round, removed before each task
_OUTPUTS = ("local.safetensors", "result.json", "refusal.json", ".local.safetensors.tmp", ".result.json.tmp")
#: a worker killed by one of these ran into a resource limit (RLIMIT_AS/OOM kill, RLIMIT_CPU, RLIMIT_FSIZE)
_LIMIT_SIGNALS = frozenset({signal.SIGKILL, signal.SIGXCPU, signal.SIGXFSZ})
#: how long a worker that said it is exiting (or whose channel the agent closed) gets before SIGKILL
_EXIT_GRACE = 5.0


class TrainingFailed(SecaggError):
    code: str = Reason.TRAINING_FAILED


class TrainingTimeout(TrainingFailed):
    code: str = Reason.TRAINING_TIMEOUT


class TrainingLimitExceeded(TrainingFailed):
    code: str = Reason.TRAINING_LIMIT_EXCEEDED


class TrainingSentNothing(TrainingFailed):
    """The script ended its task without an update: one round lost at this site, as any failure,
    but named, so that a user's simulation can say what the script must do."""

    code: str = Reason.NO_UPDATE


@dataclass(frozen=True)
class RunResult:
    #: the trained model (``train`` tasks): the agent's own copy of what the script wrote, in the
    #: job's folder outside the worker's reach; the caller reads it a window at a time and removes it
    local_path: Path | None
    num_samples: int | None
    metrics: dict[str, float]
    #: what DP-SGD inside training spent, as the script's Opacus accountant reported it
    training_spends: tuple[dict[str, Any], ...] = ()

    @property
    def local(self) -> dict[str, Any] | None:
        """The trained model loaded whole (tests, small models); the agent's round never calls it."""
        return None if self.local_path is None else from_safetensors(self.local_path.read_bytes())


class _Proc:
    """A started worker: the process, its channel and a pidfd that becomes readable when it exits."""

    def __init__(self, popen: subprocess.Popen[bytes], chan: Channel) -> None:
        self.popen, self.chan = popen, chan
        self.pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            self.pidfd = os.pidfd_open(popen.pid)
        self.killed = False
        self.retire_by = math.inf
        #: one reaper at a time: the job's thread ending its job and the agent's close can reap the
        #: same worker at once, and the second ``os.close`` of the pidfd failed with EBADF (or, had
        #: the number been reused meanwhile, would have closed another file of the agent's)
        self._reaping = threading.Lock()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> bool:
        """Whether the process has ended, without reaping it (its pid stays ours until :meth:`reap`)."""
        if self.popen.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def wait_exited(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.exited():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.pidfd is not None:
                select.select([self.pidfd], [], [], left)
            else:
                time.sleep(min(left, 0.01))
        return True

    def reap(self, grace: float = 0.0) -> int:
        """Give the process ``grace`` seconds to end, kill its whole process group, reap it.
        Idempotent and safe from several threads: a second caller waits for the first, then finds
        nothing left to do."""
        with self._reaping:
            return self._reap(grace)

    def _reap(self, grace: float) -> int:
        if self.popen.returncode is None:
            if not (self.wait_exited(grace) if grace > 0 else self.exited()):
                self.killed = True
            # the leader is not reaped yet, so its pid (the group id) cannot have been reused
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait()
        self.chan.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        return self.popen.returncode


class TrainingWorker:
    """The training worker of one job at this site (see the module docstring).

    ``confinement`` is applied by the worker before any job code runs; ``None`` skips it and is only
    for tests of the loop mechanics."""

    def __init__(
        self,
        job_root: Path,
        entry: str,
        io_dir: Path,
        scratch_dir: Path,
        log: Path,
        confinement: Confinement | None,
    ) -> None:
        self.job_root = job_root.resolve()
        self.script = (job_root / entry).resolve()
        if self.job_root not in self.script.parents:
            raise TrainingFailed(f"entry point {entry} is outside the job package")
        self.io_dir, self.scratch_dir, self.log = io_dir, scratch_dir, log
        self.confinement = confinement
        #: what the latest worker reported it put in force before any job code ran
        #: (:meth:`secagg.agent.sandbox.Applied.to_dict`); None when unconfined
        self.sandbox: dict[str, Any] | None = None
        self._proc: _Proc | None = None
        self._retiring: list[_Proc] = []
        self._closed = False

    # ------------------------------------------------------------------ state
    @property
    def alive(self) -> bool:
        """Whether a worker process is up and waiting for the next task."""
        p = self._proc
        return p is not None and not p.exited() and not p.chan.closed

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> TrainingWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, grace: float = _EXIT_GRACE) -> None:
        """End the job: close the channel (a loop-form script's ``tasks()`` ends and it exits), give it
        ``grace`` seconds, then kill its process group and reap it. Idempotent."""
        self._closed = True
        procs, self._proc = [*self._retiring, *([self._proc] if self._proc else [])], None
        self._retiring = []
        for p in procs:
            p.chan.close()
        deadline = time.monotonic() + grace
        for p in procs:
            p.reap(grace=max(0.0, min(deadline, p.retire_by) - time.monotonic()))

    # ------------------------------------------------------------------ a round
    def run(self, task: dict[str, Any], global_model: bytes | Path, timeout: float) -> RunResult:
        """Run one task (``train`` or ``evaluate``) on ``global_model`` (a safetensors file, copied
        into the I/O folder without passing through this process's memory, or bytes) within
        ``timeout`` seconds."""
        if self._closed:
            raise TrainingFailed("the training worker of this job is closed")
        deadline = time.monotonic() + timeout
        self._reap_retiring()
        self._prepare_io(global_model)
        try:
            if not self._ready_for_task():
                self._start(deadline, timeout)
            proc = self._proc
            assert proc is not None
            self._send(proc, {"type": "task", "task": task}, deadline, timeout)
            reply = self._reply(proc, deadline, timeout)
            result = self._result(task, reply)
        except BaseException:
            self._stop()
            raise
        if reply.header.get("last") is not False:
            self._retire()
        return result

    def _prepare_io(self, global_model: bytes | Path) -> None:
        self.io_dir.mkdir(parents=True, exist_ok=True)
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        for stale in _OUTPUTS:
            (self.io_dir / stale).unlink(missing_ok=True)
        # the job can write in its I/O folder, links included: never follow a name it may have planted
        tmp = self.io_dir / f".global.{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as fh:
            if isinstance(global_model, bytes):
                fh.write(global_model)
            else:
                with global_model.open("rb") as src:
                    _copy_fd(src.fileno(), fh.fileno(), os.fstat(src.fileno()).st_size)
        tmp.replace(self.io_dir / "global.safetensors")

    def _ready_for_task(self) -> bool:
        """A worker is up, idle and in step (nothing unasked-for waiting on its channel)."""
        p = self._proc
        if p is None:
            return False
        if p.exited() or p.chan.closed or p.chan.readable(0):
            self._stop()  # died between rounds, or sent what nobody asked for: start afresh
            return False
        return True

    def _start(self, deadline: float, timeout: float) -> None:
        env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
        env.setdefault("OMP_NUM_THREADS", "1")
        env[IO_ENV] = str(self.io_dir)
        # the worker imports secagg: make this installation importable without the agent's env
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env.update(scratch_env(self.scratch_dir))  # TMPDIR, HOME, caches: the only place it may write but io
        env["PYTHONUNBUFFERED"] = "1"  # the log is current while the worker stays up
        chan, theirs = socketpair()
        cmd = [sys.executable, "-P", "-m", "secagg.agent.worker_main", "--fd", str(theirs.fileno())]
        try:
            with self.log.open("ab") as out:
                popen = subprocess.Popen(  # noqa: S603 (our own interpreter and module, no shell)
                    [*cmd, str(self.script)],
                    cwd=self.job_root,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    pass_fds=(theirs.fileno(),),
                    start_new_session=True,  # its own process group: killed as a whole
                )
        except OSError as exc:
            chan.close()
            raise TrainingFailed(f"could not start the training worker: {exc}") from None
        finally:
            theirs.close()
        proc = self._proc = _Proc(popen, chan)
        confinement = None if self.confinement is None else self.confinement.to_json()
        self._send(proc, {"type": "confine", "confinement": confinement}, deadline, timeout)
        reply = self._reply(proc, deadline, timeout)
        if reply.type == "ready":
            sandbox = reply.header.get("sandbox")
            self.sandbox = sandbox if isinstance(sandbox, dict) else None
            return
        if reply.type == "refused":
            raise self._refusal(reply)
        raise TrainingFailed(f"training worker did not start: it answered {reply.type!r}; see {self.log}")

    # ------------------------------------------------------------------ the channel
    def _send(self, proc: _Proc, header: dict[str, Any], deadline: float, timeout: float) -> None:
        try:
            proc.chan.send(header, timeout=max(0.001, deadline - time.monotonic()))
        except ChannelTimeout:
            raise TrainingTimeout(f"training script ran past {timeout:.0f} s") from None
        except ChannelClosed:
            raise self._death(proc) from None

    def _reply(self, proc: _Proc, deadline: float, timeout: float) -> Frame:
        """The worker's next frame; its death, a timeout or a malformed frame as TrainingFailed."""
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ChannelTimeout("no reply in time")
                watch: list[Any] = [proc.chan] + ([proc.pidfd] if proc.pidfd is not None else [])
                ready, _, _ = select.select(watch, [], [], left)
                if proc.chan in ready:
                    return proc.chan.recv(timeout=max(0.001, deadline - time.monotonic()))
                if ready:  # the process ended and left nothing on the channel
                    raise self._death(proc)
        except ChannelTimeout:
            raise TrainingTimeout(f"training script ran past {timeout:.0f} s") from None
        except ChannelClosed:
            raise self._death(proc) from None
        except ChannelError as exc:
            raise TrainingFailed(f"training worker sent a malformed frame ({exc}); see {self.log}") from None

    def _death(self, proc: _Proc) -> TrainingFailed:
        """What to report for a worker that went away without answering."""
        rc = proc.reap(grace=2.0)
        if proc.killed:
            return TrainingFailed(f"training worker closed its channel but did not exit; see {self.log}")
        if rc < 0 and -rc in _LIMIT_SIGNALS:
            name = signal.Signals(-rc).name
            return TrainingLimitExceeded(
                f"training script was killed by {name} (a resource limit); see {self.log}"
            )
        return TrainingFailed(f"training script exited with {rc}; see {self.log}")

    # ------------------------------------------------------------------ the answer
    def _refusal(self, reply: Frame) -> SecaggError:
        code, reason = reply.header.get("code"), reply.header.get("reason")
        if not isinstance(code, str) or not isinstance(reason, str):
            return TrainingFailed(f"training worker sent a malformed refusal; see {self.log}")
        return PolicyRefusal(reason[:500], code=code[:64])

    def _result(self, task: dict[str, Any], reply: Frame) -> RunResult:
        h = reply.header
        if reply.type == "refused":
            raise self._refusal(reply)
        if reply.type == "error":
            raise self._failure(h)
        if reply.type != "done":
            raise TrainingFailed(f"training worker answered {reply.type!r} to a task; see {self.log}")
        if h.get("round") != task["round"] or h.get("task") != task["task"]:
            raise TrainingFailed(f"training worker answered another task than round {task['round']}'s")
        result = h.get("result")
        if not isinstance(result, dict):
            raise TrainingFailed("training script finished without calling client.send()")
        metrics = result.get("metrics", {})
        spends = result.get("training_spends") or []
        n = result.get("num_samples")
        if (
            not isinstance(metrics, dict)
            or not all(isinstance(k, str) and _finite(v) for k, v in metrics.items())
            or not isinstance(spends, list)
            or not all(isinstance(s, dict) for s in spends)
            or (n is not None and (not isinstance(n, int) or isinstance(n, bool) or n <= 0))
        ):
            raise TrainingFailed(f"training worker sent a malformed result; see {self.log}")
        local = None
        if task["task"] == "train":
            local = self._take_output("local.safetensors", h.get("local_bytes"), n)
        return RunResult(
            local_path=local,
            num_samples=n,
            metrics={k: float(v) for k, v in metrics.items()},
            training_spends=tuple(spends),
        )

    def _take_output(self, name: str, size: Any, n_samples: Any) -> Path:
        """A file the script wrote, copied (by the kernel, not through this process's memory) to a
        file of the agent's own beside the I/O folder, where the job cannot reach it: opened without
        following links (a job could point its output at a file only the agent may read), only if it
        is the regular file of the size it announced, and refused if the copy is not that size (a
        script that changes the file while it is copied sends what it sends, checked as any update)."""
        bad = TrainingFailed(f"training script's {name} is missing or not what it sent")
        if n_samples is None or not isinstance(size, int) or isinstance(size, bool):
            raise bad
        try:  # O_NONBLOCK: a FIFO planted under the name must not hang the agent in open()
            fd = os.open(self.io_dir / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            raise bad from None
        mine = self.io_dir.parent / f".{Path(name).stem}.{secrets.token_hex(8)}.tmp"
        try:
            st = os.fstat(fd)
            # a second hard link would be a file that also lives elsewhere
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size != size:
                raise bad
            out = os.open(mine, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                copied = _copy_fd(fd, out, size + 1)
            finally:
                os.close(out)
            if copied != size:
                raise bad
        except BaseException:
            mine.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        return mine

    def _failure(self, h: dict[str, Any]) -> TrainingFailed:
        code, status = h.get("code"), h.get("status")
        if code == WorkerError.NO_SEND:
            return TrainingSentNothing("training script finished without calling client.send()")
        if code == WorkerError.NO_SEND_LOOP:
            return TrainingSentNothing(
                f"training script asked for its next task without calling client.send(); see {self.log}"
            )
        if code == WorkerError.LIMIT:
            return TrainingLimitExceeded(
                f"training script exceeded a resource limit (MemoryError); see {self.log}"
            )
        if not isinstance(status, int) or isinstance(status, bool):
            status = 1
        return TrainingFailed(f"training script exited with {status}; see {self.log}")

    # ------------------------------------------------------------------ processes
    def _stop(self) -> None:
        """Kill the current worker's process group now and reap it."""
        p, self._proc = self._proc, None
        if p is not None:
            p.reap()

    def _retire(self) -> None:
        """The worker said it is exiting (one-round script): let it, off the critical path."""
        p, self._proc = self._proc, None
        if p is not None:
            p.retire_by = time.monotonic() + _EXIT_GRACE
            self._retiring.append(p)

    def _reap_retiring(self) -> None:
        keep = []
        for p in self._retiring:
            if p.exited() or time.monotonic() >= p.retire_by:
                p.reap()
            else:
                keep.append(p)
        self._retiring = keep


def _copy_fd(src: int, dst: int, limit: int) -> int:
    """Up to ``limit`` bytes from ``src`` (at its offset) to ``dst``, in the kernel where it can
    (``sendfile``), else through a 4 MiB buffer; the bytes copied."""
    total = 0
    try:
        while total < limit:
            n = os.sendfile(dst, src, None, min(limit - total, 1 << 30))
            if n == 0:
                return total
            total += n
        return total
    except OSError:
        if total:
            raise
    while total < limit:
        piece = os.read(src, min(limit - total, 4 << 20))
        if not piece:
            break
        os.write(dst, piece)
        total += len(piece)
    return total


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
