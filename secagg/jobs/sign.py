"""Write ``manifest.json`` and ``manifest.sig`` for a job folder with a submitter's startup kit."""

from __future__ import annotations

from pathlib import Path

from secagg.errors import ConfigError, IdentityError
from secagg.jobs.job import JOB_FILE, load_job
from secagg.jobs.manifest import build_manifest, write_manifest
from secagg.jobs.package import DEFAULT_MAX_BYTES, scan_dir
from secagg.jobs.signer import SUBMIT_ROLES
from secagg.jobs.signing import write_signature
from secagg.provision.kit import Kit


def sign_job(job_dir: Path | str, kit: Kit, max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """Refuse early what no site would accept (a role that may not submit, a broken job.yaml)."""
    job_dir = Path(job_dir)
    if not job_dir.is_dir():
        raise ConfigError(f"{job_dir}: sign a job folder (tar it after signing)")
    identity = kit.identity
    if identity.role not in SUBMIT_ROLES:
        raise IdentityError(
            f"{identity.name} has role {identity.role!r}, which may not submit jobs "
            f"(allowed: {', '.join(sorted(SUBMIT_ROLES))})"
        )
    job = load_job(job_dir, max_bytes)
    manifest = build_manifest(scan_dir(job_dir, max_bytes))
    for name in (JOB_FILE, job.spec.model, job.spec.entry):
        if name not in manifest.files:
            raise ConfigError(f"{job_dir}: {name} named by job.yaml is not in the folder")
    path = write_manifest(job_dir, manifest)
    write_signature(job_dir, path.read_bytes(), kit.private_key, kit.cert)
    return path
