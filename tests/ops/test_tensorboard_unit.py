"""What goes to TensorBoard for a round: reported numbers only, means over reporting sites."""

from __future__ import annotations

from secagg.tensorboard import scalars_for_final, scalars_for_round


def test_round_scalars_per_site_and_global_mean() -> None:
    metrics = {
        "evaluated_round": 2,
        "sites": {
            "site-1": {"val_auc": 0.7, "loss": 0.4},
            "site-2": {"val_auc": 0.9, "note": "x", "ok": True},
        },
    }
    got = {
        (tag, step): value for tag, value, step in scalars_for_round(3, metrics, 12.5, ["site-1", "site-2"])
    }
    assert got[("round/seconds", 3)] == 12.5
    assert got[("round/participants", 3)] == 2
    assert got[("site/site-1/val_auc", 3)] == 0.7 and got[("site/site-1/loss", 3)] == 0.4
    assert abs(got[("global/val_auc", 2)] - 0.8) < 1e-12  # the global model of round 2, as evaluated
    assert got[("global/loss", 2)] == 0.4
    assert not any("note" in tag or "ok" in tag for tag, _ in got)  # strings and booleans are not scalars


def test_final_scalars_land_at_the_last_round() -> None:
    got = scalars_for_final(5, {"final": {"site-1": {"val_auc": 0.5}, "site-2": {"val_auc": float("nan")}}})
    assert ("final/site-1/val_auc", 0.5, 5) in got and ("global/val_auc", 0.5, 5) in got
    assert not any("site-2" in tag for tag, _, _ in got)  # non-finite values are dropped


def test_round_without_metrics_still_has_timing() -> None:
    assert [t for t, _, _ in scalars_for_round(1, {}, 1.0, [])] == ["round/seconds", "round/participants"]
