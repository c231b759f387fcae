"""Record-level DP: a site whose policy requires DP-SGD trains the job's unchanged script under Opacus
and debits what Opacus' accountant spent; a script DP-SGD cannot account for is declined, not debited."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import yaml

from secagg.bundle import to_safetensors
from secagg.jobs.sign import sign_job
from secagg.privacy.ledger import Ledger
from secagg.provision.kit import load_kit
from tests.integration.harness import TEST_POLICY, start, write_policies

pytestmark = pytest.mark.slow

SCRIPT = """\
import numpy as np
import torch
from secagg import client

torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
model.load_state_dict(client.receive())
if client.task == "evaluate":
    client.send(metrics={})
    raise SystemExit
rng = np.random.default_rng(len(client.site))
x = torch.tensor(rng.standard_normal((64, 4)), dtype=torch.float32)
y = (x.sum(1, keepdim=True) > 0).float()
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for xb, yb in BATCHES:
    opt.zero_grad()
    torch.nn.functional.binary_cross_entropy_with_logits(model(xb), yb).backward()
    opt.step()
client.send(model.state_dict(), num_samples=64)
"""
DPSGD = {"name": "dpsgd", "target_epsilon": 2.0, "target_delta": 1e-5, "max_grad_norm": 1.0}
POLICY = TEST_POLICY + yaml.safe_dump(
    {"privacy": {"required": [DPSGD], "budget": {"epsilon": 10, "delta": 1e-3}}}
)


def _job(folder: Path, workspace: Path, *, batches: str, declare: bool) -> Path:
    folder.mkdir(parents=True)
    (folder / "train.py").write_text(SCRIPT.replace("BATCHES", batches))
    init = OrderedDict([("weight", np.zeros((1, 4), np.float32)), ("bias", np.zeros(1, np.float32))])
    (folder / "model.safetensors").write_bytes(to_safetensors(init))
    spec = {
        "name": "dp",
        "rounds": 1,
        "min_sites": 2,
        "mode": "plain",
        "model": "model.safetensors",
        "entry": "train.py",
        "round_timeout": 60,
        "privacy": [DPSGD] if declare else [],
    }
    (folder / "job.yaml").write_text(yaml.safe_dump(spec))
    sign_job(folder, load_kit(workspace / "submitter@org-1"))
    return folder


def _policies(tmp: Path) -> dict[str, Path]:
    return write_policies(tmp, POLICY, ["site-1", "site-2"])


@pytest.mark.parametrize("declare", [False, True], ids=["site-adds-dpsgd", "job-declares-dpsgd"])
def test_dpsgd_required_by_policy_is_applied_and_debited(
    tmp_path: Path, workspace: Path, declare: bool
) -> None:
    """The script has no DP code at all: the agent trains it under Opacus, whether or not the job asked."""
    job = _job(tmp_path / "job", workspace, batches="loader", declare=declare)
    run = start(tmp_path, workspace, job, sites=["site-1", "site-2"], policies=_policies(tmp_path))
    try:
        run.join(timeout=240)
        assert not run.errors, run.errors
    finally:
        run.stop()
    ledger = Ledger(tmp_path / "state" / "site-1" / "privacy-ledger.sqlite", "site-1")
    entries = ledger.entries()
    assert [e.spend.mechanism for e in entries] == ["dpsgd"]
    assert 0 < entries[0].spend.epsilon <= DPSGD["target_epsilon"] * 1.05
    assert entries[0].spend.steps == 4  # 64 records / batch 16, one epoch: what Opacus' accountant counted
    assert entries[0].spend.sample_rate == 0.25  # Poisson sampling at 1 / len(loader)


def test_training_dpsgd_cannot_account_for_is_declined_and_not_debited(
    tmp_path: Path, workspace: Path
) -> None:
    """Fixed batches sliced by hand are not Poisson-sampled: Opacus' accounting would not hold."""
    job = _job(
        tmp_path / "job",
        workspace,
        batches="[(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]",
        declare=True,
    )
    run = start(tmp_path, workspace, job, sites=["site-1", "site-2"], policies=_policies(tmp_path))
    try:
        run.join(timeout=240)
        codes = {getattr(e, "code", None) for e in run.errors.values()}
        assert codes == {"dpsgd_refused"}, run.errors
        assert all("did not come from the training DataLoader" in str(e) for e in run.errors.values())
    finally:
        run.stop()
    assert (
        not (tmp_path / "state" / "site-1" / "privacy-ledger.sqlite").exists()
        or not Ledger(tmp_path / "state" / "site-1" / "privacy-ledger.sqlite", "site-1").entries()
    )
