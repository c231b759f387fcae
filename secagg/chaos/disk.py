"""The aggregator's state disk filling up mid-round (issue #18): its state folder on a small tmpfs of
its own, filled to the last byte by a filler file, then freed. Linux and root only (``mount``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from secagg.errors import ConfigError

FILLER = ".chaos-filler"


class SmallDisk:
    """A tmpfs of ``size_mb`` mounted on ``folder`` for the length of a run."""

    def __init__(self, folder: Path, size_mb: int) -> None:
        self.folder, self.size_mb = folder, size_mb
        self.mounted = False

    def __enter__(self) -> SmallDisk:
        self.folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0700", "tmpfs", str(self.folder)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            why = done.stderr.strip() or f"mount exited {done.returncode}"
            raise ConfigError(f"disk-full needs root to mount a tmpfs on {self.folder}: {why}")
        self.mounted = True
        return self

    def fill(self) -> int:
        """Write a filler file until the disk refuses another byte; returns the bytes written."""
        written = 0
        block = b"\0" * (1 << 20)
        with open(self.folder / FILLER, "wb", buffering=0) as fh:
            for size in (1 << 20, 4096, 1):
                try:
                    while True:
                        written += fh.write(block[:size])
                except OSError:
                    continue
        return written

    def free(self) -> None:
        (self.folder / FILLER).unlink(missing_ok=True)

    def free_bytes(self) -> int:
        st = os.statvfs(self.folder)
        return st.f_bavail * st.f_frsize

    def __exit__(self, *exc: object) -> None:
        """Keep what the aggregator wrote (the checks read it): copy it out, unmount, put it back."""
        if not self.mounted:
            return
        self.free()
        keep = Path(tempfile.mkdtemp(prefix="chaos-disk-", dir=self.folder.parent))
        try:
            shutil.copytree(self.folder, keep / "state", symlinks=True)
            subprocess.run(["umount", str(self.folder)], check=True, capture_output=True)
            self.mounted = False
            self.folder.rmdir()
            os.replace(keep / "state", self.folder)
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(keep)


__all__ = ["SmallDisk"]
