"""The round-engine bench runs a real Federation round end to end and reports its memory."""

from __future__ import annotations

import json
from pathlib import Path

from secagg.bench import engine, memplot


def test_engine_bench_runs_one_round_and_reports_its_peak(tmp_path: Path) -> None:
    res = engine.run(20_000, 2, "fedadam", 4096, scratch=tmp_path)
    assert res["params"] == 20_000 and res["sites"] == 2 and res["strategy"] == "fedadam"
    assert res["peak_rss_bytes"] >= res["baseline_rss_bytes"] > 0
    assert res["upload_bytes"] > 4 * 20_000
    assert res["download_bytes"] == 2 * (res["upload_bytes"])  # both sites got the new model's bundle
    assert list(tmp_path.iterdir()) == []  # scratch removed
    out = tmp_path / "engine.json"
    out.write_text(json.dumps([res]))
    assert memplot.series([out]) == {
        "aggregator engine (fedadam), 2 sites": [(20_000, res["peak_rss_bytes"] / 2**20)]
    }
