from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from secagg.cli import main
from secagg.errors import ConfigError, IdentityError
from secagg.provision.identity import verify_cert
from secagg.provision.kit import load_kit
from secagg.provision.project import load_project
from secagg.provision.writer import provision
from tests.conftest import make_project


def test_every_participant_gets_a_kit_with_private_key_0600(workspace: Path) -> None:
    for name in ["aggregator", "site-1", "site-2", "site-3", "admin@lead", "submitter@org-1"]:
        kit = load_kit(workspace / name)
        assert stat.S_IMODE((workspace / name / "key.pem").stat().st_mode) == 0o600
        assert kit.identity.name == name
        assert kit.cert.public_key().curve.name == "secp384r1"  # type: ignore[union-attr]


def test_roles_and_orgs_are_in_the_certificate(workspace: Path) -> None:
    assert load_kit(workspace / "site-2").identity.role == "site"
    assert load_kit(workspace / "site-2").identity.org == "org-2"
    assert load_kit(workspace / "admin@lead").identity.role == "project_admin"
    agg = load_kit(workspace / "aggregator", kind="aggregator")
    san = agg.cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert "127.0.0.1" in [str(v) for v in san.get_values_for_type(__import__("cryptography").x509.IPAddress)]
    eku = agg.cert.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku


def test_wrong_kind_of_kit_is_refused(workspace: Path) -> None:
    with pytest.raises(ConfigError, match="is a site kit, not a aggregator kit"):
        load_kit(workspace / "site-1", kind="aggregator")


def test_certificate_from_another_ca_is_refused(workspace: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    provision(make_project(name="other-project"), other)
    foreign = load_kit(other / "site-1").cert
    with pytest.raises(IdentityError, match="not issued by this project's CA"):
        verify_cert(foreign, load_kit(workspace / "site-1").ca_cert)


def test_group_readable_key_is_refused(workspace: Path, tmp_path: Path) -> None:
    import shutil

    kit = tmp_path / "kit"
    shutil.copytree(workspace / "site-1", kit)
    (kit / "key.pem").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_kit(kit)


@pytest.mark.parametrize(
    ("file", "make", "words"),
    [
        ("cert.pem", lambda p: __import__("os").mkfifo(p), "is a named pipe (FIFO)"),
        ("ca.pem", lambda p: p.symlink_to("/dev/zero"), "is a device"),
        ("peers/site-2.pem", lambda p: p.mkdir(), "is a directory"),
    ],
)
def test_a_kit_file_of_another_kind_is_named_not_read(
    workspace: Path, tmp_path: Path, file: str, make: object, words: str
) -> None:
    """Audit 18 (G3): a FIFO for a kit's cert.pem said "missing" (or, read, would hang); /dev/zero
    was read without end. Each is refused naming what it is."""
    import shutil

    from secagg.userfile import UserFileError
    from tests.hostile_files import within

    kit = tmp_path / "kit"
    shutil.copytree(workspace / "site-1", kit)
    (kit / file).unlink()
    make(kit / file)  # type: ignore[operator]
    with pytest.raises(UserFileError) as info:
        within(5, lambda: load_kit(kit).peer_certs())
    assert info.value.code == "not_a_file" and str(info.value) == f"{kit / file}: {words}, not a kit file"


def test_cli_refuses_non_empty_workspace_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = Path(__file__).parents[2] / "deploy" / "project.example.yaml"
    ws = tmp_path / "ws"
    assert main(["provision", str(project), "-o", str(ws)]) == 0
    before = (ws / "site-1" / "cert.pem").read_bytes()
    assert main(["provision", str(project), "-o", str(ws)]) == 1
    assert "use --force" in capsys.readouterr().err
    assert (ws / "site-1" / "cert.pem").read_bytes() == before
    assert main(["provision", str(project), "-o", str(ws), "--force"]) == 0
    assert (ws / "site-1" / "cert.pem").read_bytes() != before


def test_bad_project_file_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\nsites: [{name: a}]\nkey_holder: b\n")
    with pytest.raises(ConfigError, match="key_holder 'b' is not one of the sites"):
        load_project(bad)
    bad.write_text("name: x\nsites: [{name: a, colour: red}]\n")
    with pytest.raises(ConfigError, match=r"sites\[0\]\.colour"):
        load_project(bad)


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["provision"])
    assert exc.value.code == 2
