"""One list of modes: the job schema, the policy schema and both sides' mode objects agree with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

from secagg import modes
from secagg.agent.modes import MODES as SITE_MODES
from secagg.aggregator.modes import MODES as AGGREGATOR_MODES
from secagg.jobs.spec import Mode
from secagg.policy.explain import _MODE_WORDS

ROOT = Path(__file__).resolve().parent.parent


def test_every_layer_knows_the_same_modes() -> None:
    names = set(modes.NAMES)
    assert set(get_args(Mode)) == names
    assert set(SITE_MODES) == names and set(AGGREGATOR_MODES) == names
    assert set(_MODE_WORDS) == names
    for schema in (ROOT / "policies" / "schema.json", ROOT / "secagg" / "policy" / "schema.json"):
        assert set(json.loads(schema.read_text())["properties"]["modes"]["items"]["enum"]) == names


def test_traits_say_what_each_mode_needs() -> None:
    assert {"tee", "tee-mask"} == modes.ATTESTED
    assert {m.name for m in modes.MODES.values() if m.masked} == {"mask", "tee-mask"}
    assert {m.name for m in modes.MODES.values() if m.hides_single_update} == {"mask", "tee-mask"}
    # distributed_gaussian: its shares are summed exactly where no party outside an enclave sees one
    assert {m.name for m in modes.MODES.values() if m.sums_shares} == {"mask", "tee-mask", "tee"}
