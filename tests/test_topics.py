"""Relay topics are named once (secagg/topics.py) and both ends of the wire use the registry."""

from __future__ import annotations

import ast
from pathlib import Path

import secagg
from secagg.aggregator.modes import COLLECT_TOPICS, POST_TOPICS
from secagg.crossval import wire
from secagg.topics import Topic

ROOT = Path(secagg.__file__).parent
VALUES = {t.value for t in Topic}
RELAY_CALLS = {"post", "post_json", "collect"}


def _literal_topics(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        cands: list[ast.expr] = []
        if isinstance(node, ast.Compare) and "topic" in ast.unparse(node.left):
            cands = list(node.comparators)
        elif isinstance(node, ast.Call):
            cands = [k.value for k in node.keywords if k.arg == "topic"]
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in RELAY_CALLS and node.args:
                cands.append(node.args[0])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "-" in node.value:
            cands = [node]  # hyphenated topics are no ordinary words: none may appear at all
        found += [
            (c.lineno, str(c.value)) for c in cands if isinstance(c, ast.Constant) and c.value in VALUES
        ]
    return found


def test_no_topic_is_spelled_inline() -> None:
    inline = {}
    for path in ROOT.rglob("*.py"):
        if path.name == "topics.py" or "generated" in path.parts:
            continue
        hits = _literal_topics(ast.parse(path.read_text()))
        if hits:
            inline[str(path.relative_to(ROOT))] = hits
    assert not inline, inline


def test_the_check_sees_an_inline_topic() -> None:
    src = 'relay.post("ready", b"")\nif f.topic == "roster": pass\nx = "mask-keys"\nm(topic="final")\n'
    assert [v for _, v in _literal_topics(ast.parse(src))] == ["ready", "roster", "mask-keys", "final"]


def test_wire_strings_are_unchanged_and_the_mode_topics_registered() -> None:
    assert Topic.READY == "ready" and Topic.AUDIT_HEAD == "audit-head" and Topic.HE_KEY == "he-key"
    assert POST_TOPICS | COLLECT_TOPICS | wire.POST_TOPICS | wire.COLLECT_TOPICS <= VALUES


def test_every_topic_set_anywhere_is_registered() -> None:
    """A module-level ``*_TOPICS`` set (what a side posts or collects) holds only registered topics,
    so a new topic cannot bypass the registry by being spelled where the test above does not look."""
    import importlib
    import pkgutil

    unregistered = {}
    wire_sides = ("secagg.agent", "secagg.aggregator", "secagg.crossval", "secagg.mask", "secagg.tee")
    for info in pkgutil.walk_packages(secagg.__path__, "secagg."):
        if not info.name.startswith(wire_sides) or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if name.endswith("TOPICS") and isinstance(value, frozenset | set) and not value <= VALUES:
                unregistered[f"{info.name}.{name}"] = sorted(value - VALUES)
    assert not unregistered, unregistered
