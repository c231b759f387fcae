"""Policy checking: schema and semantic errors, each with the right line, and the shipped examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secagg.errors import ConfigError
from secagg.policy import check_policy_file, check_policy_text, load_policy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ["hospital-strict", "research-consortium", "development", "record-level-dp"]


def issues(text: str) -> list[tuple[int, str, str]]:
    policy, found = check_policy_text(text)
    assert policy is None and found
    return [(i.line, i.path, i.message + " | " + i.hint) for i in found]


def has(found: list[tuple[int, str, str]], line: int, path: str, text: str) -> bool:
    return any((a, b) == (line, path) and text in c for a, b, c in found)


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_pass(name: str) -> None:
    assert check_policy_file(ROOT / "policies" / f"{name}.yaml") == []
    assert load_policy(ROOT / "policies" / f"{name}.yaml").version == 1


def test_example_contents() -> None:
    strict = load_policy(ROOT / "policies/hospital-strict.yaml")
    assert set(strict.modes) == {"he", "tee"}
    names = {f.name: f for f in strict.privacy.required}
    assert "svt" in names and names["percentile"].percentile == 25  # type: ignore[union-attr]
    assert strict.privacy.budget is not None and strict.privacy.budget.epsilon <= 10
    dev = load_policy(ROOT / "policies/development.yaml")
    assert "plain" in dev.modes and dev.attestation is not None and dev.attestation.allow_insecure_dev_tee


def test_schema_copy_matches_package() -> None:
    shipped = json.loads((ROOT / "secagg/policy/schema.json").read_text())
    assert json.loads((ROOT / "policies/schema.json").read_text()) == shipped


BAD = """\
version: 2
signers:
  submiters: [admin@lead]
modes: [he, tee, quantum]
privacy:
  required:
    - {name: svt, fraction: 0.25, epsilon: 5, noise_var: 0.1, gamma: 1.0e-5}
    - {name: percentile, percentile: 250}
    - {name: magic}
  budget: {epsilon: 1.0}
attestation:
  types: [sev-snp]
  measurements: ["abc"]
  colour: blue
limits:
  max_rounds: 0
  max_rounds: 5
"""


def test_every_schema_error_with_its_line() -> None:
    found = issues(BAD)
    assert has(found, 1, "version", "1 was expected")
    assert has(found, 3, "signers.submiters", "unknown key | did you mean 'submitters'?")
    assert has(found, 4, "modes[2]", "'quantum' is not one of")
    assert has(found, 7, "privacy.required[0]", "'tau' is a required property")
    assert has(found, 8, "privacy.required[1].percentile", "250 is greater than the maximum of 100")
    assert has(found, 9, "privacy.required[2].name", "'magic' is not one of")
    assert has(found, 10, "privacy.budget", "'delta' is a required property")
    assert has(found, 13, "attestation.measurements[0]", "launch measurement as hex")
    assert has(found, 14, "attestation.colour", "unknown key")
    assert has(found, 17, "limits.max_rounds", "key appears twice")
    assert len(found) == 10


SEMANTIC = """\
version: 1
signers: {}
modes: [tee, mask]
privacy:
  required:
    - {name: svt, fraction: 0.25, epsilon: 5, noise_var: 0.1, gamma: 1.0e-5, tau: 0}
    - {name: svt, fraction: 0.25, epsilon: 0.1, noise_var: 0.1, gamma: 1.0e-5, tau: 0}
    - {name: dpsgd, target_epsilon: 0.5, target_delta: 0.01, max_grad_norm: 1}
  budget: {epsilon: 1.0, delta: 1.0e-5}
attestation:
  types: [sev-snp, dev-tee]
  min_tee_tcb_svn: "00000000000000000000000000000000"
limits:
  min_sites_per_round: 1
  mask_min_threshold: 3
"""


def test_every_semantic_error_with_its_line() -> None:
    found = issues(SEMANTIC)
    assert has(found, 2, "signers", "no signer is trusted")
    assert has(found, 6, "privacy.required[0].epsilon", "more than the whole budget")
    assert has(found, 7, "privacy.required[1]", "required twice")
    assert has(found, 8, "privacy.required[2].target_delta", "exceeds the budget's delta")
    assert has(found, 11, "attestation.types", "not hardware-backed")
    assert has(found, 12, "attestation.min_tee_tcb_svn", "applies to tdx")
    assert has(found, 14, "limits.min_sites_per_round", "could never be unmasked")


def test_measurements_required_for_hardware_tee() -> None:
    text = "version: 1\nsigners: {submitters: [a]}\nmodes: [tee]\nattestation:\n  types: [tdx]\n"
    (issue,) = check_policy_text(text)[1]
    assert issue.line == 5 and "any aggregator image would be trusted" in issue.message


def test_tee_without_attestation() -> None:
    (issue,) = check_policy_text("version: 1\nsigners: {submitters: [a]}\nmodes: [he, tee]\n")[1]
    assert issue.line == 3 and "no attestation section" in issue.message


def test_dev_tee_flag_without_dev_tee() -> None:
    text = (
        "version: 1\nsigners: {submitters: [a]}\nmodes: [tee]\nattestation:\n  types: [sev-snp]\n"
        "  measurements: ['" + "ab" * 48 + "']\n  allow_insecure_dev_tee: true\n"
    )
    (issue,) = check_policy_text(text)[1]
    assert issue.line == 7 and "has no effect" in issue.message


def test_invalid_yaml_line() -> None:
    (issue,) = check_policy_text("version: 1\nsigners: [\n")[1]
    assert issue.line == 3 and "not valid YAML" in issue.message


def test_empty_and_non_mapping() -> None:
    assert "empty" in check_policy_text("")[1][0].message
    assert check_policy_text("- a\n- b\n")[1][0].message.endswith("is not of type 'object'")


def test_load_policy_raises_config_error(tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text(BAD)
    with pytest.raises(ConfigError, match=r"p.yaml:1: version"):
        load_policy(p)
    with pytest.raises(ConfigError, match="missing.yaml: no such policy file"):
        load_policy(tmp_path / "missing.yaml")


def test_filter_errors_and_hints() -> None:
    text = (
        "version: 1\n"
        "signers:\n"
        "  submitters: [a, a]\n"
        "  sigstore:\n"
        "    - {identity: x, issuer: http://insecure}\n"
        "modes: [he]\n"
        "privacy:\n"
        "  required:\n"
        "    - {name: svt, fraction: 0.25, epsilon: 0.1, noise_var: 0.1, gamma: 1.0e-5, tau: 0, fracton: 2}\n"
        "    - {name: gaussian, clip: -1, noise_multiplier: 1}\n"
        "    - name: exclude\n"
        "      tensors: []\n"
        "    - {percentile: 3}\n"
    )
    found = issues(text)
    assert has(found, 3, "signers.submitters", "remove the repeated entry")
    assert has(found, 5, "signers.sigstore[0].issuer", "an OIDC issuer URL")
    assert has(found, 9, "privacy.required[0].fracton", "did you mean 'fraction'?")
    assert has(found, 10, "privacy.required[1].clip", "must be greater than 0")
    assert has(found, 12, "privacy.required[2].tensors", "list at least 1 entry")
    assert has(found, 13, "privacy.required[3]", "'name' is a required property")
    assert len(found) == 6


def test_type_specific_attestation_fields() -> None:
    text = (
        "version: 1\nsigners: {submitters: [a]}\nmodes: [tee]\nattestation:\n  types: [tdx]\n"
        "  measurements: ['" + "ab" * 48 + "']\n  vmpl: 0\n  signing_key: vcek\n"
    )
    found = issues(text)
    assert has(found, 7, "attestation.vmpl", "applies to sev-snp")
    assert has(found, 8, "attestation.signing_key", "applies to sev-snp")
    assert len(found) == 2


def test_attestation_section_feeds_the_attestation_validator() -> None:
    """The policy's attestation section becomes ``attestation.ValidationOptions`` field for field."""
    from attestation.options import ValidationOptions

    strict = load_policy(ROOT / "policies/hospital-strict.yaml").attestation
    assert strict is not None
    opts = strict.validation_options()
    assert isinstance(opts, ValidationOptions)
    assert opts.types == ["sev-snp", "tdx"] and opts.debug_allowed is False
    assert opts.measurements == [m.lower() for m in strict.measurements]
    assert opts.min_tcb is not None and opts.min_tcb.snp == 20 and opts.min_tcb.fmc is None
    assert opts.min_tee_tcb_svn == "03000600000000000000000000000000"
    dev = load_policy(ROOT / "policies/development.yaml").attestation
    assert dev is not None and dev.validation_options().measurements is None  # unset: not checked


@pytest.mark.parametrize("name", ["hospital-strict", "research-consortium"])
def test_examples_usable_by_attest_verify(name: str) -> None:
    """``secagg attest verify --policy`` reads a site policy's attestation section directly."""
    from secagg.commands.attest import load_options

    opts = load_options(ROOT / "policies" / f"{name}.yaml")
    assert opts.types is not None and "sev-snp" in opts.types and opts.measurements


DISTRIBUTED = """\
version: 1
signers: {submitters: [a]}
modes: [mask]
privacy:
  required:
    - {name: distributed_gaussian, clip: 1.0, noise_multiplier: 0.1, min_honest_sites: 2}
  budget: {epsilon: 1.0, delta: 1.0e-5}
limits: {min_sites_per_round: 2, mask_min_threshold: 2}
"""


def test_distributed_gaussian_one_round_cost_is_checked_as_gaussian_is() -> None:
    from secagg.privacy import compose, worst_case_spends

    # the figure is the sum-level epsilon of one round, by the accounting admission uses
    spec = {"name": "distributed_gaussian", "clip": 1.0, "noise_multiplier": 0.1, "min_honest_sites": 2}
    floor = compose(worst_case_spends([spec], 1, 1), 1e-5).epsilon
    found = issues(DISTRIBUTED)
    assert has(found, 6, "privacy.required[0].noise_multiplier", f"spends epsilon {floor:.4g}, more than")
    assert len(found) == 1
    # enough noise for the budget: nothing to report
    assert check_policy_text(DISTRIBUTED.replace("noise_multiplier: 0.1", "noise_multiplier: 10"))[1] == []
    # composed by Renyi DP: a budget without delta cannot hold it, said as for gaussian
    no_delta = issues(DISTRIBUTED.replace("delta: 1.0e-5", "delta: 0"))
    assert has(no_delta, 6, "privacy.required[0]", "distributed_gaussian filter needs a budget delta > 0")
    assert len(no_delta) == 1


def test_distributed_gaussian_with_no_mode_that_admits_it() -> None:
    # every job would be refused at admission (distributed_dp_mode): policy check says so first
    text = DISTRIBUTED.replace("modes: [mask]", "modes: [he, plain]").replace(
        "noise_multiplier: 0.1", "noise_multiplier: 10"
    )
    found = issues(text)
    assert has(found, 6, "privacy.required[0]", "refused in every mode this policy allows (he, plain)")
    assert len(found) == 1, found
    # tee sums the shares sealed to the attested enclave; tee-mask masks them inside it
    for modes in ("[he, tee-mask]", "[he, tee]"):
        fine = DISTRIBUTED.replace("modes: [mask]", f"modes: {modes}").replace(
            "noise_multiplier: 0.1", "noise_multiplier: 10"
        )
        fine += "attestation:\n  types: [dev-tee]\n  allow_insecure_dev_tee: true\n"
        assert check_policy_text(fine)[1] == [], modes
