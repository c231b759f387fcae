"""Admission and the privacy ledger use one accounting: what ``decide`` predicts is what the ledger debits.

Also the shipped example policies under that accounting: ``hospital-strict`` admits the demo job (a
513-parameter MLP, 5 rounds, SVT at 25 %) and refuses a sixth round, with the README's numbers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secagg.bundle import to_safetensors
from secagg.errors import ConfigError
from secagg.jobs import JobSpec, SignerInfo, sign_job
from secagg.policy import SitePolicy, admit_job, check_policy_text, decide, load_policy, render_decision
from secagg.policy.params import count_parameters
from secagg.privacy import (
    BudgetExhausted,
    Ledger,
    apply_chain,
    build_chain,
    compose,
    svt_epsilon,
    worst_case_spends,
)
from secagg.provision.kit import load_kit

ROOT = Path(__file__).resolve().parents[2]
LEAD = SignerInfo(kind="provisioned", name="admin@lead", org="lead", role="project_admin")
#: the demo model's tensors (secagg/demo/job_template/train.py: Linear(30, 16), ReLU, Linear(16, 1))
DEMO_SHAPES = {"0.weight": (16, 30), "0.bias": (16,), "2.weight": (1, 16), "2.bias": (1,)}
DEMO_N = 513
SVT = {"name": "svt", "fraction": 0.25, "epsilon": 0.01, "noise_var": 0.01, "gamma": 1e-5, "tau": 1e-6}
GAUSS = {"name": "gaussian", "clip": 1.0, "noise_multiplier": 1.5}


def demo_update(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(scale=0.1, size=s).astype(np.float32) for k, s in DEMO_SHAPES.items()}


def demo_job(**over: Any) -> JobSpec:
    base: dict[str, Any] = {
        "name": "breast-cancer",
        "rounds": 5,
        "min_sites": 3,
        "mode": "he",
        "model": "model.safetensors",
        "entry": "train.py",
        "privacy": [SVT],
    }
    base.update(over)
    return JobSpec.model_validate(base)


def policy_with(required: list[dict[str, Any]], epsilon: float, delta: float = 1e-5) -> SitePolicy:
    return SitePolicy.model_validate(
        {
            "version": 1,
            "signers": {"submitters": ["admin@lead"]},
            "modes": ["he"],
            "privacy": {"required": required, "budget": {"epsilon": epsilon, "delta": delta}},
        }
    )


@pytest.mark.parametrize(
    "required", [[SVT], [GAUSS], [GAUSS, SVT, {"name": "percentile", "percentile": 50}]], ids=str
)
def test_decide_predicts_what_the_ledger_debits(tmp_path: Path, required: list[dict[str, Any]]) -> None:
    rounds = 3
    policy = policy_with(required, epsilon=1000.0)
    decision = decide(policy, demo_job(rounds=rounds, privacy=[]), LEAD, n_params=DEMO_N)
    assert decision.accept and decision.worst_case is not None
    # run the filters the decision says the site applies, and debit their own receipts round by round
    chain = build_chain(decision.effective_privacy)
    ledger = Ledger(tmp_path / "ledger.sqlite", "data", 1000.0, 1e-5)
    rng = np.random.default_rng(0)
    for r in range(rounds):
        _, spends = apply_chain(chain, demo_update(r), rng)
        ledger.debit("breast-cancer", r, spends)
    booked = ledger.composition()
    predicted = decision.worst_case
    assert predicted.epsilon == pytest.approx(booked.epsilon, rel=1e-12)
    assert predicted.delta == pytest.approx(booked.delta, rel=1e-12)
    assert predicted.method == booked.method
    assert booked.epsilon > 0


def test_decide_equals_the_ledger_admission_check(tmp_path: Path) -> None:
    policy = policy_with([SVT, GAUSS], epsilon=1000.0)
    decision = decide(policy, demo_job(privacy=[]), LEAD, n_params=DEMO_N)
    ledger = Ledger(tmp_path / "ledger.sqlite", "data", 1000.0, 1e-5)
    projected = ledger.admission_check(decision.spends)
    assert decision.worst_case == projected
    assert decision.spends == worst_case_spends(decision.effective_privacy, DEMO_N, 5)
    # a second identical job on the same data set: the ledger refuses once the two together overrun
    assert decision.worst_case is not None
    small = Ledger(tmp_path / "small.sqlite", "data", decision.worst_case.epsilon * 1.5, 1e-5)
    small.debit("first", 1, decision.spends)
    with pytest.raises(BudgetExhausted):
        small.admission_check(decision.spends)
    assert decision.worst_case == compose(worst_case_spends(decision.effective_privacy, DEMO_N, 5), 1e-5)


def test_svt_is_charged_per_released_entry() -> None:
    # the old accounting charged epsilon per round (0.05 for 5 rounds); honest is 170 times that
    d = decide(policy_with([SVT], epsilon=10.0), demo_job(), LEAD, n_params=DEMO_N)
    assert d.worst_case is not None
    assert d.worst_case.epsilon == pytest.approx(5 * (0.01 + 0.01 * 258 ** (2 / 3) + 129 * 0.01))
    assert d.worst_case.epsilon > 100 * 5 * SVT["epsilon"]


def test_budget_refuses_what_does_not_fit_and_admits_what_does() -> None:
    policy = policy_with([SVT], epsilon=10.0)
    assert decide(policy, demo_job(rounds=5), LEAD, n_params=DEMO_N).accept
    refused = decide(policy, demo_job(rounds=6), LEAD, n_params=DEMO_N)
    assert [r.code for r in refused.failed] == ["budget_exceeded"]
    assert refused.worst_case is not None and refused.worst_case.epsilon == pytest.approx(10.2316, abs=1e-3)


# -- the shipped examples ----------------------------------------------------------------------------


def test_hospital_strict_admits_the_demo_job_with_the_readme_numbers() -> None:
    strict = load_policy(ROOT / "policies/hospital-strict.yaml")
    d = decide(strict, demo_job(), LEAD, n_params=DEMO_N)
    assert d.accept, d.failed
    assert [f.name for f in d.effective_privacy] == ["svt", "percentile"]
    assert d.worst_case is not None and round(d.worst_case.epsilon, 2) == 8.53  # as policies/README.md
    assert "8.53" in (ROOT / "policies/README.md").read_text()
    words = "\n".join(render_decision(d))
    assert (
        "513-parameter update, epsilon 8.526" in words and "n = 513, c = 129: epsilon 1.705 a round" in words
    )
    six = decide(strict, demo_job(rounds=6), LEAD, n_params=DEMO_N)
    assert [r.code for r in six.failed] == ["budget_exceeded"]
    # the site adds SVT when the job does not ask for it: same cost
    assert decide(strict, demo_job(privacy=[]), LEAD, n_params=DEMO_N).worst_case == d.worst_case


def test_research_consortium_budget_covers_max_rounds() -> None:
    consortium = load_policy(ROOT / "policies/research-consortium.yaml")
    assert consortium.limits.max_rounds is not None
    job = demo_job(rounds=consortium.limits.max_rounds, min_sites=2, privacy=[])
    d = decide(consortium, job, LEAD)  # gaussian only: the model's size is not needed
    assert d.accept, d.failed
    assert d.worst_case is not None and 49 < d.worst_case.epsilon <= 50


def test_demo_model_has_513_parameters(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("demo_train", ROOT / "secagg/demo/job_template/train.py")
    assert spec is not None and spec.loader is not None
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    state = {k: v.detach().numpy() for k, v in train.make_model().state_dict().items()}
    path = tmp_path / "model.safetensors"
    path.write_bytes(to_safetensors(state))
    assert count_parameters(path) == DEMO_N


def test_count_parameters_refuses_non_safetensors(tmp_path: Path) -> None:
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"\0" * 16)
    with pytest.raises(ConfigError, match="cannot count"):
        count_parameters(bad)
    with pytest.raises(ConfigError, match="cannot count"):
        count_parameters(tmp_path / "missing.safetensors")


def write_demo_job(root: Path, rounds: int = 5) -> Path:
    root.mkdir()
    model = {k: np.zeros(s, dtype=np.float32) for k, s in DEMO_SHAPES.items()}
    (root / "model.safetensors").write_bytes(to_safetensors(model))
    (root / "train.py").write_text("pass\n")
    (root / "job.yaml").write_text(
        f"name: breast-cancer\nrounds: {rounds}\nmin_sites: 3\nmode: he\nmodel: model.safetensors\n"
        "entry: train.py\nprivacy:\n  - {name: svt, fraction: 0.25, epsilon: 0.01, noise_var: 0.01, "
        "gamma: 1.0e-5, tau: 1.0e-6}\n"
    )
    return root


def test_decide_reads_the_model_size_from_the_job_root(tmp_path: Path) -> None:
    root = write_demo_job(tmp_path / "job")
    strict = load_policy(ROOT / "policies/hospital-strict.yaml")
    d = decide(strict, demo_job(), LEAD, job_root=root)
    assert d.accept and d.n_params == DEMO_N
    (root / "model.safetensors").write_bytes(b"not safetensors")
    assert [r.code for r in decide(strict, demo_job(), LEAD, job_root=root).failed] == ["model_size_unknown"]


def test_admit_job_counts_the_verified_model(tmp_path: Path, workspace: Path) -> None:
    strict = load_policy(ROOT / "policies/hospital-strict.yaml")
    ca = load_kit(workspace / "site-1").ca_cert
    for rounds, accept in ((5, True), (6, False)):
        root = write_demo_job(tmp_path / f"job{rounds}", rounds)
        sign_job(root, load_kit(workspace / "admin@lead"))
        job, d = admit_job(root, strict, ca)
        assert d.accept is accept and d.n_params == DEMO_N
        assert accept or [r.code for r in d.failed] == ["budget_exceeded"]
        assert job.spec.rounds == rounds


def test_schema_refuses_zero_noise_var() -> None:
    text = (ROOT / "policies/hospital-strict.yaml").read_text().replace("noise_var: 0.01", "noise_var: 0")
    policy, found = check_policy_text(text)
    assert policy is None
    assert any(i.path.endswith("noise_var") and "0" in i.message for i in found), found


def test_check_reports_svt_that_no_job_could_afford() -> None:
    text = (ROOT / "policies/hospital-strict.yaml").read_text().replace("epsilon: 10.0,", "epsilon: 0.02,")
    _, found = check_policy_text(text)
    # one round on a one-entry update: 0.01 + 0.01 * 2^(2/3) + 0.01 = 0.0359 > 0.02
    assert [i.path for i in found] == ["privacy.required[0].epsilon"]
    assert "one-parameter model" in found[0].message and "0.03587" in found[0].message
    assert svt_epsilon(1, 0.25, 0.01, 0.01) == pytest.approx(0.035874, abs=1e-6)
