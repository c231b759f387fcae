"""The one error a job verification raises, carrying every failure found, not just the first."""

from __future__ import annotations

from collections.abc import Sequence

from secagg.errors import IntegrityError
from secagg.reasons import Reason


class JobRejected(IntegrityError):
    """A job package that failed verification; ``failures`` lists each reason, in the order found."""

    code: str = Reason.JOB_REJECTED

    def __init__(self, failures: Sequence[str], *, subject: str = "job package") -> None:
        self.failures = list(failures)
        n = len(self.failures)
        super().__init__(
            f"{subject} rejected ({n} problem{'s' if n != 1 else ''}): " + "; ".join(self.failures)
        )
