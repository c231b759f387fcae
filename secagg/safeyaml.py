"""The one YAML loader for every YAML file the project reads: plain JSON-shaped data, bounded.

``yaml.safe_load`` runs no code but bounds nothing: a 1 KB document of nested aliases expands to
gigabytes ("billion laughs"), a deep ``[[[[`` ends in ``RecursionError``, a repeated key silently
wins, and YAML 1.1 reads ``1e-5`` as a string and ``017`` as 15. Files here are written by hand or
come from someone we do not trust (a job's ``job.yaml`` is read by every site), so this loader:

- refuses anchors, aliases and merge keys (``<<``): nothing a policy or job needs, and without them
  a document's size bounds its expansion;
- refuses a mapping that repeats a key (or, for ``parse``, reports every repeat with its line);
- bounds nesting depth and node count, and the input's size before it is read;
- builds only JSON data (mappings with string keys, lists, str, int, float, bool, None): explicit tags
  other than the core ones and timestamps are refused or read as strings;
- reads YAML 1.2 numbers (``1e-5``, ``1.0e5``, ``0o17``) as numbers, and refuses the spellings that
  YAML 1.1 reads as a number and YAML 1.2 as something else, rather than guess: base-60 (``1:30``),
  leading-zero octal (``017``), binary (``0b101``), digit separators (``1_000``), signed hex
  (``-0x1F``);
- opens a file without blocking (a FIFO does not hang) and names a directory, pipe or device as such.

Every error is a :class:`SafeYamlError` with a reason code, one line, bounded in length: it never
quotes the structure it refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from secagg import userfile
from secagg.errors import ConfigError
from secagg.reasons import Reason

MAX_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 200_000
_MAX_MESSAGE = 300

_CORE_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")
)
_STR = "tag:yaml.org,2002:str"
_FLOAT = "tag:yaml.org,2002:float"
_INT = "tag:yaml.org,2002:int"
#: YAML 1.2 floats PyYAML's 1.1 resolver leaves as strings (no dot, or an exponent without a sign)
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")
_OCTAL_11 = re.compile(r"^[-+]?0[0-7_]+$")
#: YAML 1.2's octal, which PyYAML's 1.1 resolver leaves as a string
_OCTAL_12 = re.compile(r"^0o[0-7]+$")


class SafeYamlError(ConfigError):
    """A YAML file refused before (or while) it is read; ``line`` is 1-based, 0 when not known."""

    def __init__(self, message: str, code: str = Reason.YAML_INVALID, line: int = 0) -> None:
        if len(message) > _MAX_MESSAGE:
            message = message[: _MAX_MESSAGE - 3] + "..."
        super().__init__(message)
        self.code = code
        self.line = line
        self.problem = message


def _where(source: str, line: int) -> str:
    return f"{source}:{line}" if line else source


def _fail(source: str, mark: Any, problem: str, code: str) -> SafeYamlError:
    line = mark.line + 1 if mark is not None else 0
    err = SafeYamlError(f"{_where(source, line)}: {problem}", code, line)
    err.problem = problem
    return err


class _Loader(yaml.SafeLoader):
    """SafeLoader with the checks above, done while composing (before anything is expanded)."""

    source = "<yaml>"

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self.duplicates: list[tuple[tuple[str | int, ...], int]] = []
        self._path: list[str | int] = []

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _fail(
                self.source, event.start_mark, "YAML aliases (*name) are not allowed", Reason.YAML_ALIAS
            )
        if getattr(event, "anchor", None) is not None:
            raise _fail(
                self.source, event.start_mark, "YAML anchors (&name) are not allowed", Reason.YAML_ALIAS
            )
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _fail(
                self.source, event.start_mark, f"more than {MAX_NODES} YAML nodes", Reason.YAML_TOO_DEEP
            )
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _fail(
                self.source, event.start_mark, f"nested deeper than {MAX_DEPTH} levels", Reason.YAML_TOO_DEEP
            )
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is None:
            return node
        if node.tag == "tag:yaml.org,2002:merge":
            raise _fail(
                self.source, node.start_mark, "YAML merge keys (<<) are not allowed", Reason.YAML_ALIAS
            )
        if node.tag not in _CORE_TAGS:
            raise _fail(
                self.source, node.start_mark, f"YAML tag {node.tag[:60]!r} is not allowed", Reason.YAML_TYPE
            )
        if isinstance(node, yaml.MappingNode):
            self._check_keys(node)
        elif isinstance(node, yaml.ScalarNode) and node.style is None:
            self._check_number(node)
        return node

    def _check_number(self, node: yaml.ScalarNode) -> None:
        value = node.value
        if node.tag in (_INT, _FLOAT) and ":" in value:
            problem = f"{value[:40]!r} is a base-60 number in YAML 1.1; quote it if it is text"
            raise _fail(self.source, node.start_mark, problem, Reason.YAML_NUMBER)
        if node.tag == _INT and _OCTAL_11.match(value) and value.strip("+-0_"):
            problem = f"{value[:40]!r} is octal in YAML 1.1, not decimal: drop the leading 0 or quote it"
            raise _fail(self.source, node.start_mark, problem, Reason.YAML_NUMBER)
        if node.tag in (_INT, _FLOAT) and "_" in value:
            problem = f"{value[:40]!r}: digit separators (_) are YAML 1.1 only; write the digits alone"
            raise _fail(self.source, node.start_mark, problem, Reason.YAML_NUMBER)
        digits = value.lstrip("+-")
        if node.tag == _INT and digits[:2] in ("0b", "0B"):
            problem = f"{value[:40]!r} is binary in YAML 1.1 and text in YAML 1.2: write it in decimal"
            raise _fail(self.source, node.start_mark, problem, Reason.YAML_NUMBER)
        if node.tag == _INT and digits != value and digits[:2] in ("0x", "0X", "0o", "0O"):
            problem = f"{value[:40]!r}: a signed hex or octal number is text in YAML 1.2: write it in decimal"
            raise _fail(self.source, node.start_mark, problem, Reason.YAML_NUMBER)

    def _check_keys(self, node: yaml.MappingNode) -> None:
        seen: set[str] = set()
        for key, _value in node.value:
            if key.tag == "tag:yaml.org,2002:merge":
                raise _fail(
                    self.source, key.start_mark, "YAML merge keys (<<) are not allowed", Reason.YAML_ALIAS
                )
            if not isinstance(key, yaml.ScalarNode) or key.tag != _STR:
                shown = key.value[:40] if isinstance(key, yaml.ScalarNode) else "a collection"
                raise _fail(
                    self.source, key.start_mark, f"key {shown!r} is not a string (quote it)", Reason.YAML_TYPE
                )
            if key.value in seen:
                self.duplicates.append(((key.value,), key.start_mark.line + 1))
                continue
            seen.add(key.value)

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        tag = super().resolve(kind, value, implicit)
        if kind is not yaml.ScalarNode or not implicit[0]:
            return tag
        if tag == "tag:yaml.org,2002:timestamp":
            return _STR
        if tag == _STR and _FLOAT_12.match(value):
            return _FLOAT
        if tag == _STR and _OCTAL_12.match(value):
            return _INT
        return tag


def _int_12(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    value = str(node.value).replace("_", "")
    sign = -1 if value.startswith("-") else 1
    digits = value.lstrip("+-")
    if digits.startswith(("0o", "0O")):
        return sign * int(digits[2:], 8)
    return int(loader.construct_yaml_int(node))


def _float_12(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    value = str(node.value)
    if _FLOAT_12.match(value):
        return float(value.replace("_", ""))
    return float(loader.construct_yaml_float(node))


_Loader.add_constructor(_INT, _int_12)
_Loader.add_constructor(_FLOAT, _float_12)


@dataclass
class Parsed:
    """A document's data and node tree (for line numbers), and every repeated key with its line."""

    data: Any
    root: yaml.Node | None
    duplicates: list[tuple[tuple[str | int, ...], int]] = field(default_factory=list)


def _text(data: bytes | str, source: str, max_bytes: int) -> str:
    size = len(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    if size > max_bytes:
        raise SafeYamlError(f"{source}: {size} bytes, over the limit of {max_bytes}", Reason.FILE_TOO_LARGE)
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SafeYamlError(f"{source}: not UTF-8 text (byte {exc.start})", Reason.YAML_INVALID) from None


def _unprintable(source: str, text: str, exc: yaml.reader.ReaderError) -> SafeYamlError:
    """A control or other non-printable character (YAML allows tab, newline and printable Unicode)."""
    position = max(0, min(int(exc.position), len(text)))
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
    problem = (
        f"character U+{char:04X} (column {column}) is not allowed in YAML "
        "(remove it, or write it as an escape in double quotes)"
    )
    err = SafeYamlError(f"{_where(source, line)}: {problem}", Reason.YAML_INVALID, line)
    err.problem = problem
    return err


def parse(data: bytes | str, source: str = "<yaml>", max_bytes: int = MAX_BYTES) -> Parsed:
    """Compose and construct one document; repeated keys are listed (the last value kept), not raised."""
    text = _text(data, source, max_bytes)
    try:
        loader = _Loader(text)  # the reader refuses non-printable characters here, before parsing
    except yaml.reader.ReaderError as exc:
        raise _unprintable(source, text, exc) from None
    loader.source = source
    try:
        root = loader.get_single_node()
        value = loader.construct_document(root) if root is not None else None
    except SafeYamlError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or type(exc).__name__
        raise _fail(source, mark, f"not valid YAML: {problem}", Reason.YAML_INVALID) from None
    except (yaml.YAMLError, ValueError, OverflowError) as exc:
        raise SafeYamlError(f"{source}: not valid YAML: {type(exc).__name__}", Reason.YAML_INVALID) from None
    finally:
        loader.dispose()
    return Parsed(value, root, loader.duplicates)


def load(data: bytes | str, source: str = "<yaml>", max_bytes: int = MAX_BYTES) -> Any:
    """The document's data; a repeated key is an error (the second would silently win elsewhere)."""
    parsed = parse(data, source, max_bytes)
    if parsed.duplicates:
        (key, *_), line = parsed.duplicates[0]
        raise SafeYamlError(
            f"{_where(source, line)}: key {str(key)[:60]!r} appears twice (the second would silently win)",
            Reason.YAML_DUPLICATE_KEY,
            line,
        )
    return parsed.data


def read_file(path: Path | str, max_bytes: int = MAX_BYTES, what: str = "file") -> bytes:
    """A regular file's bytes, at most ``max_bytes`` (:func:`secagg.userfile.read_file`: a FIFO is
    refused, not waited on), its refusals raised as :class:`SafeYamlError` like the parser's."""
    try:
        return userfile.read_file(path, max_bytes, what)
    except userfile.UserFileError as exc:
        raise SafeYamlError(str(exc), exc.code) from None


def load_file(path: Path | str, max_bytes: int = MAX_BYTES, what: str = "file") -> Any:
    """:func:`read_file` then :func:`load`."""
    return load(read_file(path, max_bytes, what), str(path), max_bytes)


__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "Parsed",
    "SafeYamlError",
    "load",
    "load_file",
    "parse",
    "read_file",
]
