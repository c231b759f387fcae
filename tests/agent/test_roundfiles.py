"""The site's round on files gives, bit for bit, what the in-memory round gave, in every mode.

The reference is the in-memory round as the agent ran it before #21 (written out here): the global
model parsed with ``from_safetensors`` and hashed with ``fingerprint``, the update
``(local.astype(float64) - global).astype(float32)``, the filters through ``apply_chain``, the weighted
vector ``bspec.flatten(released) * weight``. Tensors straddle windows of 1, 7 and 64 values.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from secagg.agent.modes import ModeContext, Outgoing
from secagg.agent.modes import he as he_mode
from secagg.agent.modes import mask as mask_mode
from secagg.agent.modes import shares as shares_mode
from secagg.agent.modes import tee as tee_mode
from secagg.agent.modes.plain import PlainMode
from secagg.agent.modes.tee import TeeMode
from secagg.agent.modes.tee_mask import EnclaveEnvelope
from secagg.agent.protect import protect_plain
from secagg.agent.roundfiles import (
    WeightedFile,
    atomic_copy,
    fingerprint_file,
    model_spec,
    write_local_model,
    write_update,
)
from secagg.agent.state import SiteState
from secagg.auditlog import AuditLog
from secagg.bundle import BundleSpec, fingerprint, from_safetensors, to_safetensors
from secagg.errors import UpdateRejected
from secagg.framing import unframe
from secagg.he import codec as he_codec
from secagg.he.codec import decrypt_vector, encrypt_vector, n_ciphertexts
from secagg.he.context import make_secret_context
from secagg.he.params import SECAGG_DEFAULT
from secagg.privacy.specs import apply_chain, build_chain
from secagg.privacy.streamed import apply_chain_file

SHAPES = [("a", (3, 5)), ("b", (1,)), ("c", (130,)), ("d", ()), ("e", (2, 41)), ("f", (9, 7))]
WINDOWS = [1, 7, 64]
CHAINS: list[list[dict[str, Any]]] = [
    [],
    [{"name": "exclude", "tensors": ["c"]}, {"name": "gaussian", "clip": 0.5, "noise_multiplier": 1.1}],
]


def _model(seed: int, dtype: Any = np.float32) -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return OrderedDict((n, rng.standard_normal(s).astype(dtype).reshape(s)) for n, s in SHAPES)


def _write(path: Path, bundle: OrderedDict[str, np.ndarray]) -> Path:
    # names in bundle order, in each tensor's own dtype (not only float32), as any library writes it
    import json

    from safetensors.numpy import save

    path.write_bytes(save(dict(bundle), metadata={"order": json.dumps(list(bundle))}))
    return path


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_the_fingerprint_while_streaming_is_the_fingerprint_of_the_loaded_model(
    tmp_path: Path, window: int, dtype: Any
) -> None:
    path = _write(tmp_path / "g.safetensors", _model(1, dtype))
    loaded = from_safetensors(path.read_bytes())
    spec = model_spec(path)
    assert spec == BundleSpec.of(loaded)
    assert fingerprint_file(path, spec, window) == fingerprint(loaded)


def test_a_malformed_model_is_refused_from_its_header(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(UpdateRejected) as exc:
        model_spec(bad)
    assert exc.value.code == "malformed"


def _old_update(
    local: OrderedDict[str, np.ndarray], glob: OrderedDict[str, np.ndarray]
) -> OrderedDict[str, Any]:
    return OrderedDict((k, (local[k].astype(np.float64) - glob[k]).astype(np.float32)) for k in glob)


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("local_dtype", [np.float32, np.float64])
def test_the_update_file_is_the_in_memory_update(tmp_path: Path, window: int, local_dtype: Any) -> None:
    glob, local = _model(1), _model(2, local_dtype)
    g = _write(tmp_path / "g.safetensors", glob)
    loc = _write(tmp_path / "l.safetensors", local)
    upd = write_update(loc, g, BundleSpec.of(glob), tmp_path / "u.safetensors", window)
    want = _old_update(local, glob)
    got = upd.load()
    assert all(got[k].tobytes() == want[k].tobytes() for k in want)


def test_a_bad_trained_model_is_refused_as_bundlespec_check_refuses_it(tmp_path: Path) -> None:
    glob = _model(1)
    spec = BundleSpec.of(glob)
    g = _write(tmp_path / "g.safetensors", glob)
    wrong = _model(2)
    wrong["e"] = np.zeros((41, 2), dtype=np.float32)
    nan = _model(2)
    nan["f"][4, 2] = np.nan
    for bad in (wrong, nan):
        with pytest.raises(UpdateRejected) as mem:
            spec.check(bad)
        with pytest.raises(UpdateRejected) as disk:
            write_update(_write(tmp_path / "l.safetensors", bad), g, spec, tmp_path / "u.safetensors", 7)
        assert (disk.value.code, str(disk.value)) == (mem.value.code, str(mem.value))
        assert not (tmp_path / "u.safetensors").exists()


def _ctx(tmp: Path, relay: Any) -> ModeContext:
    return ModeContext(
        kit=SimpleNamespace(name="site-1"),  # type: ignore[arg-type]
        state=SiteState(tmp / "state"),
        relay=relay,
        audit=AuditLog(tmp / "audit.jsonl"),
        target="127.0.0.1:1",
        load_policy=lambda: SimpleNamespace(privacy=SimpleNamespace(filters=[])),  # type: ignore[arg-type, return-value]
    )


class _Relay:
    def __init__(self) -> None:
        self.uploads: list[tuple[dict[str, Any], bytes]] = []

    def upload(self, header: dict[str, Any], parts: Any) -> bool:
        self.uploads.append((header, b"".join(parts)))
        return True


class _Sealer:
    """Stands in for the attested aggregator: what it is given to seal is the plaintext."""

    def __init__(self) -> None:
        self.plaintext = b""

    def seal_update(self, payload: Any, job: str, round: int, site: str, *, size: int | None = None) -> Any:
        self.plaintext = payload if isinstance(payload, bytes) else b"".join(payload)
        assert size is None or size == len(self.plaintext)
        yield b"sealed"


def _round(tmp: Path, chain: list[dict[str, Any]], window: int) -> tuple[np.ndarray, Outgoing]:
    """The in-memory reference weighted vector, and the file round's Outgoing, for the same inputs."""
    glob, local = _model(1), _model(2)
    spec = BundleSpec.of(glob)
    weight = 0.3
    released, _ = apply_chain(build_chain(chain), _old_update(local, glob), np.random.default_rng(11))
    old = spec.flatten(released)
    old *= weight
    g = _write(tmp / "g.safetensors", glob)
    upd = write_update(_write(tmp / "l.safetensors", local), g, spec, tmp / "u.safetensors", window)
    rel, _ = apply_chain_file(chain, upd, tmp / "r.safetensors", np.random.default_rng(11), window)
    out = Outgoing(
        spec=SimpleNamespace(mask=None, round_timeout=30.0),  # type: ignore[arg-type]
        job_id="j",
        round=1,
        attempt=1,
        bspec=spec,
        weighted=WeightedFile(rel, weight, window),
        weight=weight,
        sites=["site-1", "site-2"],
    )
    return old, out


_HE_SECRET: list[Any] = []


def _he_secret() -> Any:
    if not _HE_SECRET:  # key generation is the slow part: one key for the module
        _HE_SECRET.append(make_secret_context(SECAGG_DEFAULT))
    return _HE_SECRET[0]


def _he_encoded(monkeypatch: pytest.MonkeyPatch, run: Any) -> tuple[Any, list[bytes]]:
    """What ``run`` returns, and the float64 values each ciphertext's plaintext was encoded from."""
    seen: list[bytes] = []
    real = he_codec._encode

    def spy(tools: Any, chunk: np.ndarray, plain: Any) -> None:
        seen.append(np.array(chunk, dtype=np.float64).tobytes())
        real(tools, chunk, plain)

    monkeypatch.setattr(he_codec, "_encode", spy)
    try:
        return run(), seen
    finally:
        monkeypatch.setattr(he_codec, "_encode", real)


@pytest.mark.parametrize("chain", CHAINS, ids=["no-filter", "exclude+gaussian"])
@pytest.mark.parametrize("window", WINDOWS)
def test_every_mode_protects_what_the_in_memory_round_protected(
    tmp_path: Path, chain: list[dict[str, Any]], window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, out = _round(tmp_path, chain, window)
    # no distributed_gaussian in these chains: the modes send the weighted update (the share path,
    # which reads the job's policy, has its own tests in tests/agent/test_modes.py)
    monkeypatch.setattr(tee_mode, "integer_share", lambda ctx, out: None)
    monkeypatch.setattr(shares_mode, "integer_share", lambda ctx, out: None)
    # the weighted windows are the old float64 vector, value for value
    assert out.weighted.array().tobytes() == old.tobytes()
    want_plain = b"".join(protect_plain(out.bspec, old))

    # plain: the upload's bytes
    relay = _Relay()
    PlainMode(_ctx(tmp_path / "plain", relay)).protect_and_send(out)
    assert relay.uploads[0][1] == want_plain

    # tee: the plaintext given to the enclave's sealing
    sealer = _Sealer()
    tee = TeeMode(_ctx(tmp_path / "tee", _Relay()))
    tee._trusted = sealer  # type: ignore[assignment]
    tee.protect_and_send(out)
    assert sealer.plaintext == want_plain

    # he: the upload is encrypted a window at a time; the values encoded into each ciphertext are
    # those encrypt_vector encodes from the old vector (bit for bit, slot for slot), and the upload
    # decrypts to the old vector (CKKS encryption is randomised: the frames themselves differ)
    secret = _he_secret()
    relay = _Relay()
    hem = he_mode.HeMode(_ctx(tmp_path / "he", relay))
    hem._secret_ctx = secret
    sent, sent_slots = _he_encoded(monkeypatch, lambda: hem.protect_and_send(out))
    _, want_slots = _he_encoded(monkeypatch, lambda: list(encrypt_vector(secret, old, 1.0)))
    assert sent_slots == want_slots and len(want_slots) == n_ciphertexts(old.size, secret.params)
    assert sent.bytes == len(relay.uploads[0][1])
    got = decrypt_vector(secret, unframe(BytesIO(relay.uploads[0][1])), old.size)
    assert np.max(np.abs(got - old)) <= 1e-7

    # mask: the values given to the masking, window by window at their offsets (MaskClient's
    # masked_input_to writes masked_input's bytes for them: tests/mask/test_protocol.py)
    class _Client:
        def masked_input_to(self, fh: Any, windows: Any, size: int, weight: float, mine: Any) -> int:
            got = []
            pos = 0
            for start, vals in windows:
                assert start == pos and vals.size <= window
                got.append(np.array(vals))
                pos += vals.size
            assert size == pos == old.size and weight == out.weight
            fh.write(np.concatenate(got).tobytes())
            return 8 * pos

    ctx = _ctx(tmp_path / "mask", _Relay())

    # no distributed DP here (that path needs the whole vector: its integer share)
    monkeypatch.setattr(sys.modules["secagg.policy.decide"], "distributed_filter", lambda p, s: None)
    masked = tmp_path / "masked.bin"
    mask_mode._write_masked(ctx, out, _Client(), [], 16, masked)
    assert masked.read_bytes() == old.tobytes()
    # tee-mask: the masked input's bytes are what the enclave seals
    sealer = _Sealer()
    frames = b"".join(EnclaveEnvelope(sealer, out, "site-1").uploaded(masked))  # type: ignore[arg-type]
    assert frames and sealer.plaintext == old.tobytes()


@pytest.mark.parametrize("window", WINDOWS)
def test_the_kept_local_model_is_global_plus_release(tmp_path: Path, window: int) -> None:
    """Cross-site evaluation's local model (global + released update), as keep_local_model made it."""
    old, out = _round(tmp_path, CHAINS[1], window)
    glob = _model(1)
    assert isinstance(out.weighted, WeightedFile)
    released = out.weighted.update.load()
    want = {
        k: (np.asarray(glob[k], np.float64) + np.asarray(released[k], np.float64)).astype(np.float32)
        for k in glob
    }
    write_local_model(tmp_path / "g.safetensors", out.weighted.update, tmp_path / "local.safetensors", window)
    got = from_safetensors((tmp_path / "local.safetensors").read_bytes())
    assert list(got) == list(glob) and all(got[k].tobytes() == want[k].tobytes() for k in want)


def test_atomic_copy_copies_and_leaves_no_temporary(tmp_path: Path) -> None:
    src = _write(tmp_path / "g.safetensors", _model(1))
    (tmp_path / "out").mkdir()
    atomic_copy(src, tmp_path / "out" / "final.safetensors")
    assert (tmp_path / "out" / "final.safetensors").read_bytes() == src.read_bytes()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["final.safetensors"]


def test_the_round_on_files_holds_windows_not_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole site path (fingerprint, update, a two-pass gaussian, the weighted plain stream) on a
    model of 2M values (8 MB as float32) with windows (and norm blocks) of 64K values: numpy's
    allocations (traced) stay a few windows, a fraction of one copy of the model."""
    import tracemalloc

    monkeypatch.setattr(sys.modules["secagg.privacy.gaussian"], "NORM_BLOCK", 1 << 16)
    monkeypatch.setattr("secagg.privacy.streamed.NORM_BLOCK", 1 << 16)

    from secagg.agent.protect import protect_plain_windows
    from secagg.bundle import TensorSpec, bundle_header

    n, window = 2_000_000, 1 << 16
    spec = BundleSpec((TensorSpec("w", (n - 5,)), TensorSpec("b", (5,))))

    def model(path: Path, value: float) -> Path:
        with path.open("wb") as fh:
            fh.write(bundle_header(spec))
            for start in range(0, n, window):
                fh.write(np.full(min(window, n - start), value, dtype="<f4").tobytes())
        return path

    g, loc = model(tmp_path / "g.safetensors", 0.5), model(tmp_path / "l.safetensors", 0.75)
    chain = [{"name": "gaussian", "clip": 1.0, "noise_multiplier": 0.5}]
    tracemalloc.start()
    try:
        fingerprint_file(g, spec, window)
        upd = write_update(loc, g, spec, tmp_path / "u.safetensors", window)
        rel, _ = apply_chain_file(chain, upd, tmp_path / "r.safetensors", np.random.default_rng(0), window)
        sent = sum(len(p) for p in protect_plain_windows(spec, WeightedFile(rel, 0.5, window).windows()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sent == len(bundle_header(spec)) + 4 * n
    # a 64K-value window is 512 KiB as float64; one float32 model is 8 MB, and the in-memory round
    # held several float64 copies of it (16 MB each)
    assert peak < 4 * 2**20, peak


# ---- the worker's side of the handover (secagg.client): one copy of the model in, none extra out


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int64])
def test_read_bundle_is_from_safetensors_with_one_copy(tmp_path: Path, dtype: Any) -> None:
    from secagg.bundlefile import read_bundle

    bundle = _model(4, np.float32)
    bundle = OrderedDict((k, np.asarray(v * 100).astype(dtype)) for k, v in bundle.items())
    path = _write(tmp_path / "g.safetensors", bundle)
    want, got = from_safetensors(path.read_bytes()), read_bundle(path)
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
        assert got[k].tobytes() == want[k].tobytes() and got[k].flags.writeable


def test_read_bundle_refuses_what_from_safetensors_refuses(tmp_path: Path) -> None:
    from secagg.bundlefile import read_bundle

    data = to_safetensors(_model(1))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-3])
    with pytest.raises(UpdateRejected) as exc:
        read_bundle(cut)
    assert exc.value.code == "malformed"


def test_the_local_model_written_a_tensor_at_a_time_is_what_send_wrote(tmp_path: Path) -> None:
    import torch

    from secagg.client import _write_local

    state = OrderedDict(
        [
            ("_module.w", torch.arange(12, dtype=torch.float64).reshape(3, 4) / 7),
            ("b", np.linspace(0, 1, 5, dtype=np.float32)),
            ("s", torch.tensor(2.5)),
        ]
    )
    size = _write_local(tmp_path / "local.safetensors", state)
    data = (tmp_path / "local.safetensors").read_bytes()
    got = from_safetensors(data)
    assert size == len(data) and list(got) == ["w", "b", "s"]
    # what send wrote before: to_safetensors of each tensor as float32
    want = {"w": (torch.arange(12, dtype=torch.float64).reshape(3, 4) / 7).numpy().astype(np.float32)}
    want |= {"b": np.linspace(0, 1, 5, dtype=np.float32), "s": np.array(2.5, dtype=np.float32)}
    for k, v in want.items():
        assert got[k].dtype == np.float32 and got[k].shape == v.shape and got[k].tobytes() == v.tobytes()


@pytest.mark.parametrize("window", [7, 64])
def test_a_mask_round_from_the_weighted_file_unmasks_to_the_in_memory_rounds_sum(
    tmp_path: Path, workspace: Path, window: int
) -> None:
    """mask end to end with real clients: site-1's masked input streamed from its weighted file
    (masked_input_to, as the agent's mask mode makes it) against the same round with every site's
    input made in memory from the old float64 vector: the unmasked sums are equal bit for bit."""
    import io

    from secagg.mask import MaskClient, MaskConfig, MaskedInput, MaskServer
    from secagg.provision.kit import load_kit

    old, out = _round(tmp_path, [], window)
    size = old.size
    cfg = MaskConfig(threshold=2, neighbours=2, clip=4.0, frac_bits=20)
    sites = ["site-1", "site-2", "site-3"]
    kits = {n: load_kit(workspace / n) for n in sites}
    others = {n: np.linspace(-1, 1, size) * (i + 1) / 5 for i, n in enumerate(sites)}

    def one_round(streamed: bool) -> tuple[np.ndarray, float]:
        clients = {
            n: MaskClient(n, kits[n].private_key, kits[n].cert, kits[n].ca_cert, cfg, "j", 1, sites=sites)
            for n in sites
        }
        server = MaskServer(cfg, sites, "j", 1, size)
        for c in clients.values():
            server.collect_keys(c.advertise())
        roster = server.roster()
        for n, c in clients.items():
            server.collect_shares(n, c.share_keys(roster))
        routed = server.route_shares()
        for n, c in clients.items():
            if n == "site-1" and streamed:
                buf = io.BytesIO()
                c.masked_input_to(buf, out.weighted.windows(), size, out.weight, routed[n])
                server.collect_masked(MaskedInput.from_bytes(buf.getvalue()))
            elif n == "site-1":
                server.collect_masked(c.masked_input(old, out.weight, routed[n]))
            else:
                server.collect_masked(c.masked_input(others[n], 0.3, routed[n]))
        request = server.unmask_request()
        total, weight = server.finish([c.unmask(request) for c in clients.values()])
        return np.asarray(total), float(weight)

    streamed, in_memory = one_round(True), one_round(False)
    assert streamed[0].tobytes() == in_memory[0].tobytes() and streamed[1] == in_memory[1]
