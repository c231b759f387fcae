"""Each mode object on small inputs: what it checks, what it sums, and that the sums are bit for bit
what the code before the mode objects produced (the reference sums below are that code's arithmetic)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.aggregator import modes
from secagg.aggregator.federation import Federation
from secagg.aggregator.modes import COLLECT_TOPICS, MODES, POST_TOPICS, BadUpload, mode_class
from secagg.aggregator.modes.he import HE_KEY_BLOB, HECombiner, HEMode
from secagg.aggregator.modes.mask import MaskMode, MaskRun
from secagg.aggregator.modes.plain import PlainMode
from secagg.aggregator.modes.tee import TeeMode
from secagg.aggregator.rounds import Phase, Signal
from secagg.bundle import BundleSpec, from_safetensors, to_safetensors
from secagg.errors import ConfigError, UpdateRejected
from secagg.framing import frame
from secagg.provision.kit import load_kit
from secagg.tee import DevTeeAttester, Enclave, sealing, suites
from tests.aggregator.conftest import INIT, FakeEnclave, chunks, header, open_uploads, update

SPEC = BundleSpec.of(INIT)


def test_the_registry_names_every_mode_once() -> None:
    assert set(MODES) == {"plain", "he", "mask", "tee", "tee-mask"}
    assert all(cls.name == name for name, cls in MODES.items())
    assert MODES["he"].sees_model is False and all(MODES[m].sees_model for m in ("plain", "mask", "tee"))
    assert {"mask-keys", "mask-shares", "mask-unmask-resp"} == POST_TOPICS
    assert {"mask-keyroster", "mask-myshares", "mask-unmask"} == COLLECT_TOPICS
    with pytest.raises(ConfigError, match="not supported"):
        mode_class("quantum")


def test_no_mode_branch_outside_the_mode_objects() -> None:
    root = Path(modes.__file__).parent.parent
    for path in root.rglob("*.py"):
        if "modes" in path.relative_to(root).parts:
            continue
        text = path.read_text()
        for needle in ('mode == "', 'mode != "', "mode in ("):
            assert needle not in text, f"{path.name} branches on the mode ({needle})"


def test_tee_needs_an_enclave() -> None:
    with pytest.raises(ConfigError, match="needs an aggregator started in a TEE"):
        TeeMode.check_aggregator(None)
    TeeMode.check_aggregator(FakeEnclave())
    PlainMode.check_aggregator(None)


# ------------------------------------------------------------------------------------ plain / tee
def _old_plain_sum(blobs: dict[str, bytes], scale: float) -> np.ndarray:
    """The arithmetic of the combiner before the mode objects: float64 sum in sorted site order,
    written as <f8, read back, times the scale."""
    total = np.zeros(SPEC.size, dtype=np.float64)
    for site in sorted(blobs):
        total += SPEC.flatten(from_safetensors(blobs[site]))
    return np.frombuffer(total.astype("<f8").tobytes(), dtype="<f8").copy() * scale


def test_plain_accepts_checks_and_sums_bit_identically(
    make_fed: Callable[..., Federation], tmp_path: Path
) -> None:
    fed = make_fed()
    mode = fed.mode
    assert isinstance(mode, PlainMode) and fed.job is not None
    blobs = {f"site-{i}": to_safetensors(update(0.01 * i, seed=i)) for i in (3, 1, 2)}
    paths = {}
    for site, blob in blobs.items():
        paths[site] = tmp_path / f"{site}.bin"
        paths[site].write_bytes(blob)
        mode.accept(site, fed.job.current, {}, paths[site])  # type: ignore[arg-type]
    scale = 1.0 / 0.9
    total = mode.combine(1, paths, tmp_path / "unused")
    assert total is not None
    assert (total * scale).astype("<f8").tobytes() == _old_plain_sum(blobs, scale).astype("<f8").tobytes()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(to_safetensors({"head": INIT["head"]}))
    with pytest.raises(UpdateRejected) as err:
        mode.accept("site-9", fed.job.current, {}, bad)  # type: ignore[arg-type]
    assert err.value.code == "bad_shape"
    with pytest.raises(BadUpload) as blamed:
        mode.combine(1, {**paths, "site-9": bad}, tmp_path / "unused")
    assert blamed.value.site == "site-9" and blamed.value.path == bad


def test_plain_task_carries_the_global_model(make_fed: Callable[..., Federation]) -> None:
    fed = make_fed()
    assert fed.job is not None and fed.mode is not None
    head = fed.mode.payload_header(fed.job, 0)
    data = b"".join(fed.mode.payload(fed.job, head))
    assert head == {"base_round": 0, "global_bytes": len(data)}
    assert {k: v.tolist() for k, v in from_safetensors(data).items()} == {
        k: v.tolist() for k, v in INIT.items()
    }


class RecordingEnclave(Enclave):
    """The dev enclave, recording whose chunks it was asked to open, for which job and round."""

    def __init__(self) -> None:
        super().__init__(DevTeeAttester(ec.generate_private_key(ec.SECP384R1()), b"\x11" * 32))
        self.opened: list[tuple[str, int, str]] = []

    def open_update_chunk(self, raw: bytes, expect: Any, job: str, round: int, site: str) -> bytes:
        self.opened.append((job, int(round), site))
        return super().open_update_chunk(raw, expect, job, round, site)


def seal(enclave: Enclave, data: bytes, job: str, round_: int, site: str, chunk_size: int = 2048) -> bytes:
    """``data`` sealed to the enclave for this job, round and site, framed as the spool holds it."""
    suite = enclave.announcement.hpke_keys[0][0]
    public = suites.load_public(suite, enclave.announcement.public_key(suite))
    ctx = sealing.Context(job, round_, site, enclave.announcement.digest())
    return b"".join(frame(sealing.seal_chunks(data, public, suite, ctx, chunk_size=chunk_size)))


def test_tee_opens_each_upload_for_the_site_and_round_it_was_given(
    make_fed: Callable[..., Federation], tmp_path: Path
) -> None:
    """The site and the round are values from the round engine, never read from a path."""
    enclave = RecordingEnclave()
    fed = make_fed("tee", enclave=enclave)
    mode = fed.mode
    assert isinstance(mode, TeeMode) and fed.job is not None
    blobs = {s: to_safetensors(update(0.02, seed=n)) for n, s in enumerate(["site-2", "site-1"])}
    paths = {}
    for n, (site, blob) in enumerate(blobs.items()):
        paths[site] = tmp_path / "anywhere" / f"upload-{n}.sealed"  # a name that says nothing
        paths[site].parent.mkdir(exist_ok=True)
        paths[site].write_bytes(seal(enclave, blob, fed.job.job_id, 4, site))
    total = mode.combine(4, paths, tmp_path / "unused")
    assert total is not None
    assert sorted(set(enclave.opened)) == [(fed.job.job_id, 4, "site-1"), (fed.job.job_id, 4, "site-2")]
    assert total.astype("<f8").tobytes() == _old_plain_sum(blobs, 1.0).astype("<f8").tobytes()
    # an upload sealed for another round does not open in this one: the combine names it
    paths["site-1"].write_bytes(seal(enclave, blobs["site-1"], fed.job.job_id, 3, "site-1"))
    with pytest.raises(BadUpload) as bad:
        mode.combine(4, paths, tmp_path / "unused")
    assert bad.value.site == "site-1" and getattr(bad.value.reason, "code", "") == "tee_chunk_auth"
    head = mode.payload_header(fed.job, 0)
    assert head["model_signature"] and head["base_round"] == 0


def test_tee_accept_upload_goes_through_the_enclave_under_the_callers_identity(
    make_fed: Callable[..., Federation],
) -> None:
    enclave = RecordingEnclave()
    fed = make_fed("tee", enclave=enclave)
    cur = open_uploads(fed)
    assert fed.job is not None
    sealed = seal(enclave, to_safetensors(update(0.1)), fed.job.job_id, cur.round, "site-2")
    fed.accept_upload("site-2", header(fed, sealed), chunks(sealed))
    assert enclave.opened and set(enclave.opened) == {(fed.job.job_id, cur.round, "site-2")}
    # the same bytes from another site's connection do not open (the site comes from mTLS)
    with pytest.raises(UpdateRejected):
        fed.accept_upload("site-1", header(fed, sealed), chunks(sealed))


# ------------------------------------------------------------------------------------ he
def _release(workspace: Path) -> tuple[object, bytes]:
    from secagg.he.context import make_secret_context
    from secagg.he.custody import make_key_envelopes
    from secagg.he.params import SECAGG_DEFAULT

    holder = load_kit(workspace / "site-1")
    ctx = make_secret_context(SECAGG_DEFAULT)
    release = make_key_envelopes(
        ctx, holder.private_key, holder.cert, holder.peer_certs(), holder.config.project
    )
    return ctx, release.to_bytes()


def test_he_waits_for_the_public_context_then_sums_like_the_he_combiner(
    make_fed: Callable[..., Federation], workspace: Path, tmp_path: Path
) -> None:
    from secagg.he.codec import encrypt_vector
    from secagg.he.custody import KeyRelease

    fed = make_fed("he")
    mode = fed.mode
    assert isinstance(mode, HEMode) and fed.job is not None
    upload = tmp_path / "u"
    upload.write_bytes(b"")
    with pytest.raises(UpdateRejected) as err:
        mode.accept("site-1", fed.job.current, {}, upload)  # type: ignore[arg-type]
    assert err.value.code == "no_he_key"
    secret, blob = _release(workspace)
    fed.store.put_blob(HE_KEY_BLOB, blob)
    rng = np.random.default_rng(3)
    paths = {}
    for site, w in (("site-2", 0.4), ("site-1", 0.6)):
        paths[site] = tmp_path / f"{site}.ckks"
        frames = encrypt_vector(secret, rng.uniform(-0.1, 0.1, SPEC.size), w)  # type: ignore[arg-type]
        paths[site].write_bytes(b"".join(frame(list(frames))))
        mode.accept(site, fed.job.current, {}, paths[site])  # type: ignore[arg-type]
    out, ref = tmp_path / "sum.ckks", tmp_path / "ref.ckks"
    assert mode.combine(1, paths, out) is None  # the sum stays encrypted: nothing in the clear
    HECombiner(SPEC, KeyRelease.from_bytes(blob).public_context).combine(
        [paths["site-1"], paths["site-2"]], ref
    )
    assert out.read_bytes() == ref.read_bytes()
    paths["site-3"] = tmp_path / "short.ckks"
    paths["site-3"].write_bytes(b"".join(frame([b"x", b"y"])))  # the model needs one ciphertext
    with pytest.raises(UpdateRejected) as short:
        mode.accept("site-3", fed.job.current, {}, paths["site-3"])  # type: ignore[arg-type]
    assert short.value.code == "bad_shape"


def test_he_task_names_the_rounds_a_site_still_needs(
    make_fed: Callable[..., Federation], tmp_path: Path
) -> None:
    fed = make_fed("he")
    assert fed.job is not None and fed.mode is not None
    for r in (1, 2):
        result = tmp_path / f"round-{r}.bin"
        result.write_bytes(bytes([r]) * (10 * r))
        fed.store.add_round(fed.job.job_id, r, 1, str(result), 0.5 * r, ["site-1"], {}, 1.0)
    head = fed.mode.payload_header(fed.job, 1)
    assert head == {"base_round": 1, "updates": [{"round": 2, "bytes": 20, "scale": 1.0}]}
    assert b"".join(fed.mode.payload(fed.job, head)) == bytes([2]) * 20
    files = HEMode.download(fed.job.job_id, fed.store.rounds(fed.job.job_id))
    assert [n for n, _ in files] == ["round-1.ckks", "round-2.ckks", "he.json"]


# ------------------------------------------------------------------------------------ mask
def test_mask_starts_its_phases_after_the_roster_and_signals_what_is_not_for_a_site(
    make_fed: Callable[..., Federation],
) -> None:
    fed = make_fed("mask", mask={"threshold": 2})
    mode = fed.mode
    assert isinstance(mode, MaskMode)
    cur = open_uploads(fed)
    assert cur.phase == Phase.MASK and isinstance(cur.mode_state, MaskRun)
    assert cur.mode_state.sites == ["site-1", "site-2"]
    with pytest.raises(UpdateRejected) as outside:
        mode.post("site-3", "mask-keys", cur, b"{}")
    assert outside.value.code == "not_in_roster"
    with pytest.raises(UpdateRejected) as early:  # masked inputs only in the mask upload phase
        mode.admit("site-1", cur, Path("unused"))
    assert early.value.code == "late"
    assert mode.collect("site-1", "mask-keyroster", cur) is None  # not published yet: wait
    cur.mode_state.published["mask-myshares"] = {"site-2": b"shares"}
    assert mode.collect("site-1", "mask-myshares", cur) == Signal.NOT_FOR_YOU
    assert mode.collect("site-2", "mask-myshares", cur) == b"shares"
    assert fed.mode_collect("site-1", "mask-myshares", fed.job.job_id, cur.round, cur.attempt + 1, 0) == (  # type: ignore[union-attr]
        Signal.CANCELLED
    )
    assert mode.step(cur, set(), cur.mode_state.phase_started + 1).wait
    late = mode.step(cur, set(), cur.mode_state.phase_started + 10_000)
    assert late.retry is not None and "threshold" in late.retry and late.audit is not None
    assert late.audit[0] == "mask_phase" and late.audit[1]["phase"] == "mask-keys"


def test_a_mask_round_never_combines_the_spool() -> None:
    with pytest.raises(RuntimeError):
        MaskMode.combine(object.__new__(MaskMode), 1, {}, Path("x"))
