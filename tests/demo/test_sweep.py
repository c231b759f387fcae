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


def test_distributed_noise_is_split_over_the_mask_threshold_at_each_site_count() -> None:
    from secagg.mask.job import mask_config

    for n in (3, 10, 20):
        got = sweep.settings_for(n)
        assert [s.mechanism for s in got] == [s.mechanism for s in sweep.SETTINGS]
        ddg = [s.filter for s in got if s.mechanism == "distributed_gaussian"]
        assert ddg and all(
            f is not None and f["min_honest_sites"] == mask_config(None, n).threshold for f in ddg
        )
        # the split does not change the sum-level epsilon: same planned figures as the 2-way split
        assert [sweep.planned_epsilon(s, 513, 3) for s in got] == [
            sweep.planned_epsilon(s, 513, 3) for s in sweep.SETTINGS
        ]
        assert [s for s in got if s.mechanism != "distributed_gaussian"] == [
            s for s in sweep.SETTINGS if s.mechanism != "distributed_gaussian"
        ]


def test_several_site_counts_share_one_table_and_one_plot(tmp_path: Path) -> None:
    def runner(setting: sweep.Setting, planned: float, folder: Path) -> sweep.Outcome:
        auc = 0.9 if setting.filter is None else 0.8
        return sweep.Outcome(
            [{"round": 1, "auc": auc, "seconds": 1.0}], planned, 1.0, [auc - 0.01, auc + 0.01]
        )

    settings = [sweep.Setting("none"), sweep._gaussian(1.0), sweep._distributed(1.0)]
    rows: list[sweep.Row] = []
    seen: list[int] = []
    for n in (3, 10):
        rows += sweep.run_sweep(
            settings,
            runner,
            tmp_path,
            n_params=513,
            rounds=1,
            log=lambda _: None,
            sites=n,
            done=list(rows),
            on_row=lambda so_far: seen.append(len(so_far)),
        )
    assert seen == [1, 2, 3, 4, 5, 6]  # each report holds the earlier site count's rows too
    lines = sweep.table(rows)
    assert lines[0].startswith("| sites | mechanism |") and lines[0].endswith("| AUC range over 2 repeats |")
    assert lines[2].startswith("| 3 | none |") and lines[-1].startswith("| 10 | gaussian |")
    assert "| 0.7900-0.8100 |" in lines[-1]
    sweep.write(tmp_path, rows, rounds=1, sites=["site-1"], mode="plain", in_process=True)
    assert (tmp_path / "privacy-sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "privacy-sweep.json").read_text())
    assert data["site_counts"] == [3, 10] and data["mode"] == "in-process"
    assert "in-process, 3, 10 sites" in (tmp_path / "privacy-sweep.md").read_text()


def test_in_process_runner_composes_each_sites_receipts() -> None:
    from secagg.demo.data import skewed_split
    from secagg.privacy import compose

    sites = skewed_split(2)
    params = {"lr": 0.05, "epochs": 1, "batch_size": 32, "seed": 0}
    run = sweep.in_process_runner(sites, rounds=2, params=params, repeats=2)
    setting = sweep.settings_for(2)[-1]
    assert setting.mechanism == "distributed_gaussian"
    got = run(setting, 0.0, Path("unused"))
    assert [r["round"] for r in got.per_round] == [1, 2] and len(got.repeats) == 2
    assert got.per_round[-1]["auc"] == pytest.approx(sum(got.repeats) / 2)
    # two rounds of the filter's receipts, composed as the ledger composes them: the planned figure
    assert got.spent_epsilon == pytest.approx(sweep.planned_epsilon(setting, 513, 2))
    assert got.spent_epsilon == pytest.approx(compose(worst_case_spends_of(setting, 2), sweep.DELTA).epsilon)
    # no filter: no receipts, nothing spent, and every repeat the same (only the noise differs)
    plain = run(sweep.Setting("none"), 0.0, Path("unused"))
    assert plain.spent_epsilon == 0.0 and plain.repeats[0] == plain.repeats[1]


def worst_case_spends_of(setting: sweep.Setting, rounds: int) -> list[Spend]:
    from secagg.privacy import worst_case_spends

    assert setting.filter is not None
    return list(worst_case_spends([setting.filter], 513, rounds))


def test_simulated_distributed_mean_is_the_uniform_mean_of_the_integer_shares() -> None:
    """The in-process loop averages distributed shares as mask mode does: the integer shares summed and
    divided by the number of sites, not weighted by sample counts (that would scale each share's noise)."""
    import numpy as np

    from secagg.demo.data import skewed_split
    from secagg.demo.simulate import simulate

    sites = skewed_split(3)
    params = {"lr": 0.05, "epochs": 1, "batch_size": 32, "seed": 0}
    # noise far below the fixed point's step: the share is the rounded, clipped update
    tiny = {"name": "distributed_gaussian", "clip": 100.0, "noise_multiplier": 1e-9, "min_honest_sites": 2}
    got = simulate(sites, params, rounds=1, privacy=[tiny])
    assert {k: len(v) for k, v in got.receipts.items()} == {s.name: 1 for s in sites}
    ref = [simulate([s], params, rounds=1).final_model for s in sites]  # each site's own step
    init = simulate(sites, params, rounds=0).final_model
    for k, v in got.final_model.items():
        uniform = init[k] + sum(r[k] - init[k] for r in ref) / 3
        assert np.max(np.abs(v - uniform)) < 1e-3


def test_the_cli_sweeps_each_site_count_into_one_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``demo --privacy-sweep --sweep-sites 2,3``: one split and one runner per count, every setting
    sized for its count, all rows in one report (the runner stubbed: real federations take minutes)."""
    from secagg.commands import demo as cmd
    from secagg.demo.data import skewed_split

    made: list[int] = []

    def fake_runner(sites: list, **kw: object) -> sweep.Runner:  # type: ignore[type-arg]
        made.append(len(sites))

        def run(setting: sweep.Setting, planned: float, folder: Path) -> sweep.Outcome:
            return sweep.Outcome([{"round": 1, "auc": 0.9, "seconds": 0.1}], planned, 0.1)

        return run

    monkeypatch.setattr(sweep, "federation_runner", fake_runner)
    # three settings are enough to see the glue (the report is redrawn after every row)
    monkeypatch.setattr(
        sweep, "SETTINGS", (sweep.Setting("none"), sweep._gaussian(1.0), sweep._distributed(1.0))
    )
    out = tmp_path / "o"
    rc = cmd._sweep(
        out, mode="plain", rounds=1, sites=skewed_split(3), policies={}, strategy="fedavg", counts=[2, 3]
    )
    assert rc == 0 and made == [2, 3]
    data = json.loads((out / "privacy-sweep.json").read_text())
    assert data["site_counts"] == [2, 3] and len(data["rows"]) == 6
    ddg = [r for r in data["rows"] if r["mechanism"] == "distributed_gaussian"]
    assert {(r["sites"], r["filter"]["min_honest_sites"]) for r in ddg} == {(2, 2), (3, 2)}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["in_process"] is False and len(summary["privacy_sweep"]) == 6
