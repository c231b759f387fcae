"""The privacy sweep: its accounting is the ledger's, its budget admits the run, its table and plot are
built from what the runs returned."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from secagg.demo import sweep
from secagg.demo.policies import budget_policy
from secagg.jobs.spec import JobSpec
from secagg.policy import decide, load_policy
from secagg.privacy import Ledger, Spend

SVT_STRICT = {"name": "svt", "fraction": 0.25, "epsilon": 0.01, "noise_var": 0.01, "gamma": 1e-5, "tau": 1e-6}


def test_model_size_is_the_demo_mlp() -> None:
    assert sweep.model_size() == 30 * 16 + 16 + 16 + 1


def test_planned_epsilon_matches_the_policy_readme_arithmetic() -> None:
    # policies/README.md: SVT on the 513-parameter model, 5 rounds = 8.53; Gaussian z=1.1, 5 rounds = 10.9
    assert sweep.planned_epsilon(sweep.Setting("svt", SVT_STRICT), 513, 5) == pytest.approx(8.53, abs=0.01)
    gauss = sweep.Setting("gaussian", {"name": "gaussian", "clip": 1.0, "noise_multiplier": 1.1})
    assert sweep.planned_epsilon(gauss, 513, 5) == pytest.approx(10.9, abs=0.05)
    assert sweep.planned_epsilon(sweep.Setting("none"), 513, 5) == 0.0


def test_settings_span_both_mechanisms_and_a_reference() -> None:
    mechs = [s.mechanism for s in sweep.SETTINGS]
    assert mechs.count("none") == 1
    assert mechs.count("svt") >= 4 and mechs.count("gaussian") >= 4
    eps = [sweep.planned_epsilon(s, 513, 3) for s in sweep.SETTINGS if s.mechanism == "gaussian"]
    assert max(eps) / min(eps) > 10  # a range wide enough to show a price


def _job(filter_: dict, rounds: int) -> JobSpec:  # type: ignore[type-arg]
    return JobSpec.model_validate(
        {
            "name": "x",
            "rounds": rounds,
            "min_sites": 2,
            "mode": "plain",
            "model": "m",
            "entry": "t.py",
            "privacy": [filter_],
        }
    )


@pytest.mark.parametrize(
    "setting", [s for s in sweep.SETTINGS if s.filter is not None], ids=lambda s: s.label
)
def test_budget_policy_admits_exactly_its_run(tmp_path: Path, setting: sweep.Setting) -> None:
    planned = sweep.planned_epsilon(setting, 513, 3)
    path = tmp_path / "p.yaml"
    path.write_text(budget_policy(planned, sweep.DELTA))
    policy = load_policy(path)
    assert policy.privacy.budget is not None and policy.privacy.budget.epsilon >= planned
    budget = [
        r for r in decide(policy, _job(setting.filter, 3), None, n_params=513).reasons if r.rule == "budget"
    ]
    assert budget and budget[0].ok, budget
    # the same budget does not admit a much longer job: it is sized, not unlimited
    longer = [
        r for r in decide(policy, _job(setting.filter, 30), None, n_params=513).reasons if r.rule == "budget"
    ]
    assert not longer[0].ok and longer[0].code == "budget_exceeded"


def test_budget_policy_refuses_a_meaningless_budget() -> None:
    from secagg.errors import ConfigError

    with pytest.raises(ConfigError):
        budget_policy(math.inf, 1e-5)


def test_spent_epsilon_reads_the_sites_ledgers(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for site, eps in (("site-1", 1.5), ("site-2", 2.25)):
        with Ledger(state / site / "privacy-ledger.sqlite", site, 10.0, 1e-5) as led:
            led.debit("job", 1, [Spend("svt", eps, 0.0)])
            led.debit("job", 2, [Spend("svt", eps, 0.0)])
    assert sweep.spent_epsilon(state, ["site-1", "site-2", "site-3"]) == pytest.approx(4.5)
    assert sweep.spent_epsilon(tmp_path / "nothing", ["site-1"]) == 0.0


def test_sweep_table_and_plot_from_a_stubbed_runner(tmp_path: Path) -> None:
    calls = []

    def runner(setting: sweep.Setting, planned: float, folder: Path) -> sweep.Outcome:
        calls.append((setting.mechanism, planned, folder.name))
        auc = 0.99 if setting.filter is None else 0.5 + min(planned, 100) / 250
        per_round = [{"round": r, "auc": auc - 0.01 * (3 - r), "seconds": 1.0} for r in (1, 2, 3)]
        return sweep.Outcome(per_round, spent_epsilon=planned * 1.0, seconds=3.0)

    rows = sweep.run_sweep(sweep.SETTINGS, runner, tmp_path, n_params=513, rounds=3, log=lambda _: None)
    assert [c[0] for c in calls] == [s.mechanism for s in sweep.SETTINGS]
    assert [c[1] for c in calls] == pytest.approx([sweep.planned_epsilon(s, 513, 3) for s in sweep.SETTINGS])
    assert len({c[2] for c in calls}) == len(calls)  # one folder per run
    expected = [
        0.99 if s.filter is None else 0.5 + min(c[1], 100) / 250 for s, c in zip(sweep.SETTINGS, calls)
    ]
    assert [r.final_auc for r in rows] == pytest.approx(expected)
    assert [r.spent_epsilon for r in rows] == pytest.approx([c[1] for c in calls])

    lines = sweep.table(rows)
    assert lines[0].startswith(
        "| mechanism | setting | epsilon planned | epsilon spent (ledger) | final AUC |"
    )
    body = lines[2:]
    assert len(body) == len(sweep.SETTINGS)
    assert body[0].startswith("| none | no filter | - | - | 0.9900 |")
    svt = [line for line in body if line.startswith("| svt |")]
    eps = [float(line.split("|")[3]) for line in svt]
    assert eps == sorted(eps) and len(svt) == 4

    sweep.write(tmp_path, rows, rounds=3, sites=["site-1", "site-2"], mode="plain")
    assert (tmp_path / "privacy-sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "privacy-sweep.md").read_text()
    assert "\n".join(lines) in md and "privacy-sweep.png" in md
    data = json.loads((tmp_path / "privacy-sweep.json").read_text())
    assert data["rounds"] == 3 and len(data["rows"]) == len(sweep.SETTINGS)
    assert {r["mechanism"] for r in data["rows"]} == {"none", "svt", "gaussian", "distributed_gaussian"}


def test_distributed_gaussian_settings_run_masked_and_cost_the_sum_level_epsilon() -> None:
    from secagg.privacy.accounting import rdp_epsilon
    from secagg.privacy.distributed import effective_noise_multiplier

    ddg = [s for s in sweep.SETTINGS if s.mechanism == "distributed_gaussian"]
    assert len(ddg) >= 4
    for s in ddg:
        assert sweep.mode_for(s, "plain") == "mask"
        assert s.filter is not None
        z_eff = effective_noise_multiplier(s.filter["noise_multiplier"], s.filter["clip"], 16, 513)
        assert sweep.planned_epsilon(s, 513, 3) == rdp_epsilon([(z_eff, 1.0, 1)] * 3, sweep.DELTA)
    assert sweep.mode_for(sweep.SETTINGS[1], "plain") == "plain"
