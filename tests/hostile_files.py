"""Helpers for tests that hand the code a FIFO, a device or a directory where a file belongs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()`` in a daemon thread: a regression that blocks (a FIFO opened for reading waits for a
    writer forever) fails the test after ``seconds`` instead of hanging the suite."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s (blocked on a FIFO?)"
    if "error" in out:
        raise out["error"]
    return out.get("value")
