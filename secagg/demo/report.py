"""The reports: the demo's (report.md, auc.png, summary.json) and a simulated job's (report.md,
metrics.png, summary.json), in the output folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from secagg.demo.engine import Federation
from secagg.demo.run import RunResult


def max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)))) for k in a)


def median_round_seconds(run: RunResult) -> float:
    """Aggregation-to-aggregation time of a round; the median, as the first round also starts processes."""
    return float(np.median([r["seconds"] for r in run.per_round]))


def plot(runs: list[RunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for run in runs:
        xs = [r["round"] for r in run.per_round]
        ys = [r["auc"] for r in run.per_round]
        ax.plot(xs, ys, marker="o", label=f"{run.mode}", linestyle="-" if run.mode != "plain" else "--")
    ax.set_xlabel("round")
    ax.set_ylabel("global validation AUC")
    ax.set_title("Breast cancer, federated (non-IID split)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(
    out: Path,
    main: RunResult,
    reference: RunResult | None,
    matrix: dict[str, dict[str, float]] | None,
    sites: list[str],
    extra: dict[str, Any],
    sections: list[str] | None = None,
) -> None:
    """``sections``: more markdown lines (a strategy comparison, a privacy sweep) after the AUC table."""
    runs = [main] + ([reference] if reference else [])
    plot(runs, out / "auc.png")
    summary: dict[str, Any] = {
        "mode": main.mode,
        "rounds": main.rounds,
        "sites": sites,
        "final_auc": main.final_auc,
        "per_round": main.per_round,
        "seconds": main.seconds,
        "median_round_seconds": median_round_seconds(main),
        "cross_site": {
            m: {s: _finite_or_none(v) for s, v in row.items()} for m, row in (matrix or {}).items()
        },
        **extra,
    }
    lines = [f"# secagg demo: {main.mode} mode, {len(sites)} sites, {main.rounds} rounds", ""]
    lines += [
        "Wisconsin breast-cancer data (569 patients), label-skewed split; each site keeps 25 % held out.",
        "Every process (aggregator, each site) ran separately on 127.0.0.1 over mTLS.",
        "",
    ]
    lines += [
        "## Global validation AUC per round",
        "",
        "| round | " + " | ".join(r.mode for r in runs) + " | seconds (" + main.mode + ") |",
        "|---" * (len(runs) + 2) + "|",
    ]
    for i, row in enumerate(main.per_round):
        cells = [f"{r.per_round[i]['auc']:.4f}" for r in runs]
        lines.append(f"| {row['round']} | " + " | ".join(cells) + f" | {row['seconds']:.2f} |")
    lines += ["", "![AUC per round](auc.png)", ""]
    lines += sections or []
    if reference is not None:
        diff = max_abs_diff(main.final_model, reference.final_model)
        delta = abs(main.final_auc - reference.final_auc)
        summary["reference"] = {
            "mode": reference.mode,
            "final_auc": reference.final_auc,
            "max_abs_param_diff": diff,
            "auc_delta": delta,
            "seconds": reference.seconds,
            "median_round_seconds": median_round_seconds(reference),
        }
        lines += [
            f"## {main.mode} against {reference.mode}",
            "",
            f"- final AUC: {main.final_auc:.4f} ({main.mode}) vs {reference.final_auc:.4f} "
            f"({reference.mode}); difference {delta:.2e}",
            f"- final global model, max abs parameter difference: {diff:.2e}",
            f"- wall time: {main.seconds:.1f} s ({main.mode}) vs {reference.seconds:.1f} s "
            f"({reference.mode})",
            f"- median round time: {summary['median_round_seconds']:.2f} s ({main.mode}) vs "
            f"{summary['reference']['median_round_seconds']:.2f} s ({reference.mode}): "
            f"{summary['median_round_seconds'] / summary['reference']['median_round_seconds']:.2f}x",
            "",
        ]
    if matrix:
        png = main.matrix_png
        if png is not None:
            shutil.copyfile(png, out / "cross_site.png")
        lines += _matrix_lines(matrix, sites, with_png=png is not None)
        if main.not_shared:
            summary["cross_site_not_shared"] = main.not_shared
            who = ", ".join(f"{s} ({code})" for s, code in sorted(main.not_shared.items()))
            lines[-1:-1] = [f"No site's local model was evaluated: not shared by {who}.", ""]
    (out / "report.md").write_text("\n".join(lines))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))


def cell(value: float | None) -> str:
    """A matrix cell: 4 decimals, or a dash where no site measured it."""
    return "-" if value is None or not np.isfinite(value) else f"{value:.4f}"


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _matrix_lines(matrix: dict[str, dict[str, float]], sites: list[str], *, with_png: bool) -> list[str]:
    lines = [
        "## Cross-site validation (AUC)",
        "",
        "Measured by the federation itself (the job asks for `evaluation: cross_site`): after the last "
        "round each site evaluated, on its own held-out split, the global model and each other site's "
        "last local model, which reached it sealed to its key (the aggregator relays ciphertext only). "
        "Rows: the model; columns: the site whose held-out split measured it; a site's own local model "
        "is measured only by the others (-).",
        "",
        "| model | " + " | ".join(sites) + " |",
        "|---" * (len(sites) + 1) + "|",
    ]
    for name, row in matrix.items():
        lines.append(f"| {name} | " + " | ".join(cell(row.get(s)) for s in sites) + " |")
    lines += ["", "![cross-site matrix](cross_site.png)", ""] if with_png else [""]
    return lines


# ------------------------------------------------------------------------- secagg simulate ----
def job_summary(fed: Federation, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """summary.json of a simulated job: the demo's fields where the job defines them (``mode``,
    ``rounds``, ``per_round`` with ``round`` and ``seconds``), the metrics the sites reported for each
    round's global model instead of the demo's central AUC, and where each site's training log is."""
    last = fed.per_round[-1]["metrics"] if fed.per_round else {}
    return {
        "job": fed.spec.name,
        "mode": fed.spec.mode,
        "rounds": fed.spec.rounds,
        "sites": fed.sites,
        "per_round": fed.per_round,
        "initial_metrics": fed.initial_metrics,
        "final_metrics": last,
        "seconds": fed.seconds,
        "median_round_seconds": float(np.median([r["seconds"] for r in fed.per_round]))
        if fed.per_round
        else float("nan"),
        "train_logs": {s: str(p) for s, p in fed.train_logs.items()},
        "tensorboard": str(fed.state / "aggregator" / "jobs"),
        **(extra or {}),
    }


def plot_metrics(fed: Federation, path: Path) -> bool:
    """One line per reported metric over the rounds; False (no plot) when the sites reported none."""
    names = sorted({k for r in fed.per_round for k in r["metrics"]})
    if not names:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name in names:
        rows = [r for r in fed.per_round if name in r["metrics"]]
        ax.plot([r["round"] for r in rows], [r["metrics"][name] for r in rows], marker="o", label=name)
    ax.set_xlabel("round")
    ax.set_ylabel("mean over sites")
    ax.set_title(f"{fed.spec.name}, {fed.spec.mode} mode, {len(fed.sites)} sites")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_job(out: Path, fed: Federation, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """report.md, metrics.png and summary.json of a simulated job in ``out``; returns the summary."""
    summary = job_summary(fed, extra)
    plotted = plot_metrics(fed, out / "metrics.png")
    names = sorted({k for r in fed.per_round for k in r["metrics"]} | set(fed.initial_metrics))
    lines = [
        f"# secagg simulate: {fed.spec.name}, {fed.spec.mode} mode, {len(fed.sites)} sites, "
        f"{fed.spec.rounds} rounds",
        "",
        "Every process (aggregator, each site) ran separately on 127.0.0.1 over mTLS, with a throwaway "
        "project, a throwaway job signature and development policies where no site policy was given.",
        "Metrics: the mean over the sites of what each reported (client.send(metrics=...)) for the "
        "global model after the round.",
        "",
        "| round | sites | seconds | " + " | ".join(names) + " |",
        "|---" * (3 + len(names)) + "|",
    ]
    if fed.initial_metrics:
        cells = [f"{fed.initial_metrics[n]:.4f}" if n in fed.initial_metrics else "" for n in names]
        lines.append("| 0 (initial model) | | | " + " | ".join(cells) + " |")
    for r in fed.per_round:
        cells = [f"{r['metrics'][n]:.4f}" if n in r["metrics"] else "" for n in names]
        lines.append(
            f"| {r['round']} | {len(r['participants'])} | {r['seconds']:.2f} | " + " | ".join(cells) + " |"
        )
    lines += ["", "![metrics per round](metrics.png)", ""] if plotted else [""]
    if fed.cross_site is not None:  # evaluation: cross_site
        summary["cross_site"] = fed.cross_site.to_dict()
        lines += _job_matrix_lines(fed, out)
    lines += ["## Logs", ""]
    lines += [f"- {site}: training log `{path}`" for site, path in fed.train_logs.items()]
    lines += [f"- TensorBoard: `tensorboard --logdir {summary['tensorboard']}`", ""]
    (out / "report.md").write_text("\n".join(lines))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def _job_matrix_lines(fed: Federation, out: Path) -> list[str]:
    """A simulated job's cross-site matrix: its files copied beside the report, one metric tabled."""
    from secagg.crossval.matrix import JSON_FILE, PNG_FILE

    matrix = fed.cross_site
    assert matrix is not None
    src = fed.state / "aggregator" / "jobs" / fed.job_id
    for name in (JSON_FILE, PNG_FILE):
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    metric = matrix.plotted_metric()
    lines = ["## Cross-site evaluation", ""]
    if matrix.not_shared:
        who = ", ".join(f"{s} ({code})" for s, code in sorted(matrix.not_shared.items()))
        lines += [f"Local models were not evaluated: not shared by {who}.", ""]
    if metric is None:
        return [*lines, "No site reported a metric.", ""]
    table = matrix.table(metric)
    lines += [
        f"{metric}, as each site (column) measured each model (row) on its own held-out data; "
        f"every metric in `{JSON_FILE}`.",
        "",
        "| model | " + " | ".join(matrix.sites) + " |",
        "|---" * (len(matrix.sites) + 1) + "|",
    ]
    for model, row in table.items():
        lines.append(f"| {model} | " + " | ".join(cell(row.get(s)) for s in matrix.sites) + " |")
    lines += ["", f"![cross-site {metric}]({PNG_FILE})", ""] if (out / PNG_FILE).is_file() else [""]
    return lines
