"""Site-side privacy: filters applied to an update before it is protected and uploaded, and the ledger
that makes sure a site never releases more than its privacy budget allows.

Filters are plain functions ``(update, rng) -> (update, Spend | None)`` chained in order, like Flower
mods. This package knows nothing of the agent, gRPC or the CLI.
"""

from secagg.privacy.accounting import Composition, compose, rdp_epsilon
from secagg.privacy.distributed import distributed_gaussian
from secagg.privacy.exclude import exclude
from secagg.privacy.gaussian import gaussian
from secagg.privacy.ledger import BudgetExhausted, Entry, Ledger
from secagg.privacy.nvflare import from_nvflare
from secagg.privacy.percentile import percentile
from secagg.privacy.release import Release, prepare_release
from secagg.privacy.specs import (
    DistributedGaussianSpec,
    DpsgdSpec,
    ExcludeSpec,
    Filter,
    FilterSpec,
    GaussianSpec,
    PercentileSpec,
    SvtSpec,
    apply_chain,
    build_chain,
    chain_shortfalls,
    parse_specs,
    spend_of,
    stronger_or_equal,
    worst_case_spends,
)
from secagg.privacy.spend import Spend, Update
from secagg.privacy.svt import svt, svt_epsilon

__all__ = [
    "DistributedGaussianSpec",
    "DpsgdSpec",
    "BudgetExhausted",
    "Composition",
    "Entry",
    "ExcludeSpec",
    "Filter",
    "FilterSpec",
    "GaussianSpec",
    "Ledger",
    "PercentileSpec",
    "Release",
    "Spend",
    "SvtSpec",
    "Update",
    "apply_chain",
    "build_chain",
    "chain_shortfalls",
    "compose",
    "distributed_gaussian",
    "exclude",
    "from_nvflare",
    "gaussian",
    "parse_specs",
    "percentile",
    "prepare_release",
    "rdp_epsilon",
    "spend_of",
    "stronger_or_equal",
    "svt",
    "svt_epsilon",
    "worst_case_spends",
]
