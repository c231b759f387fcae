"""``secagg job sign | verify | verify-bundle``: exit codes and the one-line error contract."""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

import pytest

from secagg.cli import main
from tests.jobs.conftest import write_job

V = Path(__file__).parent.parent / "vectors" / "sigstore"
POLICY = """\
version: 1
signers: {submitters: [submitter@org-1]}
modes: [he]
"""


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(POLICY)
    return p


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_sign_then_verify(tmp_path: Path, workspace: Path, policy: Path, capsys) -> None:
    root = write_job(tmp_path / "job")
    code, out, _ = run(capsys, "job", "sign", root, "--kit", workspace / "submitter@org-1")
    assert code == 0 and "signed by submitter@org-1" in out
    assert (root / "manifest.json").is_file() and (root / "manifest.sig").is_file()
    code, out, err = run(capsys, "job", "verify", root, "--policy", policy, "--kit", workspace / "site-1")
    assert code == 0, err
    assert "authentic" in out and "a submitter this site trusts" in out


def test_verify_tarball_cleans_up(
    tmp_path: Path, signed_job: Path, workspace: Path, policy: Path, capsys, monkeypatch
) -> None:
    tar = tmp_path / "job.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(signed_job, arcname=".")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    code, _, err = run(capsys, "job", "verify", tar, "--policy", policy, "--kit", workspace / "site-1")
    assert code == 0, err
    assert list(scratch.iterdir()) == []


def test_sign_with_member_kit_refused(tmp_path: Path, workspace: Path, capsys) -> None:
    root = write_job(tmp_path / "job")
    code, _, err = run(capsys, "job", "sign", root, "--kit", workspace / "member@org-2")
    assert code == 1
    assert err.startswith("secagg: identity: member@org-2 has role 'member', which may not submit jobs")


def test_verify_prints_every_failure(signed_job: Path, workspace: Path, policy: Path, capsys) -> None:
    (signed_job / "train.py").write_text("print('evil')    \n")
    (signed_job / "extra.py").write_text("x")
    code, out, err = run(
        capsys, "job", "verify", signed_job, "--policy", policy, "--kit", workspace / "site-1"
    )
    assert code == 1
    assert "FAIL extra.py: file not listed in the manifest" in out
    assert "FAIL train.py: SHA-256 differs from the manifest (file modified)" in out
    assert err.count("\n") == 1 and err.startswith("secagg: job_rejected: ")


def test_verify_untrusted_signer(tmp_path: Path, workspace: Path, capsys) -> None:
    root = write_job(tmp_path / "job")
    assert main(["job", "sign", str(root), "--kit", str(workspace / "admin@lead")]) == 0
    p = tmp_path / "p.yaml"
    p.write_text(POLICY)
    code, out, err = run(capsys, "job", "verify", root, "--policy", p, "--kit", workspace / "site-1")
    assert code == 1 and "FAIL Signed by admin@lead" in out
    assert err.startswith("secagg: signer_untrusted: ")


def test_verify_without_kit_cannot_check_manifest_sig(signed_job: Path, policy: Path, capsys) -> None:
    code, _, err = run(capsys, "job", "verify", signed_job, "--policy", policy)
    assert code == 1 and "no project CA given" in err


def test_verify_bad_policy(signed_job: Path, tmp_path: Path, workspace: Path, capsys) -> None:
    p = tmp_path / "p.yaml"
    p.write_text("version: 1\nmodes: [he]\n")
    code, _, err = run(capsys, "job", "verify", signed_job, "--policy", p, "--kit", workspace / "site-1")
    assert (
        code == 1 and err.startswith("secagg: config: policy") and "'signers' is a required property" in err
    )


def test_verify_bundle_cli(capsys, tmp_path: Path) -> None:
    args = [
        "job",
        "verify-bundle",
        V / "staging/bundle.txt",
        "--bundle",
        V / "staging/bundle.txt.sigstore",
        "--identity",
        "a@tny.town",
        "--issuer",
        "https://github.com/login/oauth",
    ]
    code, out, _ = run(capsys, *args, "--staging")
    assert code == 0 and "signed by sigstore identity a@tny.town" in out
    code, _, _ = run(capsys, *args, "--trusted-root", V / "trusted_root/staging.trusted_root.json")
    assert code == 0
    # production root (the default) refuses a staging bundle
    code, _, err = run(capsys, *args)
    assert code == 1 and err.startswith("secagg: sigstore_rejected: ")
    changed = tmp_path / "bundle.txt"
    changed.write_bytes(V.joinpath("staging/bundle.txt").read_bytes() + b"!")
    args[2] = changed
    code, _, err = run(capsys, *args, "--staging")
    assert code == 1 and "sigstore_rejected" in err


def test_verify_bundle_wrong_identity(capsys) -> None:
    code, _, err = run(
        capsys,
        "job",
        "verify-bundle",
        V / "staging/bundle.txt",
        "--bundle",
        V / "staging/bundle.txt.sigstore",
        "--identity",
        "mallory@example.com",
        "--issuer",
        "https://github.com/login/oauth",
        "--staging",
    )
    assert code == 1 and "sigstore_rejected" in err


def test_verify_bundle_usage_errors(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["job", "verify-bundle", "x", "--bundle", "b", "--identity", "i"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(
            [
                "job",
                "verify-bundle",
                "x",
                "--bundle",
                "b",
                "--identity",
                "i",
                "--issuer",
                "u",
                "--staging",
                "--trusted-root",
                "r",
            ]
        )
    assert info.value.code == 2


def test_verify_bundle_missing_file(capsys, tmp_path: Path) -> None:
    code, _, err = run(
        capsys,
        "job",
        "verify-bundle",
        tmp_path / "nope",
        "--bundle",
        tmp_path / "b",
        "--identity",
        "i",
        "--issuer",
        "https://x",
    )
    assert code == 1 and err == f"secagg: file_missing: {tmp_path / 'nope'}: no such file\n"


@pytest.mark.parametrize("which", ["file", "bundle"])
def test_verify_bundle_of_a_fifo_or_device_names_it(capsys, tmp_path: Path, which: str) -> None:
    """Audit 18 (G3): FILE or --bundle as a FIFO hung the command, /dev/zero filled memory."""
    import os

    from tests.hostile_files import within

    fifo, zero = tmp_path / "fifo", tmp_path / "zero"
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    what = {"file": "a file", "bundle": "a sigstore bundle"}[which]
    for bad, words in ((fifo, "is a named pipe (FIFO)"), (zero, "is a device")):
        paths = {"file": V / "staging/bundle.txt", "bundle": V / "staging/bundle.txt.sigstore", which: bad}
        argv = ["job", "verify-bundle", paths["file"], "--bundle", paths["bundle"]]
        code, _, err = within(5, lambda argv=argv: run(capsys, *argv, "--identity", "i", "--issuer", "u"))
        assert code == 1 and err == f"secagg: not_a_file: {bad}: {words}, not {what}\n"


def test_job_help_exits_zero(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["job", "--help"])
    assert info.value.code == 0
    assert "verify-bundle" in capsys.readouterr().out


def test_verify_a_tar_header_bomb_says_only_the_size(
    tmp_path: Path, workspace: Path, policy: Path, capsys
) -> None:
    """#18: a ~1 MB .tar.gz whose GNU long name declares 1 GiB: one line, the size, nothing "missing"."""
    import tarfile

    from tests.jobs.test_tar_bombs import GIB, _header, bomb

    tar = bomb(tmp_path / "job.tar.gz", _header("././@LongLink", tarfile.GNUTYPE_LONGNAME, GIB))
    code, out, err = run(capsys, "job", "verify", tar, "--policy", policy, "--kit", workspace / "site-1")
    assert code == 1
    assert err == (
        f"secagg: package_too_large: {tar} rejected (1 problem): a tar header declares {GIB} bytes of "
        "extended header data (pax or GNU long name), over the limit of 1048576\n"
    )
    assert "missing" not in out
