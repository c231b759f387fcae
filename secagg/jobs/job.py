"""A job package as a parsed object: load it (unverified) or verify it (authenticity + integrity).

``verify_job`` is the gate of security invariant 1: nothing from a job is extracted or run before it
passes. It answers *is this package authentic and intact?* only; whether the signer is one this site
trusts, and whether the job's settings satisfy the site's rules, is decided by ``secagg.policy``.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from secagg import safeyaml, validation
from secagg.errors import ConfigError
from secagg.jobs.errors import JobRejected
from secagg.jobs.keyless import BundleRejected, SigstoreIdentity, verify_bundle
from secagg.jobs.manifest import MANIFEST, SIGNATURE, SIGSTORE_BUNDLE, Manifest, check_files, parse_manifest
from secagg.jobs.package import DEFAULT_MAX_BYTES, PackageView, TarView, copy_files, extract, scan, scan_dir
from secagg.jobs.signer import SignerInfo
from secagg.jobs.signing import verify_signature
from secagg.jobs.spec import JobSpec
from secagg.reasons import Reason

JOB_FILE = "job.yaml"


@dataclass(frozen=True)
class Job:
    """A parsed package; ``root`` is the folder (or, unverified, the tarball) it was read from."""

    spec: JobSpec
    root: Path
    files: tuple[str, ...]


@dataclass(frozen=True)
class VerifiedJob(Job):
    """A package whose signature(s), certificate chain and every file digest checked out.

    ``root`` is always a folder: the package folder, or a fresh folder the tarball was extracted to.
    """

    manifest: Manifest
    signers: tuple[SignerInfo, ...]

    @property
    def signer(self) -> SignerInfo:
        return self.signers[0]


#: a job.yaml is a page of settings; anything larger is refused before it is parsed
JOB_YAML_MAX_BYTES = safeyaml.MAX_BYTES


class JobSpecError(ConfigError):
    """``job.yaml`` parsed but a setting is missing, of the wrong type or out of its range."""

    code = Reason.JOB_SPEC_INVALID


def parse_spec(data: bytes, source: str = JOB_FILE) -> JobSpec:
    """``job.yaml`` through :mod:`secagg.safeyaml` (no aliases, no repeated keys, bounded) and the
    :class:`JobSpec` ranges; each problem is named by its field, the message bounded in length."""
    raw = safeyaml.load(data, source, JOB_YAML_MAX_BYTES)
    if not isinstance(raw, dict):
        raise JobSpecError(f"{source}: expected a mapping of settings")
    try:
        return validation.validate(JobSpec, raw)
    except validation.FieldProblems as exc:
        raise JobSpecError(f"{source}: {exc.line()}") from None


def load_job(path: Path | str, max_bytes: int = DEFAULT_MAX_BYTES) -> Job:
    """Parse a package without verifying it (for display and for the signer before signing)."""
    path = Path(path)
    view = scan(path, max_bytes)
    try:
        if view.failures:
            raise view.refusal()
        if JOB_FILE not in view.files:
            raise ConfigError(f"{path}: no {JOB_FILE}")
        spec = parse_spec(view.read(JOB_FILE))
        return Job(spec=spec, root=path, files=tuple(sorted(view.files)))
    finally:
        view.close()


def _read(view: PackageView, name: str, failures: list[str]) -> bytes | None:
    try:
        return view.read(name)
    except JobRejected as exc:
        failures += exc.failures
        return None


def _check_contents(view: PackageView, manifest: Manifest | None) -> tuple[JobSpec | None, list[str]]:
    failures: list[str] = []
    if manifest is not None:
        failures += check_files(manifest, view)
    spec = None
    if JOB_FILE not in view.files:
        failures.append(f"{JOB_FILE}: missing")
    else:
        data = _read(view, JOB_FILE, failures)
        try:
            spec = parse_spec(data) if data is not None else None
        except ConfigError as exc:
            failures.append(str(exc))
    if spec is not None and manifest is not None:
        for role, name in (("model", spec.model), ("entry point", spec.entry)):
            if name not in manifest.files:
                failures.append(f"{JOB_FILE}: {role} {name!r} is not a file of the package")
    return spec, failures


def verify_job(
    path: Path | str,
    ca_cert: x509.Certificate | None,
    *,
    trusted: Sequence[SigstoreIdentity] = (),
    trusted_root: Path | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    now: dt.datetime | None = None,
    dest: Path | None = None,
) -> VerifiedJob:
    """Verify a job package; raise one :class:`JobRejected` that lists every failure found.

    ``ca_cert`` is the site's own project CA (from its kit), the only anchor for ``manifest.sig``.
    ``trusted`` are the sigstore identities the site accepts for ``manifest.sigstore.json``; a bundle
    is verified offline against ``trusted_root`` (default: the root shipped for each identity's
    instance). A tarball is extracted, into ``dest`` or a fresh temporary folder, only after it passed;
    a folder is copied into ``dest`` if one is given (so that what runs cannot change after the check),
    else used in place. Either copy is checked against the manifest again.
    """
    path = Path(path)
    view = scan(path, max_bytes)
    try:
        if view.incomplete:  # the listing stopped (size, entries, unreadable): nothing more is known
            raise view.refusal()
        failures = list(view.failures)
        manifest, manifest_bytes = None, None
        if MANIFEST not in view.files:
            failures.append(f"{MANIFEST}: missing (the package was never signed)")
        else:
            manifest_bytes = _read(view, MANIFEST, failures)
            try:
                manifest = parse_manifest(manifest_bytes) if manifest_bytes is not None else None
            except JobRejected as exc:
                failures += exc.failures
        signers: list[SignerInfo] = []
        has_sig, has_bundle = SIGNATURE in view.files, SIGSTORE_BUNDLE in view.files
        if not (has_sig or has_bundle):
            failures.append(f"no signature: neither {SIGNATURE} nor {SIGSTORE_BUNDLE}")
        if manifest_bytes is not None and has_sig:
            if ca_cert is None:
                failures.append(f"{SIGNATURE}: no project CA given to check the signer against")
            else:
                sig_doc = _read(view, SIGNATURE, failures)
                if sig_doc is not None:
                    signer, sig_failures = verify_signature(manifest_bytes, sig_doc, ca_cert, now)
                    failures += sig_failures
                    signers += [signer] if signer else []
        bundle = _read(view, SIGSTORE_BUNDLE, failures) if has_bundle else None
        if manifest_bytes is not None and bundle is not None:
            try:
                signers.append(verify_bundle(manifest_bytes, bundle, trusted, root_path=trusted_root))
            except BundleRejected as exc:
                failures.append(f"{SIGSTORE_BUNDLE}: {exc}")
        spec, content_failures = _check_contents(view, manifest)
        failures += content_failures
        if failures or spec is None or manifest is None:
            raise JobRejected(failures or ["incomplete package"], subject=str(path))
        root = path
        if isinstance(view, TarView) or dest is not None:
            if isinstance(view, TarView):
                root = extract(view, dest)
            else:
                assert dest is not None
                root = copy_files(view, sorted(view.files), dest)
            extracted = scan_dir(root, max_bytes)
            again = extracted.failures + check_files(manifest, extracted)
            if again:
                shutil.rmtree(root, ignore_errors=True)
                raise JobRejected(again, subject=f"{path} (after extraction)")
        return VerifiedJob(
            spec=spec, root=root, files=tuple(sorted(view.files)), manifest=manifest, signers=tuple(signers)
        )
    finally:
        view.close()
