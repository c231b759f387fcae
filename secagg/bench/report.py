"""results.json, a markdown table and a PNG chart from a list of :class:`ModeResult`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from .runner import ModeResult
from .targets import evaluate, markdown

_MB = 1024 * 1024


def _fmt_s(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _pair(wall: float, cpu: float) -> str:
    return f"{_fmt_s(wall)} ({_fmt_s(cpu)})"


def markdown_table(results: Sequence[ModeResult]) -> str:
    head = (
        "| layout | sites | mode | uplink/site MiB | x raw | downlink MiB | protect s (cpu) "
        "| aggregate s (cpu) | unprotect s (cpu) | round s (cpu) | max abs err | agg peak RSS MiB "
        "| agg baseline RSS MiB |"
    )
    wired = any(r.transport_s is not None for r in results)
    if wired:
        head += " transport s (cpu) | round incl. transport s (cpu) |"
    rule = "|" + "---|" * (15 if wired else 13)
    rows = [head, rule]
    for r in results:
        row = (
            f"| {r.layout} | {r.sites} | {r.mode} | {r.uplink_bytes / _MB:.1f} | {r.uplink_ratio:.2f} "
            f"| {r.downlink_bytes / _MB:.1f} | {_pair(r.protect_s, r.protect_cpu_s)} "
            f"| {_pair(r.aggregate_s, r.aggregate_cpu_s)} | {_pair(r.unprotect_s, r.unprotect_cpu_s)} "
            f"| {_pair(r.round_s, r.round_cpu_s)} | {r.max_abs_err:.2e} "
            f"| {r.peak_rss_bytes / _MB:.0f} | {r.baseline_rss_bytes / _MB:.0f} |"
        )
        if wired:
            if r.transport_s is None or r.transport_cpu_s is None:
                row += " - | - |"
            else:
                assert r.round_transport_s is not None and r.round_transport_cpu_s is not None
                row += (
                    f" {_pair(r.transport_s, r.transport_cpu_s)} "
                    f"| {_pair(r.round_transport_s, r.round_transport_cpu_s)} |"
                )
        rows.append(row)
    return "\n".join(rows) + "\n"


def memory_table(results: Sequence[ModeResult]) -> str:
    """The aggregator's step against its floor and one upload (BENCHMARKS.md, "Large models in bounded
    memory"): peak RSS is the aggregator process's own, the floor one read of every upload and one
    write of the result on the same machine."""
    rows = [
        "| params | sites | mode | aggregate s | floor s | x floor | agg peak RSS MiB | one upload MiB "
        "| RSS / upload |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        floor = "-" if r.floor_s is None else _fmt_s(r.floor_s)
        ratio = "-" if r.floor_ratio is None else f"{r.floor_ratio:.2f}"
        per = "-" if r.rss_per_upload is None else f"{r.rss_per_upload:.2f}"
        rows.append(
            f"| {r.params:,} | {r.sites} | {r.mode} | {_fmt_s(r.aggregate_s)} | {floor} | {ratio} "
            f"| {r.peak_rss_bytes / _MB:.0f} | {r.uplink_bytes / _MB:.1f} | {per} |"
        )
    return "\n".join(rows) + "\n"


def chart(results: Sequence[ModeResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r.layout, r.sites) for r in results})
    modes = list(dict.fromkeys(r.mode for r in results))
    metrics = [
        ("uplink_ratio", "uplink per site / raw float32"),
        ("protect_cpu_s", "client protect CPU s (per site)"),
        ("aggregate_cpu_s", "aggregator CPU s (all sites)"),
        ("peak_rss_bytes", "aggregator peak RSS MiB"),
    ]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8))
    width = 0.8 / max(1, len(groups))
    for ax, (key, label) in zip(axes, metrics, strict=True):
        for g, (layout, sites) in enumerate(groups):
            values = []
            for m in modes:
                match = [r for r in results if r.mode == m and r.layout == layout and r.sites == sites]
                v = float(getattr(match[0], key)) if match else 0.0
                values.append(v / _MB if key == "peak_rss_bytes" else v)
            xs = [i + (g - (len(groups) - 1) / 2) * width for i in range(len(modes))]
            ax.bar(xs, values, width, label=f"{layout}, {sites} sites")
        ax.set_xticks(range(len(modes)))
        ax.set_xticklabels(modes, rotation=30, ha="right")
        ax.set_title(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: Sequence[ModeResult], out: Path, title: str) -> tuple[Path, Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    js = out / "results.json"
    js.write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    md = out / "results.md"
    md.write_text(
        f"# {title}\n\n"
        + markdown_table(results)
        + "\n## Aggregator memory and floor\n\n"
        + memory_table(results)
        + "\n## Goals\n\n"
        + markdown(evaluate(results))
    )
    png = out / "results.png"
    chart(results, png, title)
    return js, md, png


def load_results(path: Path) -> list[ModeResult]:
    return [ModeResult(**obj) for obj in json.loads(path.read_text())]


def main(argv: list[str] | None = None) -> int:
    """``python -m secagg.bench.report RESULTS.json...``: one table and the goals over several runs."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results", nargs="+", type=Path)
    args = parser.parse_args(argv)
    results = [r for path in args.results for r in load_results(path)]
    print(markdown_table(results))
    print(memory_table(results))
    print(markdown(evaluate(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
