"""Offline sigstore verification against the real published bundles in tests/vectors/sigstore."""

from __future__ import annotations

from pathlib import Path

import pytest

from secagg.errors import ConfigError
from secagg.jobs import BundleRejected, JobRejected, SigstoreIdentity, verify_bundle, verify_job

V = Path(__file__).parent.parent / "vectors" / "sigstore"
CONF = V / "conformance" / "bundle-verify"
BEACON = (
    "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/"
    "extremely-dangerous-oidc-beacon.yml@refs/heads/main"
)
GHA = "https://token.actions.githubusercontent.com"
GH = "https://github.com/login/oauth"

GOOD = [
    *[
        (CONF / "a.txt", CONF / c / "bundle.sigstore.json", BEACON, GHA, "production")
        for c in (
            "happy-path-v0.1",
            "happy-path-v0.2",
            "happy-path-v0.3",
            "happy-path-v0.3-new-mediaType",
            "happy-path-intoto-in-dsse-v3",
        )
    ],
    (
        V / "staging/bundle_v3.txt",
        V / "staging/bundle_v3.txt.sigstore",
        "william@yossarian.net",
        GH,
        "staging",
    ),
    (V / "staging/bundle.txt", V / "staging/bundle.txt.sigstore", "a@tny.town", GH, "staging"),
    (
        V / "staging/tsa/bundle.txt",
        V / "staging/tsa/bundle.txt.sigstore",
        "alexis.challande@trailofbits.com",
        "https://accounts.google.com",
        "staging",
    ),
]
IDS = [f"{a.parent.name}/{a.name}:{b.parent.name}" for a, b, *_ in GOOD]


@pytest.mark.parametrize(("artifact", "bundle", "identity", "issuer", "instance"), GOOD, ids=IDS)
def test_published_bundle_verifies(artifact, bundle, identity, issuer, instance) -> None:
    signer = verify_bundle(
        artifact.read_bytes(), bundle.read_bytes(), [SigstoreIdentity(identity, issuer, instance)]
    )
    assert signer.kind == "sigstore" and signer.name == identity and signer.issuer == issuer


@pytest.mark.parametrize(("artifact", "bundle", "identity", "issuer", "instance"), GOOD, ids=IDS)
def test_one_changed_byte_fails(artifact, bundle, identity, issuer, instance) -> None:
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    with pytest.raises(BundleRejected):
        verify_bundle(bytes(data), bundle.read_bytes(), [SigstoreIdentity(identity, issuer, instance)])


@pytest.mark.parametrize(("artifact", "bundle", "identity", "issuer", "instance"), GOOD, ids=IDS)
def test_wrong_identity_or_issuer_fails(artifact, bundle, identity, issuer, instance) -> None:
    for wrong in (
        SigstoreIdentity("mallory@example.com", issuer, instance),
        SigstoreIdentity(identity, "https://evil.example.com", instance),
    ):
        with pytest.raises(BundleRejected):
            verify_bundle(artifact.read_bytes(), bundle.read_bytes(), [wrong])


@pytest.mark.parametrize(("artifact", "bundle", "identity", "issuer", "instance"), GOOD, ids=IDS)
def test_other_instance_root_fails(artifact, bundle, identity, issuer, instance) -> None:
    other = "staging" if instance == "production" else "production"
    with pytest.raises(BundleRejected):
        verify_bundle(artifact.read_bytes(), bundle.read_bytes(), [SigstoreIdentity(identity, issuer, other)])


def test_byteflip_vector_fails() -> None:
    with pytest.raises(BundleRejected, match="digest mismatch|Signature is invalid"):
        verify_bundle(
            (V / "tampered/bundle_v3.txt.byteflip").read_bytes(),
            (V / "staging/bundle_v3.txt.sigstore").read_bytes(),
            [SigstoreIdentity("william@yossarian.net", GH, "staging")],
        )


def test_cve_2022_36056_fails() -> None:
    with pytest.raises(BundleRejected, match="inconsistent"):
        verify_bundle(
            (V / "staging/bundle_cve_2022_36056.txt").read_bytes(),
            (V / "staging/bundle_cve_2022_36056.txt.sigstore").read_bytes(),
            [SigstoreIdentity("william@yossarian.net", GH, "staging")],
        )


def test_any_of_several_identities() -> None:
    ids = [SigstoreIdentity("someone@else", GH, "staging"), SigstoreIdentity("a@tny.town", GH, "staging")]
    signer = verify_bundle(
        (V / "staging/bundle.txt").read_bytes(), (V / "staging/bundle.txt.sigstore").read_bytes(), ids
    )
    assert signer.name == "a@tny.town"


def test_no_trusted_identity_fails() -> None:
    with pytest.raises(BundleRejected, match="no sigstore identity is trusted"):
        verify_bundle(b"x", (V / "staging/bundle.txt.sigstore").read_bytes(), [])


FAILS = sorted(p for p in CONF.iterdir() if p.name.endswith("_fail"))


@pytest.mark.parametrize("case", FAILS, ids=[p.name for p in FAILS])
def test_conformance_fail_cases(case: Path) -> None:
    artifact = case / "artifact" if (case / "artifact").exists() else CONF / "a.txt"
    identity = (case / "identity").read_text().strip() if (case / "identity").exists() else BEACON
    issuer = (case / "issuer").read_text().strip() if (case / "issuer").exists() else GHA
    root = case / "trusted_root.json" if (case / "trusted_root.json").exists() else None
    with pytest.raises((BundleRejected, ConfigError)):
        verify_bundle(
            artifact.read_bytes(),
            (case / "bundle.sigstore.json").read_bytes(),
            [SigstoreIdentity(identity, issuer)],
            root_path=root,
        )


def test_job_with_bundle_for_another_artifact(signed_job: Path, kits) -> None:
    """A genuine bundle, but over some other file: the job's manifest is not what was signed."""
    (signed_job / "manifest.sig").unlink()
    (signed_job / "manifest.sigstore.json").write_bytes((V / "staging/bundle.txt.sigstore").read_bytes())
    with pytest.raises(JobRejected) as info:
        verify_job(
            signed_job, kits["site-1"].ca_cert, trusted=[SigstoreIdentity("a@tny.town", GH, "staging")]
        )
    (failure,) = info.value.failures
    assert failure.startswith("manifest.sigstore.json: sigstore bundle not accepted")
    assert "digest mismatch" in failure or "Signature is invalid" in failure


def test_job_with_bundle_and_no_trusted_identity(signed_job: Path, kits) -> None:
    (signed_job / "manifest.sigstore.json").write_bytes((V / "staging/bundle.txt.sigstore").read_bytes())
    with pytest.raises(JobRejected, match="no sigstore identity is trusted"):
        verify_job(signed_job, kits["site-1"].ca_cert)


def test_sigstore_only_job_plumbing(signed_job: Path, monkeypatch) -> None:
    """With the bundle check stubbed, a job carrying only manifest.sigstore.json verifies with that
    signer, the bundle is checked over the exact manifest bytes, and with the policy's identities."""
    import secagg.jobs.job as job_mod
    from secagg.jobs import SignerInfo

    seen = {}

    def fake(artifact, bundle_json, identities, *, root_path=None):
        seen.update(artifact=artifact, bundle=bundle_json, identities=list(identities))
        return SignerInfo(kind="sigstore", name=identities[0].identity, issuer=identities[0].issuer)

    monkeypatch.setattr(job_mod, "verify_bundle", fake)
    (signed_job / "manifest.sig").unlink()
    (signed_job / "manifest.sigstore.json").write_bytes(b"{}")
    ident = SigstoreIdentity(BEACON, GHA)
    job = verify_job(signed_job, None, trusted=[ident])
    assert seen["artifact"] == (signed_job / "manifest.json").read_bytes()
    assert seen["identities"] == [ident]
    assert job.signers == (SignerInfo(kind="sigstore", name=BEACON, issuer=GHA),)


@pytest.mark.parametrize("kind", ["fifo", "device", "huge"])
def test_a_trusted_root_that_is_no_small_file_is_named_not_read(tmp_path: Path, kind: str) -> None:
    import os

    from secagg.jobs.keyless import trusted_root
    from secagg.userfile import UserFileError
    from tests.hostile_files import within

    path = tmp_path / "root.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    else:
        with path.open("wb") as fh:
            fh.truncate(64 << 20)  # sparse: 64 MiB that take no disk
    with pytest.raises(UserFileError) as err:
        within(5, lambda: trusted_root("production", path))
    want = {"fifo": "not_a_file", "device": "not_a_file", "huge": "file_too_large"}[kind]
    assert err.value.code == want and "sigstore trusted root" in str(err.value)
