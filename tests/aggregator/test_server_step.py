"""The round engine holds no model-sized array: the server step runs window by window on files, and
gives the bits ``Strategy.apply`` gives on whole vectors; the global model is served from its file and
a restart resumes from the values it published."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from secagg.aggregator.federation import Federation
from secagg.aggregator.global_model import from_model_file, resume
from secagg.aggregator.server_step import StateFile, server_step
from secagg.bundle import BundleSpec, fingerprint, from_safetensors, to_safetensors
from secagg.errors import ConfigError, UpdateRejected
from secagg.provision.kit import load_kit
from secagg.provision.project import Project
from secagg.strategy import StrategyState, make_strategy
from tests.aggregator.conftest import chunks, header, open_uploads, update

BUNDLE = OrderedDict(
    [
        ("a", np.linspace(-1, 1, 13, dtype=np.float32)),
        ("b", np.full((2, 3), 0.25, dtype=np.float32)),
        ("c", np.arange(7, dtype=np.float32) / 7),
    ]
)


def _exact(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype="<f8")


@pytest.mark.parametrize("name", ["fedavg", "fedavgm", "fedadam", "fedyogi"])
def test_windowed_server_step_gives_the_bits_of_apply(tmp_path: Path, name: str) -> None:
    spec = BundleSpec.of(BUNDLE)
    model_file = tmp_path / "model.safetensors"
    model_file.write_bytes(to_safetensors(BUNDLE))
    model = from_model_file(model_file, spec, tmp_path / "round-0.bin", elements=4)
    strategy = make_strategy(name)
    x = spec.flatten(BUNDLE)
    state_mem = strategy.init_state(x)
    state_file: StateFile | None = None
    rng = np.random.default_rng(3)
    for r in (1, 2):
        total = rng.normal(0, 0.1, spec.size)
        scale = 1.0 / 3.0
        x, state_mem = strategy.apply(x, total * scale, state_mem)
        x = x.astype(np.float32).astype(np.float64)  # the next round starts from the published model
        # a window of 4 values straddles every tensor edge here (13, 6, 7)
        model, state_file = server_step(
            strategy,
            model,
            lambda a, b, t=total: t[a:b] * scale,
            state_file,
            tmp_path / f"round-{r}.bin",
            tmp_path / f"strategy-{r}.bin",
            elements=4,
        )
        assert _exact(model.exact).tobytes() == x.tobytes()
        sent = from_safetensors(model.bundle.read_bytes())
        assert spec.flatten(sent).tobytes() == x.astype(np.float32).astype(np.float64).tobytes()
        assert model.fingerprint == fingerprint(sent)
        got = StrategyState.from_bytes((tmp_path / f"strategy-{r}.bin").read_bytes())
        assert got.step == state_mem.step == r and dict(got.params) == dict(state_mem.params)
        assert {k: v.tobytes() for k, v in got.buffers.items()} == {
            k: v.tobytes() for k, v in state_mem.buffers.items()
        }
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporaries


def test_a_step_that_fails_leaves_no_file(tmp_path: Path) -> None:
    spec = BundleSpec.of(BUNDLE)
    (tmp_path / "m").write_bytes(to_safetensors(BUNDLE))
    model = from_model_file(tmp_path / "m", spec, tmp_path / "round-0.bin", elements=4)
    before = sorted(p.name for p in tmp_path.iterdir())
    bad = np.zeros(spec.size)
    bad[20] = np.nan  # in the fifth window: four windows are written before it is met
    with pytest.raises(UpdateRejected) as err:
        server_step(
            make_strategy("fedadam"),
            model,
            lambda a, b: bad[a:b],
            None,
            tmp_path / "round-1.bin",
            tmp_path / "strategy-1.bin",
            4,
        )
    assert err.value.code == "non_finite"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_state_of_another_strategy_is_refused(tmp_path: Path) -> None:
    spec = BundleSpec.of(BUNDLE)
    (tmp_path / "m").write_bytes(to_safetensors(BUNDLE))
    model = from_model_file(tmp_path / "m", spec, tmp_path / "round-0.bin", elements=8)
    zero = np.zeros(spec.size)
    model, state = server_step(
        make_strategy("fedavgm"), model, lambda a, b: zero[a:b], None, tmp_path / "r1", tmp_path / "s1", 8
    )
    with pytest.raises(ConfigError, match="belongs to strategy 'fedavgm'"):
        server_step(
            make_strategy("fedadam"), model, lambda a, b: zero[a:b], state, tmp_path / "r2", tmp_path / "s", 8
        )


def test_a_plain_round_is_stepped_on_files_served_from_disk_and_resumed_exactly(
    make_fed: Callable[..., Federation], workspace: Path
) -> None:
    fed = make_fed(strategy={"name": "fedavgm"})
    job = fed.job
    assert job is not None and job.global_model is not None
    start = job.global_model
    x = _exact(start.exact)
    assert start.bundle.name == "round-0.bin"
    assert b"".join(fed.payload({"kind": "train"})) == start.bundle.read_bytes()
    ups = {"site-1": update(0.1, seed=1), "site-2": update(0.1, seed=2)}
    open_uploads(fed, {"site-1": 0.25, "site-2": 0.75})
    for site, up in ups.items():
        data = to_safetensors(up)
        fed.accept_upload(site, header(fed, data), chunks(data))
    fed.step()
    assert job.completed == 1
    total = sum(fed.job.bundle_spec.flatten(u) for u in ups.values())
    want, _ = make_strategy("fedavgm").apply(x, total * 1.0, make_strategy("fedavgm").init_state(x))
    now = job.global_model
    want = want.astype(np.float32).astype(np.float64)  # as published (RELIABILITY.md F2)
    assert now.bundle.name == "round-1.bin" and _exact(now.exact).tobytes() == want.tobytes()
    assert not start.exact.exists()  # only the latest exact values are kept
    assert b"".join(fed.payload({"kind": "train"})) == now.bundle.read_bytes()
    # a restart steps on from the same values
    fed.store.close()
    again = Federation(load_kit(workspace / "aggregator"), fed.state_dir)
    try:
        assert again.job is not None and again.job.global_model is not None
        assert _exact(again.job.global_model.exact).tobytes() == want.tobytes()
        assert again.job.global_model.fingerprint == now.fingerprint
        assert again.job.strategy_state is not None and again.job.strategy_state.step == 1
    finally:
        again.store.close()


def test_resume_from_a_round_without_exact_values_widens_its_bundle(tmp_path: Path) -> None:
    spec = BundleSpec.of(BUNDLE)
    bundle = tmp_path / "round-3.bin"
    bundle.write_bytes(to_safetensors(BUNDLE))  # written by the library's writer, as older rounds were
    model = resume(spec, bundle, elements=5)
    assert _exact(model.exact).tobytes() == spec.flatten(BUNDLE).tobytes()
    assert model.fingerprint == fingerprint(BUNDLE)
    assert bundle.read_bytes() == to_safetensors(BUNDLE)  # a committed result is never rewritten


def test_window_bytes_is_a_project_setting_with_bounds() -> None:
    base = {"name": "p", "sites": [{"name": "site-1"}]}
    assert Project.model_validate(base).aggregator.window_bytes == 16 * 1024 * 1024
    set_ = Project.model_validate({**base, "aggregator": {"window_bytes": 4096}})
    assert set_.aggregator.window_bytes == 4096
    for bad in (0, 7, 2**31):
        with pytest.raises(ValueError, match="window_bytes"):
            Project.model_validate({**base, "aggregator": {"window_bytes": bad}})
