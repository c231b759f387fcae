"""FedProx proximal term: value and gradient against (mu/2)·||w − w_g||² and mu·(w − w_g)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from secagg.errors import ConfigError
from secagg.strategy import proximal_term


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))


def drifted(model: torch.nn.Module) -> torch.nn.Module:
    local = copy.deepcopy(model)
    with torch.no_grad():
        for i, p in enumerate(local.parameters()):
            p.add_(0.1 * (i + 1) * torch.linspace(-1.0, 1.0, p.numel()).reshape(p.shape))
    return local


def expected_value(local, global_model, mu):
    total = sum(
        float(((a.detach().double() - b.detach().double()) ** 2).sum())
        for a, b in zip(local.parameters(), global_model.parameters(), strict=True)
    )
    return mu / 2 * total


@pytest.mark.parametrize("form", ["list", "named", "state_dict", "numpy"])
def test_value_and_gradient_match_the_formula(form):
    g = net()
    local = drifted(g)
    mu = 0.3
    if form == "list":
        ref = [p.detach().clone() for p in g.parameters()]
    elif form == "named":
        ref = {n: p.detach().clone() for n, p in g.named_parameters()}
    elif form == "state_dict":
        ref = g.state_dict()  # includes BatchNorm running stats, which are not parameters
    else:
        ref = [p.detach().numpy().copy() for p in g.parameters()]
    term = proximal_term(local, ref, mu)
    assert term.shape == ()
    assert term.item() == pytest.approx(expected_value(local, g, mu), rel=1e-6)
    assert term.item() > 0
    term.backward()
    for p, q in zip(local.parameters(), g.parameters(), strict=True):
        torch.testing.assert_close(p.grad, mu * (p.detach() - q.detach()))


def test_no_gradient_reaches_the_global_reference():
    g = net()
    ref = [p.detach().clone().requires_grad_(True) for p in g.parameters()]
    proximal_term(drifted(g), ref, 0.5).backward()
    assert all(r.grad is None for r in ref)


def test_zero_at_the_global_model_and_with_mu_zero():
    g = net()
    assert proximal_term(g, g.state_dict(), 1.0).item() == 0.0
    assert proximal_term(drifted(g), g.state_dict(), 0.0).item() == 0.0


def test_training_loss_plus_term_pulls_towards_global():
    """One SGD step on the term alone moves every weight towards the global one by lr·mu."""
    g = net()
    local = drifted(g)
    before = [p.detach().clone() for p in local.parameters()]
    opt = torch.optim.SGD(local.parameters(), lr=0.5)
    loss = proximal_term(local, [p.detach() for p in g.parameters()], mu=1.0)
    loss.backward()
    opt.step()
    for b, a, q in zip(before, local.parameters(), g.parameters(), strict=True):
        torch.testing.assert_close(a.detach() - q.detach(), 0.5 * (b - q.detach()))


def test_frozen_parameters_are_left_out():
    g = net()
    local = drifted(g)
    local[0].weight.requires_grad_(False)
    with_frozen = proximal_term(local, g.state_dict(), 1.0)
    diff = ((local[0].weight - g[0].weight) ** 2).sum().item()
    assert with_frozen.item() == pytest.approx(expected_value(local, g, 1.0) - diff / 2, rel=1e-6)


def test_reference_errors_are_specific():
    g = net()
    ref = dict(g.named_parameters())
    with pytest.raises(ConfigError, match=r"lack the model's parameters: \['2.bias'\]"):
        proximal_term(g, {k: v for k, v in ref.items() if k != "2.bias"}, 0.1)
    with pytest.raises(ConfigError, match=r"does not have: \['extra'\]"):
        proximal_term(g, {**ref, "extra": torch.zeros(1)}, 0.1)
    with pytest.raises(ConfigError, match="got 5 global parameters, the model has 6"):
        proximal_term(g, list(g.parameters())[:5], 0.1)
    with pytest.raises(ConfigError, match=r"shape \(4,\), the model's has \(4, 3\)"):
        proximal_term(g, {**ref, "0.weight": torch.zeros(4)}, 0.1)
    with pytest.raises(ConfigError, match="must be a torch.Tensor or numpy array"):
        proximal_term(g, [[0.0]] * 6, 0.1)


@pytest.mark.parametrize("mu", [-0.1, float("inf"), float("nan"), True, "0.1"])
def test_mu_is_validated(mu):
    g = net()
    with pytest.raises(ConfigError, match="mu must be a finite number >= 0"):
        proximal_term(g, g.state_dict(), mu)


def test_reference_is_cast_to_the_parameter_dtype():
    g = net().double()
    ref = [np.asarray(p.detach().numpy(), dtype=np.float32) for p in g.parameters()]
    term = proximal_term(drifted(g), ref, 0.2)
    assert term.dtype == torch.float64
