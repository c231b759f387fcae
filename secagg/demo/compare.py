"""Six server strategies on the same label-skewed split: one plot, one table.

Label skew is where the strategies differ: FedAvg's average of diverging local models drifts, FedProx
pulls each site back towards the global model, and the FedOpt family treats the average update as a
pseudo-gradient with momentum and per-coordinate step sizes. The run is otherwise identical (same
data, seeds, rounds and mode), so differences are the strategies'.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from secagg.demo.run import RunResult
from secagg.demo.strategies import describe, preset


def run_all(
    names: Sequence[str],
    runner: Callable[[str, dict[str, Any], Path], RunResult],
    out: Path,
    log: Callable[[str], object] = print,
    on_run: Callable[[dict[str, RunResult]], object] | None = None,
) -> dict[str, RunResult]:
    """``runner(name, strategy block, run folder)`` for each strategy, in order; ``on_run`` sees the
    runs so far after each, so a partial comparison survives an interruption."""
    runs: dict[str, RunResult] = {}
    for i, name in enumerate(names):
        log(f"[{i + 1}/{len(names)}] {describe(name)}")
        runs[name] = runner(name, preset(name), out / name)
        log(f"    final AUC {runs[name].final_auc:.4f} in {runs[name].seconds:.0f} s")
        if on_run is not None:
            on_run(runs)
    return runs


def table(runs: Mapping[str, RunResult]) -> list[str]:
    """Markdown: strategy, its settings, AUC after each round, wall time."""
    rounds = max(r.rounds for r in runs.values())
    lines = [
        "| strategy | " + " | ".join(f"round {i}" for i in range(1, rounds + 1)) + " | wall s |",
        "|---" * (rounds + 2) + "|",
    ]
    for name, r in runs.items():
        cells = [f"{row['auc']:.4f}" for row in r.per_round]
        lines.append(f"| {describe(name)} | " + " | ".join(cells) + f" | {r.seconds:.0f} |")
    return lines


def plot(runs: Mapping[str, RunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    # FedAdam and FedYogi often coincide for the first rounds (v starts at tau^2, far below the
    # squared update, so both move v the same way): distinct markers and dashes keep both visible
    styles = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("x", "--")]
    for i, (name, r) in enumerate(runs.items()):
        marker, line = styles[i % len(styles)]
        xs = [x["round"] for x in r.per_round]
        ax.plot(xs, [x["auc"] for x in r.per_round], marker=marker, linestyle=line, label=name, alpha=0.85)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("global validation AUC")
    ax.set_title("Strategies on a label-skewed split")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(out: Path, runs: Mapping[str, RunResult], *, mode: str, sites: Sequence[str]) -> None:
    """``strategies.md``, ``strategies.png`` and ``strategies.json`` in ``out``."""
    plot(runs, out / "strategies.png")
    first = next(iter(runs.values()))
    lines = [
        f"# Strategy comparison: {mode} mode, {len(sites)} sites, {first.rounds} rounds",
        "",
        "Same label-skewed split, seeds and local training (lr 0.05, 2 epochs) for every strategy; "
        "global validation AUC on the union of the sites' held-out splits.",
        "",
        *table(runs),
        "",
        "![AUC per round per strategy](strategies.png)",
        "",
    ]
    (out / "strategies.md").write_text("\n".join(lines))
    data = {
        "mode": mode,
        "rounds": first.rounds,
        "sites": list(sites),
        "strategies": {
            n: {
                "strategy": preset(n),
                "final_auc": r.final_auc,
                "per_round": r.per_round,
                "seconds": r.seconds,
            }
            for n, r in runs.items()
        },
    }
    (out / "strategies.json").write_text(json.dumps(data, indent=2, default=float))
