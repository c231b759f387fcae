"""An he site steps the decrypted average a ciphertext at a time: the bits the in-memory step gave.

The reference is ``HeMode.receive_global`` as it ran before #21 (written out here): the model parsed
whole, the average decrypted whole (``decrypt_vector``), ``Strategy.apply`` on whole vectors, the
model serialised with ``to_safetensors`` and the state with ``StrategyState.to_bytes``. Tensors
straddle the ciphertexts' edges (4096 values each); FedAdam carries two float64 buffers.
"""

from __future__ import annotations

from collections import OrderedDict
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from secagg.agent.modes import Task
from secagg.agent.modes.he import HeMode
from secagg.agent.protect import protect_he
from secagg.agent.state import SiteState
from secagg.bundle import BundleSpec, from_safetensors, to_safetensors
from secagg.errors import UpdateRejected
from secagg.framing import unframe
from secagg.he.codec import decrypt_vector
from secagg.he.context import SecretContext, make_secret_context
from secagg.he.params import SECAGG_DEFAULT
from secagg.strategy import StrategyState, make_strategy
from secagg.strategy.spec import StrategySpec
from tests.agent.he_site import he_site

RNG = np.random.default_rng(21)
MODEL = OrderedDict(
    a=RNG.normal(size=(3, 5)).astype(np.float32),
    b=RNG.normal(size=4100).astype(np.float32),  # across the first ciphertext's edge
    c=RNG.normal(size=(2, 2050)).astype(np.float32),  # across the second's; the third is short
)
SPEC = BundleSpec.of(MODEL)
UPDATES = {r: RNG.normal(scale=0.01, size=SPEC.size) for r in (2, 3)}
SCALES = {2: 0.5, 3: 1.0}
STRATEGIES = [StrategySpec(name="fedavg"), StrategySpec(name="fedadam"), StrategySpec(name="fedavgm")]


@pytest.fixture(scope="module")
def secret() -> SecretContext:
    return make_secret_context(SECAGG_DEFAULT)


@pytest.fixture(scope="module")
def cipher(secret: SecretContext) -> dict[int, bytes]:
    return {r: b"".join(protect_he(secret, UPDATES[r])) for r in UPDATES}


def _site(root: Path, secret: SecretContext) -> tuple[HeMode, SiteState]:
    return he_site(root, secret, MODEL)


def _task(
    base: int, rounds: list[int], cipher: dict[int, bytes], strategy: StrategySpec, spool: Path | None
) -> Task:
    pieces = [cipher[r] for r in rounds]
    header: dict[str, Any] = {
        "base_round": base,
        "updates": [{"round": r, "bytes": len(cipher[r]), "scale": SCALES[r]} for r in rounds],
    }
    payload: bytes | Path = b"".join(pieces)
    if spool is not None:  # as the agent spools it: a file in the job's folder
        spool.write_bytes(payload)  # type: ignore[arg-type]
        payload = spool
    job = SimpleNamespace(spec=SimpleNamespace(strategy=strategy), root=None)
    return Task(job, "j", rounds[-1] + 1, header, payload)  # type: ignore[arg-type]


def _old(
    secret: SecretContext, strategy: StrategySpec, rounds: list[int], cipher: dict[int, bytes]
) -> list[Any]:
    """The in-memory receive_global before #21, from round 1's model and no state."""
    data = to_safetensors(MODEL, order=SPEC.names)
    bundle = from_safetensors(data)
    bspec = BundleSpec.of(bundle)
    vec = bspec.flatten(bundle)
    strat = make_strategy(strategy)
    st = strat.init_state(vec)
    out = []
    for r in rounds:
        avg = decrypt_vector(secret, unframe(BytesIO(cipher[r])), bspec.size) * float(SCALES[r])
        vec, st = strat.apply(vec, avg, st)
        data = to_safetensors(bspec.unflatten(vec), order=bspec.names)
        kept = st.to_bytes()
        out.append((data, kept))
        vec, st = bspec.flatten(from_safetensors(data)), StrategyState.from_bytes(kept)
    return out


def _same_state(got: bytes, want: bytes) -> None:
    a, b = StrategyState.from_bytes(got), StrategyState.from_bytes(want)
    assert (a.strategy, a.step, a.dim, dict(a.params)) == (b.strategy, b.step, b.dim, dict(b.params))
    assert set(a.buffers) == set(b.buffers)
    assert all(a.buffers[k].tobytes() == b.buffers[k].tobytes() for k in a.buffers)


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
@pytest.mark.parametrize("spooled", [False, True], ids=["bytes", "spooled"])
def test_stepping_by_ciphertext_gives_the_bits_of_the_whole_vector_step(
    tmp_path: Path, secret: SecretContext, cipher: dict[int, bytes], strategy: StrategySpec, spooled: bool
) -> None:
    want = _old(secret, strategy, [2, 3], cipher)
    # one round at a time (round 3 starts from the state file this path wrote for round 2) ...
    one, st1 = _site(tmp_path / "a", secret)
    one.receive_global(_task(1, [2], cipher, strategy, tmp_path / "p2" if spooled else None))
    last = one.receive_global(_task(2, [3], cipher, strategy, tmp_path / "p3" if spooled else None))
    # ... and both rounds in one task (a site catching up)
    both, st2 = _site(tmp_path / "b", secret)
    caught = both.receive_global(_task(1, [2, 3], cipher, strategy, tmp_path / "p23" if spooled else None))
    assert last.read_bytes() == caught.read_bytes() == want[1][0]
    for st in (st1, st2):
        for r, (model, kept) in zip((2, 3), want, strict=True):
            assert st.global_path("j", r).read_bytes() == model
            _same_state((st.job_dir("j") / f"strategy-{r}.bin").read_bytes(), kept)


def test_a_state_written_by_the_in_memory_path_is_resumed(
    tmp_path: Path, secret: SecretContext, cipher: dict[int, bytes]
) -> None:
    strategy = StrategySpec(name="fedadam")
    want = _old(secret, strategy, [2, 3], cipher)
    site, st = _site(tmp_path, secret)
    st.save_global("j", 2, want[0][0])
    (st.job_dir("j") / "strategy-2.bin").write_bytes(want[0][1])  # StrategyState.to_bytes' format
    assert site.receive_global(_task(2, [3], cipher, strategy, None)).read_bytes() == want[1][0]


def test_a_truncated_result_leaves_no_model_or_state_of_its_round(
    tmp_path: Path, secret: SecretContext, cipher: dict[int, bytes]
) -> None:
    site, st = _site(tmp_path, secret)
    short = dict(cipher)
    short[2] = cipher[2][: len(cipher[2]) // 2]
    with pytest.raises(UpdateRejected):
        site.receive_global(_task(1, [2], short, StrategySpec(name="fedadam"), None))
    assert not st.global_path("j", 2).exists()
    assert not (st.job_dir("j") / "strategy-2.bin").exists()
    assert not [p for p in st.job_dir("j").iterdir() if p.name.endswith(".tmp")]
