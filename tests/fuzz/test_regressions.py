"""Every crash the long campaign found, kept as a plain regression test.

``regressions/<target>-<id>.bin`` is the first input of one distinct crash that ``make fuzz`` found in
``<target>`` (tests/fuzz/run.py saves them under ``fuzz-out/crashes/``; copy new ones here once fixed).
Each must now pass its target's property.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.run import all_targets

_DIR = Path(__file__).resolve().parent / "regressions"
_FILES = sorted(_DIR.glob("*.bin"))
_TARGETS = {t.name: t for t in all_targets()}


@pytest.mark.parametrize("path", _FILES, ids=[p.stem for p in _FILES])
def test_found_crash_stays_fixed(path: Path) -> None:
    target = _TARGETS[path.stem.rsplit("-", 1)[0]]
    target.check(path.read_bytes())


def test_there_are_regressions() -> None:
    assert _FILES
