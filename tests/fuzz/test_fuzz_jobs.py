"""Fuzz (#18): job packages (tar), job.yaml, manifest.json and site policies.

Seeds: the repository's example policies, a job.yaml and manifest as the code writes them, and job
tarballs in ustar, pax and GNU formats (fuzzed *before* gzip, so mutations reach the tar headers:
sizes, long names, member types, checksums). The
crashes this found (a ``yaml.reader.ReaderError`` on a control character, ``rfc8785`` refusing an
integer past 2^53 in a manifest) are fixed and kept as regressions in ``test_regressions``; alias
bombs are refused by ``secagg.safeyaml`` and tested there (tests/test_safeyaml.py).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import tempfile
from pathlib import Path

from hypothesis import given

from secagg.errors import SecaggError
from secagg.jobs.job import parse_spec, verify_job
from secagg.jobs.manifest import FileEntry, Manifest, parse_manifest
from secagg.policy.check import check_policy_text
from tests.fuzz._harness import VECTORS, Target, inputs
from tests.jobs.conftest import JOB_YAML as _JOB_YAML_TEXT

_POLICIES = VECTORS.parent.parent / "policies"

JOB_YAML = _JOB_YAML_TEXT.encode()  # the job fixtures' valid job.yaml, as bytes


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


#: the package limit in the tar target: small, so that blown-up sizes meet it quickly
_TAR_LIMIT = 1 << 20


def _tar_seeds() -> list[bytes]:
    files = {
        "job.yaml": JOB_YAML.replace(b"model.safetensors", b"train.py"),
        "train.py": b"print('hi')\n",
        "lib/" + "long_name_" * 12 + ".py": b"X = 1\n",
    }
    entries = {n: FileEntry(sha256=hashlib.sha256(d).hexdigest(), size=len(d)) for n, d in files.items()}
    files["manifest.json"] = Manifest(files=entries).canonical()  # valid: verification goes past it
    files["manifest.sig"] = b"{}"
    out = []
    for fmt in (tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            for name, data in files.items():
                if fmt == tarfile.USTAR_FORMAT and len(name) > 100:
                    continue
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        out.append(buf.getvalue())
    return out


def _job_tar(data: bytes) -> None:
    """Gzip the (mutated) tar and verify it as a site would: listing, hashing, job.yaml, manifest.
    No CA is given, so nothing is ever extracted (extraction follows a passed signature check)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-tar-") as tmp:
        path = Path(tmp) / "job.tar.gz"
        path.write_bytes(gzip.compress(data, compresslevel=1))
        verify_job(path, None, max_bytes=_TAR_LIMIT)


TARGETS = [
    Target("job_tar", _job_tar, _tar_seeds, (SecaggError,)),
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


@given(inputs(_T["job_tar"]))
def test_job_tar(data: bytes) -> None:
    _T["job_tar"].check(data)


@given(inputs(_T["job_yaml"]))
def test_job_yaml(data: bytes) -> None:
    _T["job_yaml"].check(data)


@given(inputs(_T["manifest_json"]))
def test_manifest_json(data: bytes) -> None:
    _T["manifest_json"].check(data)


@given(inputs(_T["policy_yaml"]))
def test_policy_yaml(data: bytes) -> None:
    _T["policy_yaml"].check(data)
