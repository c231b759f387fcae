"""Run the benchmark: per mode, per site count, ``repeats`` rounds; report medians.

Timing rules (the same for every mode):

* ``protect_s``: one site's client work for one round, from its float32 update to the bytes it hands
  the transport (weighting, encryption / masking / sealing, serialisation); mean over sites.
* ``aggregate_s``: the aggregator's work for all sites, from spooled uploads to the bytes it sends back
  (deserialisation, checks, combination, serialisation), in a child process (:mod:`.child`), whose
  peak RSS is ``peak_rss_bytes``; ``floor_s`` is one read of every upload and one write of the result
  in that process (the least any aggregator could do), ``rss_per_upload`` the peak over one site's
  upload.
* ``unprotect_s``: site 1 turning its download into the weighted average.
* ``round_s`` = protect + aggregate + unprotect: sites work in parallel, so one site's times count once.
  Network transfer is not included; bytes are reported instead.
* each also as ``*_cpu_s``: CPU seconds of the process, all threads (see :mod:`.clock`).

Medians over repeats for times; the worst repeat for error and peak RSS.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from secagg.aggregator.modes.windows import DEFAULT_WINDOW_BYTES
from secagg.errors import ConfigError

from .clock import Lap, settle
from .layouts import LAYOUTS, layout_spec
from .modes import write_window
from .registry import make_mode
from .workload import Workload

if TYPE_CHECKING:  # grpc and the provisioning code load only for --transport (the child's RSS baseline)
    from .wire import Wire

MODES = ("plain", "he", "mask", "tee")
ALL_MODES = (*MODES, "tee-mask", "nvflare-he")
_TIMES = ("protect_s", "aggregate_s", "unprotect_s", "protect_cpu_s", "aggregate_cpu_s", "unprotect_cpu_s")


@dataclass(frozen=True)
class BenchConfig:
    params: int = 1_000_000
    layout: str = "flat"
    sites: tuple[int, ...] = (8,)
    modes: tuple[str, ...] = MODES
    compare_nvflare: bool = False
    repeats: int = 3
    seed: int = 0
    #: also move every upload and download through the mTLS gRPC transport (secagg.bench.wire)
    transport: bool = False
    #: the aggregator's combine window (bytes of float64 accumulator)
    window_bytes: int = DEFAULT_WINDOW_BYTES

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ConfigError(f"unknown layout {self.layout!r}; known: {', '.join(LAYOUTS)}")
        unknown = [m for m in self.modes if m not in ALL_MODES]
        if unknown or not self.modes:
            raise ConfigError(f"unknown modes {unknown}; known: {', '.join(ALL_MODES)}")
        if not self.sites or any(n < 2 for n in self.sites):
            raise ConfigError(f"every site count must be >= 2 (mask mode needs two), got {list(self.sites)}")
        if self.repeats < 1:
            raise ConfigError(f"--repeats must be >= 1, got {self.repeats}")
        if self.window_bytes < 8:
            raise ConfigError(f"--window-bytes must be >= 8 (one float64), got {self.window_bytes}")

    @property
    def all_modes(self) -> tuple[str, ...]:
        extra = ("nvflare-he",) if self.compare_nvflare and "nvflare-he" not in self.modes else ()
        return (*self.modes, *extra)


@dataclass
class ModeResult:
    mode: str
    layout: str
    params: int
    tensors: int
    sites: int
    repeats: int
    raw_bytes: int
    uplink_bytes: int
    uplink_ratio: float
    downlink_bytes: int
    protect_s: float
    aggregate_s: float
    unprotect_s: float
    round_s: float
    protect_cpu_s: float
    aggregate_cpu_s: float
    unprotect_cpu_s: float
    round_cpu_s: float
    max_abs_err: float
    peak_rss_bytes: int
    baseline_rss_bytes: int
    #: with ``transport``: both legs (all uploads, then all downloads) and the round including them
    transport_s: float | None = None
    transport_cpu_s: float | None = None
    round_transport_s: float | None = None
    round_transport_cpu_s: float | None = None
    #: one read of every upload plus one write of the result, in the aggregator's process (median)
    floor_s: float | None = None
    #: aggregate_s / floor_s
    floor_ratio: float | None = None
    #: peak_rss_bytes / uplink_bytes (one site's upload)
    rss_per_upload: float | None = None
    #: the sites' process over every site's protect and site 1's unprotect (the transport's
    #: uploads and download excluded: its relay runs in the same process), peak RSS; None where the
    #: kernel cannot reset the peak
    site_peak_rss_bytes: int | None = None
    #: site_peak_rss_bytes / raw_bytes (one float32 model)
    site_rss_per_model: float | None = None
    window_bytes: int | None = None
    runs: list[dict[str, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: progress callback: (description, advance) -- the CLI draws it with rich
Progress = Callable[[str, int], None]


def _no_progress(_desc: str, _advance: int) -> None:
    return None


def run_aggregator_child(mode: str, work: Path, sites: int) -> dict[str, Any]:
    """The aggregator step in a fresh interpreter (:mod:`.child`): its peak RSS is its own."""
    out = work / "child-result.json"
    cmd = [sys.executable, "-m", "secagg.bench.child", mode, str(work), str(sites), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ConfigError(f"the {mode} aggregator step failed: {tail[0]}")
    result: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    return result


def site_files(work: Path, site: int) -> list[Path]:
    """What one site uploads in a round: ``up-N`` and its ``up-N.<part>`` messages, in name order."""
    return sorted(p for p in work.iterdir() if p.name == f"up-{site}" or p.name.startswith(f"up-{site}."))


class ModeRun:
    """One mode's keys and scratch folder, measured one round at a time.

    Rounds of different modes can then be interleaved (:func:`run_bench` does): load on a shared
    machine drifts over minutes, and a mode measured in a quiet stretch against one measured in a
    busy one would show a difference that is the machine's, not the mode's.
    """

    def __init__(
        self, mode_name: str, wl: Workload, scratch: Path, window_bytes: int = DEFAULT_WINDOW_BYTES
    ) -> None:
        self.name, self.wl = mode_name, wl
        self.work = Path(tempfile.mkdtemp(prefix=f"{mode_name}-{wl.sites}-", dir=scratch))
        self.mode = make_mode(mode_name)
        self.info = self.mode.setup(self.work, wl)
        self.window_bytes = window_bytes
        write_window(self.work, window_bytes)
        self.runs: list[dict[str, float]] = []

    @property
    def expected(self) -> np.ndarray:
        """The float64 truth whole, for a mode whose unprotect returns the average (he, nvflare-he);
        made on first use (the streamed modes compare a window at a time)."""
        return self.wl.expected()

    def round(
        self,
        repeats: int,
        progress: Progress = _no_progress,
        *,
        isolate: bool = True,
        wire: Wire | None = None,
    ) -> None:
        """One full round: every site protects, (the uploads travel,) the aggregator combines in a
        process of its own unless ``isolate`` is False, (the download travels,) site 1 unprotects."""
        wl, work, mode, name = self.wl, self.work, self.mode, self.name
        label = f"{name} x{wl.sites} sites, run {len(self.runs) + 1}/{repeats}"
        progress(f"{label}: protect", 0)
        settle()
        from .child import peak_rss_bytes, reset_peak_rss

        sites_measured = reset_peak_rss()
        site_times = mode.protect_all(work, wl)
        site_peak = peak_rss_bytes()
        legs = Lap()
        if wire is not None:
            settle()
            legs += wire.upload([site_files(work, i) for i in range(wl.sites)])
        progress(f"{label}: aggregate", 1)
        settle()
        if isolate:
            agg = run_aggregator_child(name, work, wl.sites)
        else:
            from .child import measure

            agg = measure(name, work, wl.sites)
        if wire is not None:
            legs += wire.download(work / "down-0")  # settles after staging the download
        progress(f"{label}: unprotect", 1)
        settle()
        if sites_measured:
            reset_peak_rss()
        unprotect, out = mode.unprotect(work, wl, 0)
        site_peak = max(site_peak, peak_rss_bytes()) if sites_measured else -1
        self.runs.append(
            {
                "protect_s": float(np.mean([t.wall for t in site_times])),
                "protect_s_max": float(np.max([t.wall for t in site_times])),
                "protect_cpu_s": float(np.mean([t.cpu for t in site_times])),
                "aggregate_s": float(agg["aggregate_s"]),
                "aggregate_cpu_s": float(agg["aggregate_cpu_s"]),
                "unprotect_s": unprotect.wall,
                "unprotect_cpu_s": unprotect.cpu,
                "max_abs_err": out if isinstance(out, float) else float(np.max(np.abs(out - self.expected))),
                "peak_rss_bytes": int(agg["peak_rss_bytes"]),
                "baseline_rss_bytes": int(agg["baseline_rss_bytes"]),
                "uplink_bytes": mode.uplink_bytes(work, 0),
                "downlink_bytes": mode.downlink_bytes(work, 0),
                "transport_s": legs.wall,
                "transport_cpu_s": legs.cpu,
                "floor_s": float(agg.get("floor_s", float("nan"))),
                "site_peak_rss_bytes": site_peak,
            }
        )
        progress(f"{label}: done", 1)

    def result(self, wired: bool) -> ModeResult:
        runs, wl = self.runs, self.wl
        med = {k: statistics.median(run[k] for run in runs) for k in _TIMES}
        round_s = med["protect_s"] + med["aggregate_s"] + med["unprotect_s"]
        round_cpu_s = med["protect_cpu_s"] + med["aggregate_cpu_s"] + med["unprotect_cpu_s"]
        with_wire: dict[str, float | None] = dict.fromkeys(
            ("transport_s", "transport_cpu_s", "round_transport_s", "round_transport_cpu_s")
        )
        if wired:
            wall = statistics.median(run["transport_s"] for run in runs)
            cpu = statistics.median(run["transport_cpu_s"] for run in runs)
            with_wire = {
                "transport_s": wall,
                "transport_cpu_s": cpu,
                "round_transport_s": round_s + wall,
                "round_transport_cpu_s": round_cpu_s + cpu,
            }
        raw = 4 * wl.size
        uplink = int(max(run["uplink_bytes"] for run in runs))
        floor = statistics.median(run["floor_s"] for run in runs)
        peak = int(max(run["peak_rss_bytes"] for run in runs))
        site_peak = int(max(run["site_peak_rss_bytes"] for run in runs))
        return ModeResult(
            mode=self.name,
            layout="",
            params=wl.size,
            tensors=len(wl.spec.tensors),
            sites=wl.sites,
            repeats=len(runs),
            raw_bytes=raw,
            uplink_bytes=uplink,
            uplink_ratio=uplink / raw,
            downlink_bytes=int(max(run["downlink_bytes"] for run in runs)),
            protect_s=med["protect_s"],
            aggregate_s=med["aggregate_s"],
            unprotect_s=med["unprotect_s"],
            round_s=round_s,
            protect_cpu_s=med["protect_cpu_s"],
            aggregate_cpu_s=med["aggregate_cpu_s"],
            unprotect_cpu_s=med["unprotect_cpu_s"],
            round_cpu_s=round_cpu_s,
            max_abs_err=max(run["max_abs_err"] for run in runs),
            peak_rss_bytes=peak,
            baseline_rss_bytes=int(max(run["baseline_rss_bytes"] for run in runs)),
            floor_s=floor,
            floor_ratio=med["aggregate_s"] / floor if floor > 0 else None,
            rss_per_upload=peak / uplink if uplink else None,
            site_peak_rss_bytes=site_peak if site_peak >= 0 else None,
            site_rss_per_model=site_peak / raw if site_peak >= 0 else None,
            window_bytes=self.window_bytes,
            runs=runs,
            info=self.info,
            **with_wire,
        )

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def measure_mode(
    mode_name: str,
    wl: Workload,
    repeats: int,
    scratch: Path,
    progress: Progress = _no_progress,
    *,
    isolate: bool = True,
    wire: Wire | None = None,
) -> ModeResult:
    """Set up keys once, then ``repeats`` full rounds of ``mode_name`` on ``wl`` (see :class:`ModeRun`)."""
    run = ModeRun(mode_name, wl, scratch)
    try:
        for _ in range(repeats):
            run.round(repeats, progress, isolate=isolate, wire=wire)
        return run.result(wired=wire is not None)
    finally:
        run.close()


def steps(config: BenchConfig) -> int:
    """Progress steps of a whole run (3 per repeat per mode per site count)."""
    return 3 * config.repeats * len(config.all_modes) * len(config.sites)


def run_bench(
    config: BenchConfig, scratch: Path, progress: Progress = _no_progress, *, isolate: bool = True
) -> list[ModeResult]:
    if config.compare_nvflare or "nvflare-he" in config.modes:
        from .nvflare_he import require_nvflare

        require_nvflare()
    spec = layout_spec(config.layout, config.params)
    scratch.mkdir(parents=True, exist_ok=True)
    results = []
    for n in config.sites:
        wl = Workload(spec, n, seed=config.seed)
        wire = None
        runs: list[ModeRun] = []
        try:
            if config.transport:
                from .wire import Wire

                wire = Wire(n, scratch)
            for name in config.all_modes:
                runs.append(ModeRun(name, wl, scratch, config.window_bytes))
            # interleaved: round r of every mode, then round r + 1 (see ModeRun)
            for _ in range(config.repeats):
                for run in runs:
                    run.round(config.repeats, progress, isolate=isolate, wire=wire)
            for run in runs:
                res = run.result(wired=wire is not None)
                res.layout = config.layout
                results.append(res)
        finally:
            for run in runs:
                run.close()
            if wire is not None:
                wire.close()
    return results


def parse_sites(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--sites takes a number or a comma-separated list, got {text!r}") from None
    if not values:
        raise ConfigError("--sites is empty")
    return values


def parse_modes(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in values if v not in ALL_MODES]
    if unknown or not values:
        raise ConfigError(f"unknown modes {unknown}; known: {', '.join(ALL_MODES)}")
    return values


def sequence_str(values: Sequence[object]) -> str:
    return ",".join(str(v) for v in values)
