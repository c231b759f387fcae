"""Site policies for the demo: ``--policy SITE=FILE`` parsing and the early checks on a user's file.

The demo signs its job as ``submitter@demo``; a site whose policy does not trust that signer, or
does not allow the demo's mode, would refuse the job only after every process has started. Checking
that here turns a half-started federation into one clear line before anything runs.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import yaml

from secagg import safeyaml
from secagg.demo.run import DEMO_POLICY, SUBMITTER
from secagg.errors import ConfigError, UsageError
from secagg.policy import SitePolicy, load_policy


def policy_option(text: str) -> tuple[str, Path]:
    """argparse ``type=`` for ``SITE=FILE``: the shape and the file's existence (exit 2 otherwise)."""
    site, sep, file = text.partition("=")
    if not sep or not site or not file:
        raise argparse.ArgumentTypeError(f"expected SITE=FILE (e.g. site-2=my-policy.yaml), got {text!r}")
    path = Path(file)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"policy file for {site} not found: {file}")
    return site, path


def site_policies(items: Sequence[tuple[str, Path]], sites: Sequence[str]) -> dict[str, Path]:
    """``--policy`` options as ``{site: file}``; an unknown or repeated site is a usage error."""
    out: dict[str, Path] = {}
    for site, path in items:
        if site not in sites:
            raise UsageError(
                f"--policy names unknown site {site!r}; this demo's sites are {', '.join(sites)}"
            )
        if site in out:
            raise UsageError(f"--policy given twice for {site}")
        out[site] = path
    return out


def check_site_policy(site: str, path: Path, mode: str) -> SitePolicy:
    """Load a user's policy and refuse (ConfigError, exit 1) one that would refuse the demo's job."""
    policy = load_policy(path)
    if SUBMITTER not in policy.signers.submitters:
        raise ConfigError(
            f"policy {path} for {site} does not trust the demo's job signer: "
            f"add {SUBMITTER} to signers.submitters"
        )
    if mode not in policy.modes:
        raise ConfigError(f"policy {path} for {site} does not allow mode {mode} (it allows {policy.modes})")
    return policy


def budget_policy(epsilon: float, delta: float) -> str:
    """The demo policy plus a privacy budget, rounded *up* so the job it was sized for is admitted."""
    if not (math.isfinite(epsilon) and epsilon > 0 and 0 < delta < 1):
        raise ConfigError(f"no budget can admit epsilon {epsilon}, delta {delta}")
    data = safeyaml.load(DEMO_POLICY, "demo policy")
    data["privacy"] = {"budget": {"epsilon": math.ceil(epsilon * 100 + 1) / 100, "delta": delta}}
    return yaml.safe_dump(data, sort_keys=False)
