"""Hypothesis profiles for the fuzz targets, chosen by ``SECAGG_FUZZ`` (default ``smoke``).

``smoke`` (``make test``): a few dozen inputs per target, seconds in all. ``long``: many more
(``SECAGG_FUZZ_EXAMPLES``, default 20000) for a local hunt; the 10^6-execution campaign is
``make fuzz`` (:mod:`tests.fuzz.run`), a plain mutation loop that is far faster than hypothesis.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_common = {
    "deadline": None,  # the time bound is the target's own (Target.check), not hypothesis' flaky one
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    "derandomize": False,
    "database": None,
}
_examples = os.environ.get("SECAGG_FUZZ_EXAMPLES")
settings.register_profile("smoke", max_examples=int(_examples or 60), **_common)
settings.register_profile("long", max_examples=int(_examples or 20000), **_common)
settings.load_profile(os.environ.get("SECAGG_FUZZ", "smoke"))
