"""The strategy comparison's table, plot and JSON, from a stubbed runner (no federation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from secagg.demo import compare
from secagg.demo.run import RunResult
from secagg.demo.strategies import NAMES, preset


def test_comparison_runs_every_strategy_and_reports_each(tmp_path: Path) -> None:
    seen: list[tuple[str, dict[str, Any], str]] = []
    partial: list[int] = []

    def runner(name: str, spec: dict[str, Any], folder: Path) -> RunResult:
        seen.append((name, spec, folder.name))
        auc = 0.9 + 0.01 * len(seen)
        per_round = [{"round": r, "auc": auc - 0.001 * (2 - r), "seconds": 1.0} for r in (1, 2)]
        return RunResult("plain", 2, per_round, per_round[-1]["auc"], {}, 10.0 * len(seen))

    runs = compare.run_all(
        NAMES, runner, tmp_path, log=lambda _: None, on_run=lambda r: partial.append(len(r))
    )
    assert [s[0] for s in seen] == list(NAMES)
    assert all(spec == preset(name) for name, spec, _ in seen)  # each run gets its tuned block
    assert [s[2] for s in seen] == list(NAMES)  # one folder per strategy
    assert partial == list(range(1, len(NAMES) + 1))

    lines = compare.table(runs)
    assert lines[0] == "| strategy | round 1 | round 2 | wall s |"
    assert len(lines) == 2 + len(NAMES)
    assert lines[2 + NAMES.index("fedadam")].startswith("| fedadam (eta=0.1, ")
    assert lines[2 + NAMES.index("fedadam")].endswith(f"| {runs['fedadam'].final_auc:.4f} | 50 |")

    compare.write(tmp_path, runs, mode="plain", sites=["site-1", "site-2"])
    assert (tmp_path / "strategies.png").read_bytes()[:4] == b"\x89PNG"
    assert "\n".join(lines) in (tmp_path / "strategies.md").read_text()
    data = json.loads((tmp_path / "strategies.json").read_text())
    assert set(data["strategies"]) == set(NAMES)
    assert data["strategies"]["fedyogi"]["strategy"] == preset("fedyogi")
    assert data["strategies"]["fedavg"]["final_auc"] == runs["fedavg"].final_auc
