"""The goal checks read the right results and say 'no' when a goal is missed."""

from __future__ import annotations

from secagg.bench.runner import ModeResult
from secagg.bench.targets import evaluate, markdown


def _r(mode: str, sites: int = 8, **kw: float) -> ModeResult:
    base = dict(
        mode=mode, layout="flat", params=1000, tensors=1, sites=sites, repeats=3, raw_bytes=4000,
        uplink_bytes=4000, uplink_ratio=1.0, downlink_bytes=4000, protect_s=1.0, aggregate_s=1.0,
        unprotect_s=1.0, round_s=3.0, protect_cpu_s=1.0, aggregate_cpu_s=1.0, unprotect_cpu_s=1.0,
        round_cpu_s=3.0, max_abs_err=1e-8, peak_rss_bytes=10_000, baseline_rss_bytes=5000,
    )  # fmt: skip
    base.update(kw)
    return ModeResult(**base)  # type: ignore[arg-type]


def _met(checks: list, goal: str) -> bool:
    (hit,) = [c for c in checks if c.goal.startswith(goal)]
    return bool(hit.met)


def test_he_against_nvflare() -> None:
    he = _r("he", uplink_bytes=24_000, protect_s=1.0, protect_cpu_s=1.0, aggregate_s=1.0, aggregate_cpu_s=1.0)
    nv = _r(
        "nvflare-he",
        uplink_bytes=60_000,
        protect_s=3.0,
        protect_cpu_s=1.5,
        aggregate_s=5.0,
        aggregate_cpu_s=5.0,
    )
    checks = evaluate([he, nv])
    assert _met(checks, "he uplink <= 0.5x")  # 0.4x
    assert not _met(checks, "he uplink <= 0.25x")  # the stretch goal is not
    assert _met(checks, "he aggregator <=")  # 0.2x
    assert not _met(checks, "he client")  # 0.33x wall but 0.67x CPU: both must hold
    assert not any(c.goal.startswith("nvflare-he max abs") for c in checks)


def test_mask_tee_and_error_goals() -> None:
    checks = evaluate(
        [
            _r("plain", round_s=1.0, round_cpu_s=1.0),
            _r("tee", round_s=1.05, round_cpu_s=1.2, max_abs_err=2e-7),
            _r("mask", uplink_ratio=1.01, protect_s=0.3),
        ]
    )
    assert not _met(checks, "tee round <=")  # CPU ratio 1.2 > 1.1
    assert not [c for c in checks if "transport" in c.goal]  # not measured: not judged
    assert not _met(checks, "tee max abs error")
    assert _met(checks, "plain max abs error")
    assert _met(checks, "mask uplink")
    assert not _met(checks, "mask client")
    assert "**no**" in markdown(checks)


def test_rss_sweep_is_judged_at_the_largest_site_count() -> None:
    sweep = [
        _r("he", sites=4, uplink_bytes=100, peak_rss_bytes=250),
        _r("he", sites=16, uplink_bytes=100, peak_rss_bytes=290),
    ]
    checks = evaluate(sweep)
    assert _met(checks, "he aggregator peak RSS <= 3x")  # 290 <= 300
    assert _met(checks, "he aggregator peak RSS flat")  # +40 < 50
    grown = evaluate([sweep[0], _r("he", sites=16, uplink_bytes=100, peak_rss_bytes=310)])
    assert not _met(grown, "he aggregator peak RSS <= 3x")
    assert not _met(grown, "he aggregator peak RSS flat")


def _wired_pair(tee_transport_cpu_s: float) -> list:
    """plain and tee rounds of 1.0 s and 1.2 s, each plus 2 s of transport; tee's CPU as given."""
    wired = {"transport_s": 2.0, "transport_cpu_s": 2.0}
    plain = _r(
        "plain", round_s=1.0, round_cpu_s=1.0, round_transport_s=3.0, round_transport_cpu_s=3.0, **wired
    )
    tee = _r(
        "tee",
        round_s=1.2,
        round_cpu_s=1.2,
        round_transport_s=3.2,
        round_transport_cpu_s=tee_transport_cpu_s,
        **wired,
    )
    return [plain, tee]


def test_tee_round_including_transport_is_judged_when_measured() -> None:
    checks = evaluate(_wired_pair(3.4))
    assert not _met(checks, "tee round <=")  # 1.2x without the transport
    assert not _met(checks, "tee round incl. transport")  # 1.07x wall but 1.13x CPU
    assert _met(evaluate(_wired_pair(3.2)), "tee round incl. transport")  # 1.07x both
