"""An he site that missed rounds catches up to the very bits the others hold (issue #18, found by
`secagg chaos --scenario partition-timeout --modes he`: site-2, back after 45 s, held a final model
1 ulp away from the other sites'). A site that takes each round alone starts each from the model as
stored (float32); one task carrying several rounds must do the same, not carry the unrounded sum."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from secagg.agent.modes import Task
from secagg.agent.modes.he import HeMode
from secagg.agent.protect import protect_he
from secagg.agent.state import SiteState
from secagg.bundle import BundleSpec
from secagg.he.context import SecretContext, make_secret_context
from secagg.he.params import SECAGG_DEFAULT
from secagg.strategy.spec import StrategySpec
from tests.agent.he_site import he_site

RNG = np.random.default_rng(18)
MODEL = OrderedDict(w=RNG.normal(size=(8, 16)).astype(np.float32), b=RNG.normal(size=16).astype(np.float32))
SPEC = BundleSpec.of(MODEL)
#: what rounds 2 and 3 each added (the round's encrypted result, scale 1)
UPDATES = {r: RNG.normal(scale=0.01, size=SPEC.size) for r in (2, 3)}
_CIPHER: dict[int, bytes] = {}


@pytest.fixture(scope="module")
def secret() -> SecretContext:
    return make_secret_context(SECAGG_DEFAULT)


def _site(root: Path, secret: SecretContext) -> HeMode:
    return he_site(root, secret, MODEL)[0]


def _task(base: int, rounds: list[int], secret: SecretContext) -> Task:
    # every site is sent the same ciphertexts: each round's result file, encrypted once
    pieces = [_CIPHER.setdefault(r, b"".join(protect_he(secret, UPDATES[r]))) for r in rounds]
    header: dict[str, Any] = {
        "base_round": base,
        "updates": [{"round": r, "bytes": len(p), "scale": 1.0} for r, p in zip(rounds, pieces, strict=True)],
    }
    job = SimpleNamespace(spec=SimpleNamespace(strategy=StrategySpec(name="fedavg")), root=None)
    return Task(job, "j", rounds[-1] + 1, header, b"".join(pieces))  # type: ignore[arg-type]


def test_two_rounds_at_once_give_the_bits_of_one_round_at_a_time(
    tmp_path: Path, secret: SecretContext
) -> None:
    one_by_one = _site(tmp_path / "a", secret)
    one_by_one.receive_global(_task(1, [2], secret))
    stepped = one_by_one.receive_global(_task(2, [3], secret))
    caught_up = _site(tmp_path / "b", secret).receive_global(_task(1, [2, 3], secret))
    assert caught_up.read_bytes() == stepped.read_bytes()  # paths of two sites' states: compare models
    # and what each stored for round 2 (the base of a later catch-up) is the same too
    assert SiteState(tmp_path / "a" / "state").global_path("j", 2).read_bytes() == (
        SiteState(tmp_path / "b" / "state").global_path("j", 2).read_bytes()
    )
