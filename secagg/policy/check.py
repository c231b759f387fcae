"""Load a site policy, or report *every* problem in it with the line it is on and a hint.

A security officer edits YAML by hand; one error at a time, without a line number, makes that a slow
loop. So parsing keeps YAML node marks, schema errors and semantic errors (rules that are each valid
but together make no sense, like allowing ``tee`` without saying which evidence to accept) are all
collected, and each is pinned to the closest line in the file.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from pydantic import ValidationError

from secagg import safeyaml
from secagg.errors import ConfigError
from secagg.jobs.filters import AnyFilter
from secagg.modes import ATTESTED
from secagg.policy.decide import DISTRIBUTED, SIZE_DEPENDENT, distributed_dp_allowed, worst_case_spend
from secagg.policy.model import SitePolicy
from secagg.reasons import Reason

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class PolicyIssue:
    line: int
    path: str
    message: str
    hint: str = ""

    def format(self, source: str = "") -> str:
        where = f"{source}:{self.line}" if source else f"line {self.line}"
        text = f"{where}: {self.path or '(top)'}: {self.message}"
        return text + (f" (hint: {self.hint})" if self.hint else "")


@cache
def schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resources.files("secagg.policy").joinpath("schema.json").read_text())
    return data


def _dotted(path: Path_) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


class _Lines:
    """Map from a path in the document to the 1-based line it starts on."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.lines: dict[Path_, int] = {}
        self.duplicates: list[tuple[Path_, int]] = []
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, path: Path_) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else str(key.value)
                if name in seen:
                    self.duplicates.append(((*path, name), key.start_mark.line + 1))
                    continue
                seen.add(name)
                self.lines[(*path, name)] = key.start_mark.line + 1
                self._walk(value, (*path, name))
                self.lines[(*path, name)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, (*path, i))

    def line(self, path: Path_) -> int:
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return 1


_BOUNDS = {
    "minimum": "at least",
    "exclusiveMinimum": "greater than",
    "maximum": "at most",
    "exclusiveMaximum": "less than",
}
_HINTS_BY_FIELD = {
    "issuer": "an OIDC issuer URL such as https://token.actions.githubusercontent.com",
    "measurements": "launch measurement as hex: 96 digits (SEV-SNP, TDX) or 64/96 (dev-TEE)",
    "min_tee_tcb_svn": "16 bytes as 32 hex digits",
}


def _schema_issue(err: jsonschema.ValidationError, lines: _Lines) -> list[PolicyIssue]:
    path: Path_ = tuple(err.absolute_path)
    v = err.validator
    if v == "additionalProperties" and isinstance(err.instance, dict):
        allowed = list(err.schema.get("properties", {}))
        out = []
        for key in err.instance:
            if key in allowed:
                continue
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"allowed here: {', '.join(allowed)}"
            out.append(PolicyIssue(lines.line((*path, key)), _dotted((*path, key)), "unknown key", hint))
        return out
    field = next((p for p in reversed(path) if isinstance(p, str)), "")
    hint = ""
    if v == "required":
        hint = "add it; see policies/README.md"
    elif v == "enum":
        hint = "one of: " + ", ".join(json.dumps(x) for x in err.validator_value)
    elif v == "const":
        hint = f"must be {json.dumps(err.validator_value)}"
    elif v == "pattern":
        hint = _HINTS_BY_FIELD.get(field, "")
    elif v == "uniqueItems":
        hint = "remove the repeated entry"
    elif v in _BOUNDS:
        hint = f"must be {_BOUNDS[v]} {err.validator_value}"
    elif v == "minItems":
        hint = f"list at least {err.validator_value} entr{'y' if err.validator_value == 1 else 'ies'}"
    elif v == "type":
        hint = f"expected {err.validator_value}"
    return [PolicyIssue(lines.line(path), _dotted(path), err.message, hint)]


#: the field a too-costly filter is reported at
_COST_KNOB = {
    "svt": "epsilon",
    "dpsgd": "target_epsilon",
    "gaussian": "noise_multiplier",
    "distributed_gaussian": "noise_multiplier",
}
#: filters composed by Renyi DP: they need a budget delta > 0 (reported by its own rule)
_NEEDS_DELTA = frozenset({"gaussian", "distributed_gaussian"})


def _one_round_floor(f: AnyFilter, budget_delta: float) -> float | None:
    """The least one round of ``f`` can cost (a one-entry update), by the accounting admission uses;
    None when it costs nothing or is reported by another rule (a Gaussian filter with no delta)."""
    if f.name not in _COST_KNOB:
        return None
    try:
        eps = worst_case_spend([f], rounds=1, n_params=1, budget_delta=budget_delta).epsilon
    except ConfigError:
        return math.inf
    return eps if math.isfinite(eps) or f.name not in _NEEDS_DELTA else None


def _semantic(policy: SitePolicy) -> list[tuple[Path_, str, str]]:
    """Rules that each pass the schema but together are wrong or dangerous."""
    out: list[tuple[Path_, str, str]] = []
    s = policy.signers
    if not s.submitters and not s.sigstore:
        out.append(
            (
                ("signers",),
                "no signer is trusted, so no job can ever be accepted",
                "list provisioned admins under submitters or CI identities under sigstore",
            )
        )
    seen_ids: set[tuple[str, str, str]] = set()
    for i, sig in enumerate(s.sigstore):
        key = (sig.identity, sig.issuer, sig.instance)
        if key in seen_ids:
            out.append((("signers", "sigstore", i), "repeats an earlier sigstore identity", "remove it"))
        seen_ids.add(key)
    att = policy.attestation
    attested = [m for m in policy.modes if m in ATTESTED]
    if attested and att is None:
        out.append(
            (
                ("modes",),
                f"mode {attested[0]} is allowed but there is no attestation section",
                f"add attestation: {{types: [...], measurements: [...]}} or remove {attested[0]}",
            )
        )
    if att is not None:
        hw = [t for t in att.types if t != "dev-tee"]
        if "dev-tee" in att.types and not att.allow_insecure_dev_tee:
            out.append(
                (
                    ("attestation", "types"),
                    "dev-tee evidence is not hardware-backed",
                    "set allow_insecure_dev_tee: true (development only) or remove dev-tee",
                )
            )
        if att.allow_insecure_dev_tee and "dev-tee" not in att.types:
            out.append(
                (
                    ("attestation", "allow_insecure_dev_tee"),
                    "has no effect: dev-tee is not in types",
                    "add dev-tee to types or remove this line",
                )
            )
        if hw and not att.measurements:
            out.append(
                (
                    ("attestation", "types"),
                    f"{', '.join(hw)} accepted with no measurements: any aggregator image would be trusted",
                    "list the accepted image measurements",
                )
            )
        if att.min_tcb is not None and "sev-snp" not in att.types:
            out.append(
                (
                    ("attestation", "min_tcb"),
                    "min_tcb applies to sev-snp, which is not accepted",
                    "add sev-snp to types or remove min_tcb",
                )
            )
        if att.min_tee_tcb_svn is not None and "tdx" not in att.types:
            out.append(
                (
                    ("attestation", "min_tee_tcb_svn"),
                    "min_tee_tcb_svn applies to tdx, which is not accepted",
                    "add tdx to types or remove min_tee_tcb_svn",
                )
            )
        snp_only = [
            k
            for k in ("vmpl", "host_data", "id_key_digests", "min_guest_svn", "signing_key")
            if getattr(att, k) is not None
        ]
        for field in snp_only if "sev-snp" not in att.types else []:
            out.append(
                (
                    ("attestation", field),
                    f"{field} applies to sev-snp, which is not accepted",
                    f"add sev-snp to types or remove {field}",
                )
            )
        tdx_only = [k for k in ("mr_seam", "tcb_statuses") if getattr(att, k) is not None]
        for field in tdx_only if "tdx" not in att.types else []:
            out.append(
                (
                    ("attestation", field),
                    f"{field} applies to tdx, which is not accepted",
                    f"add tdx to types or remove {field}",
                )
            )
        if not attested:
            out.append(
                (
                    ("attestation",),
                    "attestation rules have no effect: no attested mode (tee, tee-mask) is allowed",
                    "add tee or tee-mask to modes or remove the attestation section",
                )
            )
    names: set[str] = set()
    budget = policy.privacy.budget
    for i, f in enumerate(policy.privacy.required):
        where: Path_ = ("privacy", "required", i)
        if f.name in names:
            out.append((where, f"filter {f.name} is required twice", "merge the two entries"))
        names.add(f.name)
        floor = _one_round_floor(f, budget.delta) if budget is not None else None
        if budget is not None and floor is not None and floor > budget.epsilon:
            small = " on a one-parameter model" if f.name in SIZE_DEPENDENT else ""
            out.append(
                (
                    (*where, _COST_KNOB[f.name]),
                    f"even one round of {f.name}{small} spends epsilon {floor:.4g}, more than the whole "
                    f"budget ({budget.epsilon})",
                    "make the filter stricter or raise privacy.budget.epsilon (see policies/README.md)",
                )
            )
        delta = getattr(f, "target_delta", None)
        if budget is not None and delta is not None and delta > budget.delta:
            out.append(
                (
                    (*where, "target_delta"),
                    f"target_delta {delta} exceeds the budget's delta ({budget.delta})",
                    "lower it or raise privacy.budget.delta",
                )
            )
        if f.name == DISTRIBUTED and not any(distributed_dp_allowed(m) for m in policy.modes):
            # admission would refuse every job (distributed_dp_mode): say so before any job is sent
            out.append(
                (
                    where,
                    f"distributed_gaussian is refused in every mode this policy allows "
                    f"({', '.join(policy.modes)}): only mask, tee-mask and tee sum its shares where "
                    "no party outside an attested enclave sees one",
                    "allow mask, tee-mask or tee in modes, or require gaussian instead",
                )
            )
        if f.name in _NEEDS_DELTA and budget is not None and budget.delta == 0:
            out.append(
                (
                    where,
                    f"the {f.name} filter needs a budget delta > 0",
                    "set privacy.budget.delta, e.g. 1e-5",
                )
            )
    if "mask" in policy.modes and policy.limits.min_sites_per_round < policy.limits.mask_min_threshold:
        out.append(
            (
                ("limits", "min_sites_per_round"),
                "fewer sites per round than the mask threshold: a round could never be unmasked",
                "raise min_sites_per_round to mask_min_threshold",
            )
        )
    return out


#: a policy is a page of rules; a bigger file is refused before it is read
MAX_POLICY_BYTES = safeyaml.MAX_BYTES
#: refusals that are authoring mistakes, reported as issues with their line like any other
_AS_ISSUES = frozenset({Reason.YAML_INVALID, Reason.YAML_NUMBER})


def _parse(text: str | bytes, source: str = "policy") -> tuple[Any, _Lines, list[PolicyIssue]]:
    """The document, its line map and its repeated keys (each an issue). A document that is hostile
    rather than mistaken (aliases, too deep, too large, odd tags) raises :class:`SafeYamlError`."""
    try:
        parsed = safeyaml.parse(text, source, MAX_POLICY_BYTES)
    except safeyaml.SafeYamlError as exc:
        if exc.code not in _AS_ISSUES:
            raise
        hint = (
            "check indentation and quoting" if exc.code == Reason.YAML_INVALID else "see policies/README.md"
        )
        problem = exc.problem.removeprefix(f"{source}:{exc.line}: ").removeprefix(f"{source}: ")
        return None, _Lines(None), [PolicyIssue(max(exc.line, 1), "", problem, hint)]
    lines = _Lines(parsed.root)
    issues = [
        PolicyIssue(line, _dotted(p), "key appears twice (the second would silently win)", "keep one")
        for p, line in lines.duplicates
    ]
    return parsed.data, lines, issues


def check_policy_text(text: str, source: str = "policy") -> tuple[SitePolicy | None, list[PolicyIssue]]:
    data, lines, issues = _parse(text, source)
    if data is None:
        return None, issues or [PolicyIssue(1, "", "the policy is empty", "start with version: 1")]
    validator = jsonschema.Draft202012Validator(schema())
    for err in validator.iter_errors(data):
        issues += _schema_issue(err, lines)
    if issues:
        return None, sorted(issues, key=lambda i: (i.line, i.path))
    try:
        policy = SitePolicy.model_validate(data)
    except ValidationError as exc:  # the schema and the model should agree; report, don't crash
        return None, [
            PolicyIssue(lines.line(tuple(e["loc"])), _dotted(tuple(e["loc"])), e["msg"]) for e in exc.errors()
        ]
    issues = [PolicyIssue(lines.line(p), _dotted(p), m, h) for p, m, h in _semantic(policy)]
    return (None if issues else policy), sorted(issues, key=lambda i: (i.line, i.path))


def check_policy_file(path: Path | str) -> list[PolicyIssue]:
    """Every schema and semantic problem of a policy file; empty means it is usable."""
    return check_policy_text(_read(Path(path)), str(path))[1]


def load_policy(path: Path | str) -> SitePolicy:
    path = Path(path)
    policy, issues = check_policy_text(_read(path), str(path))
    if policy is None:
        shown = "; ".join(i.format(str(path)) for i in issues[:5])
        more = f" (and {len(issues) - 5} more; run secagg policy check)" if len(issues) > 5 else ""
        raise ConfigError(f"policy {path} is not usable: {shown}{more}")
    return policy


def _read(path: Path) -> str:
    """The policy's text: a regular file of at most :data:`MAX_POLICY_BYTES`, else the specific
    refusal (no such file, a directory, FIFO or device, too large, not UTF-8)."""
    data = safeyaml.read_file(path, MAX_POLICY_BYTES, what="policy file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise safeyaml.SafeYamlError(f"{path}: not UTF-8 text (byte {exc.start})") from None
