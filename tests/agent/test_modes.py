"""Each site-side mode object on its own: what it stores, refuses and sends."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from secagg.agent.modes import MODES, ModeContext, Outgoing, Task, make_mode
from secagg.agent.modes.plain import PlainMode
from secagg.agent.modes.tee import TeeMode
from secagg.agent.roundfiles import WeightedArray
from secagg.agent.state import SiteState
from secagg.auditlog import AuditLog
from secagg.bundle import BundleSpec, from_safetensors, to_safetensors
from secagg.errors import IntegrityError

MODEL = OrderedDict(w=np.arange(6, dtype=np.float32).reshape(2, 3), b=np.ones(2, dtype=np.float32))


class _Relay:
    def __init__(self) -> None:
        self.uploads: list[tuple[dict[str, Any], bytes]] = []

    def upload(self, header: dict[str, Any], parts: Any) -> bool:
        self.uploads.append((header, b"".join(parts)))
        return True


def _ctx(tmp: Path, relay: Any = None) -> ModeContext:
    return ModeContext(
        kit=SimpleNamespace(name="site-1"),  # type: ignore[arg-type]
        state=SiteState(tmp / "state"),
        relay=relay or _Relay(),
        audit=AuditLog(tmp / "audit.jsonl"),
        target="127.0.0.1:1",
        load_policy=lambda: None,  # type: ignore[arg-type, return-value]
    )


def _out(**kw: Any) -> Outgoing:
    bspec = BundleSpec.of(MODEL)
    base: dict[str, Any] = {
        "spec": SimpleNamespace(mask=None),
        "job_id": "j",
        "round": 1,
        "attempt": 1,
        "bspec": bspec,
        "weighted": WeightedArray(bspec.flatten(MODEL) * 0.5),
        "weight": 0.5,
        "sites": ["site-1", "site-2"],
        "metrics": {"auc": 0.9},
    }
    return Outgoing(**{**base, **kw})


def test_every_mode_has_one_site_side_object() -> None:
    assert sorted(MODES) == ["he", "mask", "plain", "tee", "tee-mask"]
    with pytest.raises(ValueError, match="no site-side implementation"):
        make_mode("carrier-pigeon", None)  # type: ignore[arg-type]


def test_plaintext_modes_store_the_global_model_they_were_sent(tmp_path: Path) -> None:
    mode = PlainMode(_ctx(tmp_path))
    data = to_safetensors(MODEL)
    task = Task(SimpleNamespace(), "j", 2, {"base_round": 1}, data)  # type: ignore[arg-type]
    assert mode.receive_global(task) == mode.ctx.state.global_path("j", 1)
    assert mode.ctx.state.global_path("j", 1).read_bytes() == data
    with pytest.raises(Exception):  # not safetensors: refused before it is stored
        mode.receive_global(Task(SimpleNamespace(), "j", 3, {"base_round": 2}, b"junk"))  # type: ignore[arg-type]
    assert not mode.ctx.state.global_path("j", 2).exists()
    # as the agent hands it over: a file spooled as it arrived, moved (not copied) into the state
    spooled = tmp_path / "state" / "jobs" / "j" / ".task.0123456789abcdef.tmp"
    spooled.write_bytes(data)
    task = Task(SimpleNamespace(), "j", 4, {"base_round": 3}, spooled)  # type: ignore[arg-type]
    assert mode.receive_global(task).read_bytes() == data and not spooled.exists()
    spooled.write_bytes(b"junk")
    with pytest.raises(Exception):
        mode.receive_global(Task(SimpleNamespace(), "j", 5, {"base_round": 4}, spooled))  # type: ignore[arg-type]
    assert not mode.ctx.state.global_path("j", 4).exists() and not spooled.exists()


def test_plain_uploads_the_weighted_update_with_its_metrics(tmp_path: Path) -> None:
    relay = _Relay()
    sent = PlainMode(_ctx(tmp_path, relay)).protect_and_send(_out())
    ((header, body),) = relay.uploads
    assert sent.accepted and sent.bytes == len(body) == header["bytes"]
    assert header["mode"] == "plain" and header["metrics"] == {"auc": 0.9}
    assert np.array_equal(from_safetensors(body)["w"], MODEL["w"] * 0.5)


def test_tee_never_seals_without_this_rounds_attestation(tmp_path: Path) -> None:
    relay = _Relay()
    with pytest.raises(IntegrityError, match="no attested aggregator"):
        TeeMode(_ctx(tmp_path, relay)).protect_and_send(_out())
    assert relay.uploads == []
