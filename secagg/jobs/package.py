"""Read a job package, folder or ``.tar.gz``, without trusting anything in it.

Both kinds are reduced to one view: a list of regular files (relative POSIX names and sizes) that can
be read and hashed. Building that view is where unsafe shapes are refused: symbolic and hard links,
device files, absolute names, ``..``, names that differ only in case (they collide on macOS and
Windows sites), and packages over the size limit. A tarball is inspected header by header *before*
anything is written to disk; extraction happens only after the whole package verified.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from secagg.jobs.errors import JobRejected

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
MAX_FILES = 10_000
_CHUNK = 1 << 20


def is_tarball(path: Path) -> bool:
    return path.is_file() and (path.name.endswith(".tar.gz") or path.name.endswith(".tgz"))


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a safe relative file name inside a package, or None if it is."""
    if not name:
        return "empty file name"
    if "\\" in name or any(ord(c) < 32 for c in name):
        return f"{name!r}: backslash or control character in file name"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return f"{name!r}: absolute path"
    parts = PurePosixPath(name).parts
    if ".." in parts:
        return f"{name!r}: path escapes the package ('..')"
    if any(p in ("", ".") for p in name.split("/")):
        return f"{name!r}: not a normalised path"
    return None


def case_collisions(names: list[str]) -> list[str]:
    """Names that one file system keeps apart and another merges (case, Unicode normalisation)."""
    seen: dict[str, str] = {}
    problems = []
    for n in names:
        key = unicodedata.normalize("NFC", n).casefold()
        if key in seen and seen[key] != n:
            how = "case" if seen[key].casefold() == n.casefold() else "case or Unicode normalisation"
            problems.append(f"{seen[key]!r} and {n!r}: names differ only in {how}")
        seen.setdefault(key, n)
    return problems


def sha256_stream(fh: IO[bytes]) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    while chunk := fh.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


@dataclass
class PackageView:
    """Regular files of a package; ``failures`` are the unsafe shapes found while listing it."""

    location: Path
    files: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def open(self, name: str) -> IO[bytes]:  # pragma: no cover - overridden
        raise NotImplementedError

    def read(self, name: str, limit: int = 16 * 1024 * 1024) -> bytes:
        if self.files.get(name, 0) > limit:
            raise JobRejected([f"{name}: larger than {limit} bytes"])
        try:
            with self.open(name) as fh:
                return fh.read(limit)
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise JobRejected([f"{name}: cannot be read ({exc})"]) from None

    def digest(self, name: str) -> tuple[str, int]:
        try:
            with self.open(name) as fh:
                return sha256_stream(fh)
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise JobRejected([f"{name}: cannot be read ({exc})"]) from None

    def close(self) -> None:
        pass


class DirView(PackageView):
    def open(self, name: str) -> IO[bytes]:
        # O_NOFOLLOW: a file swapped for a link after listing is refused, not followed
        try:
            fd = os.open(self.location / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise JobRejected([f"{name}: cannot be read ({exc.strerror})"]) from None
        return os.fdopen(fd, "rb")


class TarView(PackageView):
    def __init__(self, location: Path, tar: tarfile.TarFile | None) -> None:
        super().__init__(location)
        self.tar = tar
        self.members: dict[str, tarfile.TarInfo] = {}

    def open(self, name: str) -> IO[bytes]:
        assert self.tar is not None
        fh = self.tar.extractfile(self.members[name])
        if fh is None:
            raise JobRejected([f"{name}: not a regular file"])
        return fh

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()


def _walk(root: Path, rel: str, view: PackageView) -> Iterator[tuple[str, os.stat_result]]:
    with os.scandir(root / rel if rel else root) as it:
        for entry in sorted(it, key=lambda e: e.name):
            name = f"{rel}/{entry.name}" if rel else entry.name
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                view.failures.append(f"{name}: symbolic link")
            elif stat.S_ISDIR(st.st_mode):
                yield name + "/", st
                yield from _walk(root, name, view)
            else:
                yield name, st


def scan_dir(root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> DirView:
    view = DirView(root)
    if root.is_symlink():
        view.failures.append(f"{root}: the package folder itself is a symbolic link")
        return view
    total = 0
    names: list[str] = []
    for name, st in _walk(root, "", view):
        names.append(name.rstrip("/"))
        if name.endswith("/"):
            continue
        if problem := name_problem(name):
            view.failures.append(problem)
        elif not stat.S_ISREG(st.st_mode):
            view.failures.append(f"{name}: device file, socket or pipe")
        elif st.st_nlink > 1:
            view.failures.append(f"{name}: hard link ({st.st_nlink} names for one file)")
        else:
            view.files[name] = st.st_size
            total += st.st_size
        if len(names) > MAX_FILES:
            view.failures.append(f"more than {MAX_FILES} entries")
            break
    view.failures.extend(case_collisions(names))
    if total > max_bytes:
        view.failures.append(f"package is {total} bytes, over the limit of {max_bytes}")
    return view


def scan_tar(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> TarView:
    """List a tarball's members from their headers; nothing is written to disk."""
    if path.stat().st_size > max_bytes:
        view = TarView(path, None)
        view.failures.append(f"package file is {path.stat().st_size} bytes, over the limit of {max_bytes}")
        return view
    try:
        tar = tarfile.open(path, "r:gz")  # noqa: SIM115 - closed by the view
    except (tarfile.TarError, OSError, EOFError) as exc:
        view = TarView(path, None)
        view.failures.append(f"{path.name}: not a readable .tar.gz ({exc})")
        return view
    view = TarView(path, tar)
    total = 0
    names: list[str] = []
    count = 0
    try:
        while (member := tar.next()) is not None:
            count += 1
            if count > MAX_FILES:
                view.failures.append(f"more than {MAX_FILES} entries")
                break
            raw = member.name
            name = raw[2:] if raw.startswith("./") else raw
            name = name.rstrip("/") if member.isdir() else name
            if member.isdir() and name in ("", "."):
                continue
            if problem := name_problem(name):
                view.failures.append(problem)
                continue
            if member.issym():
                view.failures.append(f"{name}: symbolic link (to {member.linkname!r})")
            elif member.islnk():
                view.failures.append(f"{name}: hard link (to {member.linkname!r})")
            elif member.ischr() or member.isblk() or member.isfifo():
                view.failures.append(f"{name}: device file or pipe")
            elif member.isdir():
                pass
            elif not member.isreg():
                view.failures.append(f"{name}: unsupported tar member type {member.type!r}")
            elif name in view.files:
                view.failures.append(f"{name}: appears twice in the archive")
            else:
                view.files[name] = member.size
                view.members[name] = member
                total += member.size
            names.append(name)
            if total > max_bytes:
                view.failures.append(f"package content exceeds the limit of {max_bytes} bytes")
                break
    except (tarfile.TarError, OSError, EOFError) as exc:
        view.failures.append(f"{path.name}: corrupt archive ({exc})")
    view.failures.extend(case_collisions(sorted(set(names))))
    parents = {str(parent) for n in view.files for parent in PurePosixPath(n).parents}
    view.failures.extend(f"{n}: is both a file and a folder" for n in sorted(view.files) if n in parents)
    return view


def scan(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> PackageView:
    if is_tarball(path):
        return scan_tar(path, max_bytes)
    if path.is_dir():
        return scan_dir(path, max_bytes)
    raise JobRejected([f"{path}: not a job folder or .tar.gz"])


def extract(view: TarView, dest: Path | None = None) -> Path:
    """Extract a *verified* tarball's regular files into a fresh directory (never an existing one)."""
    assert view.tar is not None and not view.failures
    if dest is None:
        dest = Path(tempfile.mkdtemp(prefix="secagg-job-"))
    else:
        dest.mkdir(parents=True, exist_ok=False)
    try:
        view.tar.extractall(dest, members=list(view.members.values()), filter="data")
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise JobRejected([f"{view.location.name}: extraction failed ({exc})"]) from None
    return dest


def copy_files(view: PackageView, names: list[str], dest: Path) -> Path:
    """Copy a *verified* folder's listed files into a fresh directory, so later edits of the source
    folder cannot change what runs."""
    assert not view.failures
    dest.mkdir(parents=True, exist_ok=False)
    for name in names:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with view.open(name) as src, open(target, "xb") as out:
            while chunk := src.read(_CHUNK):
                out.write(chunk)
    return dest
