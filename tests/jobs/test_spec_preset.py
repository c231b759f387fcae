"""A job cannot ask for HE parameters other than the project key's: refused, not silently ignored."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from secagg.jobs.spec import HESpec


def test_only_the_project_keys_preset_is_accepted() -> None:
    assert HESpec().preset == HESpec(preset="secagg-default").preset == "secagg-default"
    with pytest.raises(ValidationError, match="secagg-default"):
        HESpec(preset="secagg-wide")  # type: ignore[arg-type]
