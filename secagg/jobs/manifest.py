"""``manifest.json``: the SHA-256 and size of every file, as canonical JSON (RFC 8785).

Canonical bytes mean one manifest has exactly one encoding, so a signature over those bytes cannot be
replayed over a differently-serialised manifest that a lax parser would read differently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import rfc8785
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from secagg import validation
from secagg.jobs.errors import JobRejected
from secagg.jobs.package import PackageView, name_problem
from secagg.jobs.spec import MAX_SAFE_INT
from secagg.reasons import Reason

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SIGSTORE_BUNDLE = "manifest.sigstore.json"
#: files that describe the package and so cannot be listed in it
META_FILES = frozenset({MANIFEST, SIGNATURE, SIGSTORE_BUNDLE})
_MAX_PROBLEMS = 5
_MAX_KEY = 80


class ManifestInvalid(JobRejected):
    """``manifest.json`` does not parse or is not a valid manifest; each failure names the field
    (``manifest.json: files["train.py"].sha256: ...``)."""

    code = Reason.MANIFEST_INVALID


class FileEntry(BaseModel):
    # strict: a size of "3" or 3.0 is refused, not read as 3 (one manifest, one meaning)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    #: past 2^53 a JSON number is not exact (RFC 8785 refuses it): no file is that large anyway
    size: int = Field(ge=0, le=MAX_SAFE_INT)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    version: Literal[1] = 1
    files: dict[str, FileEntry]

    def canonical(self) -> bytes:
        return rfc8785.dumps(self.model_dump(mode="json"))


def build_manifest(view: PackageView) -> Manifest:
    """Hash every file of a package that passed the safety scan."""
    if view.failures:
        raise view.refusal()
    files = {}
    for name in view.order(list(view.files)):
        if name in META_FILES:
            continue
        digest, size = view.digest(name)
        files[name] = FileEntry(sha256=digest, size=size)
    return Manifest(files=files)


def _field(loc: tuple[Any, ...]) -> str:
    """A pydantic location as a path into the document: ``files["lib/a.py"].sha256``."""
    if len(loc) > 1 and loc[0] == "files":  # a file name (a key chosen by the package)
        name = str(loc[1]) if len(str(loc[1])) <= _MAX_KEY else str(loc[1])[: _MAX_KEY - 3] + "..."
        rest = validation.field_path(loc[2:])
        return f"files[{json.dumps(name)}]" + (rest if rest[:1] in ("", "[") else f".{rest}")
    return validation.field_path(loc) or "(top level)"


def _problem(err: Any) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "less_than_equal" and ctx.get("le") == MAX_SAFE_INT:
        msg = f"over 2^53 - 1 ({MAX_SAFE_INT}), the largest integer JSON keeps exact"
    elif kind == "string_pattern_mismatch":
        msg = "not 64 lowercase hex digits (a SHA-256)"
    elif kind.startswith("int_"):
        msg = "expected a whole number"
    elif kind == "extra_forbidden":
        msg = "unknown field"
    else:
        msg = str(err["msg"])[:120]
    return f"{MANIFEST}: {_field(tuple(err['loc']))}: {msg}"


def parse_manifest(data: bytes) -> Manifest:
    """The manifest, or :class:`ManifestInvalid` naming each bad field (at most five of them)."""
    try:
        raw = json.loads(data)
    except RecursionError:
        raise ManifestInvalid([f"{MANIFEST}: nested too deep"]) from None
    except ValueError as exc:  # not JSON, not UTF-8, an integer of more than 4300 digits
        raise ManifestInvalid([f"{MANIFEST}: not valid JSON ({_short(exc)[:120]})"]) from None
    if not isinstance(raw, dict):
        raise ManifestInvalid([f"{MANIFEST}: (top level): expected an object with version and files"])
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = [_problem(e) for e in exc.errors()[:_MAX_PROBLEMS]]
        if exc.error_count() > _MAX_PROBLEMS:
            problems.append(f"{MANIFEST}: and {exc.error_count() - _MAX_PROBLEMS} more problems")
        raise ManifestInvalid(problems) from None
    try:
        canonical = rfc8785.dumps(raw)
    except rfc8785.CanonicalizationError as exc:  # a number past what RFC 8785 allows
        raise ManifestInvalid([f"{MANIFEST}: not canonical JSON ({_short(exc)[:120]})"]) from None
    if canonical != data:
        raise ManifestInvalid([f"{MANIFEST}: not in canonical form (RFC 8785)"])
    bad = [p for n in manifest.files if (p := name_problem(n))]
    bad += [f"lists its own metadata file {n}" for n in manifest.files if n in META_FILES]
    if bad:
        raise ManifestInvalid([f"{MANIFEST}: {b}" for b in bad])
    return manifest


def check_files(manifest: Manifest, view: PackageView) -> list[str]:
    """Every failure between the manifest and the package's files, all of them."""
    failures = []
    present = {n for n in view.files if n not in META_FILES}
    for name in sorted(present - manifest.files.keys()):
        failures.append(f"{name}: file not listed in the manifest")
    # hashed in the order the package reads fastest (a tarball: one pass), reported in name order
    found: dict[str, list[str]] = {}
    for name in view.order(list(manifest.files)):
        entry, problems = manifest.files[name], found.setdefault(name, [])
        if name not in present:
            problems.append(f"{name}: listed in the manifest but missing")
            continue
        if view.files[name] != entry.size:
            problems.append(f"{name}: size {view.files[name]} differs from the manifest's {entry.size}")
            continue
        try:
            digest, size = view.digest(name)
        except JobRejected as exc:
            problems += exc.failures
            continue
        if size != entry.size:
            problems.append(f"{name}: size {size} differs from the manifest's {entry.size}")
        elif digest != entry.sha256:
            problems.append(f"{name}: SHA-256 differs from the manifest (file modified)")
    return failures + [p for name in sorted(found) for p in found[name]]


def write_manifest(root: Path, manifest: Manifest) -> Path:
    out = root / MANIFEST
    out.write_bytes(manifest.canonical())
    return out


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
