"""The filter chain over an update file, a window at a time, equals the in-memory chain bit for bit."""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import secagg.privacy.gaussian  # noqa: F401 (the module, which the package's function shadows)
from secagg.bundle import BundleSpec
from secagg.errors import UpdateRejected
from secagg.privacy import streamed
from secagg.privacy.release import prepare_release
from secagg.privacy.specs import apply_chain, build_chain
from secagg.privacy.streamed import UpdateFile, apply_chain_file

#: tensors whose edges fall inside windows of 7, 64 and 1000 values (and a scalar)
SHAPES = [("a", (3, 5)), ("b", (1,)), ("c", (130,)), ("d", ()), ("e", (2, 41)), ("f", (999,))]


def _update(seed: int = 0, scale: float = 0.05) -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return OrderedDict((n, (rng.standard_normal(s) * scale).astype(np.float32).reshape(s)) for n, s in SHAPES)


def _file(tmp: Path, upd: OrderedDict[str, np.ndarray]) -> UpdateFile:
    return UpdateFile.of(tmp / "update.safetensors", BundleSpec.of(upd), upd)


CHAINS: list[list[dict[str, Any]]] = [
    [],
    [{"name": "exclude", "tensors": ["c", "d"]}],
    [{"name": "exclude", "regex": "^[ef]$"}],
    # clip active (the update's norm is about 1.6) and inactive
    [{"name": "gaussian", "clip": 0.5, "noise_multiplier": 1.1}],
    [{"name": "gaussian", "clip": 50.0, "noise_multiplier": 0.3}],
    [{"name": "exclude", "tensors": ["a"]}, {"name": "gaussian", "clip": 0.7, "noise_multiplier": 0.9}],
    [{"name": "gaussian", "clip": 0.7, "noise_multiplier": 0.9}, {"name": "exclude", "tensors": ["f"]}],
    # the ones that need the whole update at once (loaded, filtered in memory, written back)
    [{"name": "percentile", "percentile": 10.0, "gamma": 0.01}],
    [{"name": "svt", "fraction": 0.2}],
    [{"name": "exclude", "tensors": ["b"]}, {"name": "percentile", "percentile": 30.0}],
]


@pytest.mark.parametrize("chain", CHAINS, ids=lambda c: "+".join(f["name"] for f in c) or "none")
@pytest.mark.parametrize("window", [1, 7, 64, 1000, 1 << 20])
def test_the_streamed_chain_is_the_in_memory_chain(
    tmp_path: Path, chain: list[dict[str, Any]], window: int
) -> None:
    upd = _update()
    want, want_spends = apply_chain(build_chain(chain), upd, np.random.default_rng(7))
    src = _file(tmp_path, upd)
    got, spends = apply_chain_file(chain, src, tmp_path / "out.safetensors", np.random.default_rng(7), window)
    loaded = got.load()
    assert list(loaded) == list(want)
    for name in want:
        assert loaded[name].dtype == np.float32 and loaded[name].shape == want[name].shape
        assert loaded[name].tobytes() == np.asarray(want[name], dtype=np.float32).tobytes(), name
    assert spends == want_spends
    # the input is never changed, and no intermediate file is left behind
    assert src.load().keys() == upd.keys() and all(src.load()[n].tobytes() == upd[n].tobytes() for n in upd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors", "update.safetensors"]


def test_the_norm_blocks_straddle_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With norm blocks of 50 values (the default is 2^20), the norm is still summed over the same
    blocks in memory and streamed, whatever the window: bit for bit."""
    monkeypatch.setattr(sys.modules["secagg.privacy.gaussian"], "NORM_BLOCK", 50)
    monkeypatch.setattr(streamed, "NORM_BLOCK", 50)
    chain = [{"name": "gaussian", "clip": 0.3, "noise_multiplier": 1.0}]
    upd = _update(3, scale=0.2)
    want, _ = apply_chain(build_chain(chain), upd, np.random.default_rng(1))
    for window in (1, 13, 50, 333):
        got, _ = apply_chain_file(
            chain,
            _file(tmp_path, upd),
            tmp_path / f"out-{window}.safetensors",
            np.random.default_rng(1),
            window,
        )
        loaded = got.load()
        assert all(loaded[n].tobytes() == want[n].tobytes() for n in want)


@pytest.mark.parametrize("chain", [[], [{"name": "exclude", "tensors": ["a"]}]])
def test_a_non_finite_update_is_refused_as_the_in_memory_chain_refuses_it(
    tmp_path: Path, chain: list[dict[str, Any]]
) -> None:
    upd = _update()
    upd["e"][1, 3] = np.inf
    with pytest.raises(UpdateRejected) as mem:
        apply_chain(build_chain(chain), upd, np.random.default_rng(0))
    with pytest.raises(UpdateRejected) as disk:
        apply_chain_file(
            chain, _file(tmp_path, upd), tmp_path / "out.safetensors", np.random.default_rng(0), 7
        )
    assert (disk.value.code, str(disk.value)) == (mem.value.code, str(mem.value))
    assert not (tmp_path / "out.safetensors").exists()


def test_prepare_release_of_a_file_releases_and_debits_what_it_does_in_memory(tmp_path: Path) -> None:
    chain = [{"name": "gaussian", "clip": 0.5, "noise_multiplier": 1.1}]
    upd = _update()
    mem = prepare_release(None, build_chain(chain), upd, np.random.default_rng(5), "j", 1)
    disk = prepare_release(
        None, chain, _file(tmp_path, upd), np.random.default_rng(5), "j", 1, dst=tmp_path / "rel.safetensors"
    )
    assert isinstance(disk.update, UpdateFile) and disk.spends == mem.spends and disk.debit_id == ""
    loaded = disk.update.load()
    assert all(loaded[n].tobytes() == np.asarray(mem.update[n]).tobytes() for n in upd)
