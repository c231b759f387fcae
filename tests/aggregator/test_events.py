"""Audit event names are constants; the observers and every ``audit.append`` use registered names."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import secagg
from secagg.events import JOB_OUTCOMES, REFUSALS, SITE_REFUSALS, TERMINAL, Event

ROOT = Path(secagg.__file__).parent
VALUES = {e.value for e in Event}


def _appended(path: Path) -> list[ast.expr]:
    """First arguments of ``<something>.audit.append(...)`` / ``self._audit(...)`` calls."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        f = node.func
        if (
            isinstance(f, ast.Attribute)
            and f.attr == "append"
            and ast.unparse(f.value).rsplit(".", 1)[-1] == "audit"
            or isinstance(f, ast.Attribute)
            and f.attr == "_audit"
        ):
            out.append(node.args[0])
    return out


def test_names_are_unique_and_the_stored_strings() -> None:
    assert len(VALUES) == len(list(Event))
    assert Event.ROUND_COMPLETED == "round_completed" and json.dumps(Event.JOB_FAILED) == '"job_failed"'
    assert {"job_finished", "job_aborted", "job_failed"} == TERMINAL
    assert TERMINAL | {"job_started"} == JOB_OUTCOMES
    assert set(Event) >= REFUSALS and set(Event) >= SITE_REFUSALS


def test_every_appended_literal_is_a_registered_event() -> None:
    for path in ROOT.rglob("*.py"):
        for arg in _appended(path):
            for const in (
                n for n in ast.walk(arg) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            ):
                assert const.value in VALUES, f"{path.relative_to(ROOT)}: {const.value!r}"


def test_no_event_is_spelled_inline_anywhere() -> None:
    paths = list(ROOT.rglob("*.py"))
    for path in paths:
        for arg in _appended(path):
            assert not isinstance(arg, ast.Constant), f"{path.name}: {ast.unparse(arg)}"
    for path in (ROOT / "metrics.py", ROOT / "tensorboard.py"):  # arrows point down
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(str(m).startswith("secagg.aggregator") for m in imported), path.name
        assert "fed.payload" not in path.read_text(), path.name


def test_no_event_name_is_compared_or_listed_as_a_literal() -> None:
    """Readers of the audit trail (site metrics, simulate's refusal reader, observers) compare against
    the registry, so a renamed event cannot silently stop being counted. Reason codes that share a
    name with an event (``job_stopped``) live in reasons.py and are excluded with it."""
    names = {v for v in VALUES if "_" in v}  # one-word names (``refused``) are ordinary words too
    bare = []
    for path in ROOT.rglob("*.py"):
        if path.name in ("events.py", "reasons.py") or "generated" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            parts: list[ast.expr] = []
            if isinstance(node, ast.Compare):
                parts = [node.left, *node.comparators]
            elif isinstance(node, ast.List | ast.Tuple | ast.Set):
                parts = list(node.elts)
            elif isinstance(node, ast.Call):
                parts = [*node.args, *(k.value for k in node.keywords)]
            bare += [
                f"{path.relative_to(ROOT)}:{p.lineno} {p.value}"
                for p in parts
                if isinstance(p, ast.Constant) and p.value in names
            ]
    assert not bare, bare
