"""Job packages: format, manifest, signing (provisioned keys, sigstore) and safe verification."""

from secagg.jobs.errors import JobRejected
from secagg.jobs.job import Job, VerifiedJob, load_job, parse_spec, verify_job
from secagg.jobs.keyless import BundleRejected, SigstoreIdentity, verify_bundle
from secagg.jobs.manifest import Manifest
from secagg.jobs.package import DEFAULT_MAX_BYTES
from secagg.jobs.sign import sign_job
from secagg.jobs.signer import SUBMIT_ROLES, SignerInfo
from secagg.jobs.spec import JobSpec

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SUBMIT_ROLES",
    "BundleRejected",
    "Job",
    "JobRejected",
    "JobSpec",
    "Manifest",
    "SignerInfo",
    "SigstoreIdentity",
    "VerifiedJob",
    "load_job",
    "parse_spec",
    "sign_job",
    "verify_bundle",
    "verify_job",
]
