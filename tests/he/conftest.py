"""HE fixtures: one key per test session (key generation is the slow part), small vectors only."""

from __future__ import annotations

import pytest

from secagg.he.context import PublicContext, SecretContext, make_secret_context
from secagg.he.params import SECAGG_DEFAULT


@pytest.fixture(scope="session")
def secret_ctx() -> SecretContext:
    return make_secret_context(SECAGG_DEFAULT)


@pytest.fixture(scope="session")
def other_secret_ctx() -> SecretContext:
    """Same parameters, another key: what a stale or foreign job would use."""
    return make_secret_context(SECAGG_DEFAULT)


@pytest.fixture(scope="session")
def public_ctx(secret_ctx: SecretContext) -> PublicContext:
    return secret_ctx.public()
