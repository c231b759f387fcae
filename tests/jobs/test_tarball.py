"""Tarball packages: headers are checked before extraction; a bad member means nothing is written."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from secagg.jobs import JobRejected, load_job, verify_job


def make_tar(out: Path, src: Path | None, extra: list[tuple[tarfile.TarInfo, bytes | None]] = ()) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        if src is not None:
            for p in sorted(src.rglob("*")):
                tar.add(p, arcname=str(p.relative_to(src)), recursive=False)
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = link
    return info, data if kind == tarfile.REGTYPE else None


def refuse(tar: Path, ca, dest: Path, **kw) -> list[str]:
    with pytest.raises(JobRejected) as info:
        verify_job(tar, ca, dest=dest, **kw)
    assert not dest.exists(), "nothing may be extracted from a rejected package"
    return info.value.failures


def test_valid_tarball_extracts_to_fresh_folder(tmp_path: Path, signed_job: Path, kits) -> None:
    tar = make_tar(tmp_path / "job.tar.gz", signed_job)
    dest = tmp_path / "out"
    job = verify_job(tar, kits["site-1"].ca_cert, dest=dest)
    assert job.root == dest
    assert (dest / "lib" / "util.py").read_text() == "X = 1\n"
    assert job.signer.name == "submitter@org-1"


def test_tarball_default_destination_is_new(tmp_path: Path, signed_job: Path, kits) -> None:
    tar = make_tar(tmp_path / "job.tar.gz", signed_job)
    a = verify_job(tar, kits["site-1"].ca_cert)
    b = verify_job(tar, kits["site-1"].ca_cert)
    assert a.root != b.root and (a.root / "train.py").is_file()


def test_existing_destination_refused(tmp_path: Path, signed_job: Path, kits) -> None:
    tar = make_tar(tmp_path / "job.tar.gz", signed_job)
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError):
        verify_job(tar, kits["site-1"].ca_cert, dest=tmp_path / "out")


def test_load_job_reads_tarball_without_extracting(tmp_path: Path, signed_job: Path) -> None:
    tar = make_tar(tmp_path / "job.tar.gz", signed_job)
    assert load_job(tar).spec.name == "breast-cancer"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (member("dev", tarfile.CHRTYPE), "dev: device file or pipe"),
        (member("disk", tarfile.BLKTYPE), "disk: device file or pipe"),
        (member("fifo", tarfile.FIFOTYPE), "fifo: device file or pipe"),
        (member("link", tarfile.SYMTYPE, link="/etc/passwd"), "link: symbolic link (to '/etc/passwd')"),
        (member("hard", tarfile.LNKTYPE, link="train.py"), "hard: hard link (to 'train.py')"),
        (member("../evil.py", data=b"x"), "'../evil.py': path escapes the package ('..')"),
        (member("lib/../../evil.py", data=b"x"), "'lib/../../evil.py': path escapes the package ('..')"),
        (member("/etc/cron.d/x", data=b"x"), "'/etc/cron.d/x': absolute path"),
        (member("TRAIN.PY", data=b"x"), "'TRAIN.PY' and 'train.py': names differ only in case"),
        (member("train.py", data=b"again"), "train.py: appears twice in the archive"),
        (member("train.py/inner.py", data=b"x"), "train.py: is both a file and a folder"),
    ],
)
def test_bad_member(tmp_path: Path, signed_job: Path, kits, extra, expected: str) -> None:
    tar = make_tar(tmp_path / "job.tar.gz", signed_job, [extra])
    assert expected in refuse(tar, kits["site-1"].ca_cert, tmp_path / "out")


def test_oversize_tarball_content(tmp_path: Path, signed_job: Path, kits) -> None:
    big = member("big.bin", data=b"\0" * 50_000)  # compresses to almost nothing: a tiny zip bomb
    tar = make_tar(tmp_path / "job.tar.gz", signed_job, [big])
    assert tar.stat().st_size < 10_000
    failures = refuse(tar, kits["site-1"].ca_cert, tmp_path / "out", max_bytes=20_000)
    assert failures == ["package content exceeds the limit of 20000 bytes"]  # the only problem said


def test_oversize_tarball_file(tmp_path: Path, signed_job: Path, kits) -> None:
    tar = make_tar(tmp_path / "job.tar.gz", signed_job)
    failures = refuse(tar, kits["site-1"].ca_cert, tmp_path / "out", max_bytes=100)
    assert any("over the limit of 100" in f for f in failures)


def test_tampered_member(tmp_path: Path, signed_job: Path, kits) -> None:
    (signed_job / "train.py").write_text("print('evil')    \n")
    tar = make_tar(tmp_path / "job.tar.gz", signed_job)
    failures = refuse(tar, kits["site-1"].ca_cert, tmp_path / "out")
    assert failures == ["train.py: SHA-256 differs from the manifest (file modified)"]


def test_corrupt_tarball(tmp_path: Path, kits) -> None:
    tar = tmp_path / "job.tar.gz"
    tar.write_bytes(b"\x1f\x8b\x08\x00garbage")
    failures = refuse(tar, kits["site-1"].ca_cert, tmp_path / "out")
    assert any("job.tar.gz" in f for f in failures)
