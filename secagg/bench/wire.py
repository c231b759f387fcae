"""The transport legs of a round: every site's upload to the aggregator and its download back, through
secagg's own gRPC service definition, chunking and SHA-256 trailers, over mTLS on 127.0.0.1.

Why measure it: a round of a deployed federation moves every upload and download through this path
in every mode (the same bytes give or take a few headers), so a protection mode's cost is only
meaningful against a round that includes it. The relay here does only what the aggregator service
does with the bytes (verify the peer, spool to disk with the trailer check; stream a file back); the
federation bookkeeping around it is not timed.

All sites run as threads of this process, so the CPU seconds of a leg are all sites' and the
aggregator's together (an over-count that is the same for every mode that moves the same bytes);
wall seconds are what a round waits for.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, BinaryIO

import grpc

from secagg.provision.kit import Kit, load_kit
from secagg.provision.project import Project, SiteSpec
from secagg.provision.writer import provision
from secagg.transport import tls
from secagg.transport.chunks import MAX_CHUNK, copy_payload, encode_stream, read_header
from secagg.transport.generated import secagg_pb2 as pb
from secagg.transport.generated import secagg_pb2_grpc as rpc

from .clock import Lap, clock, lap, settle

#: largest payload the relay accepts (the aggregator service's own limit is per job)
_MAX_BYTES = 4 * 1024**3


def _file_pieces(fh: BinaryIO) -> Iterator[bytes]:
    while piece := fh.read(MAX_CHUNK):
        yield piece


class _Relay(rpc.FederationServicer):
    def __init__(self, kit: Kit, spool: Path, download: Path) -> None:
        self.kit, self.spool, self.download = kit, spool, download

    def UploadResult(
        self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext
    ) -> pb.UploadReply:
        site = tls.peer_identity(context, self.kit).name
        header = read_header(request_iterator)
        part = str(header.get("part", ""))
        with (self.spool / f"{site}{part}.upload").open("wb") as fh:
            copy_payload(request_iterator, fh, max_bytes=_MAX_BYTES, expected_bytes=int(header["bytes"]))
        return pb.UploadReply(accepted=True)

    def FetchTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        tls.peer_identity(context, self.kit)
        with self.download.open("rb") as fh:
            yield from encode_stream({"bytes": self.download.stat().st_size}, _file_pieces(fh))


class Wire:
    """A relay and ``sites`` site identities of a throwaway project; ``close`` stops and removes them."""

    def __init__(self, sites: int, scratch: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="wire-", dir=scratch))
        names = [f"site-{i + 1}" for i in range(sites)]
        provision(Project(name="bench", sites=[SiteSpec(name=n) for n in names]), self.root / "kits")
        self.agg_kit = load_kit(self.root / "kits" / "aggregator")
        self.site_kits = [load_kit(self.root / "kits" / n) for n in names]
        self.spool = self.root / "spool"
        self.spool.mkdir()
        self._download = self.root / "download"
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=sites + 2), options=tls.SERVER_OPTIONS
        )
        rpc.add_FederationServicer_to_server(_Relay(self.agg_kit, self.spool, self._download), self.server)
        port = self.server.add_secure_port("127.0.0.1:0", tls.server_credentials(self.agg_kit))
        self.server.start()
        self.target = f"127.0.0.1:{port}"
        self.channels = [tls.channel(k, self.target) for k in self.site_kits]
        self.stubs = [rpc.FederationStub(c) for c in self.channels]
        self._pool = futures.ThreadPoolExecutor(max_workers=sites)

    def upload(self, files: list[list[Path]]) -> Lap:
        """Every site sends its files (one stream each, in order), all sites at once."""

        def send(site: int) -> None:
            for part, path in enumerate(files[site]):
                header: dict[str, Any] = {"bytes": path.stat().st_size, "part": f".{part}"}
                with path.open("rb") as fh:
                    reply = self.stubs[site].UploadResult(encode_stream(header, _file_pieces(fh)))
                if not reply.accepted:
                    raise RuntimeError(f"relay refused site {site}'s upload")

        t0 = clock()
        list(self._pool.map(send, range(len(files))))
        return lap(t0)

    def download(self, result: Path) -> Lap:
        """Every site fetches ``result`` at once (each into its own file)."""
        shutil.copyfile(result, self._download)  # staged before the clock starts
        settle()

        def fetch(site: int) -> None:
            chunks = iter(self.stubs[site].FetchTask(pb.TaskRequest()))
            header = read_header(chunks)
            with (self.spool / f"down-{site}").open("wb") as fh:
                copy_payload(chunks, fh, max_bytes=_MAX_BYTES, expected_bytes=int(header["bytes"]))

        t0 = clock()
        list(self._pool.map(fetch, range(len(self.stubs))))
        took = lap(t0)
        for p in list(self.spool.iterdir()):
            p.unlink()
        self._download.unlink()
        return took

    def close(self) -> None:
        self._pool.shutdown()
        for c in self.channels:
            c.close()
        self.server.stop(None)
        shutil.rmtree(self.root, ignore_errors=True)
