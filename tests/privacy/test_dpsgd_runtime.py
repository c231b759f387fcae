"""DP-SGD installed into an unchanged training script (secagg.privacy.dpsgd_runtime via the launcher).

Each case runs the real launcher in a subprocess, as the agent does, because the runtime patches the
process it runs in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from secagg.agent.launch import REFUSAL_FILE, REFUSED
from secagg.bundle import from_safetensors, to_safetensors
from secagg.client import IO_ENV
from secagg.privacy import Ledger
from secagg.privacy.spend import Spend

DP = {"target_epsilon": 2.0, "target_delta": 1e-5, "max_grad_norm": 1.0, "epochs": 2}

# A plain PyTorch script with no DP in it: 256 records, batches of 32 (8 per epoch), two epochs.
SCRIPT = """\
import torch
from torch.utils.data import DataLoader, TensorDataset
from secagg import client

torch.manual_seed(0)
model = MODEL
model.load_state_dict(client.receive())
gen = torch.Generator().manual_seed(1)
x = torch.randn(256, 4, generator=gen)
y = (x.sum(1, keepdim=True) > 0).float()
loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
opt = torch.optim.SGD(model.parameters(), lr=0.5)
with torch.no_grad():
    model.eval(); model(x); model.train()          # an evaluation pass: not a training step
for _ in range(EPOCHS):
    for xb, yb in loader:
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(xb), yb).backward()
        opt.step()
EXTRA
client.send(model.state_dict(), num_samples=256)
"""
LINEAR = "torch.nn.Sequential(torch.nn.Linear(4, 1))"


def _init(model: str) -> OrderedDict[str, np.ndarray]:
    code = (
        f"import torch; torch.manual_seed(0); m = {model}; "
        "print({k: v.tolist() for k, v in m.state_dict().items()})"
    )
    import ast

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return OrderedDict((k, np.asarray(v, np.float32)) for k, v in ast.literal_eval(out).items())


def _run(
    tmp: Path,
    *,
    model: str = LINEAR,
    epochs: int = 2,
    extra: str = "",
    body: str | None = None,
    dpsgd: dict[str, Any] | None = DP,
) -> tuple[int, dict[str, Any], Path]:
    io = tmp / "io"
    io.mkdir(parents=True)
    (io / "global.safetensors").write_bytes(to_safetensors(_init(model)))
    task = {"task": "train", "round": 1, "site": "site-1", "data_dir": str(tmp), "params": {}, "dpsgd": dpsgd}
    (io / "task.json").write_text(json.dumps(task))
    script = tmp / "train.py"
    text = body or SCRIPT.replace("MODEL", model).replace("EPOCHS", str(epochs)).replace("EXTRA", extra)
    script.write_text(text)
    env = {**os.environ, IO_ENV: str(io), "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run(
        [sys.executable, "-m", "secagg.agent.launch", str(script)],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    refusal = io / REFUSAL_FILE
    if refusal.is_file():
        return proc.returncode, json.loads(refusal.read_text()), io
    assert proc.returncode == 0, proc.stderr
    return proc.returncode, json.loads((io / "result.json").read_text()), io


def test_unchanged_script_trains_with_dpsgd_and_reports_the_accountants_spend(tmp_path: Path) -> None:
    rc, result, io = _run(tmp_path)
    assert rc == 0
    [spend] = [Spend(**s) for s in result["training_spends"]]
    assert spend.mechanism == "dpsgd" and spend.delta == DP["target_delta"]
    assert spend.sample_rate == pytest.approx(1 / 8)  # Poisson sampling at 1 / len(loader)
    assert spend.steps == 2 * 8  # epochs x batches per epoch, the eval pass not counted
    z = get_noise_multiplier(
        target_epsilon=2.0, target_delta=1e-5, sample_rate=1 / 8, steps=16, accountant="rdp"
    )
    assert spend.noise_multiplier == pytest.approx(z)
    acc = RDPAccountant()
    acc.history = [(z, 1 / 8, 16)]
    assert spend.epsilon == pytest.approx(acc.get_epsilon(delta=1e-5))
    assert 1.9 < spend.epsilon <= 2.0 + 0.01  # calibrated to the target, not past it
    local = from_safetensors((io / "local.safetensors").read_bytes())
    assert not np.array_equal(local["0.weight"], _init(LINEAR)["0.weight"])  # it did train
    # two such rounds compose by RDP in the ledger: less than twice one round, more than one
    with Ledger(tmp_path / "l.sqlite", "ds", 10.0, 1e-5) as led:
        led.debit("job", 0, [spend])
        led.debit("job", 1, [spend])
        total = led.total()[0]
    assert spend.epsilon < total < 2 * spend.epsilon


def test_the_scripts_torch_seed_does_not_fix_the_noise(tmp_path: Path) -> None:
    """Same script, same torch seed, twice: the DP noise and sampling differ (private generators)."""
    _, _, io_a = _run(tmp_path / "a")
    _, _, io_b = _run(tmp_path / "b")
    a = from_safetensors((io_a / "local.safetensors").read_bytes())
    b = from_safetensors((io_b / "local.safetensors").read_bytes())
    assert not np.array_equal(a["0.weight"], b["0.weight"])


def test_without_dpsgd_the_same_script_is_deterministic(tmp_path: Path) -> None:
    _, res_a, io_a = _run(tmp_path / "a", dpsgd=None)
    _, _, io_b = _run(tmp_path / "b", dpsgd=None)
    assert "training_spends" not in res_a
    a = from_safetensors((io_a / "local.safetensors").read_bytes())
    b = from_safetensors((io_b / "local.safetensors").read_bytes())
    assert np.array_equal(a["0.weight"], b["0.weight"])


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        (
            {
                "model": "torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), "
                "torch.nn.Linear(3, 1))"
            },
            "BatchNorm cannot support training with differential privacy",
        ),
        ({"epochs": 3}, "more than 16 optimizer steps"),
        (
            {"extra": "with torch.no_grad():\n    model[0].bias.add_(1.0)"},
            "weights changed outside an optimizer step",
        ),
        ({"extra": "model = torch.nn.Sequential(torch.nn.Linear(4, 1))"}, "sent is not the trained model"),
        (
            {
                "body": SCRIPT.replace("for xb, yb in loader:", "for xb, yb in [(x[:32], y[:32])] * 8:")
                .replace("MODEL", LINEAR)
                .replace("EPOCHS", "1")
                .replace("EXTRA", "")
            },
            "did not come from the training DataLoader",
        ),
        (
            {
                "body": SCRIPT.replace(
                    "model.load_state_dict(client.receive())", "model.load_state_dict(dict(client.receive()))"
                )
                .replace("MODEL", LINEAR)
                .replace("EPOCHS", "1")
                .replace("EXTRA", "")
            },
            "before the global model was loaded",
        ),
    ],
    ids=[
        "batchnorm",
        "too-many-epochs",
        "edit-outside-step",
        "other-model-sent",
        "no-dataloader",
        "not-bound",
    ],
)
def test_what_dpsgd_cannot_account_for_is_refused_with_its_reason(
    tmp_path: Path, kwargs: dict[str, Any], reason: str
) -> None:
    rc, refusal, io = _run(tmp_path, **kwargs)
    assert rc == REFUSED
    assert refusal["code"] == "dpsgd_refused"
    assert reason in refusal["reason"]
    assert not (io / "local.safetensors").exists() and not (io / "result.json").exists()


def test_a_script_that_catches_the_refusal_still_cannot_send(tmp_path: Path) -> None:
    body = SCRIPT.replace("MODEL", LINEAR).replace("EPOCHS", "3").replace("EXTRA", "")
    body = body.replace(
        "        opt.step()",
        "        try:\n            opt.step()\n        except Exception:\n            pass",
    )
    rc, refusal, io = _run(tmp_path, body=body)
    assert rc == REFUSED and "more than 16 optimizer steps" in refusal["reason"]
    assert not (io / "local.safetensors").exists()
