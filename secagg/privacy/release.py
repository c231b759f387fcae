"""Filter, then debit, then hand back: the only order in which a site may release an update.

The agent calls :func:`prepare_release` after training and uploads what it returns only if it returns.
The filtered update does not exist outside this function until the ledger has committed the debit, so a
caller cannot upload first and debit later by mistake; a refused debit (:class:`BudgetExhausted`) means
there is nothing to upload. After the upload is acknowledged, ``ledger.mark_released(debit_id)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from secagg.privacy.ledger import Ledger
from secagg.privacy.specs import Filter, apply_chain
from secagg.privacy.spend import Spend, Update

if TYPE_CHECKING:
    from secagg.privacy.streamed import UpdateFile


@dataclass(frozen=True)
class Release:
    #: in memory (:func:`prepare_release`), or a file (:func:`prepare_release_file`, the site agent's)
    update: Update | UpdateFile
    spends: list[Spend]
    debit_id: str


def prepare_release(
    ledger: Ledger | None,
    chain: Sequence[Filter],
    update: Mapping[str, Any],
    rng: np.random.Generator,
    job: str,
    round: int,
    training_spends: Iterable[Spend] = (),
) -> Release:
    """Invariant 3: a site uploads only after every filter its policy requires has been applied and its
    privacy budget has been debited durably; an exhausted budget refuses the round.

    Apply ``chain``, debit its spends plus ``training_spends`` (e.g. DP-SGD's) durably, then return.
    ``ledger`` is ``None`` only for a policy without a budget: the filters still run, in the same order,
    and nothing is debited (``debit_id`` is empty).

    Raises :class:`~secagg.privacy.ledger.BudgetExhausted` (nothing recorded, nothing to upload) when the
    round does not fit the budget.
    """
    filtered, spends = apply_chain(chain, update, rng)
    all_spends = [*training_spends, *spends]
    debit_id = ledger.debit(job, round, all_spends) if ledger is not None else ""
    return Release(filtered, all_spends, debit_id)


def prepare_release_file(
    ledger: Ledger | None,
    specs: Sequence[Any],
    update: UpdateFile,
    dst: Path,
    rng: np.random.Generator,
    job: str,
    round: int,
    training_spends: Iterable[Spend] = (),
) -> Release:
    """:func:`prepare_release` on a spooled update (:mod:`secagg.privacy.streamed`): the filter specs
    ``specs`` run over ``update`` into ``dst`` a window at a time where they allow it, then the durable
    debit; the same invariant, the same order, the same result bit for bit. ``dst`` is removed if the
    debit is refused, so a refused round leaves no filtered update behind."""
    from secagg.privacy.streamed import apply_chain_file

    filtered, spends = apply_chain_file(specs, update, dst, rng)
    all_spends = [*training_spends, *spends]
    try:
        debit_id = ledger.debit(job, round, all_spends) if ledger is not None else ""
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    return Release(filtered, all_spends, debit_id)
