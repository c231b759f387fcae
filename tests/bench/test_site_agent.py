"""The site-agent bench runs real agents through a job in every plaintext-model mode and reports each
site's peak memory and where it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from secagg.bench import site_agent

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("mode", "gaussian"), [("plain", False), ("mask", False), ("tee", True)])
def test_site_agent_bench_runs_a_job_and_reports_each_sites_peak(
    tmp_path: Path, mode: str, gaussian: bool
) -> None:
    res = site_agent.run(20_000, mode, tmp_path, timeout_s=300, gaussian=gaussian)
    assert res["params"] == 20_000 and res["mode"] == mode and res["model_bytes"] == 80_000
    assert res["filters"] == (["gaussian"] if gaussian else [])
    assert set(res["sites"]) == set(site_agent.SITES)
    for site in res["sites"].values():
        assert site["peak_rss_bytes"] >= site["baseline_rss_bytes"] > 0
        assert site["worker_peak_rss_bytes"] > 0
        assert site["rss_per_model"] == site["peak_rss_bytes"] / 80_000
        events = [e for e, _ in site["phases"]]
        assert "uploaded" in events and "job_done" in events  # the whole job ran, upload included
    assert list(tmp_path.iterdir()) == []  # scratch removed
    assert site_agent.table([res]).count("\n") == 1 + len(site_agent.SITES)
