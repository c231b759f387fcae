"""One real federation through ``secagg demo``: plain mode, 2 sites, 2 rounds, site-2 on its own policy
that requires excluding the output layer's bias from every update."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from secagg.bundle import from_safetensors
from secagg.cli import main
from secagg.demo.data import skewed_split
from secagg.demo.simulate import simulate
from secagg.strategy import STRATEGIES

#: a real federation: separate processes that each import torch; minutes on a loaded 2-core machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PARAMS = {"lr": 0.05, "epochs": 2, "batch_size": 32, "seed": 0}
EXCLUDE = {"name": "exclude", "tensors": ["2.bias"]}
SITE2_POLICY = """\
version: 1
signers:
  submitters: [submitter@demo]
modes: [plain]
privacy:
  required:
    - {name: exclude, tensors: ["2.bias"]}
limits:
  max_rounds: 10
  min_sites_per_round: 2
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    policy = root / "site-2.yaml"
    policy.write_text(SITE2_POLICY)
    out = root / "out"
    argv = ["demo", "--mode", "plain", "--sites", "2", "--rounds", "2", "--out", str(out)]
    assert main([*argv, "--strategy", "fedavg", "--policy", f"site-2={policy}"]) == 0
    return out


def _audit(demo: Path, site: str) -> list[dict]:  # type: ignore[type-arg]
    lines = (demo / "plain" / "state" / site / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_summary_has_the_contract_fields(demo: Path) -> None:
    summary = json.loads((demo / "summary.json").read_text())
    assert summary["mode"] == "plain" and summary["rounds"] == 2
    assert summary["sites"] == ["site-1", "site-2"]
    assert [r["round"] for r in summary["per_round"]] == [1, 2]
    for row in summary["per_round"]:
        assert 0.5 < row["auc"] <= 1.0 and row["seconds"] > 0
    assert summary["final_auc"] == summary["per_round"][-1]["auc"]
    times = sorted(r["seconds"] for r in summary["per_round"])
    assert summary["median_round_seconds"] == pytest.approx((times[0] + times[1]) / 2)
    assert summary["strategy"] == {"name": "fedavg"}
    assert summary["policies"]["site-2"].endswith("site-2.yaml") and "site-1" not in summary["policies"]
    assert (demo / "auc.png").stat().st_size > 0
    assert "| 2 |" in (demo / "report.md").read_text()


def test_site_with_its_own_policy_excluded_the_output_bias(demo: Path) -> None:
    admitted = {s: [e for e in _audit(demo, s) if e["event"] == "job_admitted"] for s in ("site-1", "site-2")}
    assert admitted["site-2"][0]["filters"] == ["exclude"]
    assert admitted["site-1"][0]["filters"] == []  # the demo default policy requires nothing
    assert len([e for e in _audit(demo, "site-2") if e["event"] == "uploaded"]) == 2


def test_global_model_is_what_the_exclusion_makes_it(demo: Path) -> None:
    """The federation's final model equals the in-process loop with site-2's bias update zeroed, and
    not the one without: the exclusion happened, at site-2 only, and the rest is plain FedAvg."""
    final_path = next((demo / "plain" / "state" / "site-1" / "jobs").glob("*/final.safetensors"))
    final = from_safetensors(final_path.read_bytes())
    sites = skewed_split(2)
    expected = simulate(sites, PARAMS, rounds=2, site_privacy={"site-2": [EXCLUDE]}).final_model
    without = simulate(sites, PARAMS, rounds=2).final_model
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(final[name]), value, atol=2e-5, err_msg=name)
    assert abs(float(np.asarray(final["2.bias"])[0]) - float(without["2.bias"][0])) > 1e-3


def test_strategies_named_in_the_cli_are_the_package_ones() -> None:
    from secagg.commands.demo import STRATEGY_NAMES

    assert set(STRATEGY_NAMES) == set(STRATEGIES)


def test_demo_runs_through_the_simulate_engine(demo: Path) -> None:
    """One code path: the demo's federation is the engine's layout (a signed copy of the bundled job,
    the development policy for sites without their own, each site's training log)."""
    run = demo / "plain"
    assert (run / "job" / "manifest.sig").is_file() and (run / "job" / "job.yaml").is_file()
    assert (run / "policies" / "site-1.yaml").is_file() and not (run / "policies" / "site-2.yaml").exists()
    for site in ("site-1", "site-2"):
        assert "secagg worker:" in (run / "logs" / f"{site}.train.log").read_text()


def test_cross_site_matrix_comes_from_the_federation(demo: Path) -> None:
    """The demo's matrix is what the sites measured in the federation (evaluation: cross_site); here
    site-2's own policy does not share its local model, so only the global model's row is there."""
    summary = json.loads((demo / "summary.json").read_text())
    kept = next((demo / "plain" / "state" / "aggregator" / "jobs").glob("*/cross_site.json"))
    federated = json.loads(kept.read_text())
    assert federated["not_shared"] == {"site-2": "xsite_not_shared"} and federated["models"] == ["global"]
    assert summary["cross_site"] == {
        "global (federated)": {s: c["val_auc"] for s, c in federated["matrix"]["global"].items()}
    }
    assert summary["cross_site_not_shared"] == {"site-2": "xsite_not_shared"}
    assert "not shared by site-2 (xsite_not_shared)" in (demo / "report.md").read_text()
