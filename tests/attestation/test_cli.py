"""``secagg attest verify``: output, JSON shape and the exit-code contract (0 accept, 1 refuse, 2 usage)."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.devtee import make_dev_evidence
from secagg.cli import main
from tests.hostile_files import within

from .conftest import SNP, TDX

GSG = SNP / "go-sev-guest"


def test_accept_prints_every_check(capsys):
    rc = main(["attest", "verify", str(GSG / "attestation.bin"), "--certs", str(GSG / "vcek.testcer")])
    out = capsys.readouterr().out
    assert rc == 0
    for field in ("cert_chain", "report_signature", "vcek_hwid", "leaf_tcb"):
        assert f"[ok] {field}" in out
    assert "decision: accept" in out


def test_policy_refusal_exit_1_one_line(tmp_path, capsys):
    policy = tmp_path / "p.yaml"
    policy.write_text("measurements: ['" + "00" * 48 + "']\nmin_tcb: {snp: 9}\n")
    rc = main(
        [
            "attest",
            "verify",
            str(GSG / "attestation.bin"),
            "--certs",
            str(GSG / "vcek.testcer"),
            "--policy",
            str(policy),
        ]
    )
    cap = capsys.readouterr()
    assert rc == 1
    assert "[FAIL] measurement" in cap.out and "[FAIL] debug" in cap.out and "[FAIL] min_tcb.snp" in cap.out
    assert cap.err.count("\n") == 1 and cap.err.startswith(
        "secagg: attestation: attestation refused (sev-snp)"
    )


def test_json_output(capsys):
    rc = main(
        [
            "attest",
            "verify",
            str(TDX / "cos-113-tdx-quote.dat"),
            "--json",
            "--nonce",
            (TDX / "cos-113-tdx-quote.nonce.dat").read_bytes().hex(),
        ]
    )
    d = json.loads(capsys.readouterr().out)
    assert rc == 0 and d["decision"] == "accept" and d["type"] == "tdx" and d["verified"] is True
    assert {"measurement", "report_data", "errors"} <= set(d) and len(d["measurement"]) == 96
    rc = main(["attest", "verify", str(TDX / "cos-113-tdx-quote.dat"), "--json", "--nonce", "01"])
    d = json.loads(capsys.readouterr().out)
    assert rc == 1 and d["decision"] == "refuse" and d["errors"][0].startswith("report_data")


def test_not_verified_is_integrity_error(capsys):
    rc = main(["attest", "verify", str(TDX / "tdx_prod_quote_SPR_E4.dat")])
    assert rc == 1 and capsys.readouterr().err.startswith("secagg: integrity: attestation not verified (tdx)")


def test_dev_tee_flag(tmp_path, capsys):
    ev = tmp_path / "ev.json"
    ev.write_bytes(make_dev_evidence(ec.generate_private_key(ec.SECP384R1()), bytes(48), b"n"))
    assert main(["attest", "verify", str(ev)]) == 1
    assert "allow_insecure_dev_tee" in capsys.readouterr().err
    assert main(["attest", "verify", str(ev), "--allow-insecure-dev-tee"]) == 0


def test_usage_and_config_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["attest", "verify"])
    assert exc.value.code == 2
    assert main(["attest", "verify", str(GSG / "attestation.bin"), "--nonce", "zz"]) == 2
    assert main(["attest", "verify", str(tmp_path / "missing.bin")]) == 1
    bad = tmp_path / "p.yaml"
    bad.write_text("nonsense_key: 1\n")
    assert main(["attest", "verify", str(GSG / "attestation.bin"), "--policy", str(bad)]) == 1
    assert "nonsense_key" in capsys.readouterr().err


def _dev_evidence(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ed25519

    path = tmp_path / "dev.json"
    path.write_bytes(make_dev_evidence(ed25519.Ed25519PrivateKey.generate(), b"\1" * 48, b"\0" * 64))
    return path


@pytest.mark.parametrize("kind", ["dev-tee", "sev-snp"])
def test_random_certs_are_named_not_blamed_on_the_evidence(tmp_path, capsys, kind):
    """#18 (weak messages): random bytes as --certs were reported as bad evidence (integrity)."""
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 8)
    if kind == "dev-tee":
        args = [str(_dev_evidence(tmp_path)), "--allow-insecure-dev-tee", "--certs", str(junk)]
        problem = "is not a PEM public key or PEM certificate (Unable to load PEM file)"
    else:
        args = [str(GSG / "attestation.bin"), "--certs", str(junk)]
        problem = "is not PEM, DER or a SEV-SNP certificate table"
    assert main(["attest", "verify", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"secagg: config: --certs {junk} (2048 bytes) {problem}"), err
    assert err.count("\n") == 1 and "https://" not in err


def test_the_bad_one_of_several_certs_is_named(tmp_path, capsys):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x99" * 100)
    args = [str(GSG / "attestation.bin"), "--certs", str(GSG / "vcek.testcer"), str(junk)]
    assert main(["attest", "verify", *args]) == 1
    assert capsys.readouterr().err.startswith(f"secagg: config: --certs {junk} (100 bytes) is not PEM")


def test_oversized_dev_evidence_is_too_large_not_unrecognised(tmp_path, capsys):
    """Canonical JSON puts "format" after "evidence": a padded evidence hid its format past 16 KiB."""
    raw = _dev_evidence(tmp_path).read_bytes()
    big = tmp_path / "big.json"
    big.write_bytes(raw.replace(b'"evidence":', b'"evidence":' + b"[" * 10000, 1)[:-1] + b"]" * 10000 + b"}")
    assert main(["attest", "verify", str(big), "--allow-insecure-dev-tee"]) == 1
    err = capsys.readouterr().err
    assert "dev-TEE evidence too large" in err and "unrecognised" not in err


def _fifo(tmp_path):
    import os

    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def _zero(tmp_path):
    path = tmp_path / "zero"
    path.symlink_to("/dev/zero")
    return path


@pytest.mark.parametrize(
    ("make", "words"),
    [(_fifo, "is a named pipe (FIFO)"), (_zero, "is a device"), (lambda p: p, "is a directory")],
    ids=["fifo", "dev-zero", "dir"],
)
def test_evidence_and_certs_that_are_no_file_are_named_not_read(tmp_path, capsys, make, words):
    """Audit 18 (G3): /dev/zero as evidence or --certs was a MemoryError traceback (or 4.6 GB), a FIFO
    hung the verifier; each is now refused by its kind before anything is read."""
    bad = make(tmp_path)
    dev = str(_dev_evidence(tmp_path))
    for argv, what in (
        ([str(bad), "--allow-insecure-dev-tee"], "an evidence file"),
        ([dev, "--allow-insecure-dev-tee", "--certs", str(bad)], "a certificate file"),
        ([dev, "--allow-insecure-dev-tee", "--crl", str(bad)], "a CRL file"),
    ):
        rc = within(5, lambda argv=argv: main(["attest", "verify", *argv]))
        err = capsys.readouterr().err
        assert rc == 1 and err == f"secagg: not_a_file: {bad}: {words}, not {what}\n"


def test_oversized_evidence_and_certs_are_refused_before_reading(tmp_path, capsys):
    from secagg.commands.attest import MAX_INPUT_BYTES

    big = tmp_path / "big.bin"
    with big.open("wb") as fh:
        fh.truncate(MAX_INPUT_BYTES + 1)  # sparse
    limit = f"is {MAX_INPUT_BYTES + 1} bytes, over the limit of {MAX_INPUT_BYTES}"
    assert main(["attest", "verify", str(big)]) == 1
    assert capsys.readouterr().err == f"secagg: file_too_large: {big}: evidence file {limit}\n"
    dev = str(_dev_evidence(tmp_path))
    assert main(["attest", "verify", dev, "--allow-insecure-dev-tee", "--certs", str(big)]) == 1
    assert capsys.readouterr().err == f"secagg: file_too_large: {big}: certificate file {limit}\n"
    none = tmp_path / "none.bin"
    assert main(["attest", "verify", str(none)]) == 1
    assert capsys.readouterr().err == f"secagg: file_missing: {none}: no such evidence file\n"
