"""Peak RSS against model size, from saved bench results: the plot of BENCHMARKS.md's large-model section.

``python -m secagg.bench.memplot OUT.png RESULTS.json...``: every file is either a ``secagg bench``
``results.json`` (rows with ``mode``, ``params``, ``sites``, ``peak_rss_bytes`` and, where measured,
``site_peak_rss_bytes``) or a ``secagg.bench.engine`` output (rows with ``strategy`` and
``peak_rss_bytes``). One line per (kind, mode, sites); the goals drawn beside them: one upload (4 bytes
a parameter), 1.5x one upload (the aggregator's goal) and 2.5x one model (a site's).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def series(files: list[Path]) -> dict[str, list[tuple[int, float]]]:
    """label -> sorted (params, peak MiB) points."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for path in files:
        rows: list[dict[str, Any]] = json.loads(path.read_text())
        for r in rows:
            mib = r["peak_rss_bytes"] / 2**20
            n, sites = int(r["params"]), int(r["sites"])
            if "strategy" in r and "mode" not in r:
                key = f"aggregator engine ({r['strategy']}), {sites} sites"
                out[key][n] = max(out[key].get(n, 0.0), mib)
                continue
            key = f"aggregator step {r['mode']}, {sites} sites"
            out[key][n] = max(out[key].get(n, 0.0), mib)
            site = r.get("site_peak_rss_bytes")
            if site:
                skey = f"site process {r['mode']}"
                out[skey][n] = max(out[skey].get(n, 0.0), site / 2**20)
    return {k: sorted(v.items()) for k, v in sorted(out.items())}


def plot(files: list[Path], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = series(files)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    sizes = sorted({n for pts in data.values() for n, _ in pts})
    for label, pts in data.items():
        style = "--" if label.startswith("site") else ("-." if "engine" in label else "-")
        ax.plot([p for p, _ in pts], [m for _, m in pts], style, marker="o", label=label)
    if sizes:
        xs = [sizes[0], sizes[-1]]
        ax.plot(xs, [4 * x / 2**20 for x in xs], ":", color="black", label="one upload (4 B/param)")
        ax.plot(xs, [1.5 * 4 * x / 2**20 for x in xs], ":", color="red", label="goal: aggregator 1.5x upload")
        ax.plot(xs, [2.5 * 4 * x / 2**20 for x in xs], ":", color="purple", label="goal: site 2.5x model")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("peak RSS (MiB)")
    ax.set_title("Peak RSS against model size (secagg bench, #21)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print("usage: python -m secagg.bench.memplot OUT.png RESULTS.json...", file=sys.stderr)
        return 2
    plot([Path(a) for a in args[1:]], Path(args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
