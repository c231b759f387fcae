"""Windowed combination (every mode) gives bit for bit the in-memory sum, whatever the window.

The references here are the in-memory arithmetic, computed in the test with numpy: every upload
parsed whole, flattened to float64 in bundle order and added in sorted site order (plain, tee), or
the survivors' quantised updates summed in Z_2^32 and read back (mask: the masks cancel exactly).
Windows of one value, of a few KiB, and sizes that divide no tensor, on tensors that straddle window
edges (and sealed chunk edges in tee), with every dtype a bundle may carry.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from safetensors.numpy import save as st_save

from secagg.aggregator.modes import BadUpload
from secagg.aggregator.modes.plain import PlainCombiner
from secagg.aggregator.modes.tee import TeeCombiner
from secagg.aggregator.modes.windows import (
    DEFAULT_WINDOW_BYTES,
    BundleReader,
    BytesSource,
    FileSource,
    Fingerprint,
    Layout,
    write_bundle,
)
from secagg.bundle import BundleSpec, fingerprint, from_safetensors
from secagg.errors import UpdateRejected
from secagg.framing import frame, unframe
from secagg.mask.messages import AdvertiseKeys, EncryptedShare, UnmaskRequest
from secagg.mask.prg import apply_masks, expand
from secagg.mask.quantize import dequantize, quantize
from secagg.mask.spooled import MaskedSource
from secagg.tee import DevTeeAttester, Enclave, sealing, suites
from secagg.tee.stream import SealedSource

SHAPES = OrderedDict(
    [("conv.w", (5, 3, 7)), ("empty", (0, 4)), ("bias", (13,)), ("fc.w", (41, 9)), ("s", ())]
)
SPEC = BundleSpec(tuple(BundleSpec.of({k: np.zeros(v) for k, v in SHAPES.items()}).tensors))
#: dtypes per tensor, per site: what a site's safetensors may carry besides float32
DTYPES: list[dict[str, Any]] = [
    {"conv.w": np.float32, "empty": np.float32, "bias": np.float64, "fc.w": np.float16, "s": np.int32},
    {"conv.w": np.float64, "empty": np.float16, "bias": np.float32, "fc.w": np.float32, "s": np.float32},
    {"conv.w": np.float16, "empty": np.float64, "bias": np.int16, "fc.w": np.float64, "s": np.float64},
]
#: window bytes: one value, three, a few KiB, sizes dividing no tensor, bigger than the model
WINDOWS = [8, 24, 4096, 3000, 1000, 1 << 20]
SITES = ["site-3", "site-1", "site-2"]


def _bundle(i: int) -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, shape in SHAPES.items():
        dt = DTYPES[i][name]
        vals = np.asarray(rng.standard_normal(shape) * 0.1 * (i + 1))
        out[name] = np.asarray((vals * 100).astype(dt) if np.dtype(dt).kind == "i" else vals.astype(dt))
    return out


def _safetensors(b: OrderedDict[str, np.ndarray]) -> bytes:
    return st_save(dict(b), metadata={"order": json.dumps(list(b))})


def _reference(blobs: dict[str, bytes]) -> np.ndarray:
    """The in-memory sum: each upload parsed whole, float64 in bundle order, sorted site order."""
    total = np.zeros(SPEC.size, dtype=np.float64)
    for site in sorted(blobs):
        bundle = from_safetensors(blobs[site])
        total += np.concatenate(
            [np.asarray(bundle[t.name], dtype=np.float64).reshape(-1) for t in SPEC.tensors]
        )
    return total


@pytest.fixture
def uploads(tmp_path: Path) -> tuple[dict[str, bytes], dict[str, Path]]:
    blobs = {s: _safetensors(_bundle(i)) for i, s in enumerate(SITES)}
    paths = {}
    for s, blob in blobs.items():
        paths[s] = tmp_path / f"{s}.upload"
        paths[s].write_bytes(blob)
    return blobs, paths


# ------------------------------------------------------------------------------------------ plain
@pytest.mark.parametrize("window", WINDOWS)
def test_plain_windowed_sum_is_bit_identical_to_the_in_memory_sum(
    tmp_path: Path, uploads: tuple[dict[str, bytes], dict[str, Path]], window: int
) -> None:
    blobs, paths = uploads
    want = _reference(blobs)
    got = PlainCombiner(SPEC, window).sum(1, paths, tmp_path / "sum.partial")
    assert got.dtype == np.float64 and got.tobytes() == want.tobytes()
    # nothing left beside the uploads (the sum's file is mapped, then its name removed)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())
    # the same windows as a float32 bundle, and its fingerprint computed as it streams past
    fp = Fingerprint(SPEC)
    with ExitStack() as stack:
        write_bundle(
            tmp_path / "model.safetensors", SPEC, PlainCombiner(SPEC, window).windows(stack, 1, paths), fp
        )
    written = from_safetensors((tmp_path / "model.safetensors").read_bytes())
    expect = SPEC.unflatten(want)
    assert list(written) == SPEC.names
    assert all(written[k].tobytes() == expect[k].tobytes() for k in SPEC.names)
    assert fp.hexdigest() == fingerprint(expect)
    with FileSource(tmp_path / "model.safetensors") as src:  # laid out in bundle order
        layout = Layout.parse(src)
    assert [e.name for e in sorted(layout.entries.values(), key=lambda e: e.start)] == SPEC.names


class _Counting:
    """A file source that records the largest single read."""

    def __init__(self, path: Path) -> None:
        self.inner = FileSource(path)
        self.largest = 0

    @property
    def size(self) -> int:
        return self.inner.size

    def read(self, offset: int, n: int) -> bytes:
        self.largest = max(self.largest, n)
        return self.inner.read(offset, n)

    def close(self) -> None:
        self.inner.close()


def test_no_read_is_larger_than_a_window(uploads: tuple[dict[str, bytes], dict[str, Path]]) -> None:
    _blobs, paths = uploads
    src = _Counting(paths["site-3"])
    reader = BundleReader(src, SPEC)
    header_read = src.largest
    reader.check_all(8, SPEC.size)  # one value per window
    assert src.largest == max(header_read, 8)
    src.close()


def test_a_non_finite_value_in_any_window_blames_its_upload(
    tmp_path: Path, uploads: tuple[dict[str, bytes], dict[str, Path]]
) -> None:
    _blobs, paths = uploads
    bad = _bundle(1)
    bad["fc.w"] = bad["fc.w"].copy()
    bad["fc.w"][-1, -1] = np.inf
    paths["site-1"].write_bytes(_safetensors(bad))
    comb = PlainCombiner(SPEC, 64)
    with pytest.raises(BadUpload) as err:
        comb.sum(1, paths, tmp_path / "sum.partial")
    assert err.value.site == "site-1" and getattr(err.value.reason, "code", "") == "non_finite"
    assert not (tmp_path / "sum.partial").exists() and not list(tmp_path.glob(".*"))
    with pytest.raises(UpdateRejected, match="NaN or Inf"):
        comb.check("site-1", 1, paths["site-1"])


def _with_header(blob: bytes, edit: Callable[[dict[str, Any]], object]) -> bytes:
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + blob[8 + n :]


def _offsets(name: str, lo: int, hi: int) -> Callable[[dict[str, Any]], None]:
    def edit(h: dict[str, Any]) -> None:
        h[name]["data_offsets"] = [lo, hi]

    return edit


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda b: b[:-4], "malformed"),  # data cut short
        (lambda b: b + b"\0" * 4, "malformed"),  # trailing bytes
        (lambda b: (10**9).to_bytes(8, "little") + b[8:], "malformed"),  # header past the end
        (lambda b: _with_header(b, lambda h: h["bias"].update(dtype="BF16")), "malformed"),
        (lambda b: _with_header(b, lambda h: h["bias"].update(shape=[14])), "malformed"),
        (lambda b: _with_header(b, lambda h: h.update(__metadata__={"order": '["a"]'})), "malformed"),
        (lambda b: _with_header(b, lambda h: h.pop("s")), "malformed"),  # a gap where it was
    ],
)
def test_a_malformed_header_is_refused_before_any_data_is_read(
    tmp_path: Path, mutate: Callable[[bytes], bytes], code: str
) -> None:
    path = tmp_path / "x.upload"
    path.write_bytes(mutate(_safetensors(_bundle(0))))
    with pytest.raises(UpdateRejected) as err, FileSource(path) as src:
        Layout.parse(src)
    assert err.value.code == code


def test_overlapping_offsets_are_refused() -> None:
    blob = _safetensors(_bundle(0))
    with _mem(blob) as src:
        lay = Layout.parse(src)
    e = max(lay.entries.values(), key=lambda e: e.start)  # the last tensor, moved back 4 bytes
    base = 8 + int.from_bytes(blob[:8], "little")
    moved = _with_header(blob, _offsets(e.name, e.start - base - 4, e.end - base - 4))
    with pytest.raises(UpdateRejected, match="starts at"), _mem(moved) as src:
        Layout.parse(src)


class _mem:
    def __init__(self, data: bytes) -> None:
        self.src = BytesSource(data)

    def __enter__(self) -> BytesSource:
        return self.src

    def __exit__(self, *exc: object) -> None:
        return None


def test_a_spec_mismatch_names_every_difference(tmp_path: Path) -> None:
    b = _bundle(0)
    b.pop("bias")
    b["extra"] = np.zeros(2, np.float32)
    b["fc.w"] = np.zeros((9, 41), np.float32)
    path = tmp_path / "x.upload"
    path.write_bytes(_safetensors(b))
    with pytest.raises(UpdateRejected) as err, FileSource(path) as src:
        BundleReader(src, SPEC)
    assert err.value.code == "bad_shape"
    text = str(err.value)
    assert "missing tensors: bias" in text and "unexpected tensors: extra" in text and "fc.w" in text


def test_the_streaming_fingerprint_is_the_bundle_fingerprint_with_empty_tensors_anywhere() -> None:
    shapes = OrderedDict([("e0", (0,)), ("a", (3, 2)), ("e1", (2, 0)), ("b", (5,)), ("e2", (0,))])
    spec = BundleSpec.of({k: np.zeros(v) for k, v in shapes.items()})
    vec = np.arange(spec.size, dtype=np.float64) / 7
    for step in (1, 2, 4, 100):
        fp = Fingerprint(spec)
        for start in range(0, spec.size, step):
            fp.update(start, vec[start : start + step].astype(np.float32))
        assert fp.hexdigest() == fingerprint(spec.unflatten(vec))


# -------------------------------------------------------------------------------------------- tee
class _Enclave(Enclave):
    def __init__(self) -> None:
        super().__init__(DevTeeAttester(ec.generate_private_key(ec.SECP384R1()), b"\x11" * 32))
        self.chunks = 0

    def open_update_chunk(self, raw: bytes, expect: object, job: str, round: int, site: str) -> bytes:
        self.chunks += 1
        return super().open_update_chunk(raw, expect, job, round, site)  # type: ignore[arg-type]


def _seal(enclave: Enclave, data: bytes, site: str, chunk_size: int, round_: int = 2) -> bytes:
    suite = enclave.announcement.hpke_keys[0][0]
    public = suites.load_public(suite, enclave.announcement.public_key(suite))
    ctx = sealing.Context("job-1", round_, site, enclave.announcement.digest())
    return b"".join(frame(sealing.seal_chunks(data, public, suite, ctx, chunk_size=chunk_size)))


@pytest.fixture(scope="module")
def enclave() -> _Enclave:
    return _Enclave()


@pytest.mark.parametrize("window", [8, 1000, 4096, DEFAULT_WINDOW_BYTES])
def test_tee_windowed_sum_opens_chunk_by_chunk_and_is_bit_identical(
    tmp_path: Path, enclave: _Enclave, window: int
) -> None:
    blobs = {s: _safetensors(_bundle(i)) for i, s in enumerate(SITES)}
    paths = {}
    for s, blob in blobs.items():
        paths[s] = tmp_path / f"{s}.upload"
        # small chunks (a few hundred bytes of plaintext): windows straddle chunk edges
        paths[s].write_bytes(_seal(enclave, blob, s, chunk_size=1500))
    comb = TeeCombiner(SPEC, window, enclave, "job-1")
    for s in SITES:
        comb.check(s, 2, paths[s])
    got = comb.sum(2, paths, tmp_path / "sum.partial")
    assert got.tobytes() == _reference(blobs).tobytes()
    with pytest.raises(BadUpload) as err:  # sealed for site-1, uploaded by site-2
        comb.sum(2, {"site-1": paths["site-1"], "site-2": paths["site-1"]}, tmp_path / "sum.partial")
    assert err.value.site == "site-2" and getattr(err.value.reason, "code", "") == "tee_chunk_auth"


def _frames(path: Path) -> list[bytes]:
    with path.open("rb") as fh:
        return list(unframe(fh))


def test_a_sealed_source_refuses_what_open_chunks_refuses(tmp_path: Path, enclave: _Enclave) -> None:
    data = bytes(range(256)) * 20
    path = tmp_path / "u"
    path.write_bytes(_seal(enclave, data, "site-1", chunk_size=1500))
    frames = _frames(path)
    assert len(frames) > 3

    def opener(raw: bytes, expect: sealing.ChunkHeader) -> bytes:
        return enclave.open_update_chunk(raw, expect, "job-1", 2, "site-1")

    src = SealedSource(path, opener)
    assert src.size == len(data)
    assert src.read(700, 2000) == data[700:2700] and src.read(0, len(data)) == data
    src.verify()
    src.close()
    cases = {
        "tee_chunk_order": [frames[1], frames[0], *frames[2:]],
        "tee_chunk_truncated": frames[:-1],
    }
    other = _frames_of(_seal(enclave, data, "site-1", chunk_size=1500))
    cases["tee_chunk_mixed"] = [frames[0], other[1], *frames[2:]]
    for code, fr in cases.items():
        path.write_bytes(b"".join(frame(fr)))
        with pytest.raises(UpdateRejected) as err:
            SealedSource(path, opener)
        assert err.value.code == code, code
    path.write_bytes(_seal(enclave, data, "site-1", chunk_size=1500, round_=3))  # another round
    src = SealedSource(path, opener)
    with pytest.raises(UpdateRejected) as err:
        src.read(0, 10)
    assert err.value.code == "tee_chunk_auth"
    src.close()


def _frames_of(blob: bytes) -> list[bytes]:
    import io

    return list(unframe(io.BytesIO(blob)))


# ------------------------------------------------------------------------------------------- mask
def test_mask_prg_window_is_the_slice_of_the_full_expansion() -> None:
    seed = bytes(range(32))
    full = expand(seed, 1031)
    for offset in (0, 1, 2, 3, 4, 5, 15, 16, 17, 1000):
        assert np.array_equal(expand(seed, 1031 - offset, offset), full[offset:])
        win = np.full(31, 7, np.uint32)[: max(0, min(31, 1031 - offset))]
        apply_masks(win, add=[seed], subtract=[bytes(32)], offset=offset)
        want = np.full(win.size, 7, np.uint32) + full[offset : offset + win.size]
        want -= expand(bytes(32), 1031)[offset : offset + win.size]
        assert np.array_equal(win, want)


@pytest.mark.parametrize("elements", [1, 7, 512, 10_000])
def test_mask_windowed_unmasking_with_a_dropout_is_bit_identical(tmp_path: Path, elements: int) -> None:
    from secagg.mask import MaskClient, MaskConfig, MaskServer
    from secagg.mask.sim import make_participants

    names = ["site-1", "site-2", "site-3", "site-4"]
    n = 1000
    cfg = MaskConfig.recommended(len(names), clip=1.0, frac_bits=20)
    ca, parts = make_participants(len(names), project="w")
    server = MaskServer(cfg, names, "job", 1, n)
    clients = [MaskClient(p.name, p.key, p.cert, ca, cfg, "job", 1, sites=names) for p in parts]
    for c in clients:
        server.collect_keys(AdvertiseKeys.from_bytes(c.advertise().to_bytes()))
    roster = server.roster()
    for c in clients:
        server.collect_shares(c.name, c.share_keys(roster))
    routed = server.route_shares()
    rng = np.random.default_rng(3)
    survivors = clients[:3]  # site-4 shared its keys, then dropped before uploading
    want = np.zeros(n + 1, np.uint32)
    for i, c in enumerate(survivors):
        x, w = rng.uniform(-0.3, 0.3, n), 0.25 + 0.1 * i
        msg = c.masked_input(x * w, w, [EncryptedShare.from_bytes(s.to_bytes()) for s in routed[c.name]])
        path = tmp_path / f"{c.name}.upload"
        path.write_bytes(msg.to_bytes())
        server.collect_masked_source(MaskedSource(FileSource(path)))
        q = np.empty(n + 1, np.uint32)
        quantize(x * w, cfg.clip, cfg.frac_bits, out=q[:n])
        quantize(np.array([w]), cfg.max_weight, cfg.frac_bits, out=q[n:])
        np.add(want, q, out=want)  # the masks cancel: the unmasked sum is the quantised sum
    request = UnmaskRequest.from_bytes(server.unmask_request().to_bytes())
    assert request.dropped == ("site-4",)
    responses = [c.unmask(request) for c in survivors]
    unmasked = server.finish_windows(responses, elements)
    got = np.concatenate([w for _s, w in unmasked.windows])
    server.close()
    assert got.tobytes() == dequantize(want[:n], 3, cfg.clip, cfg.frac_bits).tobytes()
    assert unmasked.weight == float(dequantize(want[n:], 3, cfg.max_weight, cfg.frac_bits)[0])


def test_a_masked_input_of_the_wrong_length_is_refused_from_its_header(tmp_path: Path) -> None:
    from secagg.mask.errors import ProtocolViolation
    from secagg.mask.messages import MaskedInput

    path = tmp_path / "m"
    path.write_bytes(MaskedInput("site-1", "job", 1, bytes(40)).to_bytes() + b"\0")
    with pytest.raises(ProtocolViolation, match="vector of 40 bytes"):
        MaskedSource(FileSource(path))
    path.write_bytes(MaskedInput("site-1", "job", 1, bytes(40)).to_bytes())
    src = MaskedSource(FileSource(path))
    assert (src.site, src.job, src.round, src.elements) == ("site-1", "job", 1, 10)
    assert src.window(3, 5).tolist() == [0, 0]
    src.close()
