"""Read a job package, folder or ``.tar.gz``, without trusting anything in it.

Both kinds are reduced to one view: a list of regular files (relative POSIX names and sizes) that can
be read and hashed. Building that view is where unsafe shapes are refused: symbolic and hard links,
device files, absolute names, ``..``, names that differ only in case (they collide on macOS and
Windows sites), and packages over the size limit. A tarball is inspected header by header *before*
anything is written to disk; extraction happens only after the whole package verified.

A tarball is read through :class:`_Bounded`, which counts every decompressed byte (header blocks, pax
and GNU long-name data, the data of members refused for their name or type) against the package's
limit and refuses a read or a seek past it *before* it happens: a 1 MB ``.tar.gz`` whose header
declares 1 GiB is refused after reading one 512-byte block, not after inflating the gigabyte. Every
site runs this on bytes the aggregator sends, before any signature check.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
import unicodedata
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from secagg.jobs.errors import JobRejected
from secagg.reasons import Reason

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
MAX_FILES = 10_000
#: the most one pax extended header or GNU long name/link may hold; real ones are a few hundred bytes
MAX_HEADER_DATA = 1 << 20
_CHUNK = 1 << 20
#: what reading an archive can raise besides our own refusals (zlib: a corrupt deflate stream)
_READ_ERRORS = (OSError, tarfile.TarError, EOFError, zlib.error)


class PackageTooLarge(JobRejected):
    """A package over its size limit, refused before anything past the limit was read. The only
    failure reported: the listing stopped there, so anything else (a "missing" job.yaml) is unknown."""

    code = Reason.PACKAGE_TOO_LARGE


class _OverLimit(tarfile.TarError):
    """Raised by :class:`_Bounded` instead of reading past a bound; carries the failure line.

    A ``TarError`` but not a ``HeaderError``: ``tarfile`` catches header errors while it lists
    members and would go on; this one must stop the listing."""

    def __init__(self, failure: str) -> None:
        super().__init__(failure)
        self.failure = failure


class _Bounded:
    """The decompressed stream of a ``.tar.gz`` that never goes past ``limit`` bytes from its start.

    ``tarfile`` reads a pax header's or GNU long name's data in one ``read`` of the size the header
    declares, and skips a member by seeking past its declared size (which inflates everything in
    between): both are checked here before they happen. ``max_read`` bounds one read while members are
    listed (only header data is read then); it is lifted once the listing is done and file data is read.
    ``high`` is the furthest decompressed offset reached (every distinct decompressed byte, counted).
    """

    def __init__(self, raw: gzip.GzipFile, limit: int) -> None:
        self.raw = raw
        self.limit = limit
        self.max_read: int | None = MAX_HEADER_DATA
        self.high = 0

    def _over(self) -> _OverLimit:
        return _OverLimit(f"package content exceeds the limit of {self.limit} bytes")

    def tell(self) -> int:
        return self.raw.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self.raw.tell()
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("seek from the end of a compressed stream")
        if offset > self.limit:
            raise self._over()
        pos = self.raw.seek(offset)
        self.high = max(self.high, pos)
        return pos

    def read(self, size: int | None = -1) -> bytes:
        pos = self.raw.tell()
        room = self.limit - pos
        if size is None or size < 0:
            size = room
        if self.max_read is not None and size > self.max_read:
            raise _OverLimit(
                f"a tar header declares {size} bytes of extended header data (pax or GNU long name), "
                f"over the limit of {self.max_read}"
            )
        if size > room:  # a read past the limit is what the archive declares: refuse, do not try
            raise self._over()
        data = self.raw.read(size)
        self.high = max(self.high, pos + len(data))
        return data

    def close(self) -> None:
        self.raw.close()


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
    #: the listing stopped early (size or entry limit, unreadable archive): ``files`` is partial, so
    #: nothing else about the package (a "missing" job.yaml) can be said; ``failures`` say why
    incomplete: bool = False
    #: the size failure, when the package is over its limit: then the only problem reported
    too_large: str | None = None

    def over_limit(self, failure: str) -> None:
        self.failures.append(failure)
        self.too_large = failure
        self.incomplete = True

    def order(self, names: list[str]) -> list[str]:
        """``names`` in the order reading them is cheapest (a tarball: archive order, one pass)."""
        return sorted(names)

    def refusal(self) -> JobRejected:
        """The error for this view's failures: :class:`PackageTooLarge` when the size stopped it."""
        subject = str(self.location)
        if self.too_large is not None:
            return PackageTooLarge([self.too_large], subject=subject)
        return JobRejected(self.failures, subject=subject)

    def open(self, name: str) -> IO[bytes]:  # pragma: no cover - overridden
        raise NotImplementedError

    def read(self, name: str, limit: int = 16 * 1024 * 1024) -> bytes:
        if self.files.get(name, 0) > limit:
            raise JobRejected([f"{name}: larger than {limit} bytes"])
        try:
            with self.open(name) as fh:
                return fh.read(limit)
        except _OverLimit as exc:
            raise PackageTooLarge([exc.failure]) from None
        except _READ_ERRORS as exc:
            raise JobRejected([f"{name}: cannot be read ({exc})"]) from None

    def digest(self, name: str) -> tuple[str, int]:
        try:
            with self.open(name) as fh:
                return sha256_stream(fh)
        except _OverLimit as exc:
            raise PackageTooLarge([exc.failure]) from None
        except _READ_ERRORS as exc:
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
    def __init__(self, location: Path, tar: tarfile.TarFile | None, stream: _Bounded | None = None) -> None:
        super().__init__(location)
        self.tar = tar
        self.stream = stream
        self.members: dict[str, tarfile.TarInfo] = {}

    @property
    def decompressed(self) -> int:
        """Decompressed bytes read so far (the furthest offset reached in the archive's stream)."""
        return self.stream.high if self.stream is not None else 0

    def order(self, names: list[str]) -> list[str]:
        # a gzip stream seeks backwards by inflating again from its start: read in archive order
        end = 1 << 62
        return sorted(names, key=lambda n: (self.members[n].offset if n in self.members else end, n))

    def open(self, name: str) -> IO[bytes]:
        assert self.tar is not None
        fh = self.tar.extractfile(self.members[name])
        if fh is None:
            raise JobRejected([f"{name}: not a regular file"])
        return fh

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
        if self.stream is not None:
            self.stream.close()


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
            view.incomplete = True
            break
    view.failures.extend(case_collisions(names))
    if total > max_bytes:
        view.over_limit(f"package is {total} bytes, over the limit of {max_bytes}")
    return view


def scan_tar(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> TarView:
    """List a tarball's members from their headers; nothing is written to disk, and nothing past
    ``max_bytes`` of decompressed archive (headers included) is read."""
    size = path.stat().st_size
    if size > max_bytes:
        view = TarView(path, None)
        view.over_limit(f"package file is {size} bytes, over the limit of {max_bytes}")
        return view
    try:
        stream = _Bounded(gzip.GzipFile(path, "rb"), max_bytes)
    except OSError as exc:
        view = TarView(path, None)
        view.failures.append(f"{path.name}: cannot be read ({exc.strerror or exc})")
        view.incomplete = True
        return view
    try:
        tar = tarfile.open(fileobj=stream, mode="r:")  # type: ignore[call-overload]  # noqa: SIM115
    except _OverLimit as exc:
        stream.close()
        view = TarView(path, None)
        view.over_limit(exc.failure)
        return view
    except _READ_ERRORS as exc:
        stream.close()
        view = TarView(path, None)
        view.failures.append(f"{path.name}: not a readable .tar.gz ({exc})")
        view.incomplete = True
        return view
    view = TarView(path, tar, stream)
    names: list[str] = []
    count = 0
    try:
        while (member := tar.next()) is not None:
            count += 1
            if count > MAX_FILES:
                view.failures.append(f"more than {MAX_FILES} entries")
                view.incomplete = True
                break
            # whatever its type or name, the member's declared data is skipped over (inflated) to
            # reach the next header: refuse a declared size past the limit before that happens
            if member.offset_data + member.size > max_bytes:
                view.over_limit(f"package content exceeds the limit of {max_bytes} bytes")
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
            names.append(name)
    except _OverLimit as exc:
        view.over_limit(exc.failure)
    except _READ_ERRORS as exc:
        view.failures.append(f"{path.name}: corrupt archive ({exc})")
        view.incomplete = True
    stream.max_read = None  # listing done: file data is read in chunks the reader chooses
    if view.too_large is not None:
        return view  # the listing stopped at the limit: the rest is unknown, only the size is said
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
