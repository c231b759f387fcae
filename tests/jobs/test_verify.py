"""Every refusal of ``verify_job`` on a folder, each checked by its specific failure text."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest

from secagg.errors import ConfigError, IdentityError, IntegrityError
from secagg.jobs import JobRejected, load_job, sign_job, verify_job
from secagg.jobs.manifest import build_manifest, write_manifest
from secagg.jobs.package import scan_dir
from secagg.jobs.signing import write_signature
from secagg.provision.ca import issue_cert, make_ca
from tests.jobs.conftest import write_job


def rejected(path: Path, ca, **kw) -> list[str]:
    with pytest.raises(JobRejected) as info:
        verify_job(path, ca, **kw)
    assert isinstance(info.value, IntegrityError)
    return info.value.failures


def resign_with(root: Path, key, cert) -> None:
    manifest = write_manifest(root, build_manifest(scan_dir(root)))
    write_signature(root, manifest.read_bytes(), key, cert)


def test_valid_job_verifies(signed_job: Path, kits) -> None:
    job = verify_job(signed_job, kits["site-1"].ca_cert)
    assert job.spec.name == "breast-cancer"
    assert job.signer.name == "submitter@org-1" and job.signer.role == "lead"
    assert job.signer.kind == "provisioned"
    assert set(job.manifest.files) == {"job.yaml", "train.py", "model.safetensors", "lib/util.py"}
    assert job.root == signed_job


def test_manifest_is_canonical_json(signed_job: Path) -> None:
    data = (signed_job / "manifest.json").read_bytes()
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()


def test_tampered_file(signed_job: Path, kits) -> None:
    (signed_job / "train.py").write_text("print('evil')    \n")
    assert rejected(signed_job, kits["site-1"].ca_cert) == [
        "train.py: SHA-256 differs from the manifest (file modified)"
    ]


def test_tampered_size(signed_job: Path, kits) -> None:
    (signed_job / "train.py").write_text("import os; os.system('x')\n")
    (failure,) = rejected(signed_job, kits["site-1"].ca_cert)
    assert failure.startswith("train.py: size")


def test_added_file(signed_job: Path, kits) -> None:
    (signed_job / "extra.py").write_text("x")
    assert rejected(signed_job, kits["site-1"].ca_cert) == ["extra.py: file not listed in the manifest"]


def test_removed_file(signed_job: Path, kits) -> None:
    (signed_job / "lib" / "util.py").unlink()
    assert rejected(signed_job, kits["site-1"].ca_cert) == ["lib/util.py: listed in the manifest but missing"]


def test_every_failure_is_reported(signed_job: Path, kits) -> None:
    (signed_job / "extra.py").write_text("x")
    (signed_job / "lib" / "util.py").unlink()
    (signed_job / "train.py").write_text("print('evil')    \n")
    failures = rejected(signed_job, kits["site-1"].ca_cert)
    assert len(failures) == 3


def test_tampered_manifest(signed_job: Path, kits) -> None:
    m = json.loads((signed_job / "manifest.json").read_bytes())
    (signed_job / "train.py").write_text("print('evil')\n")
    from secagg.jobs.package import sha256_stream

    with open(signed_job / "train.py", "rb") as fh:
        digest, size = sha256_stream(fh)
    m["files"]["train.py"] = {"sha256": digest, "size": size}
    import rfc8785

    (signed_job / "manifest.json").write_bytes(rfc8785.dumps(m))
    assert rejected(signed_job, kits["site-1"].ca_cert) == [
        "manifest.sig: signature does not match manifest.json"
    ]


def test_non_canonical_manifest(signed_job: Path, kits) -> None:
    m = json.loads((signed_job / "manifest.json").read_bytes())
    (signed_job / "manifest.json").write_text(json.dumps(m, indent=2))
    failures = rejected(signed_job, kits["site-1"].ca_cert)
    assert "manifest.json: not in canonical form (RFC 8785)" in failures


def test_unsigned(tmp_path: Path, kits) -> None:
    root = write_job(tmp_path / "job")
    failures = rejected(root, kits["site-1"].ca_cert)
    assert "manifest.json: missing (the package was never signed)" in failures
    assert "no signature: neither manifest.sig nor manifest.sigstore.json" in failures


def test_foreign_signer(signed_job: Path, kits) -> None:
    other_key, other_ca = make_ca("other-project", 30)
    key, cert = issue_cert(other_key, other_ca, name="submitter@org-1", org="org-1", role="lead", days=30)
    resign_with(signed_job, key, cert)
    (failure,) = rejected(signed_job, kits["site-1"].ca_cert)
    assert "not issued by this project's CA" in failure


def test_foreign_ca_same_name(signed_job: Path, kits) -> None:
    """A CA with the same subject as ours but a different key: caught by the signature on the cert."""
    from cryptography import x509

    other_key, _ = make_ca("x", 30)
    ca = kits["site-1"].ca_cert
    fake_ca = (
        x509.CertificateBuilder()
        .subject_name(ca.subject)
        .issuer_name(ca.subject)
        .public_key(other_key.public_key())
        .serial_number(1)
        .not_valid_before(ca.not_valid_before_utc)
        .not_valid_after(ca.not_valid_after_utc)
        .sign(other_key, __import__("cryptography.hazmat.primitives.hashes", fromlist=["x"]).SHA384())
    )
    key, cert = issue_cert(other_key, fake_ca, name="admin@lead", org="lead", role="project_admin", days=5)
    resign_with(signed_job, key, cert)
    (failure,) = rejected(signed_job, ca)
    assert "does not verify against the project CA" in failure


def test_expired_certificate(signed_job: Path, kits, ca_key) -> None:
    ca = kits["site-1"].ca_cert
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    key, cert = issue_cert(
        ca_key, ca, name="submitter@org-1", org="org-1", role="lead", days=10, not_before=start
    )
    resign_with(signed_job, key, cert)
    (failure,) = rejected(signed_job, ca)
    assert "expired on" in failure


def test_not_yet_valid_at_given_time(signed_job: Path, kits) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    (failure,) = rejected(signed_job, kits["site-1"].ca_cert, now=past)
    assert "not valid yet" in failure


@pytest.mark.parametrize("name", ["member@org-2", "site-1"])
def test_wrong_role(signed_job: Path, kits, name: str) -> None:
    kit = kits[name]
    resign_with(signed_job, kit.private_key, kit.cert)
    (failure,) = rejected(signed_job, kit.ca_cert)
    assert f"has role {kit.identity.role!r}, which may not submit jobs" in failure


@pytest.mark.parametrize("name", ["member@org-2", "site-1"])
def test_sign_refuses_wrong_role(tmp_path: Path, kits, name: str) -> None:
    root = write_job(tmp_path / "job")
    with pytest.raises(IdentityError, match="may not submit jobs"):
        sign_job(root, kits[name])
    assert not (root / "manifest.json").exists()


def test_project_admin_may_sign(tmp_path: Path, kits) -> None:
    root = write_job(tmp_path / "job")
    sign_job(root, kits["admin@lead"])
    assert verify_job(root, kits["site-1"].ca_cert).signer.role == "project_admin"


def test_symlink(signed_job: Path, kits) -> None:
    os.symlink("/etc/passwd", signed_job / "passwd")
    assert "passwd: symbolic link" in rejected(signed_job, kits["site-1"].ca_cert)


def test_symlinked_file_replacing_listed_one(signed_job: Path, kits) -> None:
    (signed_job / "train.py").unlink()
    os.symlink("/etc/hostname", signed_job / "train.py")
    failures = rejected(signed_job, kits["site-1"].ca_cert)
    assert "train.py: symbolic link" in failures
    assert "train.py: listed in the manifest but missing" in failures


def test_hard_link(signed_job: Path, kits) -> None:
    os.link(signed_job / "train.py", signed_job / "copy.py")
    failures = rejected(signed_job, kits["site-1"].ca_cert)
    assert any(f.startswith("train.py: hard link") for f in failures)


def test_fifo(signed_job: Path, kits) -> None:
    os.mkfifo(signed_job / "pipe")
    assert "pipe: device file, socket or pipe" in rejected(signed_job, kits["site-1"].ca_cert)


def test_case_collision(signed_job: Path, kits) -> None:
    (signed_job / "Train.py").write_text("x")
    failures = rejected(signed_job, kits["site-1"].ca_cert)
    assert "'Train.py' and 'train.py': names differ only in case" in failures


@pytest.mark.parametrize("bad", ["../escape.py", "/etc/passwd"])
def test_manifest_with_unsafe_name(signed_job: Path, kits, bad: str) -> None:
    import rfc8785

    m = json.loads((signed_job / "manifest.json").read_bytes())
    m["files"][bad] = {"sha256": "0" * 64, "size": 1}
    kit = kits["submitter@org-1"]
    data = rfc8785.dumps(m)
    (signed_job / "manifest.json").write_bytes(data)
    write_signature(signed_job, data, kit.private_key, kit.cert)
    failures = rejected(signed_job, kit.ca_cert)
    assert any(bad in f and ("absolute path" in f or "escapes the package" in f) for f in failures)


def test_oversize(signed_job: Path, kits) -> None:
    failures = rejected(signed_job, kits["site-1"].ca_cert, max_bytes=100)
    assert any("over the limit of 100" in f for f in failures)


def test_job_yaml_model_must_be_in_package(tmp_path: Path, kits) -> None:
    root = write_job(tmp_path / "job")
    (root / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="model.safetensors"):
        sign_job(root, kits["submitter@org-1"])


def test_job_yaml_extra_key_refused(tmp_path: Path) -> None:
    from tests.jobs.conftest import JOB_YAML

    root = write_job(tmp_path / "job", JOB_YAML + "min_site: 1\n")
    with pytest.raises(Exception, match="min_site: Extra inputs are not permitted"):
        load_job(root)


def test_load_job_unverified(signed_job: Path) -> None:
    job = load_job(signed_job)
    assert job.spec.mode == "he" and job.spec.privacy[0].name == "percentile"
    assert "manifest.sig" in job.files


def test_folder_copied_to_dest(signed_job: Path, kits, tmp_path: Path) -> None:
    dest = tmp_path / "copy"
    job = verify_job(signed_job, kits["site-1"].ca_cert, dest=dest)
    assert job.root == dest and (dest / "lib" / "util.py").read_text() == "X = 1\n"
    (signed_job / "train.py").write_text("changed after the check")
    assert (dest / "train.py").read_text() == "print('training')\n"


def test_rejected_folder_not_copied(signed_job: Path, kits, tmp_path: Path) -> None:
    (signed_job / "extra.py").write_text("x")
    with pytest.raises(JobRejected):
        verify_job(signed_job, kits["site-1"].ca_cert, dest=tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_ca_certificate_as_signer(signed_job: Path, kits, ca_key) -> None:
    ca = kits["site-1"].ca_cert
    resign_with(signed_job, ca_key, ca)
    failures = rejected(signed_job, ca)
    assert "signer certificate: is a CA certificate, not a participant's" in failures


def test_unicode_normalisation_collision(signed_job: Path, kits) -> None:
    (signed_job / "caf\u00e9.py").write_text("a")  # NFC
    (signed_job / "cafe\u0301.py").write_text("b")  # NFD: the same name on macOS
    failures = rejected(signed_job, kits["site-1"].ca_cert)
    assert any("names differ only in case or Unicode normalisation" in f for f in failures)


def test_job_spec_strategy_forms() -> None:
    from secagg.jobs import JobSpec

    base = {"name": "a", "rounds": 1, "min_sites": 1, "mode": "he", "model": "m", "entry": "e.py"}
    assert JobSpec.model_validate(base).strategy.name == "fedavg"
    adam = JobSpec.model_validate({**base, "strategy": "fedadam"}).strategy
    assert adam.name == "fedadam" and adam.eta is not None
    with pytest.raises(Exception, match="fedavg does not use mu"):
        JobSpec.model_validate({**base, "strategy": {"name": "fedavg", "mu": 1}})
    with pytest.raises(Exception, match="must be a relative path inside the package"):
        JobSpec.model_validate({**base, "entry": "../x.py"})
