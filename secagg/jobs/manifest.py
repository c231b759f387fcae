"""``manifest.json``: the SHA-256 and size of every file, as canonical JSON (RFC 8785).

Canonical bytes mean one manifest has exactly one encoding, so a signature over those bytes cannot be
replayed over a differently-serialised manifest that a lax parser would read differently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import rfc8785
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from secagg.jobs.errors import JobRejected
from secagg.jobs.package import PackageView, name_problem

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SIGSTORE_BUNDLE = "manifest.sigstore.json"
#: files that describe the package and so cannot be listed in it
META_FILES = frozenset({MANIFEST, SIGNATURE, SIGSTORE_BUNDLE})


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

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


def parse_manifest(data: bytes) -> Manifest:
    try:
        raw = json.loads(data)
        manifest = Manifest.model_validate(raw)
    except (ValueError, ValidationError) as exc:
        raise JobRejected([f"{MANIFEST}: not a valid manifest ({_short(exc)})"]) from None
    if rfc8785.dumps(raw) != data:
        raise JobRejected([f"{MANIFEST}: not in canonical form (RFC 8785)"])
    bad = [p for n in manifest.files if (p := name_problem(n))]
    bad += [f"{MANIFEST}: lists its own metadata file {n}" for n in manifest.files if n in META_FILES]
    if bad:
        raise JobRejected([f"{MANIFEST}: {b}" for b in bad])
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
