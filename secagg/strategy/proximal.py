"""The FedProx proximal term (Li et al., MLSys 2020), added to a site's local loss.

    loss = task_loss + (mu / 2) · Σ_p ||w_p − w_p^global||²

It pulls local training towards the round's global model so heterogeneous sites drift less. The
global weights are a constant of the round: they are detached (and cast to each parameter's device
and dtype once), so gradients flow only into the local model: ∂/∂w = mu · (w − w_global).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from secagg.errors import ConfigError


def _as_reference(value: object, like: torch.Tensor, what: str) -> torch.Tensor:
    ref = torch.as_tensor(value) if isinstance(value, np.ndarray | torch.Tensor) else None
    if ref is None:
        raise ConfigError(
            f"global parameter {what} must be a torch.Tensor or numpy array, got {type(value).__name__}"
        )
    if tuple(ref.shape) != tuple(like.shape):
        raise ConfigError(
            f"global parameter {what} has shape {tuple(ref.shape)}, the model's has {tuple(like.shape)}"
        )
    return ref.detach().to(device=like.device, dtype=like.dtype)


def proximal_term(
    model: torch.nn.Module,
    global_params: Sequence[torch.Tensor] | Mapping[str, torch.Tensor],
    mu: float,
) -> torch.Tensor:
    """(mu/2)·||w − w_global||² over the model's trainable parameters, as a scalar tensor with grad.

    ``global_params`` is either a list in ``model.parameters()`` order or a mapping keyed like
    ``model.named_parameters()``; a full ``state_dict`` is accepted too (buffers such as batch-norm
    statistics are not trained, so they are ignored), but an unknown or missing name is an error,
    since silently skipping a tensor would quietly weaken the term.
    """
    if isinstance(mu, bool) or not isinstance(mu, int | float) or not math.isfinite(mu) or mu < 0:
        raise ConfigError(f"FedProx mu must be a finite number >= 0, got {mu!r}")
    named = list(model.named_parameters())
    if isinstance(global_params, Mapping):
        names = {n for n, _ in named}
        buffers = {n for n, _ in model.named_buffers()}
        unknown = sorted(set(global_params) - names - buffers)
        if unknown:
            raise ConfigError(f"global parameters name tensors the model does not have: {unknown}")
        missing = sorted(n for n in names if n not in global_params)
        if missing:
            raise ConfigError(f"global parameters lack the model's parameters: {missing}")
        refs = [_as_reference(global_params[n], p, repr(n)) for n, p in named]
    else:
        refs_in = list(global_params)
        if len(refs_in) != len(named):
            raise ConfigError(f"got {len(refs_in)} global parameters, the model has {len(named)}")
        refs = [
            _as_reference(r, p, f"#{i} ({n})")
            for i, ((n, p), r) in enumerate(zip(named, refs_in, strict=True))
        ]
    total: torch.Tensor | None = None
    for (_, p), ref in zip(named, refs, strict=True):
        if not p.requires_grad:
            continue  # frozen layers do not train, so there is nothing to pull back
        sq = (p - ref).pow(2).sum()
        total = sq if total is None else total + sq
    if total is None:
        first = named[0][1] if named else None
        return torch.zeros((), dtype=first.dtype if first is not None else torch.float32)
    return (float(mu) / 2.0) * total
