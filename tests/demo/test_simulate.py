"""``secagg simulate JOB_DIR`` and ``secagg job init``: a new user's own job on a local federation.

The mistakes a new user makes are each one line on stderr with its reason code and exit 1: checked
before anything starts where they can be (no job.yaml, a model that is not safetensors, a missing data
folder), and from the site's declined round where only running the script shows them (it raises, it
never calls ``client.send``). One end-to-end run: ``job init``, then 2 sites x 2 rounds in plain mode,
after which the job folder is byte for byte what it was and signs and verifies for a real deployment.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from secagg.cli import main
from secagg.jobs.templates import write_example_data
from secagg.reasons import Reason


def _run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(err: str, code: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"secagg: {code}: "), err
    assert "Traceback" not in err
    return lines[0]


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_example_data(root)
    return root


def _init(capsys: pytest.CaptureFixture[str], folder: Path, template: str = "tabular") -> Path:
    rc, _, err = _run(capsys, "job", "init", folder, "--template", template)
    assert rc == 0, err
    return folder


# ------------------------------------------------------------------ refused before anything starts
def test_job_folder_without_job_yaml(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "train.py").write_text("print('hi')\n")
    rc, _, err = _run(
        capsys, "simulate", tmp_path / "job", "--sites", "2", "--data-root", data, "--out", tmp_path / "o"
    )
    assert rc == 1
    assert "has no job.yaml" in _one_line(err, Reason.NO_JOB_FILE)
    assert not (tmp_path / "o").exists()


def test_model_that_is_not_safetensors_says_how_to_make_one(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    job = _init(capsys, tmp_path / "job")
    torch.save({"w": torch.zeros(3)}, job / "model.safetensors")  # a torch pickle under the name
    rc, _, err = _run(capsys, "simulate", job, "--sites", "2", "--data-root", data, "--out", tmp_path / "o")
    assert rc == 1
    line = _one_line(err, Reason.MODEL_NOT_SAFETENSORS)
    assert "model.safetensors is not a safetensors file" in line
    assert 'safetensors.torch.save_file(model.state_dict(), "model.safetensors")' in line
    assert not (tmp_path / "o").exists()


def test_data_folder_missing_for_a_site(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _init(capsys, tmp_path / "job", "logreg")
    rc, _, err = _run(capsys, "simulate", job, "--sites", "4", "--data-root", data, "--out", tmp_path / "o")
    assert rc == 1
    line = _one_line(err, Reason.DATA_MISSING)
    assert "data folder for site-4 does not exist" in line and str(data / "site-4") in line
    rc, _, err = _run(
        capsys, "simulate", job, "--data", data / "site-1", tmp_path / "nowhere", "--out", tmp_path / "o"
    )
    assert rc == 1
    assert f"data folder for site-2 does not exist: {tmp_path / 'nowhere'}" in _one_line(
        err, Reason.DATA_MISSING
    )
    assert not (tmp_path / "o").exists()


def test_data_count_must_match_sites(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = _init(capsys, tmp_path / "job", "logreg")
    rc, _, err = _run(capsys, "simulate", job, "--sites", "3", "--data", data / "site-1", data / "site-2")
    assert rc == 2 and "--sites 3 needs 3 --data folders, got 2" in err


def test_job_init_refuses_a_folder_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "notes.txt").write_text("mine\n")
    rc, _, err = _run(capsys, "job", "init", tmp_path / "job")
    assert rc == 1 and "is not an empty folder" in _one_line(err, Reason.CONFIG)
    assert [p.name for p in (tmp_path / "job").iterdir()] == ["notes.txt"]


def test_job_init_writes_the_model_of_the_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """model.safetensors holds exactly the weights of train.py's make_model(), and the client API
    lines are marked."""
    from secagg.bundle import from_safetensors
    from secagg.jobs.templates import model_state

    for template in ("tabular", "logreg"):
        job = _init(capsys, tmp_path / template, template)
        saved = from_safetensors((job / "model.safetensors").read_bytes())
        made = model_state(job / "train.py")
        assert list(saved) == list(made)
        for name, value in made.items():
            assert (saved[name] == value).all()
        marked = [line for line in (job / "train.py").read_text().splitlines() if "# secagg" in line]
        assert any("client.tasks()" in line for line in marked)
        assert any("client.send(" in line and "num_samples" in line for line in marked)
        assert any("client.receive" in line for line in marked)


# ------------------------------------------------------------------ seen only once the script runs
# each of these starts a real (short) federation: separate processes on loopback
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_script_that_raises_names_the_error_and_the_log(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _init(capsys, tmp_path / "job", "logreg")
    train = job / "train.py"
    train.write_text(
        train.read_text().replace(
            "    w, b = model[", '    raise KeyError("column age missing")\n    w, b = model[', 1
        )
    )
    rc, _, err = _run(capsys, "simulate", job, "--data-root", data, "--sites", "2", "--out", tmp_path / "o")
    assert rc == 1
    line = _one_line(err, Reason.SCRIPT_FAILED)
    assert "train.py failed: KeyError: 'column age missing' at train.py line" in line and "in train" in line
    log = Path(line.rsplit("log: ", 1)[1])
    assert log.is_file() and "KeyError: 'column age missing'" in log.read_text()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_script_that_never_sends_is_named(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _init(capsys, tmp_path / "job", "logreg")
    train = job / "train.py"
    source = train.read_text()
    send = "        client.send(model, num_samples=len(y), metrics=metrics)  # secagg: the update\n"
    assert send in source
    train.write_text(source.replace(send, ""))
    rc, _, err = _run(capsys, "simulate", job, "--data-root", data, "--sites", "2", "--out", tmp_path / "o")
    assert rc == 1
    line = _one_line(err, Reason.NO_UPDATE)
    assert "train.py finished round 1 without calling client.send()" in line
    assert Path(line.rsplit("log: ", 1)[1]).is_file()


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory, data: Path) -> tuple[Path, Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("sim")
    job = root / "my-job"
    assert main(["job", "init", str(job)]) == 0
    before = _digests(job)
    out = root / "out"
    argv = [
        "simulate",
        str(job),
        "--sites",
        "2",
        "--data-root",
        str(data),
        "--mode",
        "plain",
        "--rounds",
        "2",
    ]
    assert main([*argv, "--out", str(out)]) == 0
    return job, out, before


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_init_then_simulate_writes_the_report(simulated: tuple[Path, Path, dict[str, str]]) -> None:
    _, out, _ = simulated
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "plain" and summary["rounds"] == 2
    assert summary["sites"] == ["site-1", "site-2"]
    assert [r["round"] for r in summary["per_round"]] == [1, 2]
    for row in summary["per_round"]:
        assert row["seconds"] > 0 and row["participants"] == ["site-1", "site-2"]
    final = summary["final_metrics"]
    assert set(final) == {"val_loss", "val_accuracy"} and 0 <= final["val_accuracy"] <= 1
    assert final["val_loss"] < summary["initial_metrics"]["val_loss"]  # it learned something
    assert (out / "metrics.png").stat().st_size > 0
    assert "| 2 | 2 |" in (out / "report.md").read_text()
    for site in ("site-1", "site-2"):
        log = Path(summary["train_logs"][site])
        assert log == out / "logs" / f"{site}.train.log" and "secagg worker:" in log.read_text()
    # the run's mode and rounds went into the signed copy only
    assert "mode: plain" in (out / "job" / "job.yaml").read_text()
    assert (out / "job" / "manifest.sig").is_file()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_same_folder_signs_and_verifies_for_a_deployment(
    simulated: tuple[Path, Path, dict[str, str]],
    workspace: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job, _, before = simulated
    assert _digests(job) == before  # simulate only read it: no manifest, no cache, no override
    policy = tmp_path / "site.yaml"
    policy.write_text("version: 1\nsigners: {submitters: [submitter@org-1]}\nmodes: [he]\n")
    kit = workspace / "submitter@org-1"
    deploy = tmp_path / "my-job"
    shutil.copytree(job, deploy)
    rc, out, err = _run(capsys, "job", "sign", deploy, "--kit", kit)
    assert rc == 0, err
    rc, out, err = _run(capsys, "job", "verify", deploy, "--policy", policy, "--kit", kit)
    assert rc == 0, err
    assert "ok   authentic" in out and "FAIL" not in out


def test_traceback_tail_names_the_exception_and_the_jobs_line() -> None:
    from secagg.demo.engine import traceback_tail

    log = """secagg worker: sandbox applied: limits
Traceback (most recent call last):
  File "/usr/lib/python3.11/runpy.py", line 291, in run_path
    return _run_module_code(code, init_globals, run_name,
  File "/s/site-1/jobs/j/pkg/train.py", line 60, in main
    train(model)
  File "/s/site-1/jobs/j/pkg/train.py", line 44, in train
    w = model["weights"]
  File "/venv/lib/python3.11/site-packages/numpy/core/x.py", line 9, in f
    raise KeyError(key)
KeyError: 'weights'
"""
    assert traceback_tail(log, ["train.py"]) == "KeyError: 'weights' at train.py line 44, in train"
    syntax = 'Traceback (most recent call last):\n  File "/p/train.py", line 3\n    def f(\n SyntaxError: x\n'
    assert traceback_tail(syntax.replace(" SyntaxError", "SyntaxError"), ["train.py"]) == (
        "SyntaxError: x at train.py line 3"
    )
    assert traceback_tail("no traceback here\n") == ""


def test_own_policy_must_trust_the_simulator_signer(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _init(capsys, tmp_path / "job", "logreg")
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nsigners: {submitters: [admin@lead]}\nmodes: [plain]\n")
    argv = ["simulate", job, "--sites", "2", "--data-root", data, "--mode", "plain", "--out", tmp_path / "o"]
    rc, _, err = _run(capsys, *argv, "--policy", f"site-2={policy}")
    assert rc == 1 and "add submitter@simulate to signers.submitters" in _one_line(err, Reason.CONFIG)
    rc, _, err = _run(capsys, *argv, "--policy", f"site-3={policy}")
    assert rc == 2 and "unknown site 'site-3'" in err
    assert not (tmp_path / "o").exists()


def test_job_report_has_every_round_and_the_initial_model(tmp_path: Path) -> None:
    from secagg.demo import report
    from secagg.demo.engine import Federation
    from secagg.jobs.job import parse_spec

    spec = parse_spec(b"name: j\nrounds: 2\nmin_sites: 2\nmode: he\nmodel: m.safetensors\nentry: t.py\n")
    rows = [
        {"round": 1, "participants": ["site-1", "site-2"], "seconds": 1.5, "metrics": {"val_loss": 0.5}},
        {"round": 2, "participants": ["site-1", "site-2"], "seconds": 0.5, "metrics": {"val_loss": 0.25}},
    ]
    logs = {"site-1": tmp_path / "logs" / "site-1.train.log"}
    fed = Federation(
        tmp_path, tmp_path / "job", spec, ["site-1", "site-2"], "j-1", rows, 9.0, logs, {"val_loss": 0.75}
    )
    summary = report.write_job(tmp_path, fed)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["mode"] == "he" and summary["rounds"] == 2 and summary["median_round_seconds"] == 1.0
    assert summary["final_metrics"] == {"val_loss": 0.25} and summary["initial_metrics"] == {"val_loss": 0.75}
    text = (tmp_path / "report.md").read_text()
    assert "| 0 (initial model) | | | 0.7500 |" in text and "| 2 | 2 | 0.50 | 0.2500 |" in text
    assert str(logs["site-1"]) in text and (tmp_path / "metrics.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_simulated_folder_runs_unchanged_on_a_deployment(
    simulated: tuple[Path, Path, dict[str, str]],
    workspace: Path,
    data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What simulate ran, signed with a real project's submitter kit and served by a real aggregator
    to real site agents over mTLS: no file of the folder is edited, and it federates to the end."""
    from secagg.bundle import from_safetensors
    from tests.integration.harness import TEST_POLICY, start, write_policies

    job, _, before = simulated
    deploy = tmp_path / "my-job"
    shutil.copytree(job, deploy)
    rc, _, err = _run(capsys, "job", "sign", deploy, "--kit", workspace / "submitter@org-1")
    assert rc == 0, err
    assert {
        k: v for k, v in _digests(deploy).items() if k in before
    } == before  # signing added, edited nothing
    sites = ["site-1", "site-2", "site-3"]  # every site of the project: no round waits out its timeout
    for s in sites:  # each site's own data, in the layout the template reads
        shutil.copytree(data / s, tmp_path / "data" / s)
    run = start(
        tmp_path, workspace, deploy, sites=sites, policies=write_policies(tmp_path, TEST_POLICY, sites)
    )
    try:
        run.join(timeout=400)
        assert not run.errors, run.errors
        finals = sorted((tmp_path / "state").glob("site-*/jobs/*/final.safetensors"))
        assert [p.parts[-4] for p in finals] == sites
        models = [from_safetensors(p.read_bytes()) for p in finals]
        for other in models[1:]:  # one global model at every site
            assert other.keys() == models[0].keys()
            assert all(np.array_equal(models[0][k], other[k]) for k in models[0])
    finally:
        run.stop()
