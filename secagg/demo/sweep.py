"""The price of privacy: final global AUC against epsilon, for SVT, the Gaussian filter and
distributed DP (``distributed_gaussian``: Skellam shares whose sum carries the noise, run in ``mask``
mode whatever the sweep's mode: ``tee`` and ``tee-mask`` release the same mean of the same shares, and
``he`` and ``plain`` refuse distributed noise).

Each setting is one real federation whose job asks for the filter in its ``privacy:`` list, at sites
whose policy carries a budget just large enough to admit it. The planned epsilon is the job's worst
case by the privacy package's own accounting (``worst_case_spends`` + ``compose``, the figures
admission checks); the spent epsilon is read back from each site's durable ledger afterwards, so the
table shows what the sites actually recorded, not what the demo hoped they would.

Settings were chosen with the in-process loop (:mod:`secagg.demo.simulate`) to span the range from
"useless" to "as good as no filter" on this data, 3 sites and 3 rounds.

Several site counts (``--sweep-sites 3,10,20``) give one plot, a panel per count. A real federation
costs about 0.5 GiB of memory per site (its agent, and its training worker importing torch), so 20 sites
do not fit a small machine; ``--in-process`` runs each setting in the in-process loop instead (the
same training script, filters and accounting, the mask protocol's integer mean for distributed noise;
no processes, certificates or ledgers), averaged over a few repeats because the noise differs each run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from secagg.demo.data import SiteData
from secagg.demo.policies import budget_policy
from secagg.demo.run import DEMO_POLICY, run_federation
from secagg.privacy import Ledger, compose, worst_case_spends
from secagg.privacy.ledger import FILENAME as LEDGER_FILE

#: the budget's delta: Gaussian releases compose by RDP and are converted to epsilon at this delta
DELTA = 1e-5


@dataclass(frozen=True)
class Setting:
    mechanism: str  # "svt", "gaussian", "distributed_gaussian", or "none" (no filter)
    filter: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        if self.filter is None:
            return "no filter"
        return ", ".join(f"{k}={v:g}" for k, v in self.filter.items() if k != "name")


def _svt(fraction: float, noise_var: float) -> Setting:
    return Setting(
        "svt",
        {
            "name": "svt",
            "fraction": fraction,
            "epsilon": 0.1,
            "noise_var": noise_var,
            "gamma": 0.05,
            "tau": 1e-6,
        },
    )


def _gaussian(noise_multiplier: float) -> Setting:
    return Setting("gaussian", {"name": "gaussian", "clip": 0.2, "noise_multiplier": noise_multiplier})


def _distributed(noise_multiplier: float, min_honest_sites: int = 2) -> Setting:
    return Setting(
        "distributed_gaussian",
        {
            "name": "distributed_gaussian",
            "clip": 0.2,
            "noise_multiplier": noise_multiplier,
            # every demo round sums all its sites (at least 2, the smallest mask threshold)
            "min_honest_sites": min_honest_sites,
        },
    )


def mode_for(setting: Setting, mode: str) -> str:
    """The mode a setting runs in: distributed noise in ``mask`` (whose release ``tee`` and ``tee-mask``
    share; admission refuses it in ``he`` and ``plain``)."""
    return "mask" if setting.mechanism == "distributed_gaussian" else mode


#: clip 0.2 is about the norm of one site's update here; SVT's gamma 0.05 about its largest entries
SETTINGS: tuple[Setting, ...] = (
    Setting("none"),
    _svt(0.05, 0.01),
    _svt(0.25, 0.01),
    _svt(0.25, 0.1),
    _svt(0.25, 1.0),
    _gaussian(2.0),
    _gaussian(1.0),
    _gaussian(0.5),
    _gaussian(0.3),
    _gaussian(0.1),
    _distributed(2.0),
    _distributed(1.0),
    _distributed(0.5),
    _distributed(0.3),
    _distributed(0.1),
)


def honest_sites(n_sites: int) -> int:
    """``min_honest_sites`` for ``n_sites``: the mask threshold the demo's job gets, so distributed noise
    assumes no more honest sites than the masking itself does (fewer than ``t`` colluding)."""
    from secagg.mask.job import mask_config

    return mask_config(None, n_sites).threshold


def settings_for(n_sites: int) -> tuple[Setting, ...]:
    """:data:`SETTINGS` with distributed noise split over :func:`honest_sites` shares: its epsilon is
    the sum's, the same at any split, but the noise each site adds shrinks with the split."""
    m = honest_sites(n_sites)
    return tuple(
        _distributed(s.filter["noise_multiplier"], m)
        if s.mechanism == "distributed_gaussian" and s.filter
        else s
        for s in SETTINGS
    )


def planned_epsilon(setting: Setting, n_params: int, rounds: int, delta: float = DELTA) -> float:
    """The job's worst-case epsilon over ``rounds``, as admission and the ledger compose it."""
    if setting.filter is None:
        return 0.0
    return compose(worst_case_spends([setting.filter], n_params, rounds), delta).epsilon


def spent_epsilon(state_root: Path, sites: Sequence[str]) -> float:
    """The largest total any site's ledger recorded (0 when no site kept one: no filter, no budget)."""
    spent = 0.0
    for site in sites:
        path = state_root / site / LEDGER_FILE
        if path.is_file():
            with Ledger(path, site) as ledger:
                spent = max(spent, ledger.total()[0])
    return spent


@dataclass(frozen=True)
class Outcome:
    """What one run of a setting gave: ``{round, auc, seconds}`` per round, the epsilon the ledgers
    recorded, and its wall time."""

    per_round: list[dict[str, Any]]
    spent_epsilon: float
    seconds: float = 0.0
    #: the final AUC of each repeat where ``per_round`` is their mean (in-process runs)
    repeats: list[float] = field(default_factory=list)


@dataclass
class Row:
    mechanism: str
    setting: str
    filter: dict[str, Any] | None
    planned_epsilon: float
    spent_epsilon: float
    final_auc: float
    per_round: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    sites: int | None = None
    repeats: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: runs one setting: ``(setting, budget epsilon the sites' policy must admit, run folder) -> Outcome``
Runner = Callable[[Setting, float, Path], Outcome]


def run_sweep(
    settings: Sequence[Setting],
    runner: Runner,
    out: Path,
    *,
    n_params: int,
    rounds: int,
    log: Callable[[str], object] = print,
    on_row: Callable[[list[Row]], object] | None = None,
    sites: int | None = None,
    done: Sequence[Row] = (),
) -> list[Row]:
    """One run per setting, in order; ``on_row`` sees the rows so far (``done``, from earlier site
    counts, first) after each, so partial reports survive an interrupted sweep, which takes many
    minutes. ``sites`` labels the rows when several site counts share one report."""
    rows: list[Row] = []
    tag = "" if sites is None else f"{sites:02d}sites-"
    for i, s in enumerate(settings):
        planned = planned_epsilon(s, n_params, rounds)
        log(f"[{i + 1}/{len(settings)}] {s.mechanism} {s.label}: planned epsilon {planned:.4g}")
        got = runner(s, planned, out / f"{tag}{i:02d}-{s.mechanism}")
        final = float(got.per_round[-1]["auc"])
        row = Row(
            s.mechanism,
            s.label,
            s.filter,
            planned,
            got.spent_epsilon,
            final,
            got.per_round,
            got.seconds,
            sites,
            got.repeats,
        )
        log(f"    final AUC {row.final_auc:.4f}, epsilon spent (ledger) {row.spent_epsilon:.4g}")
        rows.append(row)
        if on_row is not None:
            on_row([*done, *rows])
    return rows


def _site_counts(rows: Sequence[Row]) -> list[int | None]:
    return sorted({r.sites for r in rows}, key=lambda n: -1 if n is None else n)


def table(rows: Sequence[Row]) -> list[str]:
    """Markdown: one line per setting, sorted by site count, mechanism, then epsilon; a ``sites``
    column and the repeats' AUC range when the rows have them."""
    multi = any(r.sites is not None for r in rows)
    spread = any(r.repeats for r in rows)
    head = ["mechanism", "setting", "epsilon planned", "epsilon spent (ledger)", "final AUC"]
    if multi:
        head.insert(0, "sites")
    if spread:
        head.append(f"AUC range over {max(len(r.repeats) for r in rows)} repeats")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(
        rows,
        key=lambda r: (r.sites or 0, r.mechanism != "none", r.mechanism, r.planned_epsilon),
    )
    for r in order:
        planned = "-" if r.filter is None else f"{r.planned_epsilon:.4g}"
        spent = "-" if r.filter is None else f"{r.spent_epsilon:.4g}"
        cells = [r.mechanism, r.setting, planned, spent, f"{r.final_auc:.4f}"]
        if multi:
            cells.insert(0, str(r.sites))
        if spread:
            cells.append(f"{min(r.repeats):.4f}-{max(r.repeats):.4f}" if r.repeats else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(rows: Sequence[Row], path: Path, rounds: int) -> None:
    """Final AUC against epsilon spent (log scale), one line per mechanism and a panel per site count;
    no filter as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = _site_counts(rows)
    fig, axes = plt.subplots(
        1, len(counts), figsize=(6 * len(counts), 4), dpi=120, sharey=True, squeeze=False
    )
    for ax, n in zip(axes[0], counts, strict=True):
        mine = [r for r in rows if r.sites == n]
        for mech, marker in (("svt", "o"), ("gaussian", "s"), ("distributed_gaussian", "^")):
            pts = sorted(
                (r.spent_epsilon or r.planned_epsilon, r.final_auc) for r in mine if r.mechanism == mech
            )
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=mech)
        for r in mine:
            if r.mechanism == "none":
                ax.axhline(r.final_auc, linestyle="--", color="grey", label="no filter")
        ax.set_xscale("log")
        ax.set_xlabel(f"epsilon spent per site over {rounds} rounds (delta {DELTA:g} for Gaussian)")
        ax.set_title("The price of privacy" if n is None else f"{n} sites")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    axes[0][0].set_ylabel("final global validation AUC")
    if len(counts) > 1:
        fig.suptitle("The price of privacy (breast cancer, federated)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(
    out: Path,
    rows: Sequence[Row],
    *,
    rounds: int,
    sites: Sequence[str],
    mode: str,
    in_process: bool = False,
) -> None:
    """``privacy-sweep.md``, ``privacy-sweep.png`` and ``privacy-sweep.json`` in ``out``."""
    import json

    plot(rows, out / "privacy-sweep.png", rounds)
    counts = [n for n in _site_counts(rows) if n is not None]
    where = f"{', '.join(map(str, counts))} sites" if counts else f"{len(sites)} sites"
    how = (
        "Each line is one run of the in-process loop (secagg.demo.simulate: the demo's training script, "
        "the filters, the mask protocol's integer mean for distributed_gaussian; no processes), its AUC "
        "the mean over the repeats. *Planned* is the job's worst case by the privacy package's "
        "accounting (SVT: basic composition, delta 0; Gaussian: Renyi DP, converted at delta "
        f"{DELTA:g}); *spent* composes, as a ledger does, the receipts the filters returned."
        if in_process
        else "Each line is one federation whose job requests the filter; every site's policy carries a "
        "budget just large enough to admit it. *Planned* is the job's worst case by the privacy "
        "package's accounting (SVT: basic composition, delta 0; Gaussian: Renyi DP, converted at delta "
        f"{DELTA:g}); *spent* is the largest total any site's privacy ledger recorded."
    )
    lines = [
        f"# Privacy sweep: {'in-process' if in_process else mode + ' mode'}, {where}, {rounds} rounds",
        "",
        how,
        "",
        *table(rows),
        "",
        "![AUC against epsilon](privacy-sweep.png)",
        "",
    ]
    (out / "privacy-sweep.md").write_text("\n".join(lines))
    data = {
        "mode": "in-process" if in_process else mode,
        "rounds": rounds,
        "sites": list(sites),
        "site_counts": counts,
        "delta": DELTA,
        "rows": [r.to_dict() for r in rows],
    }
    (out / "privacy-sweep.json").write_text(json.dumps(data, indent=2))


def model_size() -> int:
    """Entries in the demo model's update (SVT's cost grows with it): 513 for the 30-16-1 MLP."""
    from secagg.demo.run import _template

    return sum(int(p.numel()) for p in _template().make_model().state_dict().values())


def federation_runner(
    sites: Sequence[SiteData],
    *,
    mode: str,
    rounds: int,
    params: dict[str, Any],
    strategy: dict[str, Any] | None = None,
    policies: dict[str, Path] | None = None,
    log: Callable[[str], object] = print,
) -> Runner:
    """A :data:`Runner` that runs a real federation: the job requests the setting's filter, and every
    site without its own ``--policy`` gets the demo policy with a budget that admits exactly this job."""
    names = [s.name for s in sites]

    def run(setting: Setting, planned: float, folder: Path) -> Outcome:
        policy = DEMO_POLICY if setting.filter is None else budget_policy(planned, DELTA)
        result = run_federation(
            folder,
            mode=mode_for(setting, mode),
            rounds=rounds,
            sites=list(sites),
            params=params,
            strategy=strategy,
            policies=policies,
            privacy=None if setting.filter is None else [setting.filter],
            default_policy=policy,
            log=lambda line: log("  " + line),
        )
        return Outcome(result.per_round, spent_epsilon(folder / "state", names), result.seconds)

    return run


def in_process_runner(
    sites: Sequence[SiteData],
    *,
    rounds: int,
    params: dict[str, Any],
    strategy: dict[str, Any] | None = None,
    repeats: int = 3,
) -> Runner:
    """A :data:`Runner` on the in-process loop: ``repeats`` runs (only the noise differs), their mean
    AUC per round, and the epsilon a ledger would compose from each site's receipts (the largest)."""
    import time

    from secagg.demo.simulate import simulate

    def run(setting: Setting, planned: float, folder: Path) -> Outcome:
        del planned, folder  # no policy to size and nothing written: the runs stay in memory
        t0 = time.perf_counter()
        privacy = [] if setting.filter is None else [setting.filter]
        runs = [
            simulate(sites, params, rounds=rounds, strategy=strategy, privacy=privacy, seed=seed)
            for seed in range(repeats)
        ]
        seconds = time.perf_counter() - t0
        per_round = [
            {"round": r + 1, "auc": float(np.mean([s.aucs[r] for s in runs])), "seconds": seconds / rounds}
            for r in range(rounds)
        ]
        spent = max(
            (compose(receipts, DELTA).epsilon for s in runs for receipts in s.receipts.values() if receipts),
            default=0.0,
        )
        return Outcome(per_round, spent, seconds, [s.aucs[-1] for s in runs])

    return run
