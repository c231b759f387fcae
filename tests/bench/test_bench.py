"""`secagg bench` runs every mode on a tiny round and reports every field with sane values.

No timing assertions: speed goals live in BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from secagg.bench import BenchConfig, Workload, layout_spec, run_bench, segresnet_shapes
from secagg.bench.modes import mask_frac_bits
from secagg.errors import ConfigError

HAVE_NVFLARE = importlib.util.find_spec("nvflare") is not None
REQUIRED = {
    "mode",
    "params",
    "sites",
    "raw_bytes",
    "uplink_bytes",
    "protect_s",
    "aggregate_s",
    "unprotect_s",
    "max_abs_err",
    "peak_rss_bytes",
    "downlink_bytes",
    "uplink_ratio",
    "layout",
    "repeats",
}


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CliRun]:
    """The CLI in-process (its start-up imports are shared with the other tests); children still spawn."""
    from secagg.cli import main

    out = tmp_path_factory.mktemp("bench") / "o"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["bench", "--params", "5000", "--sites", "3", "--repeats", "1", "--out", str(out)])
    return out, CliRun(code, stdout.getvalue(), stderr.getvalue())


def test_cli_writes_results_table_and_chart(tiny_run: tuple[Path, CliRun]) -> None:
    out, proc = tiny_run
    assert proc.returncode == 0, proc.stderr
    assert "| mode |" in proc.stdout and "| tee |" in proc.stdout  # the table is printed
    assert "| floor s |" in proc.stdout and "| RSS / upload |" in proc.stdout  # and the memory table
    results = json.loads((out / "results.json").read_text())
    assert [r["mode"] for r in results] == ["plain", "he", "mask", "tee"]
    assert (out / "results.md").read_text().count("| flat | 3 |") == 4
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "scratch").exists()  # spooled uploads are cleaned up


def test_results_have_every_field_with_sane_values(
    tiny_run: tuple[Path, CliRun],
) -> None:
    out, proc = tiny_run
    assert proc.returncode == 0, proc.stderr
    by_mode = {r["mode"]: r for r in json.loads((out / "results.json").read_text())}
    for mode, r in by_mode.items():
        assert set(r) >= REQUIRED, f"{mode} lacks {REQUIRED - set(r)}"
        assert (r["params"], r["sites"], r["repeats"], r["layout"]) == (5000, 3, 1, "flat")
        assert r["raw_bytes"] == 4 * 5000
        assert r["uplink_ratio"] == pytest.approx(r["uplink_bytes"] / r["raw_bytes"])
        assert r["downlink_bytes"] > 0
        for key in ("protect_s", "aggregate_s", "unprotect_s"):
            assert 0 < r[key] < 60, (mode, key, r[key])
        assert 0 <= r["max_abs_err"] < 1e-6, (mode, r["max_abs_err"])
        assert r["peak_rss_bytes"] >= r["baseline_rss_bytes"] > 1_000_000
        # the floor: one read of every upload and one write of the result, in the aggregator's process
        assert 0 < r["floor_s"] < 60 and r["floor_ratio"] == pytest.approx(r["aggregate_s"] / r["floor_s"])
        assert r["rss_per_upload"] == pytest.approx(r["peak_rss_bytes"] / r["uplink_bytes"])
        assert r["window_bytes"] == 16 * 1024 * 1024
    assert by_mode["he"]["uplink_ratio"] > 1  # ciphertexts are bigger than float32
    assert by_mode["mask"]["uplink_ratio"] < 1.2  # masked uint32 plus small key and share messages
    assert by_mode["plain"]["uplink_ratio"] < 1.05
    assert 1 < by_mode["tee"]["uplink_ratio"] < 1.2  # sealing adds per-chunk overhead only


def test_sweep_over_site_counts_and_layout(tmp_path: Path) -> None:
    """Site counts are swept in one run; each result carries its own count and its own error."""
    spec = layout_spec("flat", 3000)
    config = BenchConfig(params=3000, sites=(2, 4), modes=("he", "mask"), repeats=1)
    results = run_bench(config, tmp_path, isolate=False)
    assert [(r.mode, r.sites) for r in results] == [("he", 2), ("mask", 2), ("he", 4), ("mask", 4)]
    assert all(r.params == spec.size and r.max_abs_err < 1e-6 for r in results)


def test_per_tensor_layout_round_trips(tmp_path: Path) -> None:
    """A many-tensor layout (scaled-down SegResNet) goes through every mode with the right shapes."""
    from secagg.bench.runner import measure_mode
    from secagg.bundle import BundleSpec, TensorSpec

    shapes = segresnet_shapes(init_filters=2, in_channels=1, out_channels=2)
    spec = BundleSpec(tuple(TensorSpec(n, s) for n, s in shapes))
    wl = Workload(spec, 3)
    for mode in ("plain", "he", "mask", "tee"):
        r = measure_mode(mode, wl, 1, tmp_path, isolate=False)
        assert r.tensors == 83 and r.params == spec.size
        assert r.max_abs_err < 1e-6, mode


def test_segresnet_layout_is_monai_brats_segresnet() -> None:
    shapes = segresnet_shapes()
    assert len(shapes) == 83
    assert sum(int(np.prod(s)) for _, s in shapes) == 4_702_227
    assert len({n for n, _ in shapes}) == 83
    assert shapes[0] == ("convInit.conv.weight", (16, 4, 3, 3, 3))
    assert shapes[-1] == ("conv_final.2.conv.bias", (3,))
    assert layout_spec("segresnet", 1).size == 4_702_227  # --params does not resize SegResNet


def test_workload_truth_is_the_weighted_average() -> None:
    wl = Workload(layout_spec("flat", 1000), 4, seed=3)
    assert wl.weights.sum() == pytest.approx(1.0)
    manual = sum(wl.weights[i] * wl.update(i).astype(np.float64) for i in range(4))
    assert np.allclose(wl.expected(), manual, rtol=0, atol=1e-15)
    assert np.array_equal(wl.update(2), wl.update(2))  # regenerated identically
    assert 0.04 < float(np.std(wl.update(0))) < 0.06


def test_mask_fixed_point_fits_the_sum() -> None:
    from secagg.mask.config import SUM_LIMIT

    for n in (2, 3, 8, 16, 100):
        f = mask_frac_bits(n)
        assert n * 2**f <= SUM_LIMIT < n * 2 ** (f + 1)


def test_bad_arguments_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="layout"):
        BenchConfig(layout="resnet")
    with pytest.raises(ConfigError, match="modes"):
        BenchConfig(modes=("rot13",))
    with pytest.raises(ConfigError, match="site count"):
        BenchConfig(sites=(1,))
    from secagg.cli import main

    with pytest.raises(SystemExit) as exc:  # argparse: usage error
        main(["bench", "--modes", "plain,rot13", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "rot13" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_NVFLARE, reason="nvflare not installed: pip install 'secagg[bench]'")
def test_nvflare_comparison_runs_nvflares_he_path(tmp_path: Path) -> None:
    config = BenchConfig(params=5000, sites=(3,), modes=("he",), compare_nvflare=True, repeats=1)
    by_mode = {r.mode: r.to_dict() for r in run_bench(config, tmp_path)}
    assert set(by_mode) == {"he", "nvflare-he"}
    nv = by_mode["nvflare-he"]
    assert set(nv) >= REQUIRED
    assert nv["max_abs_err"] < 1e-6
    # a serialised context rides with every encrypted layer: far bigger than secagg's stream
    assert nv["uplink_bytes"] > 2 * by_mode["he"]["uplink_bytes"]
    assert nv["info"]["nvflare_version"].startswith("2.9")


def test_compare_nvflare_without_nvflare_exits_1_with_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With nvflare unimportable the command exits 1 and says how to install the extra."""
    from secagg.cli import main

    for name in [m for m in sys.modules if m == "nvflare" or m.startswith("nvflare.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nvflare", None)  # makes `import nvflare` raise ImportError
    argv = ["bench", "--params", "100", "--sites", "2", "--repeats", "1", "--compare", "nvflare"]
    code = main([*argv, "--out", str(tmp_path / "o")])
    assert code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("secagg:") and "secagg[bench]" in line and "nvflare==2.9.0" in line
    assert not (tmp_path / "o").exists()  # refused before writing anything


def test_transport_legs_go_through_mtls_and_join_the_round(tmp_path: Path) -> None:
    """--transport moves every site's files (all of mask's messages too) through the gRPC relay."""
    from secagg.bench.report import markdown_table

    config = BenchConfig(params=3000, sites=(2,), modes=("plain", "mask", "tee"), repeats=1, transport=True)
    results = run_bench(config, tmp_path, isolate=False)
    for r in results:
        assert r.transport_s is not None and r.transport_s > 0 and r.transport_cpu_s is not None
        assert r.round_transport_s == pytest.approx(r.round_s + r.transport_s)
        assert r.round_transport_cpu_s == pytest.approx(r.round_cpu_s + r.transport_cpu_s)
    assert "round incl. transport s (cpu)" in markdown_table(results)
    assert not list(tmp_path.glob("wire-*"))  # kits, spool and server are gone


def test_relay_moves_each_file_intact_and_refuses_strangers(tmp_path: Path) -> None:
    import grpc

    from secagg.bench.wire import Wire
    from secagg.provision.kit import load_kit
    from secagg.provision.project import Project, SiteSpec
    from secagg.provision.writer import provision
    from secagg.transport import tls
    from secagg.transport.chunks import encode_stream
    from secagg.transport.generated import secagg_pb2_grpc as rpc

    wire = Wire(2, tmp_path)
    try:
        files = []
        for i in range(2):
            a, b = tmp_path / f"up-{i}", tmp_path / f"up-{i}.x"
            a.write_bytes(os.urandom(5 * 1024 * 1024 + i))  # more than one 4 MiB chunk
            b.write_bytes(os.urandom(10))
            files.append([a, b])
        wire.upload(files)
        got = {p.name: p.read_bytes() for p in wire.spool.iterdir()}
        assert got == {
            "site-1.0.upload": files[0][0].read_bytes(),
            "site-1.1.upload": files[0][1].read_bytes(),
            "site-2.0.upload": files[1][0].read_bytes(),
            "site-2.1.upload": files[1][1].read_bytes(),
        }
        result = tmp_path / "down-0"
        result.write_bytes(os.urandom(4 * 1024 * 1024 + 3))
        assert wire.download(result).wall > 0
        # a client of another project's CA never reaches the relay
        provision(Project(name="other", sites=[SiteSpec(name="site-1")]), tmp_path / "other")
        stranger = load_kit(tmp_path / "other" / "site-1")
        with tls.channel(stranger, wire.target) as ch, pytest.raises(grpc.RpcError):
            rpc.FederationStub(ch).UploadResult(encode_stream({"bytes": 1}, [b"x"]), timeout=10)
    finally:
        wire.close()


def test_rounds_of_the_modes_are_interleaved(tmp_path: Path) -> None:
    """Round r of every mode runs before round r + 1 of any: machine load drift hits all modes alike."""
    seen: list[str] = []

    def progress(desc: str, _advance: int) -> None:
        if desc.endswith(": protect"):
            seen.append(desc.removesuffix(": protect"))

    config = BenchConfig(params=2000, sites=(2,), modes=("plain", "tee"), repeats=2)
    results = run_bench(config, tmp_path, progress, isolate=False)
    assert seen == [
        "plain x2 sites, run 1/2",
        "tee x2 sites, run 1/2",
        "plain x2 sites, run 2/2",
        "tee x2 sites, run 2/2",
    ]
    assert [(r.mode, r.repeats, len(r.runs)) for r in results] == [("plain", 2, 2), ("tee", 2, 2)]


def test_the_floor_reads_every_uploaded_file_and_writes_the_result_size(tmp_path: Path) -> None:
    from secagg.bench.child import floor_seconds, uploaded_files

    for name, size in [("up-0", 10), ("up-1.keys", 3), ("up-1.masked", 5), ("up-10", 1), ("down-0", 7)]:
        (tmp_path / name).write_bytes(b"x" * size)
    files = uploaded_files(tmp_path, 2)
    assert [p.name for p in files] == ["up-0", "up-1.keys", "up-1.masked"]  # not up-10, not down-0
    assert floor_seconds(files, 20 * 1024 * 1024 + 3, tmp_path) > 0
    assert not (tmp_path / "floor.out").exists()


@pytest.mark.parametrize("mode", ["plain", "mask", "tee", "tee-mask"])
def test_a_window_of_a_few_values_gives_the_same_download(tmp_path: Path, mode: str) -> None:
    """The bench's aggregator steps are the service's windowed combiners: a 40-byte window (5 values,
    dividing no tensor) and the default window write the same result, byte for byte."""
    from secagg.bench.modes import down_path, write_window
    from secagg.bench.registry import make_aggregator, make_mode
    from secagg.bundle import BundleSpec, TensorSpec

    spec = BundleSpec((TensorSpec("a", (7, 11)), TensorSpec("b", (3,)), TensorSpec("c", (13, 17, 2))))
    wl = Workload(spec, 2, seed=1)
    work = tmp_path / mode
    work.mkdir()
    m = make_mode(mode)
    m.setup(work, wl)
    m.protect_all(work, wl)
    results = []
    for window in (40, 16 * 1024 * 1024):
        write_window(work, window)
        step = make_aggregator(mode)
        step.prepare(work, 2)
        step.run()
        results.append(down_path(work, 0).read_bytes())
    assert results[0] == results[1]
    _lap, out = m.unprotect(work, wl, 0)
    # the streamed modes compare a window at a time and return the error; tee-mask returns the average
    err = out if isinstance(out, float) else float(np.max(np.abs(out - wl.expected())))
    assert err < 1e-6


def test_tee_mask_seals_what_the_host_relays_and_the_site_checks_the_enclave(tmp_path: Path) -> None:
    """tee-mask's bench: the masked input the host relays is sealed (it does not parse as one), the
    enclave's step opens it, and site 1 takes only a model the enclave signed."""
    from secagg.bench.modes import down_path, up_path
    from secagg.bench.registry import make_aggregator, make_mode
    from secagg.mask.messages import MaskedInput
    from secagg.tee.errors import ModelSignatureInvalid

    wl = Workload(layout_spec("flat", 3000), 3, seed=2)
    m = make_mode("tee-mask")
    m.setup(tmp_path, wl)
    m.protect_all(tmp_path, wl)
    with pytest.raises(Exception):  # noqa: B017 - any refusal: it is ciphertext, not a masked input
        MaskedInput.from_bytes(up_path(tmp_path, 0, ".masked").read_bytes())
    step = make_aggregator("tee-mask")
    step.prepare(tmp_path, 3)
    step.run()
    _lap, out = m.unprotect(tmp_path, wl, 0)
    err = out if isinstance(out, float) else float(np.max(np.abs(out - wl.expected())))
    assert err < 1e-6
    sig = tmp_path / "down-0.sig"
    assert m.downlink_bytes(tmp_path, 0) > down_path(tmp_path, 0).stat().st_size + sig.stat().st_size
    sig.write_bytes(bytes(b ^ 1 for b in sig.read_bytes()))
    with pytest.raises(ModelSignatureInvalid):
        m.unprotect(tmp_path, wl, 0)


def test_dp_sampling_times_one_sites_noise_share(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from secagg.bench import dp_sampling
    from secagg.cli import main
    from secagg.mask.job import mask_config
    from secagg.privacy.distributed import norm_bound, share_mu

    r = dp_sampling.measure(2000, 8, repeats=1)
    assert r.min_honest_sites == mask_config(None, 8).threshold
    assert r.share_mu == share_mu(1.0, norm_bound(1.0, 16, 2000), r.min_honest_sites)
    assert r.noise_s > 0 and r.filter_s > 0 and r.noise_cpu_s >= 0
    out = tmp_path / "o"
    assert (
        main(
            [
                "bench",
                "--dp-sampling",
                "--params",
                "2000",
                "--sites",
                "3,8",
                "--repeats",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads((out / "dp-sampling.json").read_text())
    assert [(x["params"], x["sites"]) for x in rows] == [(2000, 3), (2000, 8)]
    assert "| 2,000 | 8 |" in (out / "dp-sampling.md").read_text()
    capsys.readouterr()
    assert main(["bench", "--dp-sampling", "--modes", "mask", "--out", str(tmp_path / "x")]) == 2
    assert "--modes: not used with --dp-sampling" in capsys.readouterr().err


def test_streamed_workload_windows_are_the_whole_vectors() -> None:
    """The bench's sites make their updates, and the truth, a window at a time: the same bits as the
    whole vectors, for windows that divide nothing."""
    from secagg.bundle import BundleSpec, TensorSpec

    spec = BundleSpec((TensorSpec("a", (1001,)), TensorSpec("b", (37,))))
    for elements in (1, 7, 5000):
        wl = Workload(spec, 3, seed=2)
        streamed = np.concatenate([w for _, w in wl.expected_windows(elements)])  # before expected()
        assert streamed.tobytes() == wl.expected().tobytes()
        for site in range(3):
            got = np.concatenate([w for _, w in wl.update_windows(site, elements)])
            assert got.tobytes() == wl.update(site).tobytes()
