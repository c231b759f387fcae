"""Fuzz (#18): job.yaml, manifest.json and site policies.

Seeds: the repository's example policies and a job.yaml and manifest as the code writes them. The
crashes this found (a ``yaml.reader.ReaderError`` on a control character, ``rfc8785`` refusing an
integer past 2^53 in a manifest) are fixed and kept as regressions in ``test_regressions``; alias
bombs are refused by ``secagg.safeyaml`` and tested there (tests/test_safeyaml.py).
"""

from __future__ import annotations

import json

from hypothesis import given

from secagg.errors import SecaggError
from secagg.jobs.job import parse_spec
from secagg.jobs.manifest import parse_manifest
from secagg.policy.check import check_policy_text
from tests.fuzz._harness import VECTORS, Target, inputs

_POLICIES = VECTORS.parent.parent / "policies"

JOB_YAML = b"""\
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


def _manifest() -> bytes:
    files = {
        "job.yaml": {"sha256": "ab" * 32, "size": len(JOB_YAML)},
        "train.py": {"sha256": "cd" * 32, "size": 9},
    }
    return json.dumps({"files": files}).encode()


def _policy(data: bytes) -> None:
    check_policy_text(data.decode("utf-8", "replace"))


def _warm_rdp() -> None:
    """A policy with a Gaussian filter is checked by RDP accounting, whose first use imports opacus
    and torch (20-30 s on a loaded machine): once, before the timed inputs."""
    from secagg.privacy.accounting import rdp_epsilon

    rdp_epsilon([(1.0, 0.01, 1)], 1e-5)


TARGETS = [
    Target("job_yaml", parse_spec, lambda: [JOB_YAML], (SecaggError,)),
    Target("manifest_json", parse_manifest, lambda: [_manifest()], (SecaggError,)),
    Target(
        "policy_yaml",
        _policy,
        lambda: [p.read_bytes() for p in sorted(_POLICIES.glob("*.yaml"))],
        (SecaggError,),
        warm=_warm_rdp,
    ),
]
_T = {t.name: t for t in TARGETS}


@given(inputs(_T["job_yaml"]))
def test_job_yaml(data: bytes) -> None:
    _T["job_yaml"].check(data)


@given(inputs(_T["manifest_json"]))
def test_manifest_json(data: bytes) -> None:
    _T["manifest_json"].check(data)


@given(inputs(_T["policy_yaml"]))
def test_policy_yaml(data: bytes) -> None:
    _T["policy_yaml"].check(data)
