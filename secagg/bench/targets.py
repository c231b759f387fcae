"""The issue's speed and size goals, checked against measured results (never in unit tests).

Each goal is evaluated where the results hold what it needs (e.g. the NVFlare ratios only when
``nvflare-he`` ran on the same layout and site count); time ratios are given for wall and CPU seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .runner import ModeResult


@dataclass(frozen=True)
class Check:
    goal: str
    where: str
    value: str
    met: bool


def _find(
    results: Sequence[ModeResult], mode: str, layout: str, params: int, sites: int
) -> ModeResult | None:
    for r in results:
        if (r.mode, r.layout, r.params, r.sites) == (mode, layout, params, sites):
            return r
    return None


def _ratio_check(
    goal: str, where: str, num: tuple[float, float], den: tuple[float, float], limit: float
) -> Check:
    wall, cpu = num[0] / den[0], num[1] / den[1]
    return Check(goal, where, f"{wall:.2f}x wall, {cpu:.2f}x CPU", wall <= limit and cpu <= limit)


def evaluate(results: Sequence[ModeResult]) -> list[Check]:
    checks: list[Check] = []
    for layout, params, sites in sorted({(r.layout, r.params, r.sites) for r in results}):
        where = f"{layout} {params / 1e6:.2f}M, {sites} sites"
        he = _find(results, "he", layout, params, sites)
        nv = _find(results, "nvflare-he", layout, params, sites)
        if he and nv:
            ratio = he.uplink_bytes / nv.uplink_bytes
            checks.append(Check("he uplink <= 0.5x NVFlare", where, f"{ratio:.2f}x", ratio <= 0.5))
            checks.append(
                Check("he uplink <= 0.25x NVFlare (stretch)", where, f"{ratio:.2f}x", ratio <= 0.25)
            )
            checks.append(
                _ratio_check(
                    "he aggregator <= 0.25x NVFlare",
                    where,
                    (he.aggregate_s, he.aggregate_cpu_s),
                    (nv.aggregate_s, nv.aggregate_cpu_s),
                    0.25,
                )
            )
            checks.append(
                _ratio_check(
                    "he client encrypt+serialise <= 0.5x NVFlare",
                    where,
                    (he.protect_s, he.protect_cpu_s),
                    (nv.protect_s, nv.protect_cpu_s),
                    0.5,
                )
            )
        for r in results:
            if (r.layout, r.params, r.sites) == (layout, params, sites) and r.mode != "nvflare-he":
                checks.append(
                    Check(
                        f"{r.mode} max abs error <= 1e-7",
                        where,
                        f"{r.max_abs_err:.2e}",
                        r.max_abs_err <= 1e-7,
                    )
                )
        mask = _find(results, "mask", layout, params, sites)
        if mask:
            checks.append(
                Check(
                    "mask uplink <= 1.05x raw", where, f"{mask.uplink_ratio:.3f}x", mask.uplink_ratio <= 1.05
                )
            )
            if sites == 8:
                checks.append(
                    Check(
                        "mask client <= 0.2 s (8 sites)",
                        where,
                        f"{mask.protect_s:.3f} s wall, {mask.protect_cpu_s:.3f} s CPU",
                        mask.protect_s <= 0.2,
                    )
                )
        tee, plain = (
            _find(results, "tee", layout, params, sites),
            _find(results, "plain", layout, params, sites),
        )
        if tee and plain:
            checks.append(
                _ratio_check(
                    "tee round <= 1.10x plain",
                    where,
                    (tee.round_s, tee.round_cpu_s),
                    (plain.round_s, plain.round_cpu_s),
                    1.10,
                )
            )
            if tee.round_transport_s is not None and plain.round_transport_s is not None:
                assert tee.round_transport_cpu_s is not None and plain.round_transport_cpu_s is not None
                checks.append(
                    _ratio_check(
                        "tee round incl. transport <= 1.10x plain",
                        where,
                        (tee.round_transport_s, tee.round_transport_cpu_s),
                        (plain.round_transport_s, plain.round_transport_cpu_s),
                        1.10,
                    )
                )
    for layout, params in sorted({(r.layout, r.params) for r in results}):
        sweep = sorted(
            {r.sites: r for r in results if (r.mode, r.layout, r.params) == ("he", layout, params)}.values(),
            key=lambda r: r.sites,
        )
        if len(sweep) >= 2:
            top = sweep[-1]
            limit = 3 * top.uplink_bytes
            checks.append(
                Check(
                    f"he aggregator peak RSS <= 3x one uplink ({top.sites} sites)",
                    layout,
                    f"{top.peak_rss_bytes / 2**20:.0f} MiB vs {limit / 2**20:.0f} MiB",
                    top.peak_rss_bytes <= limit,
                )
            )
            # "flat": adding sites must not add payload-sized memory; the allowance is half of one
            # site's uplink over the whole sweep (a design that held every upload would add one per site)
            added = top.peak_rss_bytes - sweep[0].peak_rss_bytes
            counts = "/".join(str(r.sites) for r in sweep)
            mib = "/".join(f"{r.peak_rss_bytes / 2**20:.0f}" for r in sweep)
            checks.append(
                Check(
                    "he aggregator peak RSS flat in sites (grows < 0.5x one uplink)",
                    f"{layout}, {counts} sites",
                    f"{mib} MiB: +{added / 2**20:.0f} MiB = {added / top.uplink_bytes:.2f}x one uplink "
                    f"from {sweep[0].sites} to {top.sites} sites",
                    added < 0.5 * top.uplink_bytes,
                )
            )
    return checks


def markdown(checks: Sequence[Check]) -> str:
    rows = ["| goal | where | measured | met |", "|---|---|---|---|"]
    rows += [f"| {c.goal} | {c.where} | {c.value} | {'yes' if c.met else '**no**'} |" for c in checks]
    return "\n".join(rows) + "\n"
