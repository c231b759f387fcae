"""The import graph: lower layers never import higher ones and no module imports itself back.

Read from the source, not from ``sys.modules``, so an import inside a function (a lazy arrow) counts
as much as one at the top: a circle broken only by import order is still a circle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import attestation
import secagg

SECAGG = Path(secagg.__file__).parent
ATTEST = Path(attestation.__file__).parent


def _module(path: Path) -> str:
    root = SECAGG.parent if path.is_relative_to(SECAGG) else ATTEST.parent
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = str(node.module)
            if not mod.startswith(target + "."):  # its own package: already initialising, no arrow
                yield target
            yield from (f"{target}.{a.name}" for a in node.names)  # ``from pkg import submodule``


def _graph() -> dict[str, set[str]]:
    files = [p for root in (SECAGG, ATTEST) for p in root.rglob("*.py") if "generated" not in p.parts]
    modules = {_module(p): p for p in files}
    return {m: {t for t in _imports(p) if t in modules and t != m} for m, p in modules.items()}


GRAPH = _graph()


def _under(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _edges(src: str) -> Iterator[tuple[str, str]]:
    for m, targets in GRAPH.items():
        if _under(m, src):
            yield from ((m, t) for t in targets)


@pytest.mark.parametrize("low", ["secagg.he", "secagg.mask", "secagg.privacy", "secagg.jobs", "attestation"])
def test_lower_layers_know_nothing_of_grpc_the_cli_or_the_agent(low: str) -> None:
    high = ("secagg.transport", "secagg.commands", "secagg.cli", "secagg.agent", "secagg.aggregator")
    up = [(m, t) for m, t in _edges(low) if _under(t, *high)]
    assert not up, up


def test_attestation_imports_nothing_of_secagg() -> None:
    assert not [(m, t) for m, t in _edges("attestation") if _under(t, "secagg")]


def test_the_agent_and_the_aggregator_never_import_each_other() -> None:
    assert not [(m, t) for m, t in _edges("secagg.agent") if _under(t, "secagg.aggregator")]
    assert not [(m, t) for m, t in _edges("secagg.aggregator") if _under(t, "secagg.agent")]


def test_only_the_cli_imports_the_commands() -> None:
    users = {
        m for m, t in _edges("secagg") if _under(t, "secagg.commands") and not _under(m, "secagg.commands")
    }
    assert users == {"secagg.cli"}, users


def test_no_module_imports_itself_back() -> None:
    """Tarjan's strongly connected components: every component must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not circles, circles
