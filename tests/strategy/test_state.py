"""State round-trip, resume-equals-uninterrupted, and bit-identical results across processes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors.numpy import save

from secagg.errors import ConfigError, IntegrityError
from secagg.strategy import STRATEGIES, FedAdam, StrategyState, make_strategy

NAMES = sorted(STRATEGIES)


def trajectory(name: str, rounds: int, dim: int = 257):
    rng = np.random.default_rng(7)
    x = rng.normal(size=dim)
    deltas = [rng.normal(scale=0.1, size=dim) for _ in range(rounds)]
    return x, deltas


@pytest.mark.parametrize("name", NAMES)
def test_resume_from_serialised_state_equals_uninterrupted_run(name):
    x0, deltas = trajectory(name, 6)
    s = make_strategy({"name": name})
    x, state = x0, s.init_state(x0)
    for d in deltas:
        x, state = s.apply(x, d, state)
    straight = (x, state.to_bytes())

    # interrupted after round 3: only bytes survive, and a fresh strategy object resumes
    x, state = x0, s.init_state(x0)
    for d in deltas[:3]:
        x, state = s.apply(x, d, state)
    blob, x_saved = state.to_bytes(), x.tobytes()
    del state
    s2 = make_strategy({"name": name})
    x, state = np.frombuffer(x_saved, dtype=np.float64), StrategyState.from_bytes(blob)
    assert state.step == 3
    for d in deltas[3:]:
        x, state = s2.apply(x, d, state)
    assert x.tobytes() == straight[0].tobytes()
    assert state.to_bytes() == straight[1]
    assert state.step == 6


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_preserves_every_field(name):
    x0, deltas = trajectory(name, 2, dim=5)
    s = make_strategy({"name": name})
    _, state = s.apply(x0, deltas[0], s.init_state(x0))
    back = StrategyState.from_bytes(state.to_bytes())
    assert (back.strategy, back.step, back.dim, back.params) == (state.strategy, 1, 5, state.params)
    assert sorted(back.buffers) == sorted(state.buffers) == sorted(s.buffer_names)
    for k in state.buffers:
        assert back.buffers[k].tobytes() == state.buffers[k].tobytes()
    assert back.fingerprint() == state.fingerprint()


def test_every_site_gets_the_same_bytes_in_a_separate_process():
    """Two sites = two processes (different hash seeds, fresh imports): same model and state bytes."""
    script = textwrap.dedent(
        """
        import hashlib, json, sys
        import numpy as np
        from secagg.strategy import STRATEGIES, make_strategy
        out = {}
        for name in sorted(STRATEGIES):
            rng = np.random.default_rng(7)
            x = rng.normal(size=257)
            deltas = [rng.normal(scale=0.1, size=257) for _ in range(4)]
            s = make_strategy({"name": name})
            state = s.init_state(x)
            for d in deltas:
                x, state = s.apply(x, d, state)
            out[name] = hashlib.sha256(x.tobytes() + state.to_bytes()).hexdigest()
        json.dump(out, sys.stdout)
        """
    )
    expected = {}
    for name in NAMES:
        x, deltas = trajectory(name, 4)
        s = make_strategy({"name": name})
        state = s.init_state(x)
        for d in deltas:
            x, state = s.apply(x, d, state)
        expected[name] = hashlib.sha256(x.tobytes() + state.to_bytes()).hexdigest()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
        )
        assert json.loads(done.stdout) == expected


def test_state_buffers_are_read_only_copies():
    src = np.ones(3)
    state = StrategyState("fedavgm", 0, 3, {"eta": 0.1, "momentum": 0.9}, {"velocity": src})
    src[0] = 5.0
    assert state.buffers["velocity"][0] == 1.0
    with pytest.raises(ValueError):
        state.buffers["velocity"][0] = 2.0


def _blob(meta: dict | None, tensors: dict | None = None) -> bytes:
    tensors = tensors if tensors is not None else {"m": np.zeros(2), "v": np.ones(2)}
    metadata = None if meta is None else {"secagg.strategy": json.dumps(meta)}
    return save(tensors, metadata=metadata)


GOOD = {
    "format": "secagg.strategy-state/1",
    "strategy": "fedadam",
    "step": 1,
    "dim": 2,
    "params": {"eta": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.001},
    "buffers": ["m", "v"],
}


def test_hand_built_good_blob_parses():
    state = StrategyState.from_bytes(_blob(GOOD))
    assert state.strategy == "fedadam" and state.step == 1
    FedAdam().apply(np.zeros(2), np.ones(2), state)  # accepted by the strategy it names


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "not a readable safetensors blob"),
        (b"\xff" * 64, "not a readable safetensors blob"),
        (_blob(None), "has no 'secagg.strategy' metadata"),
        (_blob({**GOOD, "format": "other/9"}), "format is not"),
        (_blob({**GOOD, "strategy": ""}), "'strategy' must be a non-empty string"),
        (_blob({**GOOD, "step": -1}), "'step' must be an integer >= 0"),
        (_blob({**GOOD, "dim": "2"}), "'dim' must be an integer >= 0"),
        (_blob({**GOOD, "params": {"eta": "x"}}), "'params' must map names to finite numbers"),
        (_blob({**GOOD, "buffers": ["m"]}), "buffer list does not match"),
        (_blob(GOOD, {"m": np.zeros(2, dtype=np.float32), "v": np.ones(2)}), "buffer 'm' is float32"),
        (_blob(GOOD, {"m": np.zeros(3), "v": np.ones(2)}), r"expected float64\[2\]"),
        (_blob(GOOD, {"m": np.array([0.0, np.inf]), "v": np.ones(2)}), "NaN or infinity"),
    ],
)
def test_corrupt_state_is_refused(blob, message):
    with pytest.raises(IntegrityError, match=message):
        StrategyState.from_bytes(blob)


def test_truncated_state_is_refused():
    blob = FedAdam().init_state(np.zeros(8)).to_bytes()
    with pytest.raises(IntegrityError):
        StrategyState.from_bytes(blob[:-5])


def test_structurally_valid_state_with_wrong_buffers_is_refused_by_apply():
    state = StrategyState.from_bytes(_blob({**GOOD, "buffers": ["m"]}, {"m": np.zeros(2)}))
    with pytest.raises(ConfigError, match="do not match fedadam's"):
        FedAdam().apply(np.zeros(2), np.ones(2), state)
