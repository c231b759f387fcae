"""The admin console's client: one admin's mTLS connection to the aggregator's ``Admin`` service.

The aggregator decides (``secagg.aggregator.admin``) from the admin's certificate; this side sends the
command, receives the reply, and turns a refusal into :class:`AdminError` carrying the aggregator's
reason code (read from the trailing metadata, or from the details text of an older aggregator).
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import grpc

from secagg import reasons, userfile
from secagg.errors import ConfigError, SecaggError
from secagg.provision.kit import Kit
from secagg.reasons import Reason
from secagg.transport.chunks import copy_payload, encode_stream, read_header
from secagg.transport.generated import secagg_pb2 as pb
from secagg.transport.generated import secagg_pb2_grpc as rpc
from secagg.transport.tls import channel

MAX_REPLY_BYTES = 64 << 30


class AdminError(SecaggError):
    """The aggregator refused or failed an admin command; ``code`` is the aggregator's reason code."""

    def __init__(self, message: str, code: str = Reason.ADMIN) -> None:
        super().__init__(message)
        self.code = code


def _error(exc: grpc.RpcError, target: str) -> AdminError:
    status = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    if status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return AdminError(
            f"cannot reach the aggregator at {target} ({details}); it is down, or it refused this kit's "
            "certificate (a kit from another project CA)",
            code=Reason.UNAVAILABLE,
        )
    code, sep, message = details.partition(": ")
    sent = reasons.of_rpc_error(exc)
    if sent is not None:  # the aggregator names the reason: no need to trust the text's shape
        return AdminError(message if sep and code == sent else details, code=sent)
    if sep and code.isidentifier():
        return AdminError(message, code=code)
    named = reasons.lookup(status.name.lower()) if status is not None else None
    return AdminError(details, code=named or Reason.ADMIN)


def read_package(job: Path) -> bytes:
    """A job folder packed, or a package file read, at most the aggregator's ``MAX_PACKAGE_BYTES``."""
    from secagg.aggregator.admin import MAX_PACKAGE_BYTES  # at call time: the server module is heavy
    from secagg.aggregator.federation import write_package

    if not job.is_dir():
        if not job.exists() and not job.is_symlink():
            raise ConfigError(f"{job}: no such job folder or package")
        return userfile.read_file(job, MAX_PACKAGE_BYTES, "job package")
    sink = _Capped(MAX_PACKAGE_BYTES)
    try:
        write_package(job, sink)  # type: ignore[arg-type]
    except _Capped.Over:
        raise ConfigError(
            f"{job}: the job folder packs to more than {MAX_PACKAGE_BYTES} bytes, the aggregator's "
            "limit for a job package (keep data out of the job; sites read their own)"
        ) from None
    return sink.getvalue()


class _Capped(io.BytesIO):
    """A BytesIO that stops the writer once it holds more than ``limit`` bytes."""

    class Over(Exception):
        pass

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def write(self, data: Any) -> int:
        n = super().write(data)
        if self.tell() > self.limit:
            raise _Capped.Over
        return n


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
                raise AdminError("download carries more bytes than its header lists", code=Reason.CORRUPT)
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
        """Send a signed job (folder or .tar.gz); the aggregator verifies it and returns the job id.

        The package is read (or packed) no further than the aggregator's own limit, so a FIFO, a
        device or a folder that packs to gigabytes is refused here in one line that names it, not
        sent to be refused after the upload; a refusal by the aggregator names the package too."""
        data = read_package(job)
        try:
            replies = iter(
                self._stub.AdminUpload(
                    encode_stream({"command": "submit", "bytes": len(data)}, [data]), timeout=self.timeout
                )
            )
            header = read_header(replies)
            copy_payload(replies, _Discard(), max_bytes=0)  # type: ignore[arg-type]
        except grpc.RpcError as exc:
            err = _error(exc, self.target)
            if err.code == Reason.UNAVAILABLE:
                raise err from None
            raise AdminError(f"{job}: {err}", code=err.code) from None
        return str(header["job_id"])

    def download(self, job_id: str, out: Path) -> dict[str, Any]:
        """Fetch the job's final global model (or encrypted aggregates) and its audit lines into ``out``."""
        created = not out.exists()  # a refused download must not leave a folder behind
        out.mkdir(parents=True, exist_ok=True)
        partial = out / ".download.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        done = False
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
            done = True
        except grpc.RpcError as exc:
            raise _error(exc, self.target) from None
        finally:
            shutil.rmtree(out if created and not done else partial, ignore_errors=True)
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
            raise AdminError("unexpected payload in a reply without one", code=Reason.MALFORMED)
        return 0


__all__ = ["MAX_REPLY_BYTES", "AdminClient", "AdminError"]
