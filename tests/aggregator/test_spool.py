"""The spool owns its layout: whole files only (temp, fsync, rename), nothing left of a failed upload,
names built in one place, site and round carried as values."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import pytest

from secagg.aggregator.spool import PART_SUFFIX, SUFFIX, Spool, Spooled
from secagg.errors import UpdateRejected


def test_an_upload_lands_whole_under_its_site_and_round(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    got = spool.receive("site-1", "job-a", 3, 2, lambda fh: fh.write(b"abc"))
    assert got == Spooled("site-1", "job-a", 3, 2, tmp_path / "spool" / "job-a" / "3-2" / f"site-1{SUFFIX}")
    assert got.path.read_bytes() == b"abc"
    assert spool.path("job-a", 3, 2, "site-1") == got.path
    assert sorted(p.name for p in got.path.parent.iterdir()) == [f"site-1{SUFFIX}"]  # no temp left


def test_the_temp_file_is_hidden_until_complete(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    seen: list[list[str]] = []

    def fill(fh: BinaryIO) -> None:
        fh.write(b"part")
        seen.append(sorted(p.name for p in spool.folder("j", 1, 1).iterdir()))

    spool.receive("site-2", "j", 1, 1, fill)
    (during,) = seen
    assert len(during) == 1 and during[0].startswith(".site-2-") and during[0].endswith(PART_SUFFIX)


def test_a_failed_upload_leaves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.receive("site-1", "j", 1, 1, lambda fh: fh.write(b"old"))

    def broken(fh: BinaryIO) -> None:
        fh.write(b"half")
        raise UpdateRejected("stream cut off before its trailer", code="truncated")

    with pytest.raises(UpdateRejected):
        spool.receive("site-1", "j", 1, 1, broken)
    with pytest.raises(UpdateRejected):
        spool.receive("site-2", "j", 1, 1, broken)
    folder = spool.folder("j", 1, 1)
    assert sorted(p.name for p in folder.iterdir()) == [f"site-1{SUFFIX}"]
    assert (folder / f"site-1{SUFFIX}").read_bytes() == b"old"  # an earlier complete file is untouched


def test_remove_and_discard(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    a = spool.receive("site-1", "j", 1, 1, lambda fh: fh.write(b"a"))
    b = spool.receive("site-2", "j", 1, 1, lambda fh: fh.write(b"b"))
    other = spool.receive("site-1", "j", 1, 2, lambda fh: fh.write(b"c"))
    spool.remove(a)
    assert not a.path.exists() and b.path.exists()
    spool.discard("j", 1, 1)
    assert not spool.folder("j", 1, 1).exists() and other.path.exists()
    spool.discard("j", 7, 7)  # nothing there: no error


@pytest.mark.parametrize("site", ["", "../x", "a/b", ".hidden", "a\\b"])
def test_names_that_cannot_be_a_file_name_are_refused(tmp_path: Path, site: str) -> None:
    with pytest.raises(UpdateRejected) as err:
        Spool(tmp_path).receive(site, "j", 1, 1, lambda fh: fh.write(b"x"))
    assert err.value.code == "malformed"
    assert not any(tmp_path.rglob("*"))
