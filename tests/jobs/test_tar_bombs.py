"""Tar header bombs (#18): a small ``.tar.gz`` whose headers declare gigabytes is refused after reading
at most the package's limit of decompressed bytes, headers included, before any signature check.

The bombs are real: gzip members concatenate, so 1 GiB of zeros is 1024 copies of one compressed MiB
(about 1 MB on disk). Each test checks the specific refusal and how much of the archive was inflated
(``TarView.decompressed``, the furthest offset reached in the decompressed stream).
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from secagg.jobs import JobRejected, verify_job
from secagg.jobs.package import DEFAULT_MAX_BYTES, MAX_HEADER_DATA, PackageTooLarge, scan_tar
from secagg.reasons import Reason

GIB = 1 << 30


def _header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def bomb(path: Path, header: bytes, inflated: int = GIB) -> Path:
    """``header`` then ``inflated`` bytes of zeros, gzip-compressed to about inflated / 1000."""
    mib = gzip.compress(b"\0" * (1 << 20), compresslevel=9)
    with path.open("wb") as fh:
        fh.write(gzip.compress(header))
        for _ in range(inflated >> 20):
            fh.write(mib)
    return path


def refused(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> PackageTooLarge:
    with pytest.raises(PackageTooLarge) as info:
        verify_job(path, None, max_bytes=max_bytes)
    assert info.value.code == Reason.PACKAGE_TOO_LARGE
    return info.value


@pytest.mark.parametrize(
    ("kind", "what"),
    [(tarfile.XHDTYPE, "pax"), (tarfile.XGLTYPE, "pax global"), (tarfile.GNUTYPE_LONGNAME, "GNU long name")],
)
def test_header_declaring_a_gibibyte_is_refused_after_one_block(
    tmp_path: Path, kind: bytes, what: str
) -> None:
    path = bomb(tmp_path / "job.tar.gz", _header("././@LongLink", kind, GIB))
    assert path.stat().st_size < 2 << 20, "a ~1 MB file that inflates to 1 GiB"
    exc = refused(path)
    assert exc.failures == [
        f"a tar header declares {GIB} bytes of extended header data (pax or GNU long name), "
        f"over the limit of {MAX_HEADER_DATA}"
    ], what
    view = scan_tar(path)
    try:
        assert view.decompressed <= tarfile.BLOCKSIZE
    finally:
        view.close()


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("../evil.py", tarfile.REGTYPE),
        ("/etc/cron.d/x", tarfile.REGTYPE),
        ("odd", b"Z"),
        ("dev", tarfile.CHRTYPE),
    ],
)
def test_refused_member_is_not_inflated(tmp_path: Path, name: str, kind: bytes) -> None:
    """A member refused for its name or type still declares data that listing would skip over
    (inflate): its declared size counts against the limit before that happens."""
    path = bomb(tmp_path / "job.tar.gz", _header(name, kind, GIB))
    exc = refused(path)
    assert exc.failures == [f"package content exceeds the limit of {DEFAULT_MAX_BYTES} bytes"]
    view = scan_tar(path)
    try:
        assert view.decompressed <= tarfile.BLOCKSIZE
    finally:
        view.close()


def test_header_blocks_count_against_the_limit(tmp_path: Path) -> None:
    """Empty members with long names (a pax header each): no data at all, but 1.5 KB of headers each."""
    path = tmp_path / "job.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for i in range(200):
            tar.addfile(tarfile.TarInfo(f"d/{'n' * 200}{i}.py"))
    exc = refused(path, max_bytes=100_000)
    assert exc.failures == ["package content exceeds the limit of 100000 bytes"]
    view = scan_tar(path, max_bytes=100_000)
    try:
        assert view.decompressed <= 100_000
        assert view.too_large
    finally:
        view.close()


def test_bomb_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """Peak RSS growth of a fresh process refusing a 1 GiB pax bomb (before the fix: about 1 GiB)."""
    path = bomb(tmp_path / "job.tar.gz", _header("././@PaxHeader", tarfile.XHDTYPE, GIB))
    script = (
        "import resource, sys\n"
        "from secagg.jobs import JobRejected, verify_job\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    verify_job(sys.argv[1], None)\n"
        "except JobRejected as exc:\n"
        "    print(exc.code)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    code, growth = out.stdout.split()
    assert code == Reason.PACKAGE_TOO_LARGE
    assert int(growth) < 64 << 20, f"peak RSS grew by {int(growth) >> 20} MiB"


def test_over_limit_reports_only_the_size(tmp_path: Path) -> None:
    """Not also "manifest.json: missing" / "job.yaml: missing", which the listing never reached."""
    path = tmp_path / "job.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("big.bin")
        info.size = 50_000
        tar.addfile(info, _Zeros(50_000))
    with pytest.raises(JobRejected) as exc:
        verify_job(path, None, max_bytes=20_000)
    assert exc.value.failures == ["package content exceeds the limit of 20000 bytes"]
    assert exc.value.code == Reason.PACKAGE_TOO_LARGE


class _Zeros:
    def __init__(self, n: int) -> None:
        self.left = n

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return b"\0" * size
