"""One way to turn a file's data into a model and its problems into lines a person can act on.

Every file we parse (``job.yaml``, a policy, a kit, a project, ``manifest.json``) is written by someone
we may not trust, and pydantic's own messages were each formatted by hand at every call site: one
printed a key of control characters straight to the terminal (``\\x1b[31m`` recolours it), one printed
only the first problem, one had no length bound. Here, every location part and message is made
printable and bounded, and at most ``limit`` problems are listed with a count of the rest.

pydantic's lax mode also reads ``rounds: "3"`` as 3 and ``rounds: true`` as 1. A quoted number in a
hand-written file is usually a mistake that another reader (a linter, a YAML 1.2 tool, the security
officer reading the file) sees differently, so :func:`validate` refuses text or a boolean wherever the
model holds a number, and text or a number wherever it holds a boolean. Whole floats for integers
(``rounds: 1e3``) stay accepted: both readings agree on them. Strict mode would do this too, but it
also refuses a list for a tuple and a string for an enum, which every file here relies on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

#: how many problems one message lists before "and N more"
LIMIT = 5
_MAX_PART = 60
_MAX_MESSAGE = 160


class FieldProblems(Exception):
    """The data does not fit the model; ``problems`` are ``field: message`` lines, already bounded."""

    def __init__(self, problems: list[str], total: int) -> None:
        self.problems = problems
        self.total = total
        super().__init__(self.line())

    def line(self, sep: str = "; ") -> str:
        more = f" (and {self.total - len(self.problems)} more)" if self.total > len(self.problems) else ""
        return sep.join(self.problems) + more


def printable(text: object, limit: int = _MAX_PART) -> str:
    """``text`` with every non-printable character escaped (``\\x1b``, ``\\n``), cut to ``limit``."""
    s = str(text)
    if not s.isprintable():
        s = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def field_path(loc: Sequence[object]) -> str:
    """A pydantic location as ``privacy[0].gamma``: keys printable and bounded (a key is the author's)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            shown = printable(part)
            out += f".{shown}" if out else shown
    return out


def problem(err: Mapping[str, Any]) -> str:
    """One pydantic error as ``field: message``; an input is never quoted unbounded or unescaped."""
    msg = printable(str(err["msg"]).removeprefix("Value error, "), _MAX_MESSAGE)
    where = field_path(err.get("loc", ()))
    return f"{where}: {msg}" if where else msg


def problems(exc: ValidationError, limit: int = LIMIT) -> FieldProblems:
    """The first ``limit`` errors of ``exc`` and their total."""
    return FieldProblems([problem(e) for e in exc.errors()[:limit]], exc.error_count())


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the text {printable(repr(value), 40)}"
    return type(value).__name__


def typed_problems(raw: object, value: object, loc: tuple[object, ...] = ()) -> list[str]:
    """Where the file wrote text (or a boolean) and the model took it as a number, or the reverse.

    Walks the validated model beside the data it came from: only fields present in the data are
    compared, and only text and booleans (or numbers, for a boolean) count, so defaults, a ``null``
    that a validator filled in and shorthand forms (``strategy: fedavg``) are left alone."""
    found: list[str] = []
    stack: list[tuple[object, object, tuple[object, ...]]] = [(raw, value, loc)]
    while stack:
        r, v, at = stack.pop()
        if isinstance(v, BaseModel):
            if not isinstance(r, dict):
                continue
            for name, info in type(v).model_fields.items():
                key = info.alias or name
                if key in r:
                    stack.append((r[key], getattr(v, name), (*at, key)))
        elif isinstance(v, list | tuple):
            if isinstance(r, list) and len(r) == len(v):
                stack.extend((x, y, (*at, i)) for i, (x, y) in enumerate(zip(r, v, strict=True)))
        elif isinstance(v, dict):
            if isinstance(r, dict):
                stack.extend((r[k], v[k], (*at, k)) for k in v if k in r)
        elif isinstance(v, bool):
            if isinstance(r, str | int | float) and not isinstance(r, bool):
                found.append(f"{field_path(at)}: expected true or false, not {_kind(r)}")
        elif isinstance(v, int | float) and isinstance(r, str | bool):
            hint = " (remove the quotes)" if isinstance(r, str) else ""
            found.append(f"{field_path(at)}: expected a number, not {_kind(r)}{hint}")
    return sorted(found)


def validate(model: type[M], raw: object, limit: int = LIMIT) -> M:
    """``raw`` as ``model``, or :class:`FieldProblems` (pydantic's, then the typed ones above)."""
    try:
        value = model.model_validate(raw)
    except ValidationError as exc:
        raise problems(exc, limit) from None
    typed = typed_problems(raw, value)
    if typed:
        raise FieldProblems(typed[:limit], len(typed))
    return value


__all__ = [
    "LIMIT",
    "FieldProblems",
    "field_path",
    "printable",
    "problem",
    "problems",
    "typed_problems",
    "validate",
]
