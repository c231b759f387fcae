"""Local DP-SGD through Opacus: the engine reaches its target, and its receipt composes in the ledger."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from opacus.accountants import RDPAccountant
from torch.utils.data import DataLoader, TensorDataset

from secagg.errors import ConfigError
from secagg.privacy import Ledger
from secagg.privacy.dpsgd import make_private, spends, spent


def _train(target_epsilon: float, epochs: int) -> tuple[object, object]:
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, opt, loader, engine = make_private(
            model,
            opt,
            loader,
            target_epsilon=target_epsilon,
            target_delta=1e-5,
            epochs=epochs,
            max_grad_norm=1.0,
        )
        loss_fn = torch.nn.CrossEntropyLoss()
        for _ in range(epochs):
            for xb, yb in loader:
                if len(xb) == 0:
                    continue
                opt.zero_grad()
                loss_fn(model(xb), yb).backward()
                opt.step()
    return opt, engine


def test_make_private_reaches_target_and_spent_reads_the_accountant(tmp_path: Path) -> None:
    opt, engine = _train(target_epsilon=2.0, epochs=2)
    s = spent(engine, 1e-5)  # type: ignore[arg-type]
    assert s.mechanism == "dpsgd" and s.delta == 1e-5
    assert s.noise_multiplier == pytest.approx(opt.noise_multiplier)  # type: ignore[attr-defined]
    assert s.sample_rate == pytest.approx(32 / 256)
    assert s.steps == 2 * 8
    assert s.epsilon == pytest.approx(engine.get_epsilon(1e-5))  # type: ignore[attr-defined]
    assert 1.5 < s.epsilon <= 2.0 + 1e-6  # calibrated to the target, not past it
    acc = RDPAccountant()
    acc.history = [(s.noise_multiplier, s.sample_rate, s.steps)]
    assert s.epsilon == pytest.approx(acc.get_epsilon(delta=1e-5))
    # two rounds in the ledger compose by RDP: less than twice one round, more than one round
    with Ledger(tmp_path / "l.sqlite", "ds", 10.0, 1e-5) as led:
        led.debit("job", 0, [s])
        led.debit("job", 1, spends(engine, 1e-5))  # type: ignore[arg-type]
        total = led.total()[0]
    assert s.epsilon < total < 2 * s.epsilon


def test_make_private_refuses_bad_targets() -> None:
    model = torch.nn.Linear(2, 1)
    loader = DataLoader(TensorDataset(torch.zeros(4, 2)), batch_size=2)
    with pytest.raises(ConfigError):
        make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, 0.0, 1e-5, 1, 1.0)
