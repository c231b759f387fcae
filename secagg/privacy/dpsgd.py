"""Record-level DP during local training: Opacus' DP-SGD, and its receipt for the ledger.

Opacus clips each example's gradient to ``max_grad_norm``, adds Gaussian noise to the batch sum and, with
Poisson sampling, accounts the run by RDP. :func:`make_private` picks the noise multiplier that reaches
``target_epsilon`` at ``target_delta`` after ``epochs`` epochs; :func:`spent` turns the engine's
accountant history into a :class:`Spend` the ledger composes by RDP with any other Gaussian release.

The engine's history is cumulative: create a fresh engine per round (the usual federated pattern) so that
each round debits only that round's steps. Importing this module imports torch and Opacus.
"""

from __future__ import annotations

from typing import Any

from opacus import PrivacyEngine

from secagg.errors import ConfigError
from secagg.privacy.accounting import rdp_epsilon
from secagg.privacy.spend import Spend


def make_private(
    model: Any,
    optimizer: Any,
    data_loader: Any,
    target_epsilon: float,
    target_delta: float,
    epochs: int,
    max_grad_norm: float,
) -> tuple[Any, Any, Any, PrivacyEngine]:
    """Wrap model, optimizer and loader for DP-SGD with an RDP-accounted :class:`PrivacyEngine`."""
    if not (target_epsilon > 0 and 0 < target_delta < 1 and epochs >= 1 and max_grad_norm > 0):
        raise ConfigError(
            "dpsgd: need target_epsilon > 0, 0 < target_delta < 1, epochs >= 1, max_grad_norm > 0"
        )
    engine = PrivacyEngine(accountant="rdp")
    model, optimizer, loader = engine.make_private_with_epsilon(
        module=model,
        optimizer=optimizer,
        data_loader=data_loader,
        target_epsilon=target_epsilon,
        target_delta=target_delta,
        epochs=epochs,
        max_grad_norm=max_grad_norm,
    )
    return model, optimizer, loader, engine


def spends(engine: PrivacyEngine, delta: float) -> list[Spend]:
    """One :class:`Spend` per ``(noise_multiplier, sample_rate, steps)`` run in the engine's history."""
    history = list(engine.accountant.history)
    out = []
    for z, q, steps in history:
        eps = rdp_epsilon([(z, q, steps)], delta)
        out.append(Spend("dpsgd", eps, delta, float(z), float(q), int(steps)))
    return out


def spent(engine: PrivacyEngine, delta: float) -> Spend:
    """What the engine's training released so far, read from Opacus' accountant, as one receipt."""
    runs = spends(engine, delta)
    if not runs:
        raise ConfigError("dpsgd: the privacy engine has taken no steps")
    if len(runs) > 1:
        raise ConfigError("dpsgd: the engine ran with several noise settings; use spends() for one per run")
    return Spend(
        "dpsgd",
        float(engine.get_epsilon(delta)),
        delta,
        noise_multiplier=runs[0].noise_multiplier,
        sample_rate=runs[0].sample_rate,
        steps=runs[0].steps,
    )
