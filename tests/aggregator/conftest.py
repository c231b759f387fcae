"""Fixtures for the aggregator's unit tests: a Federation on a fresh state folder, a tiny job, and
helpers that put a round into its upload phase without running sites."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from secagg.aggregator.federation import Federation
from secagg.aggregator.rounds import Phase, RoundRun
from secagg.bundle import to_safetensors
from secagg.provision.kit import load_kit
from secagg.transport.chunks import encode_stream
from secagg.transport.generated import secagg_pb2 as pb

INIT = OrderedDict(
    [
        ("layer.weight", np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6)),
        ("head", np.full((3,), 0.5, dtype=np.float32)),
    ]
)


def write_job(
    folder: Path, *, mode: str = "plain", rounds: int = 2, min_sites: int = 2, **extra: Any
) -> Path:
    folder.mkdir(parents=True)
    (folder / "train.py").write_text("print('never run by the aggregator')\n")
    (folder / "model.safetensors").write_bytes(to_safetensors(INIT))
    spec = {
        "name": "unit",
        "rounds": rounds,
        "min_sites": min_sites,
        "mode": mode,
        "model": "model.safetensors",
        "entry": "train.py",
        "round_timeout": 30,
        **extra,
    }
    (folder / "job.yaml").write_text(yaml.safe_dump(spec))
    return folder


class FakeEnclave:
    """Stands in for ``secagg.tee.enclave.Enclave``: "opens" an upload by joining its frames, and
    records whose upload, for which job and round, it was asked to open."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, int, str]] = []

    def open_update(self, chunks: Any, job: str, round: int, site: str) -> bytes:
        self.opened.append((job, int(round), site))
        return b"".join(bytes(c) for c in chunks)

    def sign_model(self, fingerprint: str, job: str, round: int) -> bytes:
        return f"sig:{fingerprint[:8]}:{job}:{round}".encode()


@pytest.fixture
def make_fed(tmp_path: Path, workspace: Path) -> Iterator[Callable[..., Federation]]:
    made: list[Federation] = []

    def make(mode: str = "plain", enclave: Any = None, **job: Any) -> Federation:
        state = tmp_path / f"state-{len(made)}"
        fed = Federation(load_kit(workspace / "aggregator"), state, enclave=enclave)
        made.append(fed)
        fed.submit(write_job(tmp_path / f"job-{len(made)}", mode=mode, **job), "tester")
        return fed

    yield make
    for fed in made:
        fed.store.close()


def open_uploads(fed: Federation, weights: dict[str, float] | None = None) -> RoundRun:
    """Put the current round into its upload phase with this roster, as the driver would."""
    job = fed.job
    assert job is not None and job.current is not None and fed.mode is not None
    cur = job.current
    weights = weights or {"site-1": 0.25, "site-2": 0.75}
    with fed.cond:
        cur.roster = {"round": cur.round, "attempt": cur.attempt, "weights": weights, "ready": {}}
        cur.phase = Phase.UPLOAD
        fed.mode.after_roster(cur)
    return cur


def header(fed: Federation, data: bytes, **over: Any) -> dict[str, Any]:
    job = fed.job
    assert job is not None and job.current is not None
    h = {"job_id": job.job_id, "round": job.current.round, "attempt": job.current.attempt, "bytes": len(data)}
    h.update(over)
    return h


def chunks(data: bytes, *, cut: bool = False) -> Iterator[pb.Chunk]:
    """The stream after its header, as the service hands it to ``accept_upload``."""
    stream = list(encode_stream({}, [data]))[1:]
    return iter(stream[:-1] if cut else stream)


def update(scale: float, seed: int = 0) -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return OrderedDict(
        (k, (rng.standard_normal(v.shape) * scale).astype(np.float32)) for k, v in INIT.items()
    )
