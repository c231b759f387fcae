"""An he site with nothing but its state (its secret key, round 1's global model): the mode's own code
runs on it, no relay, no aggregator."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from secagg.agent.modes import ModeContext
from secagg.agent.modes.he import HeMode
from secagg.agent.state import SiteState
from secagg.auditlog import AuditLog
from secagg.bundle import BundleSpec, to_safetensors
from secagg.he import store as he_store
from secagg.he.context import SecretContext


def he_site(root: Path, secret: SecretContext, model: Mapping[str, np.ndarray]) -> tuple[HeMode, SiteState]:
    state = SiteState(root / "state")
    he_store.save_secret_context(state.root / "he-secret.ctx", secret)
    state.save_global("j", 1, to_safetensors(dict(model), order=BundleSpec.of(model).names))
    ctx = ModeContext(
        kit=SimpleNamespace(name="site-2"),  # type: ignore[arg-type]
        state=state,
        relay=None,  # type: ignore[arg-type]
        audit=AuditLog(root / "audit.jsonl"),
        target="127.0.0.1:1",
        load_policy=lambda: None,  # type: ignore[arg-type, return-value]
    )
    return HeMode(ctx), state
