"""A simulated job's report carries its cross-site matrix: the files beside it, one metric tabled."""

from __future__ import annotations

import json
from pathlib import Path

from secagg.crossval.matrix import Matrix


def test_simulated_job_report_has_the_matrix(tmp_path: Path) -> None:
    from secagg.demo import report
    from secagg.demo.engine import Federation
    from secagg.jobs.job import parse_spec

    spec = parse_spec(
        b"name: j\nrounds: 1\nmin_sites: 2\nmode: plain\nmodel: m.safetensors\nentry: t.py\n"
        b"evaluation: cross_site\n"
    )
    sites = ["site-1", "site-2"]
    matrix = Matrix(
        "j-1",
        sites,
        {"global": {s: {"auc": 0.9} for s in sites}, "site-1": {"site-2": {"auc": 0.8}}, "site-2": {}},
        shared=True,
    )
    matrix.write(tmp_path / "state" / "aggregator" / "jobs" / "j-1")
    rows = [{"round": 1, "participants": sites, "seconds": 1.0, "metrics": {"auc": 0.9}}]
    fed = Federation(tmp_path, tmp_path / "job", spec, sites, "j-1", rows, 2.0, {}, {}, matrix)
    out = tmp_path / "out"
    out.mkdir()
    summary = report.write_job(out, fed)
    assert summary["cross_site"]["models"] == ["global", "site-1", "site-2"]
    assert json.loads((out / "cross_site.json").read_text())["matrix"]["site-1"] == {"site-2": {"auc": 0.8}}
    text = (out / "report.md").read_text()
    assert "| global | 0.9000 | 0.9000 |" in text and "| site-1 | - | 0.8000 |" in text
    assert "![cross-site auc](cross_site.png)" in text and (out / "cross_site.png").is_file()
