"""A site's durable state after a kill: writes cut short leave no temporary file behind."""

from __future__ import annotations

from pathlib import Path

from secagg.agent.state import SiteState


def test_a_restarted_agent_removes_the_temp_files_of_writes_cut_short(tmp_path: Path) -> None:
    state = SiteState(tmp_path / "site")
    io = state.job_dir("job") / "io"
    io.mkdir()
    cut = [
        io / ".task.json.0123456789abcdef.tmp",
        state.job_dir("job") / ".progress.json.0123456789abcdef.tmp",
    ]
    for p in cut:
        p.write_bytes(b"torn")
    (io / "model.tmp").write_bytes(b"the job's own file")  # not an atomic write's name: kept
    SiteState(tmp_path / "site")
    assert not any(p.exists() for p in cut)
    assert (io / "model.tmp").exists()
