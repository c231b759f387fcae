"""The aggregator's round engine end to end, with its peak memory: not only the combine.

``python -m secagg.bench.engine --params N --sites S [--strategy NAME] [--window-bytes B] --out FILE``

What one process of the aggregator does for a plain job (the engine every mode whose aggregator sees
the model shares; tee differs in opening sealed chunks, mask in unmasking, both measured by
``secagg bench``): the job's submission (package written and its model read), the job's activation
(initial global model written), one round (every site's upload spooled through ``accept_upload`` from
transport chunks, checked, combined, the strategy's server step, the commit), and every site's download
of the new global model (its payload streamed and discarded). The sites' uploads are written by the
parent beforehand, a window at a time, so the child's peak RSS (VmHWM, see :mod:`.child`) is the
aggregator's own. No gRPC: its buffers are the transport's, measured by ``--transport`` in
``secagg bench``.

Results (one JSON object) go to ``--out``: ``params``, ``sites``, ``strategy``, ``window_bytes``,
``upload_bytes`` (one site's), ``peak_rss_bytes``, ``baseline_rss_bytes`` (after imports and
provisioning), ``rss_per_upload``, and seconds for ``submit_s``, ``round_s`` (the driver's step: combine,
server step, commit), ``download_s`` (every site's payload), ``accept_s`` (every upload).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from secagg.bench.child import peak_rss_bytes
from secagg.bench.clock import clock
from secagg.windowsize import DEFAULT_WINDOW_BYTES

#: tensors of the synthetic model: this many equal ones (a few large matrices, as in a transformer)
TENSORS = 8


def _spec(params: int) -> Any:
    from secagg.bundle import BundleSpec, TensorSpec

    sizes = [params // TENSORS] * TENSORS
    sizes[-1] += params - sum(sizes)
    return BundleSpec(tuple(TensorSpec(f"layer{i}.weight", (n,)) for i, n in enumerate(sizes)))


def _write_random(path: Path, spec: Any, seed: int, scale: float, window: int) -> None:
    """A float32 bundle of gaussian values, written a window at a time (never whole in memory)."""
    from secagg.aggregator.modes.windows import window_ranges, write_bundle

    rng = np.random.default_rng(seed)

    def windows() -> Iterator[tuple[int, np.ndarray]]:
        for start, stop in window_ranges(spec.size, window):
            yield start, rng.normal(0.0, scale, stop - start)

    write_bundle(path, spec, windows())


def prepare(work: Path, params: int, sites: int, strategy: str, window_bytes: int) -> None:
    """Kits, the job folder (zero initial model) and every site's upload, under ``work``."""
    import yaml

    from secagg.aggregator.modes.windows import window_elements
    from secagg.provision.project import AggregatorSpec, Project, SiteSpec
    from secagg.provision.writer import provision

    project = Project(
        name="bench-engine",
        aggregator=AggregatorSpec(window_bytes=window_bytes),
        sites=[SiteSpec(name=f"site-{i}") for i in range(1, sites + 1)],
        key_holder="site-1",
    )
    provision(project, work / "ws")
    spec = _spec(params)
    job = work / "job"
    job.mkdir()
    (job / "train.py").write_text("print('never run by the aggregator')\n")
    elements = window_elements(window_bytes)
    _write_random(job / "model.safetensors", spec, seed=0, scale=0.0, window=elements)
    (job / "job.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "engine",
                "rounds": 2,
                "min_sites": sites,
                "mode": "plain",
                "model": "model.safetensors",
                "entry": "train.py",
                "round_timeout": 3600,
                "strategy": {"name": strategy},
            }
        )
    )
    for i in range(sites):
        _write_random(work / f"up-{i}", spec, seed=1 + i, scale=0.05 / sites, window=elements)


def _pieces(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while piece := fh.read(4 * 1024 * 1024):
            yield piece


def measure(work: Path, sites: int) -> dict[str, Any]:
    """Submit, activate, one round, every site's download, in this process (see the module docstring)."""
    from secagg.aggregator.federation import Federation
    from secagg.aggregator.rounds import Phase
    from secagg.provision.kit import load_kit
    from secagg.transport.chunks import encode_stream

    kit = load_kit(work / "ws" / "aggregator")
    baseline = peak_rss_bytes()
    fed = Federation(kit, work / "state")
    t0 = clock()
    fed.submit(work / "job", "bench")
    submit_s = clock().wall - t0.wall
    job = fed.job
    assert job is not None and job.current is not None and fed.mode is not None
    names = [f"site-{i}" for i in range(1, sites + 1)]
    cur = job.current
    with fed.cond:
        weights = {n: 1.0 / sites for n in names}
        cur.roster = {"round": cur.round, "attempt": cur.attempt, "weights": weights, "ready": {}}
        cur.phase = Phase.UPLOAD
        fed.mode.after_roster(cur)
    t0 = clock()
    for i, name in enumerate(names):
        up = work / f"up-{i}"
        head = {"job_id": job.job_id, "round": cur.round, "attempt": cur.attempt, "bytes": up.stat().st_size}
        fed.accept_upload(name, head, itertools.islice(encode_stream({}, _pieces(up)), 1, None))
    accept_s = clock().wall - t0.wall
    t0 = clock()
    fed.step()
    round_s = clock().wall - t0.wall
    if job.completed != 1:
        raise RuntimeError(f"the round did not complete (job {job.state})")
    t0 = clock()
    sent = 0
    for _ in names:
        for piece in fed.payload({"kind": "train"}):
            sent += len(piece)
    download_s = clock().wall - t0.wall
    peak = peak_rss_bytes()
    upload = (work / "up-0").stat().st_size
    fed.store.close()
    return {
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak,
        "upload_bytes": upload,
        "rss_per_upload": peak / upload,
        "submit_s": submit_s,
        "accept_s": accept_s,
        "round_s": round_s,
        "download_s": download_s,
        "download_bytes": sent,
    }


def run(
    params: int, sites: int, strategy: str, window_bytes: int, scratch: Path | None = None
) -> dict[str, Any]:
    """Prepare in this process, measure in a fresh interpreter (its VmHWM is the aggregator's)."""
    work = Path(tempfile.mkdtemp(prefix="engine-", dir=scratch))
    try:
        prepare(work, params, sites, strategy, window_bytes)
        out = work / "result.json"
        cmd = [sys.executable, "-m", "secagg.bench.engine", "--child", str(work), str(sites), str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"the engine step failed: {tail[0]}")
        result: dict[str, Any] = json.loads(out.read_text())
        return {
            "params": params,
            "sites": sites,
            "strategy": strategy,
            "window_bytes": window_bytes,
            **result,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--child"]:
        work, sites, out = Path(args[1]), int(args[2]), Path(args[3])
        out.write_text(json.dumps(measure(work, sites)))
        return 0
    parser = argparse.ArgumentParser(prog="python -m secagg.bench.engine", description=__doc__)
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--sites", type=str, default="2")
    parser.add_argument("--strategy", default="fedavg")
    parser.add_argument("--window-bytes", type=int, default=DEFAULT_WINDOW_BYTES)
    parser.add_argument("--scratch", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args(args)
    results = []
    for n in (int(v) for v in ns.sites.split(",")):
        res = run(ns.params, n, ns.strategy, ns.window_bytes, ns.scratch)
        results.append(res)
        mib = res["peak_rss_bytes"] / 2**20
        print(
            f"{ns.params} params x{n} sites {ns.strategy}: peak {mib:.0f} MiB "
            f"({res['rss_per_upload']:.2f}x one upload), round {res['round_s']:.1f} s",
            flush=True,
        )
    ns.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
