"""Plain-language renderings of a policy and of a decision, for a security officer, not a programmer."""

from __future__ import annotations

from secagg.jobs.filters import AnyFilter
from secagg.modes import MODES
from secagg.policy.decide import SIZE_DEPENDENT, Decision
from secagg.policy.model import SandboxSettings, SitePolicy
from secagg.privacy.spend import share_count
from secagg.privacy.svt import svt_epsilon

_MODE_WORDS = {name: m.words for name, m in MODES.items()}


def describe_filter(f: AnyFilter, n_params: int | None = None) -> str:
    """One line for ``f``; for SVT with a known model size, also what one round of it costs."""
    if f.name == "svt":
        line = (
            f"sparse vector technique: share at most {f.fraction:.0%} of coordinates (c of n), clipped to "
            f"{f.gamma}, threshold {f.tau}; selection epsilon {f.epsilon}, release epsilon {f.noise_var} per "
            f"shared coordinate: one round costs {f.epsilon} + {f.epsilon}*(2c)^(2/3) + c*{f.noise_var}, "
            "so the cost grows with the model's size"
        )
        if n_params is not None:
            c = share_count(n_params, f.fraction)
            cost = svt_epsilon(n_params, f.fraction, f.epsilon, f.noise_var)
            line += f" (here n = {n_params}, c = {c}: epsilon {cost:.4g} a round)"
        return line
    if f.name == "percentile":
        clip = f", clipped to {f.gamma}" if f.gamma is not None else ""
        return f"share only the top {f.percentile:g}% of coordinates by magnitude{clip}"
    if f.name == "exclude":
        return f"never share the tensors {', '.join(f.tensors)}"
    if f.name == "gaussian":
        return f"clip the update to norm {f.clip} and add Gaussian noise (multiplier {f.noise_multiplier})"
    if f.name == "distributed_gaussian":
        return (
            f"distributed DP: clip the update to norm {f.clip}, round it at random to the fixed point "
            f"2^-{f.frac_bits} and add this site's 1/{f.min_honest_sites} share of Skellam noise, so "
            f"that the sum of any {f.min_honest_sites} honest sites carries noise multiplier "
            f"{f.noise_multiplier} (Agarwal, Kairouz, Liu 2021); only in mask and tee-mask, where "
            "nobody sees one site's update, and tee, where only the attested enclave does; the ledger "
            "charges the "
            "sum's guarantee, which assumes at least "
            f"{f.min_honest_sites} honest sites in every round"
        )
    return (
        f"DP-SGD during training to epsilon {f.target_epsilon}, delta {f.target_delta} per round, "
        f"gradient norm {f.max_grad_norm}"
    )


def describe_policy(policy: SitePolicy) -> list[str]:
    lines = ["Who may submit jobs:"]
    s = policy.signers
    lines += [
        f"  - provisioned admin {n} (signature checked against this site's project CA)" for n in s.submitters
    ]
    lines += [f"  - sigstore identity {x.identity}, issued by {x.issuer} ({x.instance})" for x in s.sigstore]
    if not s.submitters and not s.sigstore:
        lines.append("  - nobody: every job is refused")
    lines.append("How updates may be aggregated:")
    lines += [f"  - {_MODE_WORDS[m]}" for m in policy.modes]
    lines.append("Privacy filters applied to every update (a job may ask for stricter, never looser):")
    lines += [f"  - {describe_filter(f)}" for f in policy.privacy.required] or ["  - none"]
    b = policy.privacy.budget
    lines.append(
        f"Privacy budget: epsilon {b.epsilon}, delta {b.delta} per job" if b else "Privacy budget: none"
    )
    if b is not None and any(f.name in SIZE_DEPENDENT for f in policy.privacy.required):
        lines.append(
            "  (svt's cost is counted per shared coordinate, distributed_gaussian's grows slightly with "
            "the entry count through its rounding bound; the job's worst case is computed from its "
            "model's parameter count and its number of rounds, as the privacy ledger will debit it)"
        )
    lines.append(
        "Cross-site evaluation: this site's last local model "
        + (
            "MAY be sealed to the other sites and evaluated there, where every site allows it "
            "(share_local_model_for_evaluation: true)"
            if policy.privacy.share_local_model_for_evaluation
            else "is never shared (share_local_model_for_evaluation: false), so in a job of this "
            "site only the global model is evaluated"
        )
    )
    a = policy.attestation
    if a is not None:
        lines.append(
            f"Aggregator attestation: evidence of type {', '.join(a.types)}, at most {a.max_age_s} s old,"
            f" bound to this site's fresh nonce; {len(a.measurements)} accepted measurement(s); debug "
            f"guests {'ALLOWED' if a.debug_allowed else 'refused'}"
        )
        if a.min_tcb is not None:
            parts = ", ".join(f"{k} >= {v}" for k, v in a.min_tcb.model_dump(exclude_none=True).items())
            lines.append(f"  SEV-SNP minimum TCB: {parts or 'any'}")
        if a.min_tee_tcb_svn is not None:
            lines.append(f"  TDX minimum TEE_TCB_SVN: {a.min_tee_tcb_svn}")
        if a.allow_insecure_dev_tee:
            lines.append(
                "  WARNING: the software dev-tee is accepted; it protects nothing (development only)"
            )
    lim = policy.limits
    lines.append(
        f"Limits: packages up to {lim.max_package_bytes} bytes; "
        f"{'at most ' + str(lim.max_rounds) if lim.max_rounds else 'any number of'} rounds; "
        f"at least {lim.min_sites_per_round} site(s) per round; mask threshold at least "
        f"{lim.mask_min_threshold}"
        + (
            f"; every other site must hold at least {lim.min_weight_share:g} of a round's weight"
            if lim.min_weight_share
            else ""
        )
        + f"; at most {lim.max_concurrent_jobs} job(s) at once (one more is declined)"
    )
    lines += describe_sandbox(policy.sandbox)
    return lines


def _bytes(n: int | None) -> str:
    if n is None:
        return "unlimited"
    for unit, k in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= k and n % k == 0:
            return f"{n // k} {unit}"
    return f"{n} bytes"


def describe_sandbox(s: SandboxSettings) -> list[str]:
    """What the job's training worker is allowed, in words (the paths themselves are per job)."""
    netns = ", a fresh network namespace required" if s.require_netns else "; a network namespace if possible"
    lines = [
        f"Job code runs confined (Landlock, seccomp, no_new_privs, rlimits{netns}):",
        "  reads: the job package, the site's data folder (read-only), the Python installation and "
        "system libraries",
        "  writes: only the job's own I/O folder and a private scratch folder"
        + ("; the NVIDIA GPU devices" if s.allow_gpu else ""),
        "  never: the agent's kit and keys, its state, HE secret key, privacy ledger, audit log or "
        "other jobs' folders",
        "  network: none (no socket of any kind; no signals to processes outside the sandbox)",
        f"  limits: memory {_bytes(s.memory_bytes)}, "
        f"{'unlimited' if s.processes is None else s.processes} processes and threads, "
        f"{'unlimited' if s.open_files is None else s.open_files} open files, "
        f"files up to {_bytes(s.file_size_bytes)}, "
        f"{'unlimited' if s.cpu_seconds is None else str(s.cpu_seconds) + ' s of'} CPU time",
        "  a host that cannot give these protections refuses the job (sandbox_unavailable)",
    ]
    if s.insecure_unconfined:
        lines[-1] = (
            "  WARNING: INSECURE: sandbox.insecure_unconfined is set: jobs run even where the kernel cannot "
            "confine them, and their code can then read this site's keys, state and other jobs, and use "
            "the network"
        )
    return lines


def render_decision(decision: Decision, job_name: str = "the job") -> list[str]:
    verdict = "ACCEPT" if decision.accept else "REFUSE"
    n_bad = len(decision.failed)
    head = f"Decision for {job_name}: {verdict}"
    head += f" ({n_bad} rule{'s' if n_bad != 1 else ''} not met)" if n_bad else " (every rule met)"
    lines = [head]
    for r in decision.reasons:
        mark = "ok  " if r.ok else "FAIL"
        code = "" if r.ok else f" [{r.code}]"
        lines.append(f"  {mark} {r.rule}{code}: {r.text}")
    if decision.accept and decision.effective_privacy:
        lines.append("Filters this site will apply, in order:")
        lines += [f"  - {describe_filter(f, decision.n_params)}" for f in decision.effective_privacy]
    return lines
