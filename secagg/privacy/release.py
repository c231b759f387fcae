"""Filter, then debit, then hand back: the only order in which a site may release an update.

The agent calls :func:`prepare_release` after training and uploads what it returns only if it returns.
The filtered update does not exist outside this function until the ledger has committed the debit, so a
caller cannot upload first and debit later by mistake; a refused debit (:class:`BudgetExhausted`) means
there is nothing to upload. After the upload is acknowledged, ``ledger.mark_released(debit_id)``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from secagg.privacy.ledger import Ledger
from secagg.privacy.specs import Filter, apply_chain
from secagg.privacy.spend import Spend, Update
from secagg.privacy.streamed import UpdateFile, apply_chain_file


@dataclass(frozen=True)
class Release:
    #: in memory, or a file (the site agent's): see :func:`prepare_release`
    update: Update | UpdateFile
    spends: list[Spend]
    debit_id: str


def prepare_release(
    ledger: Ledger | None,
    chain: Sequence[Filter] | Sequence[Any],
    update: Mapping[str, Any] | UpdateFile,
    rng: np.random.Generator,
    job: str,
    round: int,
    training_spends: Iterable[Spend] = (),
    *,
    dst: Path | None = None,
    before_debit: Callable[[Release], None] | None = None,
) -> Release:
    """Invariant 3: a site uploads only after every filter its policy requires has been applied and its
    privacy budget has been debited durably; an exhausted budget refuses the round.

    Apply ``chain``, debit its spends plus ``training_spends`` (e.g. DP-SGD's) durably, then return.
    ``ledger`` is ``None`` only for a policy without a budget: the filters still run, in the same order,
    and nothing is debited (``debit_id`` is empty).

    Two forms, one order: an update in memory goes through ``chain``, built filters
    (:func:`~secagg.privacy.specs.build_chain`); an update file (the site agent's,
    :class:`~secagg.privacy.streamed.UpdateFile`) goes through ``chain``, the filter *specs*, a window
    at a time where they allow it, into the file ``dst`` (:func:`~secagg.privacy.streamed.apply_chain_file`,
    bit for bit the in-memory chain), which is removed again if the debit is refused: a refused round
    leaves no filtered update behind.

    Raises :class:`~secagg.privacy.ledger.BudgetExhausted` (nothing recorded, nothing to upload) when the
    round does not fit the budget.
    """
    filtered: Update | UpdateFile
    if isinstance(update, UpdateFile):
        if dst is None:
            raise ValueError("an update file is filtered into a file: give dst")
        specs: Sequence[Any] = chain  # the file form takes the specs (module docstring of streamed)
        filtered, spends = apply_chain_file(specs, update, dst, rng)
    else:
        filtered, spends = apply_chain(chain, update, rng)
    all_spends = [*training_spends, *spends]
    try:
        if ledger is None:
            return Release(filtered, all_spends, "")
        # the debit's id is chosen first, so ``before_debit`` can keep the release under it before the
        # commit: a crash right after the commit then finds it (never a debit with nothing to resend)
        debit_id = uuid.uuid4().hex
        if before_debit is not None:
            before_debit(Release(filtered, all_spends, debit_id))
        ledger.debit(job, round, all_spends, debit_id=debit_id)
    except BaseException:
        if dst is not None:
            dst.unlink(missing_ok=True)
        raise
    return Release(filtered, all_spends, debit_id)
