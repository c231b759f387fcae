"""``secagg policy check | explain``: line-numbered errors, decisions in words, exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from secagg.cli import main
from secagg.jobs import sign_job
from secagg.provision.kit import load_kit

ROOT = Path(__file__).resolve().parents[2]
POLICY = """\
version: 1
signers: {submitters: [submitter@org-1]}
modes: [he, mask]
privacy:
  required:
    - {name: percentile, percentile: 25}
  budget: {epsilon: 1.0, delta: 1.0e-5}
limits: {max_rounds: 5, min_sites_per_round: 2}
"""
JOB = """\
name: demo
rounds: 3
min_sites: 2
mode: he
model: model.bin
entry: train.py
privacy:
  - {name: percentile, percentile: 10}
"""


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def make_job(root: Path, text: str, kit_dir: Path | None) -> Path:
    root.mkdir()
    (root / "job.yaml").write_text(text)
    (root / "model.bin").write_bytes(b"\0" * 16)
    (root / "train.py").write_text("pass\n")
    if kit_dir is not None:
        sign_job(root, load_kit(kit_dir))
    return root


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(POLICY)
    return p


@pytest.mark.parametrize("name", ["hospital-strict", "research-consortium", "development", "record-level-dp"])
def test_check_examples(capsys, name: str) -> None:
    code, out, _ = run(capsys, "policy", "check", ROOT / "policies" / f"{name}.yaml")
    assert code == 0 and out.strip().endswith(": ok")


def test_check_reports_lines(tmp_path: Path, capsys) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("version: 1\nsignres: {submitters: [a]}\nmodes: [he, telepathy]\n")
    code, out, err = run(capsys, "policy", "check", p)
    assert code == 1
    lines = out.splitlines()
    assert f"{p}:1: (top): 'signers' is a required property (hint: add it; see policies/README.md)" in lines
    assert f"{p}:2: signres: unknown key (hint: did you mean 'signers'?)" in lines
    assert any(line.startswith(f"{p}:3: modes[1]: 'telepathy' is not one of") for line in lines)
    assert err == f"secagg: config: {p}: 3 problems found\n"


def test_check_missing_file(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "policy", "check", tmp_path / "none.yaml")
    assert code == 1 and "no such policy file" in err


def test_explain_policy_only(policy: Path, capsys) -> None:
    code, out, _ = run(capsys, "policy", "explain", policy)
    assert code == 0
    assert "provisioned admin submitter@org-1" in out
    assert "share only the top 25% of coordinates by magnitude" in out
    assert "Privacy budget: epsilon 1.0, delta 1e-05 per job" in out


def test_explain_accept(tmp_path: Path, policy: Path, workspace: Path, capsys) -> None:
    job = make_job(tmp_path / "job", JOB, workspace / "submitter@org-1")
    code, out, err = run(capsys, "policy", "explain", policy, "--job", job, "--kit", workspace / "site-1")
    assert code == 0, err
    assert "Signature and integrity: verified (3 files)" in out
    assert "Decision for job 'demo': ACCEPT (every rule met)" in out
    assert "ok   signer: Signed by submitter@org-1 (lead of org-1), a submitter this site trusts." in out
    assert "ok   privacy.percentile: The job's percentile settings are at least as strict" in out
    assert "Filters this site will apply, in order:\n  - share only the top 10% of coordinates" in out


def test_explain_refuse(tmp_path: Path, policy: Path, workspace: Path, capsys) -> None:
    text = (
        JOB.replace("rounds: 3", "rounds: 9")
        .replace("mode: he", "mode: tee")
        .replace("percentile: 10", "percentile: 60")
    )
    job = make_job(tmp_path / "job", text, workspace / "admin@lead")
    code, out, err = run(capsys, "policy", "explain", policy, "--job", job, "--kit", workspace / "site-1")
    assert code == 1
    assert "Decision for job 'demo': REFUSE (5 rules not met)" in out
    assert (
        "FAIL signer [signer_untrusted]: Signed by admin@lead (project_admin of lead), whom this site" in out
    )
    assert "FAIL mode [mode_not_allowed]: Mode tee is not allowed; this site accepts he, mask." in out
    assert "FAIL rounds [too_many_rounds]: 9 rounds is more than this site's limit of 5." in out
    assert "FAIL attestation [attestation_missing]: Mode tee needs attestation rules" in out
    assert (
        "FAIL privacy.percentile [privacy_weaker]" in out
        and "percentile 60.0 is above the site's 25.0" in out
    )
    assert err == (
        "secagg: signer_untrusted: job 'demo' refused: signer_untrusted, mode_not_allowed, too_many_rounds, "
        "privacy_weaker, attestation_missing\n"
    )


def test_explain_without_kit_is_unverified(tmp_path: Path, policy: Path, capsys) -> None:
    job = make_job(tmp_path / "job", JOB, None)
    code, out, err = run(capsys, "policy", "explain", policy, "--job", job)
    assert code == 1
    assert "Signature: not checked" in out
    assert "FAIL signer [signer_unverified]" in out and "signer_unverified" in err


def test_explain_tampered_job(tmp_path: Path, policy: Path, workspace: Path, capsys) -> None:
    job = make_job(tmp_path / "job", JOB, workspace / "submitter@org-1")
    (job / "train.py").write_text("evil\n")
    code, out, err = run(capsys, "policy", "explain", policy, "--job", job, "--kit", workspace / "site-1")
    assert code == 1
    assert "Signature and integrity: FAILED" in out and "FAIL train.py: SHA-256 differs" in out
    assert err.startswith("secagg: job_rejected: ")
