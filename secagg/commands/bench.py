"""``secagg bench [--params N] [--layout flat|segresnet] [--sites N[,N...]] [--modes LIST]
[--compare nvflare] [--transport] [--window-bytes B] [--repeats N] [--out DIR]``, or ``secagg bench --training
[--volume V] [--steps N] [--batch B] [--device auto|cpu|cuda] [--repeats N] [--out DIR]`` for the
training-overhead table, or ``secagg bench --demo-compare [--rounds N] [--peers LIST] [--out DIR]`` for the
demo's round before and after the per-job worker, beside NVIDIA FLARE's and Flower's simulations, or
``secagg bench --dp-sampling [--params N] [--sites N[,N...]] [--repeats N] [--out DIR]`` for the time a site
takes to draw its distributed-DP noise share."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from secagg.aggregator.modes.windows import DEFAULT_WINDOW_BYTES
from secagg.errors import ConfigError, UsageError

T = TypeVar("T")


def _sites(text: str) -> tuple[int, ...]:
    from secagg.bench.runner import parse_sites

    try:
        return parse_sites(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _modes(text: str) -> tuple[str, ...]:
    from secagg.bench.runner import parse_modes

    try:
        return parse_modes(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _volume(text: str) -> int:
    value = _positive(text)
    if value % 8:
        raise argparse.ArgumentTypeError(
            f"expected a multiple of 8 (SegResNet halves it 3 times), got {text!r}"
        )
    return value


#: the per-mode table's own flags and their defaults; --training refuses them when set otherwise
_TABLE_DEFAULTS: dict[str, object] = {
    "params": 1_000_000,
    "layout": "flat",
    "sites": (8,),
    "modes": ("plain", "he", "mask", "tee"),
    "compare": None,
    "transport": False,
    "window_bytes": DEFAULT_WINDOW_BYTES,
}
#: flags that only apply with --training (default None: not given)
_TRAINING_ONLY = ("volume", "steps", "batch", "device", "init_filters")
#: flags that only apply with --demo-compare (default None: not given)
_DEMO_ONLY = ("rounds", "peers", "peer_venvs")


def _peers(text: str) -> tuple[str, ...]:
    from secagg.bench.demo_compare import PEER_NAMES

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if names == ("none",):
        return ()
    bad = [n for n in names if n not in PEER_NAMES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"expected 'none' or a list from {','.join(PEER_NAMES)}, got {text!r}"
        )
    return names


def _rounds(text: str) -> int:
    value = _positive(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"expected 1-100 rounds (the demo's limit), got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "bench",
        help="measure per-mode overhead (bytes, seconds, error, aggregator RSS), optionally vs NVFlare HE",
    )
    p.add_argument(
        "--params",
        type=_positive,
        default=_TABLE_DEFAULTS["params"],
        help="flat layout size (default: %(default)s)",
    )
    p.add_argument(
        "--layout",
        choices=("flat", "segresnet"),
        default=_TABLE_DEFAULTS["layout"],
        help="one flat tensor, or MONAI SegResNet's 83 tensors (4.70M parameters; ignores --params)",
    )
    p.add_argument(
        "--sites",
        type=_sites,
        default=_TABLE_DEFAULTS["sites"],
        help="site count, or a list to sweep: 4,8,16 (default: 8)",
    )
    p.add_argument(
        "--modes",
        type=_modes,
        default=_TABLE_DEFAULTS["modes"],
        help="comma-separated, from plain,he,mask,tee,tee-mask,nvflare-he (default: plain,he,mask,tee)",
    )
    p.add_argument("--compare", choices=("nvflare",), help="also run NVIDIA FLARE 2.9's HE path (nvflare-he)")
    p.add_argument(
        "--transport",
        action="store_true",
        help="also move every upload and download through secagg's mTLS gRPC transport on 127.0.0.1 "
        "and report the round including it",
    )
    p.add_argument(
        "--window-bytes",
        type=_positive,
        default=_TABLE_DEFAULTS["window_bytes"],
        help="the aggregator's combine window, bytes of float64 accumulator (default: %(default)s)",
    )
    p.add_argument("--repeats", type=_positive, default=3, help="rounds per mode; medians are reported")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help="output folder (default: a new folder under ./bench-out/)")
    t = p.add_argument_group(
        "training overhead",
        "--training trains a SegResNet-shaped torch model and protects each round's update raw, with HE "
        "(all tensors) and with HE on a subset (for comparison only; secagg does not ship it), instead "
        "of the per-mode table; it uses CUDA when torch sees a GPU",
    )
    t.add_argument("--training", action="store_true", help="run the training-overhead measurement")
    t.add_argument(
        "--volume",
        type=_volume,
        help="input edge V of (batch, 4, V, V, V), a multiple of 8 (default: 32 on CPU, 128 on GPU)",
    )
    t.add_argument("--steps", type=_positive, help="optimizer steps per round (default: 20)")
    t.add_argument("--batch", type=_positive, help="batch size (default: 1)")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to train (default: auto)")
    # the model's width: 16 is the real SegResNet; smaller only makes tests quick
    t.add_argument("--init-filters", type=_positive, help=argparse.SUPPRESS)
    d = p.add_argument_group(
        "demo comparison",
        "--demo-compare runs the demo's 3-site job in plain and he with its loop-form script (one worker "
        "per job) and with the one-round form (a new worker per round, as before), then NVIDIA FLARE "
        "2.9's simulator and Flower's simulation on the same job, each peer in its own venv under "
        "--peer-venvs (installed from the registry on first use; one that cannot be installed is "
        "reported as skipped), instead of the per-mode table",
    )
    d.add_argument("--demo-compare", action="store_true", help="run the demo round comparison")
    d.add_argument("--rounds", type=_rounds, help="rounds of every federation (default: 5)")
    d.add_argument(
        "--peers", type=_peers, help="peers to run beside secagg: nvflare,flower (default) or none"
    )
    d.add_argument("--peer-venvs", type=Path, help="where the peers' venvs live (default: bench-out/peers)")
    p.add_argument(
        "--dp-sampling",
        action="store_true",
        help="instead of the per-mode table: the time one site takes to draw its distributed_gaussian "
        "noise share for --params coordinates (and the whole filter), per --sites count",
    )
    p.set_defaults(func=run)


#: the per-mode table's flags --dp-sampling has no use for
_NOT_FOR_SAMPLING = ("layout", "modes", "compare", "transport", "window_bytes")


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    return [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is not None]


def run(args: argparse.Namespace) -> int:
    if sum(map(bool, (args.training, args.demo_compare, args.dp_sampling))) > 1:
        raise UsageError("--training, --demo-compare and --dp-sampling: choose one")
    if args.dp_sampling:
        extra = [
            f"--{n.replace('_', '-')}" for n in _NOT_FOR_SAMPLING if getattr(args, n) != _TABLE_DEFAULTS[n]
        ]
        extra += _given(args, (*_TRAINING_ONLY, *_DEMO_ONLY))
        if extra:
            raise UsageError(f"{', '.join(extra)}: not used with --dp-sampling")
        return _run_dp_sampling(args)
    if args.training or args.demo_compare:
        flag = "--training" if args.training else "--demo-compare"
        extra = [f"--{n}" for n, default in _TABLE_DEFAULTS.items() if getattr(args, n) != default]
        extra += _given(args, _DEMO_ONLY if args.training else _TRAINING_ONLY)
        if extra:
            raise UsageError(f"{', '.join(extra)}: not used with {flag}")
        return _run_training(args) if args.training else _run_demo_compare(args)
    extra = _given(args, _TRAINING_ONLY)
    if extra:
        raise UsageError(f"{', '.join(extra)}: only used with --training")
    extra = _given(args, _DEMO_ONLY)
    if extra:
        raise UsageError(f"{', '.join(extra)}: only used with --demo-compare")
    from rich.console import Console

    from secagg.bench.report import markdown_table, memory_table, write_outputs
    from secagg.bench.runner import BenchConfig, run_bench, steps
    from secagg.bench.targets import evaluate, markdown

    config = BenchConfig(
        params=args.params,
        layout=args.layout,
        sites=args.sites,
        modes=args.modes,
        compare_nvflare=args.compare == "nvflare",
        repeats=args.repeats,
        seed=args.seed,
        transport=args.transport,
        window_bytes=args.window_bytes,
    )
    if "nvflare-he" in config.all_modes:
        from secagg.bench.nvflare_he import require_nvflare

        require_nvflare()  # before anything is written
    out = _out_dir(args)
    console = Console(stderr=True)
    results = _with_progress(
        console, steps(config), lambda progress: run_bench(config, out / "scratch", progress)
    )
    (out / "scratch").rmdir()
    size = "SegResNet" if config.layout == "segresnet" else f"{results[0].params:,} params"
    title = f"secagg bench: {config.layout} ({size}), median of {config.repeats}"
    js, md, png = write_outputs(results, out, title)
    sys.stdout.write(
        markdown_table(results) + "\n" + memory_table(results) + "\n" + markdown(evaluate(results))
    )
    console.print(f"wrote {js}, {md}, {png}")
    return 0


def _run_dp_sampling(args: argparse.Namespace) -> int:
    import json

    from secagg.bench import dp_sampling

    out = _out_dir(args)
    results = []
    for n in args.sites:
        print(
            f"distributed_gaussian noise share: {args.params:,} coordinates, {n} sites ...", file=sys.stderr
        )
        results.append(dp_sampling.measure(args.params, n, args.repeats, args.seed))
    (out / "dp-sampling.json").write_text(json.dumps([r.to_dict() for r in results], indent=2))
    table = dp_sampling.markdown(results)
    (out / "dp-sampling.md").write_text(table)
    sys.stdout.write(table)
    print(f"wrote {out / 'dp-sampling.json'}, {out / 'dp-sampling.md'}", file=sys.stderr)
    return 0


def _run_training(args: argparse.Namespace) -> int:
    from rich.console import Console

    from secagg.bench.training import (
        TrainingConfig,
        describe,
        markdown_table,
        progress_steps,
        run_training,
        write_outputs,
    )

    config = TrainingConfig(
        volume=args.volume,
        steps=args.steps or TrainingConfig.steps,
        batch=args.batch or TrainingConfig.batch,
        repeats=args.repeats,
        device=args.device or "auto",
        init_filters=args.init_filters or TrainingConfig.init_filters,
        seed=args.seed,
    )
    config.resolve_device()  # --device cuda without CUDA: refused before anything is written
    out = _out_dir(args)
    console = Console(stderr=True)
    result = _with_progress(console, progress_steps(config), lambda progress: run_training(config, progress))
    js, md, png = write_outputs(result, out)
    sys.stdout.write(describe(result) + "\n" + markdown_table(result))
    console.print(f"wrote {js}, {md}, {png}")
    return 0


def _run_demo_compare(args: argparse.Namespace) -> int:
    from secagg.bench.demo_compare import PEER_NAMES, markdown, run_demo_compare
    from secagg.commands.demo import DEMO_PARAMS

    out = _out_dir(args)
    results = run_demo_compare(
        out,
        rounds=args.rounds or 5,
        params=DEMO_PARAMS,
        peers=PEER_NAMES if args.peers is None else args.peers,
        venvs=args.peer_venvs or Path("bench-out") / "peers",
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    sys.stdout.write(markdown(results))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}", file=sys.stderr)
    failed = [s["key"] for s in results["systems"] if s["system"] == "secagg" and s["status"] != "ok"]
    if failed:
        print(f"secagg bench: the secagg federation failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _out_dir(args: argparse.Namespace) -> Path:
    out: Path = args.out or Path("bench-out") / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _with_progress(console: Any, total: int, work: Callable[[Callable[[str, int], None]], T]) -> T:
    """Run ``work(progress)`` under a transient progress bar on stderr (stdout keeps only the table)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console, transient=True
    ) as bar:
        task = bar.add_task("starting", total=total)

        def progress(desc: str, advance: int) -> None:
            bar.update(task, description=desc, advance=advance)

        return work(progress)
