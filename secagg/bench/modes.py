"""The four secagg protection modes, each split into the three parts a round has.

* ``protect_all`` runs every site's client side (timed per site) and writes what each site uploads
  to ``WORK/up-<i>*``: exactly the bytes that would go to the transport.
* an :class:`AggregatorStep` (run by :mod:`secagg.bench.child` in its own process, so its peak RSS is
  the aggregator's alone) reads the spooled uploads, combines them and writes each site's download
  to ``WORK/down-<i>``. Each is the aggregator service's own windowed combiner
  (:mod:`secagg.aggregator.modes.windows`): uploads read in lockstep a window at a time (the window
  from ``WORK/window-bytes``), the result written window by window.
* ``unprotect`` turns site 1's download back into the weighted average and, as every secagg site does
  with each new global model in every mode, computes its SHA-256 fingerprint (the agent signs it to
  prove that all sites hold the same model: :mod:`secagg.agent.consistency`), timed.

Keys are made in ``setup`` (not timed: once per job, not per round). The code paths are the library's
own: :mod:`secagg.he.codec`, :mod:`secagg.mask`, :mod:`secagg.bundle`, :mod:`secagg.framing`.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from secagg.bundle import BundleSpec, fingerprint
from secagg.framing import frame, unframe
from secagg.mask.config import SUM_LIMIT
from secagg.topics import Topic

from .clock import Lap, clock, lap
from .workload import Workload

#: clip for ``mask``: far above any gaussian(0.05) value, so clipping never changes the update
MASK_CLIP = 1.0
#: what :meth:`MaskMode.posted` calls the masked input (an upload, not a relay topic)
UPLOAD = "upload"


def up_path(work: Path, site: int, part: str = "") -> Path:
    return work / f"up-{site}{part}"


def down_path(work: Path, site: int) -> Path:
    return work / f"down-{site}"


def _frames_bytes(records: Any) -> bytes:
    return b"".join(frame(records))


class Mode(Protocol):
    name: str

    def setup(self, work: Path, wl: Workload) -> dict[str, Any]: ...

    def protect_all(self, work: Path, wl: Workload) -> list[Lap]: ...

    def uplink_bytes(self, work: Path, site: int) -> int: ...

    def downlink_bytes(self, work: Path, site: int) -> int: ...

    def unprotect(self, work: Path, wl: Workload, site: int) -> tuple[Lap, np.ndarray | float]:
        """Site ``site``'s download made the weighted average, timed; then the average, or (a mode that
        streams it) its largest error against the float64 truth."""
        ...


class AggregatorStep(Protocol):
    def prepare(self, work: Path, sites: int) -> None: ...

    def run(self) -> None: ...


#: values per window of a site's streamed protect and unprotect (16 MiB of float64)
SITE_WINDOW = 2 * 1024 * 1024


def weighted_windows(wl: Workload, site: int) -> Iterator[tuple[int, np.ndarray]]:
    """``update * weight`` in float64 (what the in-memory payload computed), a window at a time."""
    w = wl.weights[site]
    for start, u in wl.update_windows(site, SITE_WINDOW):
        yield start, u.astype(np.float64) * w


def _bundle_windows(path: Path, spec: BundleSpec) -> Iterator[tuple[int, np.ndarray]]:
    from secagg.aggregator.modes.windows import BundleReader, FileSource, window_ranges

    with FileSource(path) as src:
        reader = BundleReader(src, spec)
        for start, stop in window_ranges(spec.size, SITE_WINDOW):
            out = np.zeros(stop - start)
            reader.add_into(out, start, stop)
            yield start, out


def fingerprint_file(path: Path, spec: BundleSpec) -> str:
    """:func:`secagg.bundle.fingerprint` of a downloaded float32 bundle, read a window at a time."""
    from secagg.aggregator.modes.windows import Fingerprint

    fp = Fingerprint(spec)
    for start, vals in _bundle_windows(path, spec):
        fp.update(start, vals.astype("<f4"))
    return fp.hexdigest()


def bundle_error(path: Path, wl: Workload) -> float:
    """The largest error of a downloaded bundle against the float64 truth (untimed, windowed)."""
    return wl.max_error(_bundle_windows(path, wl.spec), SITE_WINDOW)


def _write_spec(work: Path, spec: BundleSpec) -> None:
    (work / "spec.json").write_text(spec.to_json())


def _read_spec(work: Path) -> BundleSpec:
    return BundleSpec.from_json((work / "spec.json").read_text())


def write_window(work: Path, window_bytes: int) -> None:
    """The combine's window for the aggregator step (read in its own process)."""
    (work / "window-bytes").write_text(str(int(window_bytes)))


def read_window(work: Path) -> int:
    from secagg.aggregator.modes.windows import DEFAULT_WINDOW_BYTES

    path = work / "window-bytes"
    return int(path.read_text()) if path.is_file() else DEFAULT_WINDOW_BYTES


# ---------------------------------------------------------------------------------------- plain ----
class _OneFileEachWay:
    """Modes whose site sends one upload file and receives the one broadcast result file."""

    def uplink_bytes(self, work: Path, site: int) -> int:
        return up_path(work, site).stat().st_size

    def downlink_bytes(self, work: Path, site: int) -> int:
        return down_path(work, 0).stat().st_size


class PlainMode(_OneFileEachWay):
    """Safetensors of the site's weighted update, float32; the aggregator sums in float64."""

    name = "plain"

    def setup(self, work: Path, wl: Workload) -> dict[str, Any]:
        _write_spec(work, wl.spec)
        return {}

    def protect_all(self, work: Path, wl: Workload) -> list[Lap]:
        from secagg.aggregator.modes.windows import write_bundle

        times: list[Lap] = []
        for i in range(wl.sites):
            t0 = clock()
            # weighted and written a window at a time: the upload is never whole in memory (the
            # time includes writing it, which the site's transport would otherwise do)
            write_bundle(up_path(work, i), wl.spec, weighted_windows(wl, i))
            times.append(lap(t0))
        return times

    def unprotect(self, work: Path, wl: Workload, site: int) -> tuple[Lap, np.ndarray | float]:
        t0 = clock()
        fingerprint_file(down_path(work, 0), wl.spec)  # the consistency fingerprint (module docstring)
        done = lap(t0)
        return done, bundle_error(down_path(work, 0), wl)


class PlainAggregator:
    """The aggregator service's :class:`~secagg.aggregator.modes.plain.PlainCombiner`: every upload's
    safetensors read at its offsets a window at a time; the float32 result bundle written window by
    window."""

    def prepare(self, work: Path, sites: int) -> None:
        from secagg.aggregator.modes.plain import PlainCombiner

        self.work, self.sites, self.spec = work, sites, _read_spec(work)
        self.combiner = PlainCombiner(self.spec, read_window(work))

    def run(self) -> None:
        from contextlib import ExitStack

        from secagg.aggregator.modes.windows import write_bundle

        uploads = {f"site-{i + 1:05d}": up_path(self.work, i) for i in range(self.sites)}
        with ExitStack() as stack:
            # every site downloads the same result: write it once
            write_bundle(down_path(self.work, 0), self.spec, self.combiner.windows(stack, 1, uploads))


# ------------------------------------------------------------------------------------------- he ----
class HEMode(_OneFileEachWay):
    """secagg's CKKS path: one flat slot stream per site, pre-weighted, framed ciphertexts."""

    name = "he"

    def __init__(self, preset: str = "secagg-default") -> None:
        self.preset = preset

    def setup(self, work: Path, wl: Workload) -> dict[str, Any]:
        from secagg.he import PRESETS, make_secret_context

        self.secret = make_secret_context(PRESETS[self.preset])
        (work / "he-public.ctx").write_bytes(self.secret.serialize_public())
        _write_spec(work, wl.spec)
        return {"he_params": self.secret.params.describe()}

    def protect_all(self, work: Path, wl: Workload) -> list[Lap]:
        from secagg.he import encrypt_vector

        times: list[Lap] = []
        for i in range(wl.sites):
            update = wl.update(i)
            t0 = clock()
            data = _frames_bytes(encrypt_vector(self.secret, update, float(wl.weights[i])))
            times.append(lap(t0))
            up_path(work, i).write_bytes(data)
            del data
        return times

    def unprotect(self, work: Path, wl: Workload, site: int) -> tuple[Lap, np.ndarray]:
        from secagg.he import decrypt_vector

        data = down_path(work, 0).read_bytes()
        t0 = clock()
        out = decrypt_vector(self.secret, unframe(io.BytesIO(data)), wl.size)
        fingerprint(wl.spec.unflatten(out))  # of the float32 model made from it (module docstring)
        return lap(t0), out


class HEAggregator:
    """The aggregator service's own :class:`~secagg.aggregator.modes.he.HECombiner`: index-major over
    the spooled uploads (the i-th ciphertext of every site is added, the sum written, then the next)."""

    def prepare(self, work: Path, sites: int) -> None:
        from secagg.aggregator.modes.he import HECombiner

        self.work, self.sites = work, sites
        self.combiner = HECombiner(_read_spec(work), (work / "he-public.ctx").read_bytes())

    def run(self) -> None:
        # every site downloads the same summed stream: write it once
        self.combiner.combine([up_path(self.work, i) for i in range(self.sites)], down_path(self.work, 0))


# ----------------------------------------------------------------------------------------- mask ----
def mask_frac_bits(sites: int, clip: float = MASK_CLIP) -> int:
    """The finest fixed point whose ``sites``-fold sum still fits in signed 32 bits."""
    return min(30, math.floor(math.log2(SUM_LIMIT / (max(clip, 1.0) * sites))))


class MaskMode:
    """SecAgg+ pairwise masking: every client phase (keys, shares, masked input, unmask) is timed.

    What a site posts and reads passes through :meth:`posted` and :meth:`read` (timed, at the site)
    and what the server sends through :meth:`published` (the server's work, replayed and timed in the
    aggregator's child): nothing in ``mask``; ``tee-mask`` seals and signs there."""

    name = "mask"
    job, round = "bench", 1

    #: the masked input is written as it is made (``posted`` passes it through unchanged); a subclass
    #: that transforms the upload in ``posted`` (tee-mask seals it) sets this False
    streamed_upload: bool = True

    def posted(self, site: int, topic: str, payload: bytes) -> bytes:
        """The bytes site ``site`` uploads for ``payload`` (``topic``: a mask phase, or :data:`UPLOAD`)."""
        return payload

    def published(self, site: int, topic: str, messages: list[bytes]) -> bytes | None:
        """What the server sends ``site`` for ``messages``; None: the messages as they are."""
        return None

    def read(self, site: int, topic: str, got: bytes | None, messages: list[bytes]) -> list[bytes]:
        """The messages site ``site`` takes from ``got`` (what :meth:`published` returned)."""
        return messages

    def _deliver(self, site: int, topic: str, messages: list[bytes]) -> tuple[list[bytes], Lap]:
        got = self.published(site, topic, messages)
        self._down[site] += sum(len(b) for b in messages) if got is None else len(got)
        t0 = clock()
        return self.read(site, topic, got, messages), lap(t0)

    def setup(self, work: Path, wl: Workload) -> dict[str, Any]:
        from secagg.mask import MaskConfig
        from secagg.mask.sim import make_participants

        self.config = MaskConfig.recommended(wl.sites, clip=MASK_CLIP, frac_bits=mask_frac_bits(wl.sites))
        self.ca, self.participants = make_participants(wl.sites, project="bench")
        cfg = {
            "threshold": self.config.threshold,
            "neighbours": self.config.neighbours,
            "clip": self.config.clip,
            "frac_bits": self.config.frac_bits,
            "sites": wl.names,
            "length": wl.size,
        }
        (work / "mask.json").write_text(json.dumps(cfg))
        _write_spec(work, wl.spec)
        return {
            "mask_params": f"t={self.config.threshold} k={self.config.neighbours} "
            f"frac_bits={self.config.frac_bits} clip={MASK_CLIP}"
        }

    def protect_all(self, work: Path, wl: Workload) -> list[Lap]:
        from secagg.mask import AdvertiseKeys, EncryptedShare, MaskClient, MaskServer, UnmaskRequest

        names = wl.names
        times = [Lap()] * wl.sites
        self._down = [0] * wl.sites
        # the router only relays keys and shares here; the measured aggregator replays them in its child
        router = MaskServer(self.config, names, self.job, self.round, wl.size)
        clients = [
            MaskClient(p.name, p.key, p.cert, self.ca, self.config, self.job, self.round, sites=names)
            for p in self.participants
        ]
        for i, c in enumerate(clients):
            t0 = clock()
            data = c.advertise().to_bytes()
            wire = self.posted(i, Topic.MASK_KEYS, data)
            times[i] += lap(t0)
            up_path(work, i, ".keys").write_bytes(wire)
            router.collect_keys(AdvertiseKeys.from_bytes(data))
        roster = [m.to_bytes() for m in router.roster()]
        for i, c in enumerate(clients):
            got, times_read = self._deliver(i, Topic.MASK_KEYROSTER, roster)
            t0 = clock()
            shares = c.share_keys([AdvertiseKeys.from_bytes(b) for b in got])
            records = [sh.to_bytes() for sh in shares.values()]
            wire = self.posted(i, Topic.MASK_SHARES, _frames_bytes(records))
            times[i] += times_read + lap(t0)
            up_path(work, i, ".shares").write_bytes(wire)
            router.collect_shares(
                c.name, {sh.recipient: sh for sh in map(EncryptedShare.from_bytes, records)}
            )
        routed = router.route_shares()
        for i, c in enumerate(clients):
            mine, times_read = self._deliver(i, Topic.MASK_MYSHARES, [sh.to_bytes() for sh in routed[c.name]])
            w = float(wl.weights[i])
            mine_shares = [EncryptedShare.from_bytes(b) for b in mine]
            t0 = clock()
            if self.streamed_upload:
                # weighted, quantised, masked and written a window at a time (the time includes the write)
                with up_path(work, i, ".masked").open("wb") as fh:
                    c.masked_input_to(fh, weighted_windows(wl, i), wl.size, w, mine_shares)
                times[i] += times_read + lap(t0)
                continue
            weighted = wl.update(i).astype(np.float64) * w
            msg = c.masked_input(weighted, w, mine_shares).to_bytes()
            wire = self.posted(i, UPLOAD, msg)
            times[i] += times_read + lap(t0)
            up_path(work, i, ".masked").write_bytes(wire)
            del msg, wire, weighted
        request = UnmaskRequest(self.job, self.round, tuple(sorted(names)), ()).to_bytes()
        for i, c in enumerate(clients):
            (got_request,), times_read = self._deliver(i, Topic.MASK_UNMASK, [request])
            t0 = clock()
            resp = c.unmask(UnmaskRequest.from_bytes(got_request)).to_bytes()
            wire = self.posted(i, Topic.MASK_UNMASK_RESP, resp)
            times[i] += times_read + lap(t0)
            up_path(work, i, ".unmask").write_bytes(wire)
        return times

    def uplink_bytes(self, work: Path, site: int) -> int:
        return sum(up_path(work, site, p).stat().st_size for p in (".keys", ".shares", ".masked", ".unmask"))

    def downlink_bytes(self, work: Path, site: int) -> int:
        return self._down[site] + down_path(work, 0).stat().st_size

    def unprotect(self, work: Path, wl: Workload, site: int) -> tuple[Lap, np.ndarray | float]:
        t0 = clock()
        fingerprint_file(down_path(work, 0), wl.spec)  # the consistency fingerprint (module docstring)
        done = lap(t0)
        return done, bundle_error(down_path(work, 0), wl)


class MaskAggregator:
    """Replays the sites' messages into a fresh MaskServer: relay, sum masked inputs, unmask, serialise.

    Each site's posts are read through :meth:`message` and :meth:`masked`, and what the server sends
    goes out through :meth:`publish` (``tee-mask`` opens and signs there, inside the enclave)."""

    def message(self, site: int, part: str, topic: str) -> bytes:
        return up_path(self.work, site, part).read_bytes()

    def masked(self, site: int) -> Any:
        from secagg.aggregator.modes.windows import FileSource
        from secagg.mask.spooled import MaskedSource

        return MaskedSource(FileSource(up_path(self.work, site, ".masked")))

    def publish(self, topic: str, messages: list[bytes], to: list[str]) -> None:
        """Send ``messages`` to each of ``to``: here, only their serialisation (done by the caller)."""

    def write_result(self, windows: Any) -> None:
        """The new model, written window by window as it is unmasked (every site downloads it)."""
        from secagg.aggregator.modes.windows import write_bundle

        write_bundle(down_path(self.work, 0), self.spec, windows)

    def prepare(self, work: Path, sites: int) -> None:
        from secagg.mask import MaskConfig

        self.work, self.sites = work, sites
        cfg = json.loads((work / "mask.json").read_text())
        self.names: list[str] = cfg["sites"]
        self.length: int = cfg["length"]
        self.config = MaskConfig(cfg["threshold"], cfg["neighbours"], cfg["clip"], cfg["frac_bits"])
        self.spec = _read_spec(work)
        self.window = read_window(work)

    def run(self) -> None:
        from secagg.aggregator.modes.windows import window_elements
        from secagg.mask import AdvertiseKeys, EncryptedShare, MaskServer, UnmaskResponse

        server = MaskServer(self.config, self.names, MaskMode.job, MaskMode.round, self.length)
        for i in range(self.sites):
            server.collect_keys(AdvertiseKeys.from_bytes(self.message(i, ".keys", Topic.MASK_KEYS)))
        self.publish(Topic.MASK_KEYROSTER, [m.to_bytes() for m in server.roster()], self.names)
        for i, name in enumerate(self.names):
            framed = io.BytesIO(self.message(i, ".shares", Topic.MASK_SHARES))
            shares = [EncryptedShare.from_bytes(b) for b in unframe(framed)]
            server.collect_shares(name, {sh.recipient: sh for sh in shares})
        for name, lst in server.route_shares().items():
            self.publish(Topic.MASK_MYSHARES, [sh.to_bytes() for sh in lst], [name])
        for i in range(self.sites):
            server.collect_masked_source(self.masked(i))
        self.publish(Topic.MASK_UNMASK, [server.unmask_request().to_bytes()], self.names)
        responses = [
            UnmaskResponse.from_bytes(self.message(i, ".unmask", Topic.MASK_UNMASK_RESP))
            for i in range(self.sites)
        ]
        try:
            unmasked = server.finish_windows(responses, window_elements(self.window))
            # the aggregator learns the sum (that is the protocol's output) and sends it as the new
            # model, written window by window as it is unmasked
            self.write_result(unmasked.windows)
        finally:
            server.close()


# ------------------------------------------------------------------------------------------ tee ----
_TEE_JOB, _TEE_ROUND = "bench", 1


def _tee_key(seed: bytes) -> Any:
    """The enclave's HPKE key (ML-KEM-768 + X25519) from a 96-byte seed, so the child can rebuild it."""
    from cryptography.hazmat.primitives import hpke
    from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

    return hpke.MLKEM768X25519PrivateKey(
        mlkem.MLKEM768PrivateKey.from_seed_bytes(seed[:64]),
        x25519.X25519PrivateKey.from_private_bytes(seed[64:96]),
    )


def _tee_context(site: str, keys_sha256: bytes) -> Any:
    from secagg.tee.sealing import Context

    return Context(_TEE_JOB, _TEE_ROUND, site, keys_sha256)


def _tee_sig_path(work: Path) -> Path:
    """The model signature, which travels beside the model (the agent sends it in the download's
    header), so the model itself is the same bytes as ``plain``'s."""
    return work / "down-0.sig"


class TEEMode(_OneFileEachWay):
    """secagg.tee's sealing: the plain payload in 4 MiB HPKE chunks (ML-KEM-768+X25519, HKDF-SHA256,
    AES-256-GCM) to the enclave's key; the enclave sends back the model with its P-384 signature over
    the model's fingerprint (:mod:`secagg.tee.modelsig`), which the site verifies."""

    name = "tee"

    def setup(self, work: Path, wl: Workload) -> dict[str, Any]:
        import hashlib
        import os

        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        seed = os.urandom(96)
        self.public = _tee_key(seed).public_key()
        self.keys_sha256 = hashlib.sha256(b"bench key announcement").digest()
        sig_key = ec.generate_private_key(ec.SECP384R1())
        self.sig_spki = sig_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        # benchmark-only keys, in the scratch folder so the aggregator child can load them
        (work / "tee-agg.seed").write_bytes(seed)
        (work / "tee-keys.sha256").write_bytes(self.keys_sha256)
        (work / "tee-sig.pem").write_bytes(
            sig_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        _write_spec(work, wl.spec)
        return {"tee": "secagg.tee.sealing, mlkem768-x25519 (HPKE, 4 MiB chunks); result signed (P-384)"}

    def protect_all(self, work: Path, wl: Workload) -> list[Lap]:
        from secagg.aggregator.modes.windows import bundle_header
        from secagg.tee import suites
        from secagg.tee.sealing import seal_chunks

        times: list[Lap] = []
        head = bundle_header(wl.spec)
        size = len(head) + 4 * wl.size
        for i, name in enumerate(wl.names):
            t0 = clock()

            def plain(site: int = i) -> Iterator[bytes]:
                # the safetensors bytes of the weighted update, made a window at a time
                yield head
                for _, win in weighted_windows(wl, site):
                    yield np.ascontiguousarray(win, dtype="<f4").tobytes()

            ctx = _tee_context(name, self.keys_sha256)
            # the framed sealed chunks (each at most 4 MiB) are what the transport carries, one by
            # one: sealed as the plaintext is made and written as they are sealed (the time includes
            # writing them)
            with up_path(work, i).open("wb") as fh:
                for piece in frame(seal_chunks(plain(), self.public, suites.MLKEM768_X25519, ctx, size=size)):
                    fh.write(piece)
            times.append(lap(t0))
        return times

    def downlink_bytes(self, work: Path, site: int) -> int:
        return down_path(work, 0).stat().st_size + _tee_sig_path(work).stat().st_size

    def unprotect(self, work: Path, wl: Workload, site: int) -> tuple[Lap, np.ndarray | float]:
        from secagg.tee import modelsig

        signature = _tee_sig_path(work).read_bytes()
        t0 = clock()
        # one hash serves the enclave signature and the consistency proof, as in the agent
        fp = fingerprint_file(down_path(work, 0), wl.spec)
        modelsig.verify(self.sig_spki, signature, fp, _TEE_JOB, _TEE_ROUND)
        done = lap(t0)
        return done, bundle_error(down_path(work, 0), wl)


class _BenchEnclave:
    """The enclave's chunk opener, with the benchmark's key (what :class:`secagg.tee.enclave.Enclave`
    does with the keys it generated)."""

    def __init__(self, key: Any, keys_sha256: bytes) -> None:
        from secagg.tee import suites

        self.keys = {suites.MLKEM768_X25519: key}
        self.keys_sha256 = keys_sha256

    def open_update_chunk(self, raw: bytes, expect: Any, job: str, round: int, site: str) -> bytes:
        from secagg.tee.sealing import Context, open_chunk

        return open_chunk(raw, self.keys, Context(job, int(round), site, self.keys_sha256), expect)


class TEEAggregator:
    """Inside the enclave: the aggregator service's :class:`~secagg.aggregator.modes.tee.TeeCombiner`
    (each upload opened a chunk at a time as the windowed sum reaches it), the result bundle written
    window by window and its fingerprint hashed as it is written, then signed."""

    def prepare(self, work: Path, sites: int) -> None:
        from cryptography.hazmat.primitives import serialization

        from secagg.aggregator.modes.tee import TeeCombiner

        self.work, self.sites, self.spec = work, sites, _read_spec(work)
        key = _tee_key((work / "tee-agg.seed").read_bytes())
        enclave = _BenchEnclave(key, (work / "tee-keys.sha256").read_bytes())
        self.combiner = TeeCombiner(self.spec, read_window(work), enclave, _TEE_JOB)
        self.sig_key = serialization.load_pem_private_key((work / "tee-sig.pem").read_bytes(), None)
        self.names = [f"site-{i + 1}" for i in range(sites)]
        # imported here, not in run(): module loading is start-up cost, not round cost
        import secagg.tee.modelsig
        import secagg.tee.sealing  # noqa: F401

    def run(self) -> None:
        from contextlib import ExitStack

        from cryptography.hazmat.primitives.asymmetric import ec

        from secagg.aggregator.modes.windows import Fingerprint, write_bundle
        from secagg.tee import modelsig

        uploads = {name: up_path(self.work, i) for i, name in enumerate(self.names)}
        fp = Fingerprint(self.spec)
        with ExitStack() as stack:
            # every site downloads the same signed model: write it once
            write_bundle(
                down_path(self.work, 0), self.spec, self.combiner.windows(stack, _TEE_ROUND, uploads), fp
            )
        assert isinstance(self.sig_key, ec.EllipticCurvePrivateKey)
        # the fingerprint of the float32 tensors as written: the aggregator service signs it the
        # same way, and the site checks it against what it parses
        signature = modelsig.sign(self.sig_key, fp.hexdigest(), _TEE_JOB, _TEE_ROUND)
        _tee_sig_path(self.work).write_bytes(signature)
