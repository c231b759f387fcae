"""Each site-side mode object on its own: what it stores, refuses and sends."""

from __future__ import annotations

import importlib
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
        "spec": SimpleNamespace(mask=None, round_timeout=30.0),
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


class _Trusted:
    """An attested aggregator that keeps what the site sealed to it."""

    def __init__(self) -> None:
        self.sealed: list[bytes] = []

    def seal_update(self, payload: Any, job: str, round: int, site: str, *, size: int | None = None) -> Any:
        body = b"".join(payload)
        assert size is None or size == len(body)
        self.sealed.append(body)
        return [body]


#: the admission module (``secagg.policy.decide`` the attribute is the function of that name)
_DECIDE = importlib.import_module("secagg.policy.decide")


def _ddg(noise_multiplier: float) -> Any:
    from secagg.jobs.filters import DistributedGaussianFilter

    return DistributedGaussianFilter(
        name="distributed_gaussian", clip=1.0, noise_multiplier=noise_multiplier, min_honest_sites=2
    )


def test_tee_seals_the_integer_share_unweighted_under_distributed_gaussian(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secagg.aggregator.modes.windows import BytesSource, Layout
    from secagg.privacy.shares import SHARE_KEY

    monkeypatch.setattr(_DECIDE, "distributed_filter", lambda policy, job: _ddg(1.0))
    k = np.array([3, -7, 0, 65536, -1, 12, 5, -2])  # the filter's share, in units of 2^-16
    mode = TeeMode(_ctx(tmp_path))
    trusted = _Trusted()
    mode._trusted = trusted  # type: ignore[assignment]
    mode.protect_and_send(_out(weighted=WeightedArray(k * 2.0**-16 * 0.3), weight=0.3))
    (body,) = trusted.sealed
    layout = Layout.parse(BytesSource(body))
    assert layout.meta[SHARE_KEY] == "distributed_gaussian"
    got = np.concatenate(
        [np.frombuffer(body[e.start : e.end], "<u4") for e in (layout.entries[n] for n in ("w", "b"))]
    )
    assert got.view(np.int32).tolist() == k.tolist()  # the integers themselves, not times the weight


def test_tee_refuses_a_share_round_whose_32_bit_sum_could_wrap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secagg.errors import ConfigError

    monkeypatch.setattr(_DECIDE, "distributed_filter", lambda policy, job: _ddg(1.0e5))
    mode = TeeMode(_ctx(tmp_path))
    trusted = _Trusted()
    mode._trusted = trusted  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="could wrap"):
        mode.protect_and_send(_out(weighted=WeightedArray(np.zeros(8)), weight=0.3))
    assert trusted.sealed == []
