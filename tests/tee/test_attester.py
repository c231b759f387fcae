"""configfs-tsm: the absent path, and the file protocol against a fake report tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from secagg.errors import ConfigError
from secagg.tee import ConfigfsTsmAttester, Enclave, TeeUnavailable
from secagg.tee import attester as attester_mod

_MKDIR, _RMDIR = os.mkdir, os.rmdir
REPORT = b"\x02\x00\x00\x00" + bytes(1180)


def test_absent_configfs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TeeUnavailable, match="configfs-tsm is not available") as info:
        ConfigfsTsmAttester(tmp_path / "nope")
    assert isinstance(info.value, ConfigError) and info.value.code == "tee_unavailable"
    if not attester_mod.CONFIGFS_TSM_REPORT.exists():  # this machine: not a confidential VM
        with pytest.raises(TeeUnavailable):
            ConfigfsTsmAttester()


class FakeKernel:
    """Plays configfs: mkdir creates the entry's attribute files; rmdir removes them."""

    def __init__(self, generation: int | None = None, aux: bytes = b"") -> None:
        self.generation, self.aux = generation, aux
        self.entries: list[Path] = []
        self.inblobs: list[bytes] = []

    def mkdir(self, path: str | Path, mode: int = 0o777) -> None:
        p = Path(path)
        _MKDIR(p)
        (p / "provider").write_text("sev_guest\n")
        (p / "outblob").write_bytes(REPORT)
        if self.aux:
            (p / "auxblob").write_bytes(self.aux)
        self.entries.append(p)

    def rmdir(self, path: str | Path) -> None:
        p = Path(path)
        self.inblobs.append((p / "inblob").read_bytes() if (p / "inblob").exists() else b"")
        for f in p.iterdir():
            f.unlink()
        _RMDIR(p)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[FakeKernel, Path]:
    root = tmp_path / "tsm" / "report"
    root.mkdir(parents=True)  # before os.mkdir is replaced by the fake kernel's
    kernel = FakeKernel(aux=b"certificate table")
    orig_write = Path.write_bytes

    def write_bytes(self: Path, data: bytes) -> int:  # the kernel counts writes in "generation"
        n = orig_write(self, data)
        if self.name == "inblob":
            gen = kernel.generation if kernel.generation is not None else 1
            (self.parent / "generation").write_text(f"{gen}\n")
        return n

    monkeypatch.setattr(attester_mod.os, "mkdir", kernel.mkdir)
    monkeypatch.setattr(attester_mod.os, "rmdir", kernel.rmdir)
    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    return kernel, root


def test_report_through_the_file_protocol(fake: tuple[FakeKernel, Path]) -> None:
    kernel, root = fake
    raw = ConfigfsTsmAttester(root).attest(b"\xaa" * 64)
    assert raw.evidence == REPORT and raw.certs == (b"certificate table",)
    assert kernel.inblobs == [b"\xaa" * 64]
    assert kernel.entries[0].parent == root and not kernel.entries[0].exists()  # entry removed


def test_enclave_binds_report_data_through_configfs(fake: tuple[FakeKernel, Path], agg_cert: bytes) -> None:
    kernel, root = fake
    enc = Enclave(ConfigfsTsmAttester(root))
    nonce = os.urandom(32)
    msg = enc.answer_challenge(nonce, agg_cert)
    from secagg.tee import report_data

    assert kernel.inblobs == [report_data(nonce, enc.announcement, agg_cert)]
    assert msg.evidence == REPORT and msg.certs == (b"certificate table",)


def test_concurrent_writer_is_detected(fake: tuple[FakeKernel, Path]) -> None:
    kernel, root = fake
    kernel.generation = 2
    with pytest.raises(TeeUnavailable, match="another writer"):
        ConfigfsTsmAttester(root).attest(b"\x01" * 64)
    assert not kernel.entries[0].exists()


def test_report_data_size(fake: tuple[FakeKernel, Path]) -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        ConfigfsTsmAttester(fake[1]).attest(bytes(65))
