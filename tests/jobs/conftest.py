"""Job package fixtures: a small valid job folder, signed by the project's ``lead`` admin."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from secagg.jobs import sign_job
from secagg.provision.kit import Kit, load_kit

JOB_YAML = """\
name: breast-cancer
rounds: 3
min_sites: 2
mode: he
model: model.safetensors
entry: train.py
round_timeout: 60
strategy: {name: fedavg}
he: {preset: secagg-default}
privacy:
  - {name: percentile, percentile: 20, gamma: 0.5}
params: {lr: 0.01}
"""


def write_job(root: Path, job_yaml: str = JOB_YAML) -> Path:
    root.mkdir(parents=True)
    (root / "job.yaml").write_text(job_yaml)
    (root / "train.py").write_text("print('training')\n")
    (root / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (root / "lib").mkdir()
    (root / "lib" / "util.py").write_text("X = 1\n")
    return root


@pytest.fixture(scope="session")
def kits(workspace: Path) -> dict[str, Kit]:
    names = ["admin@lead", "submitter@org-1", "member@org-2", "site-1"]
    return {n: load_kit(workspace / n) for n in names}


@pytest.fixture(scope="session")
def ca_key(workspace: Path):
    return serialization.load_pem_private_key((workspace / ".provisioner" / "ca.key").read_bytes(), None)


@pytest.fixture(scope="session")
def signed_template(tmp_path_factory: pytest.TempPathFactory, kits: dict[str, Kit]) -> Path:
    root = write_job(tmp_path_factory.mktemp("tmpl") / "job")
    sign_job(root, kits["submitter@org-1"])
    return root


@pytest.fixture
def signed_job(tmp_path: Path, signed_template: Path) -> Path:
    """A fresh copy of a validly signed job folder that a test may damage."""
    dst = tmp_path / "job"
    shutil.copytree(signed_template, dst)
    return dst
