"""``secagg attest verify``: output, JSON shape and the exit-code contract (0 accept, 1 refuse, 2 usage)."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.devtee import make_dev_evidence
from secagg.cli import main

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
