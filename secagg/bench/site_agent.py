"""The site agent's peak memory in a real round: ``python -m secagg.bench.site_agent``.

``python -m secagg.bench.site_agent --params 10000000,100000000 --modes plain,mask,tee --out FILE``

What ``secagg bench`` measures at the sites is the library's protect paths driven by the bench; this is
the agent itself (:class:`secagg.agent.site.SiteAgent`, as ``secagg agent`` runs it): per mode, a real
aggregator (:class:`~secagg.aggregator.service.AggregatorServer`, over mTLS on 127.0.0.1, with the
insecure dev TEE for ``tee``) in this process and two site agents, each in a fresh interpreter of its
own (:mod:`.site_child`), serving a one-round job to its end: the task's global model received, checked
and fingerprinted, handed to the confined training worker, the trained model read back, the update,
the release (no filter; with ``--gaussian`` the policy's DP-FedAvg filter and a budget), the
weighting, the protection and the upload, then the finalize (the new global model received,
fingerprinted, evaluated). The job's script is numpy only: it reads the global
model, adds a small constant and sends it back.

Per site: ``peak_rss_bytes`` (the agent process's VmHWM over the whole job, imports included),
``baseline_rss_bytes`` (its RSS once constructed, before the job), ``worker_peak_rss_bytes`` (the
training worker's own peak, a separate process, not added in) and ``rss_per_model`` = peak / one
float32 model (4 bytes a parameter). Results (a JSON list) go to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

#: tensors of the synthetic model (unequal, so tensor edges fall inside windows)
TENSORS = 5
SITES = ("site-1", "site-2")
#: the job package holds the model: larger than the default 256 MiB cap at 100M parameters
PACKAGE_BYTES = 16 << 30
MEASUREMENT = hashlib.sha384(b"secagg bench aggregator image").digest()

TRAIN = '''\
"""Bench job: the global model plus a small constant per site (numpy only, starts fast)."""
from collections import OrderedDict

from secagg import client

for task in client.tasks():
    g = client.receive_numpy()
    if client.task == "evaluate":
        client.send(metrics={"ok": 1.0})
        continue
    step = 0.001 if client.site == "site-1" else -0.002
    local = OrderedDict((k, v + step) for k, v in g.items())
    del g
    client.send(local, num_samples=100 if client.site == "site-1" else 50, metrics={"ok": 1.0})
    del local
'''

POLICY = f"""\
version: 1
signers:
  submitters: [submitter@org-1]
modes: [plain, mask, tee, he]
limits:
  max_rounds: 5
  min_sites_per_round: 2
  max_package_bytes: 17179869184
sandbox:
  memory_bytes: null
  file_size_bytes: null
attestation:
  types: [dev-tee]
  measurements: [{MEASUREMENT.hex()}]
  allow_insecure_dev_tee: true
  max_age_s: 3600
"""


def _sizes(params: int) -> list[int]:
    weights = [5, 3, 1, 7, 4][:TENSORS]
    sizes = [params * w // sum(weights) for w in weights]
    sizes[-1] += params - sum(sizes)
    return sizes


def _write_model(path: Path, params: int) -> None:
    """The initial model: float32 values written tensor by tensor with the header first (never whole)."""
    from secagg.bundle import BundleSpec, TensorSpec, bundle_header

    spec = BundleSpec(tuple(TensorSpec(f"layer{i}.weight", (n,)) for i, n in enumerate(_sizes(params))))
    rng = np.random.default_rng(0)
    piece = 1 << 20
    with path.open("wb") as fh:
        fh.write(bundle_header(spec))
        for t in spec.tensors:
            for start in range(0, t.size, piece):
                n = min(piece, t.size - start)
                fh.write(rng.normal(0.0, 0.1, n).astype("<f4").tobytes())


#: ``--gaussian``: the sites' policy requires DP-FedAvg's filter (two passes over the spooled update)
#: and keeps a budget (so the release is kept for a retry, as a file)
GAUSSIAN_PRIVACY = """\
privacy:
  required:
    - {name: gaussian, clip: 1.0, noise_multiplier: 1.0}
  budget: {epsilon: 1000.0, delta: 0.001}
"""


def _prepare(work: Path, params: int, mode: str, gaussian: bool = False) -> Path:
    """Kits, a signed job package and the sites' data folders and policies, under ``work``."""
    import yaml

    from secagg.jobs.sign import sign_job
    from secagg.provision.kit import load_kit
    from secagg.provision.project import AdminSpec, AggregatorSpec, Project, SiteSpec
    from secagg.provision.writer import provision

    project = Project(
        name="bench-site-agent",
        aggregator=AggregatorSpec(host="127.0.0.1", port=18443),
        sites=[SiteSpec(name=s, org=f"org-{i}") for i, s in enumerate(SITES, start=1)],
        admins=[AdminSpec(name="submitter@org-1", org="org-1", role="lead")],
        key_holder="site-1",
    )
    ws = work / "ws"
    provision(project, ws)
    job = work / "job"
    job.mkdir()
    (job / "train.py").write_text(TRAIN)
    _write_model(job / "model.safetensors", params)
    spec: dict[str, Any] = {
        "name": "bench-site-agent",
        "rounds": 1,
        "min_sites": 2,
        "mode": mode,
        "model": "model.safetensors",
        "entry": "train.py",
        "round_timeout": 3600,
    }
    if mode == "mask":
        spec["mask"] = {"threshold": 2, "clip": 1.0}
    (job / "job.yaml").write_text(yaml.safe_dump(spec))
    sign_job(job, load_kit(ws / "submitter@org-1"), max_bytes=PACKAGE_BYTES)
    for s in SITES:
        (work / "data" / s).mkdir(parents=True)
        (work / "data" / s / "n.txt").write_text("1")
        (work / "policies").mkdir(exist_ok=True)
        (work / "policies" / f"{s}.yaml").write_text(POLICY + (GAUSSIAN_PRIVACY if gaussian else ""))
    return ws


def _submit(server: Any, job: Path, kit: Any) -> None:
    from secagg.jobs.job import verify_job
    from secagg.jobs.signer import require_submitter

    scratch = Path(tempfile.mkdtemp(prefix="secagg-job-"))
    try:
        verified = verify_job(job, kit.ca_cert, dest=scratch / "pkg", max_bytes=PACKAGE_BYTES)
        submitter = require_submitter(verified.signers, f"job {job}")
        server.fed.submit(verified.root, submitter.describe(), source=job)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(
    params: int, mode: str, scratch: Path | None = None, timeout_s: float = 3600, gaussian: bool = False
) -> dict[str, Any]:
    """One mode's job at two sites; each site's figures (see the module docstring)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from secagg.aggregator.service import AggregatorServer
    from secagg.provision.kit import load_kit
    from secagg.tee.attester import DevTeeAttester
    from secagg.tee.enclave import Enclave

    work = Path(tempfile.mkdtemp(prefix=f"site-agent-{mode}-", dir=scratch))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    server = None
    try:
        ws = _prepare(work, params, mode, gaussian)
        enclave = Enclave(DevTeeAttester(ec.generate_private_key(ec.SECP384R1()), MEASUREMENT))
        agg_kit = load_kit(ws / "aggregator")
        server = AggregatorServer(
            agg_kit, work / "state" / "aggregator", port=0, host="127.0.0.1", enclave=enclave
        )
        _submit(server, work / "job", agg_kit)
        server.start()
        t0 = time.monotonic()
        for s in SITES:
            args = {
                "kit": str(ws / s),
                "data": str(work / "data" / s),
                "state": str(work / "state" / s),
                "policy": str(work / "policies" / f"{s}.yaml"),
                "target": f"127.0.0.1:{server.port}",
            }
            (work / f"{s}.args.json").write_text(json.dumps(args))
            log = (work / f"{s}.log").open("wb")
            procs[s] = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                [
                    sys.executable,
                    "-m",
                    "secagg.bench.site_child",
                    str(work / f"{s}.args.json"),
                    str(work / f"{s}.out.json"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        sites: dict[str, Any] = {}
        for s, p in procs.items():
            rc = p.wait(timeout=timeout_s)
            out = work / f"{s}.out.json"
            if rc != 0 or not out.is_file():
                tail = (work / f"{s}.log").read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(f"{mode} {s} exited {rc}: {' | '.join(tail)}")
            res = json.loads(out.read_text())
            res["rss_per_model"] = res["peak_rss_bytes"] / (4 * params)
            sites[s] = res
        took = time.monotonic() - t0
        return {
            "params": params,
            "mode": mode,
            "filters": ["gaussian"] if gaussian else [],
            "model_bytes": 4 * params,
            "job_s": took,
            "sites": sites,
        }
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        if server is not None:
            server.stop(grace=0.5)
        shutil.rmtree(work, ignore_errors=True)


def table(results: list[dict[str, Any]]) -> str:
    mib = 2**20
    lines = [
        "| params | mode | model MiB | site | agent peak RSS MiB | agent baseline MiB | peak / model "
        "| worker peak MiB |",
        "|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        for s, v in r["sites"].items():
            lines.append(
                f"| {r['params']:,} | {r['mode']} | {r['model_bytes'] / mib:.1f} | {s} "
                f"| {v['peak_rss_bytes'] / mib:.0f} | {v['baseline_rss_bytes'] / mib:.0f} "
                f"| {v['rss_per_model']:.2f} | {v['worker_peak_rss_bytes'] / mib:.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m secagg.bench.site_agent", description=__doc__)
    parser.add_argument("--params", default="10000000")
    parser.add_argument("--modes", default="plain,mask,tee")
    parser.add_argument("--scratch", type=Path, default=None)
    parser.add_argument("--gaussian", action="store_true", help="sites require the gaussian filter")
    parser.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args(argv)
    results = []
    for params in (int(v) for v in ns.params.split(",")):
        for mode in (m.strip() for m in ns.modes.split(",") if m.strip()):
            res = run(params, mode, ns.scratch, gaussian=ns.gaussian)
            results.append(res)
            worst = max(v["rss_per_model"] for v in res["sites"].values())
            print(
                f"{params} params {mode}: worst site {worst:.2f}x one model, {res['job_s']:.0f} s", flush=True
            )
            ns.out.write_text(json.dumps(results, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
