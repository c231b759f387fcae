"""The demo's strategy settings: valid job blocks for every strategy, and FedOpt steps that learn here."""

from __future__ import annotations

import pytest

from secagg.demo.data import skewed_split
from secagg.demo.simulate import simulate
from secagg.demo.strategies import NAMES, PRESETS, describe, preset
from secagg.jobs.spec import JobSpec
from secagg.strategy import STRATEGIES

PARAMS = {"lr": 0.05, "epochs": 2, "batch_size": 32, "seed": 0}


def test_every_strategy_has_demo_settings() -> None:
    assert set(NAMES) == set(STRATEGIES)
    assert set(PRESETS) == set(STRATEGIES)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_preset_is_a_valid_job_strategy_block(name: str) -> None:
    block = preset(name)
    job = JobSpec.model_validate(
        {
            "name": "x",
            "rounds": 1,
            "min_sites": 2,
            "mode": "plain",
            "model": "m",
            "entry": "t.py",
            "strategy": block,
        }
    )
    assert job.strategy.name == name
    assert job.strategy.params() == {k: v for k, v in block.items() if k != "name"}
    assert describe(name).startswith(name)


def test_fedopt_demo_step_sizes_are_tuned_not_paper_defaults() -> None:
    assert preset("fedadam")["eta"] == 0.1 and preset("fedyogi")["eta"] == 0.1
    assert preset("fedadam")["beta_1"] == 0.9  # the paper's, filled in by the spec
    assert preset("fedprox")["mu"] == 0.1


@pytest.fixture(scope="module")
def sites():  # noqa: ANN201
    return skewed_split(3)


@pytest.fixture(scope="module")
def fedavg(sites) -> list[float]:  # noqa: ANN001
    return simulate(sites, PARAMS, rounds=3).aucs


@pytest.mark.parametrize("name", ["fedprox", "fedavgm", "fedadagrad", "fedadam", "fedyogi"])
def test_each_strategy_learns_on_the_skewed_split(sites, fedavg: list[float], name: str) -> None:  # noqa: ANN001
    aucs = simulate(sites, PARAMS, rounds=3, strategy=preset(name)).aucs
    assert aucs[-1] > 0.98, aucs
    assert aucs[-1] >= fedavg[-1] - 0.005, (aucs, fedavg)


def test_fedadam_paper_default_learns_slower_than_the_demo_setting(sites) -> None:  # noqa: ANN001
    paper = simulate(sites, PARAMS, rounds=3, strategy={"name": "fedadam"}).aucs
    tuned = simulate(sites, PARAMS, rounds=3, strategy=preset("fedadam")).aucs
    assert tuned[0] > paper[0] + 0.02, (tuned, paper)
    assert tuned[-1] > paper[-1], (tuned, paper)
