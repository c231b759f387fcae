"""``secagg admin (status | list | submit JOB | abort ID | download ID | logs [ID]) --kit DIR``.

The console authenticates with the admin's own startup kit over mTLS; the aggregator reads role and
org from that certificate and decides (see ``secagg.aggregator.admin``). This side only formats.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import grpc

from secagg.errors import ConfigError, SecaggError
from secagg.provision.kit import Kit, load_kit
from secagg.transport.chunks import copy_payload, encode_stream, read_header
from secagg.transport.generated import secagg_pb2 as pb
from secagg.transport.generated import secagg_pb2_grpc as rpc
from secagg.transport.tls import channel

MAX_REPLY_BYTES = 64 << 30


class AdminError(SecaggError):
    """The aggregator refused or failed an admin command; ``code`` is the aggregator's reason code."""

    def __init__(self, message: str, code: str = "admin") -> None:
        super().__init__(message)
        self.code = code


def _error(exc: grpc.RpcError, target: str) -> AdminError:
    status = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    if status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return AdminError(
            f"cannot reach the aggregator at {target} ({details}); it is down, or it refused this kit's "
            "certificate (a kit from another project CA)",
            code="unavailable",
        )
    code, sep, message = details.partition(": ")
    if sep and code.isidentifier():
        return AdminError(message, code=code)
    return AdminError(details, code=status.name.lower() if status is not None else "admin")


class _Flushing:
    """A sink that flushes after each write, for ``logs --follow``."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh

    def write(self, data: bytes) -> int:
        n = self.fh.write(data)
        self.fh.flush()
        return n


class _Split:
    """Routes a concatenated payload into the files the reply header lists, by their sizes."""

    def __init__(self, folder: Path, files: list[dict[str, Any]]) -> None:
        self.folder, self.files, self.index, self.left = folder, files, -1, 0
        self.fh: BinaryIO | None = None
        self._next()

    def _next(self) -> None:
        while self.left == 0:
            if self.fh is not None:
                self.fh.close()
                self.fh = None
            self.index += 1
            if self.index >= len(self.files):
                return
            entry = self.files[self.index]
            name = Path(str(entry["name"])).name  # never a path from the server
            self.fh = (self.folder / name).open("wb")
            self.left = int(entry["bytes"])

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            if self.fh is None:
                raise AdminError("download carries more bytes than its header lists", code="corrupt")
            n = min(self.left, len(view))
            self.fh.write(view[:n])
            view, self.left = view[n:], self.left - n
            self._next()
        return len(data)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


class AdminClient:
    """One admin's connection to the aggregator. Every method raises :class:`AdminError` on refusal."""

    def __init__(self, kit: Kit, target: str | None = None, *, timeout: float = 60.0) -> None:
        self.kit = kit
        self.target = target or kit.target
        self.timeout = timeout
        self._channel = channel(kit, self.target)
        self._stub = rpc.FederationStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self, command: str, job_id: str = "", payload: bytes = b"", timeout: float | None = None
    ) -> Iterator[pb.Chunk]:
        request = pb.AdminRequest(command=command, job_id=job_id, payload=payload)
        return iter(self._stub.Admin(request, timeout=timeout or self.timeout))

    def _json(self, command: str, job_id: str = "") -> dict[str, Any]:
        try:
            chunks = self._call(command, job_id)
            header = read_header(chunks)
            copy_payload(chunks, _Discard(), max_bytes=0)  # type: ignore[arg-type]
        except grpc.RpcError as exc:
            raise _error(exc, self.target) from None
        return header

    def status(self, job_id: str = "") -> dict[str, Any]:
        return self._json("status", job_id)

    def list(self) -> list[dict[str, Any]]:
        return list(self._json("list").get("jobs", []))

    def abort(self, job_id: str) -> dict[str, Any]:
        return self._json("abort", job_id)

    def submit(self, job: Path) -> str:
        """Send a signed job (folder or .tar.gz); the aggregator verifies it and returns the job id."""
        if job.is_dir():
            from secagg.aggregator.federation import package_bytes

            data = package_bytes(job)
        elif job.is_file():
            data = job.read_bytes()
        else:
            raise ConfigError(f"no such job folder or package: {job}")
        try:
            replies = iter(
                self._stub.AdminUpload(
                    encode_stream({"command": "submit", "bytes": len(data)}, [data]), timeout=self.timeout
                )
            )
            header = read_header(replies)
            copy_payload(replies, _Discard(), max_bytes=0)  # type: ignore[arg-type]
        except grpc.RpcError as exc:
            raise _error(exc, self.target) from None
        return str(header["job_id"])

    def download(self, job_id: str, out: Path) -> dict[str, Any]:
        """Fetch the job's final global model (or encrypted aggregates) and its audit lines into ``out``."""
        out.mkdir(parents=True, exist_ok=True)
        partial = out / ".download.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        try:
            chunks = self._call("download", job_id)
            header = read_header(chunks)
            sink = _Split(partial, list(header.get("files", [])))
            try:
                copy_payload(chunks, sink, max_bytes=MAX_REPLY_BYTES)  # type: ignore[arg-type]
            finally:
                sink.close()
            for f in partial.iterdir():
                f.replace(out / f.name)
        except grpc.RpcError as exc:
            raise _error(exc, self.target) from None
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return header

    def logs(self, sink: BinaryIO, job_id: str = "", follow: float = 0.0) -> dict[str, Any]:
        """Write the job's audit log lines to ``sink``, then new ones for ``follow`` seconds."""
        payload = json.dumps({"follow": follow}).encode()
        try:
            chunks = self._call("logs", job_id, payload, timeout=self.timeout + follow)
            header = read_header(chunks)
            copy_payload(chunks, _Flushing(sink), max_bytes=MAX_REPLY_BYTES)  # type: ignore[arg-type]
        except grpc.RpcError as exc:
            raise _error(exc, self.target) from None
        return header


class _Discard:
    def write(self, data: bytes) -> int:
        if data:
            raise AdminError("unexpected payload in a reply without one", code="malformed")
        return 0


# ---------------------------------------------------------------------------------------- CLI
def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kit", type=Path, required=True, help="your admin startup kit")
    common.add_argument("--target", help="aggregator HOST:PORT (default: from the kit)")
    common.add_argument("--json", action="store_true", help="print the reply as JSON")
    p = sub.add_parser("admin", help="role-based admin console (status, list, submit, abort, download, logs)")
    s = p.add_subparsers(dest="admin_command", metavar="ACTION", required=True)
    s.add_parser(
        "status", parents=[common], help="the job, its round, sites' heartbeats, declined tasks"
    ).add_argument("job_id", nargs="?", default="", help="a job (default: the current one)")
    s.add_parser("list", parents=[common], help="the jobs you may see")
    sp = s.add_parser("submit", parents=[common], help="submit a signed job (folder or .tar.gz)")
    sp.add_argument("job", type=Path)
    s.add_parser("abort", parents=[common], help="stop a job; the aggregator stays up").add_argument("job_id")
    dp = s.add_parser("download", parents=[common], help="fetch the final model and the job's audit lines")
    dp.add_argument("job_id")
    dp.add_argument("-o", "--out", type=Path, help="output folder (default: ./JOB_ID)")
    lp = s.add_parser("logs", parents=[common], help="the job's audit log lines")
    lp.add_argument("job_id", nargs="?", default="", help="a job (default: the current one)")
    lp.add_argument(
        "--follow",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep streaming new lines this long (max 600)",
    )
    for parser in s.choices.values():
        parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    kit = load_kit(args.kit, kind="admin")
    with AdminClient(kit, args.target) as client:
        cmd = args.admin_command
        if cmd == "status":
            _print(client.status(args.job_id), args.json, _format_status)
        elif cmd == "list":
            _print({"jobs": client.list()}, args.json, _format_list)
        elif cmd == "submit":
            job_id = client.submit(args.job)
            _print({"job_id": job_id}, args.json, lambda r: f"submitted job {r['job_id']}")
        elif cmd == "abort":
            _print(client.abort(args.job_id), args.json, lambda r: f"aborted job {r['job_id']}")
        elif cmd == "download":
            out = args.out or Path(args.job_id)
            header = client.download(args.job_id, out)
            _print(
                {**header, "out": str(out)},
                args.json,
                lambda r: "\n".join(
                    f"wrote {Path(r['out']) / f['name']} ({f['bytes']} bytes)" for f in r["files"]
                ),
            )
        elif cmd == "logs":
            client.logs(sys.stdout.buffer, args.job_id, args.follow)
    return 0


def _print(reply: dict[str, Any], as_json: bool, fmt: Any) -> None:
    print(json.dumps(reply, indent=2, sort_keys=True) if as_json else fmt(reply), flush=True)


def _format_status(r: dict[str, Any]) -> str:
    lines = []
    job = r.get("job")
    if job is None:
        lines.append("no job")
    else:
        where = f"round {job.get('round', job.get('completed'))}/{job.get('rounds')}"
        if "phase" in job:
            where += f" attempt {job['attempt']} ({job['phase']})"
        lines.append(f"job {job['job_id']} [{job.get('mode')}] {job.get('state')}, {where}")
        lines.append(f"  submitted by {job.get('submitter')}")
    lines.append("sites:")
    for s in r.get("sites", []):
        seen = (
            f"last heartbeat {s['last_heartbeat']} ({s['seconds_ago']} s ago)"
            if s.get("last_heartbeat")
            else "never seen"
        )
        lines.append(f"  {s['site']:<20} {'connected' if s.get('connected') else 'not connected':<14} {seen}")
    declined = r.get("declined") or []
    if declined:
        lines.append("declined tasks:")
        for d in declined:
            lines.append(f"  round {d['round']} {d['site']}: {d['code']}: {d['message']}")
    return "\n".join(lines)


def _format_list(r: dict[str, Any]) -> str:
    jobs = r.get("jobs") or []
    if not jobs:
        return "no jobs you may see"
    return "\n".join(
        f"{j['job_id']:<28} {j.get('state', ''):<10} {j.get('mode', ''):<6} "
        f"{j.get('completed')}/{j.get('rounds')} rounds  by {j.get('submitter')}"
        for j in jobs
    )
