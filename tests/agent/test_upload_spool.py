"""A site killed mid-upload left its upload's spool behind (``.upload-2-1.tmp``, found by ``secagg chaos
--scenario kill-site --points site-upload`` in every mode): the spool must be swept when the agent
starts again, as the temporary files of its atomic writes are."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from secagg.agent.modes import base
from secagg.agent.state import SiteState


def test_a_spool_left_by_a_kill_mid_upload_is_swept_by_the_restarted_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = SiteState(tmp_path / "state")
    seen: dict[str, Any] = {}

    def killed_while_sending(ctx: Any, out: Any, mode: str, spool: Path, size: int) -> Any:
        # the process dies here: its spool stays on disk as it is now; a new agent starts on the state
        seen["spool"], seen["size"] = spool, size
        assert spool.read_bytes() == b"abcdef"
        SiteState(tmp_path / "state")
        seen["after_restart"] = spool.exists()
        raise RuntimeError("killed")

    monkeypatch.setattr(base, "_send", killed_while_sending)
    out = SimpleNamespace(job_id="job-1", round=2, attempt=1)
    with pytest.raises(RuntimeError, match="killed"):
        base.upload(SimpleNamespace(state=state), out, "plain", [b"abc", b"def"])  # type: ignore[arg-type]
    assert seen["size"] == 6
    assert seen["spool"].parent == state.job_dir("job-1")
    assert seen["after_restart"] is False


def test_an_upload_leaves_no_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = SiteState(tmp_path / "state")
    monkeypatch.setattr(base, "_send", lambda ctx, out, mode, spool, size: "sent")
    out = SimpleNamespace(job_id="job-1", round=2, attempt=1)
    assert base.upload(SimpleNamespace(state=state), out, "plain", [b"x"]) == "sent"  # type: ignore[arg-type]
    assert not [p for p in state.job_dir("job-1").iterdir() if p.name.endswith(".tmp")]
