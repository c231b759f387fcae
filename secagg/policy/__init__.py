"""Site policies: the model, loading and checking with line numbers, and decisions with reasons."""

from secagg.policy.admit import admit_job
from secagg.policy.check import PolicyIssue, check_policy_file, check_policy_text, load_policy
from secagg.policy.decide import Decision, Reason, decide, worst_case_spend
from secagg.policy.explain import describe_policy, render_decision
from secagg.policy.model import SitePolicy
from secagg.policy.params import count_parameters

__all__ = [
    "admit_job",
    "Decision",
    "PolicyIssue",
    "Reason",
    "SitePolicy",
    "check_policy_file",
    "check_policy_text",
    "count_parameters",
    "decide",
    "describe_policy",
    "load_policy",
    "render_decision",
    "worst_case_spend",
]
