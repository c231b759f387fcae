"""A stand-in for the job's worker: confine itself, then try things and print the outcomes as JSON.

``python sandbox_probe.py SPEC_JSON`` where SPEC is an object with:

* ``confinement``: a :class:`Confinement` as JSON text (what the agent hands the worker);
* ``layer``: ``"all"`` (``confine()``) or ``"landlock"`` (only the Landlock layer, to test it alone);
* ``uid``: drop to this uid/gid first (to run the unprivileged path from a root test), or null;
* ``attempts``: a list of ``[kind, argument]`` pairs.

Every module an attempt needs is imported before confining (an unprivileged uid cannot read this
interpreter's installation under /root). Prints one line: ``{"applied": ..., "results": [...]}``, each
result ``"ok"`` / ``"ok:VALUE"`` or the exception's class and errno name.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import signal
import socket
import sys
import time

from secagg.agent.sandbox import Confinement, confine, landlock, privs

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def _err(exc: BaseException) -> str:
    no = getattr(exc, "errno", None)
    return f"{type(exc).__name__}:{errno.errorcode.get(no, no)}" if no else type(exc).__name__


def _syscall(nr: int, *args: int) -> str:
    ret = libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    if ret < 0:
        return f"OSError:{errno.errorcode[ctypes.get_errno()]}"
    return f"ok:{ret}"


def _forks(n: int) -> str:
    children = []
    try:
        for _ in range(n):
            pid = os.fork()
            if pid == 0:
                time.sleep(20)
                os._exit(0)
            children.append(pid)
        result = f"ok:{len(children)}"
    except OSError as exc:
        result = f"{_err(exc)}:{len(children)}"
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return result


def _torch_step() -> str:
    import numpy as np
    import torch

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x, y = torch.randn(64, 30), torch.from_numpy(np.random.default_rng(0).random(64).astype("float32"))
    before = m[0].weight.detach().clone()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(m(x).squeeze(1), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    changed = not torch.equal(before, m[0].weight.detach())
    return f"ok:{changed}"


def attempt(kind: str, arg: object, held: dict[str, object]) -> str:
    try:
        if kind == "read":
            with open(str(arg), "rb") as f:
                f.read(1)
        elif kind == "listdir":
            os.listdir(str(arg))
        elif kind == "write":
            with open(str(arg), "wb") as f:
                f.write(b"x")
        elif kind == "mkdir":
            os.mkdir(str(arg))
        elif kind == "chmod":
            os.chmod(str(arg), 0o666)
        elif kind == "fchmod":  # on a file it may open read-only
            fd = os.open(str(arg), os.O_RDONLY)
            try:
                os.fchmod(fd, 0o666)
            finally:
                os.close(fd)
        elif kind == "chown":
            os.chown(str(arg), os.getuid(), os.getgid())
        elif kind == "setxattr":
            os.setxattr(str(arg), "user.secagg", b"x")
        elif kind == "link":  # hard-link a file into a writable folder
            src, dst = arg  # type: ignore[misc]
            os.link(src, dst)
        elif kind == "symlink_read":  # a symlink in a writable folder pointing outside
            target, link = arg  # type: ignore[misc]
            os.symlink(target, link)
            with open(link, "rb") as f:
                f.read(1)
        elif kind == "tcp_connect":
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect(("127.0.0.1", int(str(arg))))
        elif kind == "tcp_bind":
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", int(str(arg))))
        elif kind == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"x", ("127.0.0.1", int(str(arg))))
        elif kind == "unix_connect":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(arg))
        elif kind == "abstract_connect":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect("\0" + str(arg))
        elif kind == "held_tcp_connect":  # a TCP socket made before confining
            s = held["tcp"]
            assert isinstance(s, socket.socket)
            s.settimeout(2)
            s.connect(("127.0.0.1", int(str(arg))))
        elif kind == "held_unix_send":  # an inherited socketpair end (the agent's channel)
            os.write(int(str(arg)), b"hello")
        elif kind == "socketpair":
            a, b = socket.socketpair()
            a.send(b"x")
            return f"ok:{b.recv(1).decode()}"
        elif kind == "x32_socket":  # socket(2) through the x32 table of x86_64
            return _syscall(0x40000000 | 41, socket.AF_INET, socket.SOCK_STREAM, 0)
        elif kind == "kill":
            os.kill(int(str(arg)), signal.SIGTERM)
        elif kind == "unshare":
            return _syscall(272, 0x00020000)  # unshare(CLONE_NEWNS), x86_64
        elif kind == "ptrace":
            return _syscall(101, 16, int(str(arg)), 0, 0)  # PTRACE_ATTACH
        elif kind == "mount":
            return _syscall(165, 0, 0, 0, 0, 0)
        elif kind == "clone_newuser":
            return _syscall(56, 0x10000000 | signal.SIGCHLD, 0, 0, 0, 0)
        elif kind == "setuid0":
            os.setuid(0)
        elif kind == "caps":
            return "ok:" + json.dumps(privs.capability_sets())
        elif kind == "no_new_privs":
            return f"ok:{privs.no_new_privs()}"
        elif kind == "forks":
            return _forks(int(str(arg)))
        elif kind == "alloc":
            buf = bytearray(int(str(arg)))
            buf[-1] = 1
        elif kind == "rlimit":
            return f"ok:{resource.getrlimit(getattr(resource, str(arg)))}"
        elif kind == "cpu_burn":
            while True:
                pass
        elif kind == "torch":
            return _torch_step()
        else:
            return f"unknown attempt {kind}"
    except BaseException as exc:  # noqa: BLE001 - every outcome is reported
        return _err(exc)
    return "ok"


def main() -> None:
    spec = json.loads(sys.argv[1])
    c = Confinement.from_json(spec["confinement"])
    held: dict[str, object] = {"tcp": socket.socket(socket.AF_INET, socket.SOCK_STREAM)}
    if spec.get("uid") is not None:
        uid = int(spec["uid"])
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        if spec.get("dumpable", True):  # as after an ordinary exec by that uid
            libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
    if spec.get("layer", "all") == "all":
        applied: object = confine(c).to_dict()
    else:
        privs.set_no_new_privs()
        applied = str(landlock.restrict_self(c.read_only, c.read_write))
    results = [attempt(kind, arg, held) for kind, arg in spec["attempts"]]
    print(json.dumps({"applied": applied, "results": results}), flush=True)


if __name__ == "__main__":
    main()
