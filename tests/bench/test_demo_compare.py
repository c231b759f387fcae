"""`secagg bench --demo-compare`: the parts that need no peer and no network.

The one-round form ("before") is the demo's script with only ``main`` changed, and it really starts a new
worker per round (different pids), where the loop form keeps one; the ratios and goals; a peer that
cannot be installed is reported as skipped, not a crash; FLARE's round banners parse. No timing
assertions: the measured figures live in BENCHMARKS.md.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import numpy as np
import pytest

from secagg.bench import demo_compare as dc
from secagg.bench.demo_compare import SystemResult
from secagg.bundle import to_safetensors
from secagg.demo.run import TEMPLATE, _template
from secagg.errors import ConfigError

PARAMS = {"lr": 0.05, "epochs": 2, "batch_size": 32, "seed": 0}


def _peer_module(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(f"peer_{name}", dc.PEERS_DIR / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_round_form_keeps_everything_above_main_and_drops_the_loop() -> None:
    loop = (TEMPLATE / "train.py").read_text()
    one = dc.one_round_source(loop)
    head = loop.partition("\ndef main() -> None:")[0]
    assert one.startswith(head)
    assert "client.tasks()" in loop and "client.tasks()" not in one
    compile(one, "train.py", "exec")
    with pytest.raises(ConfigError, match="loop-form main"):
        dc.one_round_source("import torch\n")


def test_job_template_swaps_the_demo_template_for_the_duration(tmp_path: Path) -> None:
    import secagg.demo.run as demo_run

    folder = dc.write_template("one-round", tmp_path / "t")
    assert dc.write_template("loop", tmp_path / "unused") == TEMPLATE
    with dc.job_template(folder):
        assert folder == demo_run.TEMPLATE
        assert "client.tasks()" not in (demo_run.TEMPLATE / "train.py").read_text()
        model = _template().make_model()  # the same model code
    assert demo_run.TEMPLATE == TEMPLATE
    ref = _template().make_model()
    for k, v in ref.state_dict().items():
        assert np.array_equal(v.numpy(), model.state_dict()[k].numpy())


def _run_rounds(tmp_path: Path, form: str, rounds: int) -> tuple[dict[str, int], dict[str, list[int]]]:
    """The form's script in a TrainingWorker (unconfined: this tests the round mechanics), laid out as
    an agent's state folder so that :func:`worker_log_facts` reads it as the bench does."""
    from secagg.agent.worker import TrainingWorker
    from secagg.demo.data import skewed_split, write_site

    state = tmp_path / form / "state"
    job = state / "site-1" / "jobs" / "j"
    pkg = job / "pkg"
    pkg.mkdir(parents=True)
    src = dc.write_template(form, tmp_path / form / "template") / "train.py"
    (pkg / "train.py").write_text(src.read_text())
    data = tmp_path / "data"
    if not data.exists():
        write_site(skewed_split(3)[0], data)
    tmpl = _template()
    glob = {k: v.detach().numpy() for k, v in tmpl.make_model().state_dict().items()}
    with TrainingWorker(pkg, "train.py", job / "io", job / "scratch", job / "train.log", None) as w:
        for r in range(1, rounds + 1):
            task = {
                "task": "train",
                "round": r,
                "site": "site-1",
                "data_dir": str(data),
                "params": PARAMS,
                "strategy": {"name": "fedavg"},
            }
            res = w.run(task, to_safetensors(glob), timeout=120)
            assert res.local is not None and res.num_samples
            glob = dict(res.local)
    return dc.worker_log_facts(state)


def test_one_round_form_starts_a_new_worker_every_round(tmp_path: Path) -> None:
    """The "before" variant really pays a new interpreter per round (the loop form's single worker per
    job is counted the same way by the bench, in results.json)."""
    starts, pids = _run_rounds(tmp_path, "one-round", 2)
    assert starts == {"site-1": 2}
    assert len(pids["site-1"]) == 2 and len(set(pids["site-1"])) == 2  # a different process per round


def test_peer_model_is_the_demo_model() -> None:
    ref = _template().make_model().state_dict()
    mine = _peer_module("peer_model").DemoMLP().state_dict()
    assert list(mine) == list(ref)
    for k in ref:
        assert np.array_equal(mine[k].numpy(), ref[k].numpy())


def test_flare_round_seconds_from_the_fedavg_banners() -> None:
    log = "\n".join(
        [
            "2026-12-02 09:51:36,834 - FedAvg - INFO - [identity=simulator_server] - ",
            "-" * 80,
            "                                Round 0 started.                                ",
            "2026-12-02 09:51:40,000 - X - INFO - Aggregated 3/3 results",
            "2026-12-02 09:51:50,374 - FedAvg - INFO - [identity=simulator_server] - ",
            "                                Round 1 started.                                ",
            "2026-12-02 09:51:52,383 - FedAvg - INFO - [identity=simulator_server] - ",
            "                                Finished FedAvg.                                ",
        ]
    )
    got = _peer_module("flare_job").round_seconds(log)
    assert got == pytest.approx([13.54, 2.009])


def _sys(key: str, median: float | None, auc: float = 0.98784, status: str = "ok") -> SystemResult:
    system = "secagg" if key.startswith("secagg") else key
    one_round = "one-round" in key
    starts = {f"site-{i}": 3 if one_round else 1 for i in (1, 2, 3)} if system == "secagg" else {}
    pids = {f"site-{i}": [100 * i + r for r in range(3)] if one_round else [] for i in (1, 2, 3)}
    return SystemResult(
        key=key,
        system=system,
        label=key,
        mode="he" if "-he" in key else "plain",
        form="one-round" if "one-round" in key else "loop",
        status=status,
        per_round_s=[] if median is None else [9.0, median, median],
        median_round_s=median,
        final_auc=auc if status == "ok" else None,
        worker_starts=starts,
        worker_pids=pids if system == "secagg" else {},
    )


def test_summary_ratios_and_goals() -> None:
    systems = [
        _sys("secagg-plain", 0.16),
        _sys("secagg-he", 0.18),
        _sys("secagg-plain-one-round", 14.0),
        _sys("secagg-he-one-round", 15.4),
        _sys("nvflare", 2.0),
        _sys("flower", 0.2, auc=0.98780),
    ]
    s = dc.summarize(systems, rounds=2)
    r = s["ratios"]
    assert r["secagg_he_over_plain"] == pytest.approx(0.18 / 0.16)
    assert r["secagg_he_over_plain_one_round"] == pytest.approx(1.1)
    assert r["one_round_over_loop_plain"] == pytest.approx(14.0 / 0.16)
    assert r["secagg_plain_over_nvflare"] == pytest.approx(0.08)
    assert r["secagg_he_over_flower"] == pytest.approx(0.9)
    goals = {g["goal"]: g for g in s["goals"]}
    assert all(g["met"] for g in goals.values())
    spread = next(g for g in s["goals"] if "AUC" in g["goal"])
    assert spread["measured"] == pytest.approx(4e-5)
    # a one-round run that kept a worker alive (or reused a pid) fails its check
    systems[2].worker_starts["site-2"] = 2
    before = next(g for g in dc.summarize(systems, rounds=2)["goals"] if g["goal"].startswith("before"))
    assert before["met"] is False
    systems[2].worker_starts["site-2"] = 3
    systems[2].worker_pids["site-2"] = [7, 7, 8]
    before = next(g for g in dc.summarize(systems, rounds=2)["goals"] if g["goal"].startswith("before"))
    assert before["met"] is False


def test_summary_without_peers_and_a_slow_he() -> None:
    systems = [
        _sys("secagg-plain", 0.4),
        _sys("secagg-he", 0.6),
        _sys("nvflare", None, status="skipped"),
    ]
    s = dc.summarize(systems)
    assert s["ratios"]["secagg_plain_over_nvflare"] is None
    assert s["ratios"]["secagg_plain_over_flower"] is None
    met = {g["goal"]: g["met"] for g in s["goals"]}
    assert met["secagg plain median round <= 0.5 s (loop form)"] is True
    assert met["secagg he median round <= 0.5 s (loop form)"] is False
    assert met["secagg he median round <= 1.25x plain"] is False
    assert met["secagg plain median round <= 0.2x NVIDIA FLARE's (5x faster)"] is None


def test_a_peer_that_cannot_be_installed_is_skipped_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(cmd, **kwargs):  # noqa: ANN001, ANN003, ANN202
        raise subprocess.CalledProcessError(1, cmd)

    monkeypatch.setattr(dc.subprocess, "run", refuse)
    res, final = dc.run_peer(
        tmp_path / "nvflare",
        dc.PEERS["nvflare"],
        venvs=tmp_path / "venvs",
        rounds=2,
        sites=[],
        params=PARAMS,
        log=lambda line: None,
    )
    assert final is None
    assert res.status == "skipped" and "nvflare==2.9.0" in res.reason
    results = {
        "sites": 3,
        "rounds": 2,
        "started": "now",
        "machine": dc.machine(),
        "systems": [res.to_dict()],
        **dc.summarize([res]),
    }
    assert "skipped: could not install nvflare==2.9.0" in dc.markdown(results)


def test_peer_requirements_pin_this_torch_without_its_local_label() -> None:
    reqs = dc.pinned_requirements(dc.PEERS["flower"])
    torch_pin = next(r for r in reqs if r.startswith("torch=="))
    assert "+" not in torch_pin and torch_pin.split("==")[1] in __import__("torch").__version__


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--rounds", "3"],
        ["bench", "--peers", "none"],
        ["bench", "--demo-compare", "--training"],
        ["bench", "--demo-compare", "--params", "10"],
        ["bench", "--training", "--rounds", "3"],
    ],
)
def test_demo_compare_flags_are_refused_elsewhere(argv: list[str], tmp_path: Path) -> None:
    from secagg.cli import main

    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
