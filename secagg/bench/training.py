"""Training overhead: a SegResNet-shaped torch model trains a few steps, then its update is protected.

The seeds' reference (NVIDIA FLARE's HE docs) gives, for a 5M-parameter SegResNet, raw 19 MB against
283 MB with HE, 5.01 s of encryption and +15-22 % training time. This module measures the same kind of
table for secagg: per round, ``steps`` optimizer steps of a real network (:class:`SegResNetLike`, whose
``state_dict`` has exactly the tensors of :func:`secagg.bench.layouts.segresnet_shapes`), then the
update protected three ways:

* ``raw``: safetensors of the pre-weighted float32 update (what ``plain`` sends;
  :func:`secagg.agent.protect.protect_plain`).
* ``he-full``: secagg's ``he`` protection of every tensor: one flat, pre-weighted slot stream, framed
  CKKS ciphertexts (:func:`secagg.agent.protect.protect_he`, the agent's own path; the key is made once,
  outside the timing, as in :class:`secagg.bench.modes.HEMode`).
* ``he-subset``: only the subset :func:`subset_names` picks is encrypted (the same slot-stream path),
  the other tensors go as safetensors in one frame ahead of the ciphertexts. secagg does **not** ship
  this: the unencrypted tensors would reach the aggregator in clear. It is here to compare with the
  seeds' partial-encryption figures.

Timing (wall and CPU seconds of the process, all threads, :mod:`.clock`):

* ``train_s``: ``steps`` Adam steps on a fixed synthetic batch (input ``(batch, 4, V, V, V)``, random
  binary targets for 3 channels, soft Dice loss), plus taking the update (new minus old weights) to
  the host as float32 numpy. On CUDA the device is synchronised before the clock stops (and CPU
  seconds then count the host side only).
* ``protect_s``: from that update to the bytes handed to the transport: flatten, weighting,
  encryption, serialisation, framing.
* ``round_s`` = ``train_s`` + ``protect_s``. Each round trains once and protects its update all three
  ways, so the three modes share the same training time and the overhead is the protection alone:
  ``overhead_pct`` = (round of the mode - round of ``raw``) / round of ``raw``.

One warm-up round first (not recorded), then medians over ``repeats`` rounds. Key generation,
transfer, aggregation and decryption are not in the round (``secagg bench`` measures those); the
decryption error of the last round is reported as a check that the bytes hold the update.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from secagg.bundle import BundleSpec, TensorSpec, from_safetensors
from secagg.errors import ConfigError

from .clock import Lap, clock, lap
from .layouts import segresnet_shapes

TRAINING_MODES = ("raw", "he-full", "he-subset")
DEVICES = ("auto", "cpu", "cuda")
#: defaults of ``--volume``: a BraTS-like crop fits a GPU; on a CPU a step at 128^3 takes minutes
DEFAULT_VOLUME = {"cpu": 32, "cuda": 128}
#: the he-subset rule: the largest tensors (ties in layout order) until they hold this share of params
SUBSET_MIN_FRACTION = 0.10
#: the FedAvg weight the update is multiplied by before protection (one of 8 equal sites)
SITE_WEIGHT = 1.0 / 8
#: MONAI BraTS tutorial: Adam(lr=1e-4, weight_decay=1e-5); GroupNorm with 8 groups
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 1e-5
NUM_GROUPS = 8
HE_PRESET = "secagg-default"


# ---------------------------------------------------------------------------------------- model ----
class _Conv(nn.Module):
    """MONAI's ``Convolution(conv_only=True)``: the torch conv sits under ``.conv``."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, bias: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, k, stride=stride, padding=k // 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return out


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(NUM_GROUPS, c), c)


class ResBlock(nn.Module):
    """MONAI ``ResBlock``: GroupNorm -> ReLU -> conv3x3x3, twice, plus the identity."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm1 = _norm(c)
        self.norm2 = _norm(c)
        self.act = nn.ReLU(inplace=True)
        self.conv1 = _Conv(c, c)
        self.conv2 = _Conv(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.act(self.norm1(x)))
        y = self.conv2(self.act(self.norm2(y)))
        return y + x


class SegResNetLike(nn.Module):
    """The SegResNet of MONAI's BraTS tutorial, in plain torch (no MONAI dependency).

    Encoder: ``convInit`` then, per level, a stride-2 conv (levels > 0) and ``blocks_down[i]``
    ResBlocks at ``init_filters * 2**i`` channels. Decoder: per level, a 1x1x1 conv halving the
    channels, non-trainable trilinear upsampling, the skip connection added, ``blocks_up[i]`` ResBlocks.
    Head: GroupNorm -> ReLU -> 1x1x1 conv (with bias). Dropout 0.2 after ``convInit`` as in the
    tutorial. ``init_filters`` scales the width (16 is the real model; smaller values are for tests).

    Its ``state_dict`` holds exactly the names and shapes of ``segresnet_shapes(init_filters, ...)``;
    the order differs only where torch lists all ``up_layers`` before all ``up_samples`` (as MONAI's
    own model does), so updates are flattened in the layout's order, by name.
    """

    def __init__(
        self,
        init_filters: int = 16,
        in_channels: int = 4,
        out_channels: int = 3,
        blocks_down: tuple[int, ...] = (1, 2, 2, 4),
        blocks_up: tuple[int, ...] = (1, 1, 1),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if len(blocks_up) != len(blocks_down) - 1:
            raise ConfigError("SegResNet needs one up level fewer than down levels")
        f = init_filters
        self.convInit = _Conv(in_channels, f)  # MONAI's state-dict name
        self.dropout = nn.Dropout(dropout)
        self.down_layers = nn.ModuleList()
        for i, n_blocks in enumerate(blocks_down):
            c = f * 2**i
            pre: nn.Module = _Conv(c // 2, c, stride=2) if i > 0 else nn.Identity()
            self.down_layers.append(nn.Sequential(pre, *[ResBlock(c) for _ in range(n_blocks)]))
        n_up = len(blocks_up)
        self.up_layers = nn.ModuleList()
        self.up_samples = nn.ModuleList()
        for i in range(n_up):
            c = f * 2 ** (n_up - i)
            self.up_layers.append(nn.Sequential(*[ResBlock(c // 2) for _ in range(blocks_up[i])]))
            self.up_samples.append(
                nn.Sequential(
                    _Conv(c, c // 2, k=1), nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)
                )
            )
        self.conv_final = nn.Sequential(
            _norm(f), nn.ReLU(inplace=True), _Conv(f, out_channels, k=1, bias=True)
        )
        self.levels = len(blocks_down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.convInit(x))
        skips = []
        for down in self.down_layers:
            x = down(x)
            skips.append(x)
        skips.reverse()
        for i, (up, block) in enumerate(zip(self.up_samples, self.up_layers, strict=True)):
            x = block(up(x) + skips[i + 1])
        out: torch.Tensor = self.conv_final(x)
        return out


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """MONAI ``DiceLoss(sigmoid=True, squared_pred=True, smooth_dr=1e-5)``, mean over batch and channels."""
    p = torch.sigmoid(logits)
    dims = tuple(range(2, logits.ndim))
    inter = (p * target).sum(dims)
    denom = (p * p).sum(dims) + (target * target).sum(dims)
    return (1.0 - 2.0 * inter / (denom + eps)).mean()


# --------------------------------------------------------------------------------------- subset ----
def subset_names(spec: BundleSpec, min_fraction: float = SUBSET_MIN_FRACTION) -> tuple[str, ...]:
    """The he-subset tensors: largest first (ties in layout order) until ``min_fraction`` of params.

    On the real SegResNet that is the two 3x3x3 convs of the bottleneck's first ResBlock
    (``down_layers.3.1.conv{1,2}``, 128x128x27 each): 884,736 of 4,702,227 parameters, 18.8 %.
    Returned in layout order.
    """
    order = sorted(range(len(spec.tensors)), key=lambda i: (-spec.tensors[i].size, i))
    chosen: set[int] = set()
    total = 0
    for i in order:
        if total >= min_fraction * spec.size:
            break
        chosen.add(i)
        total += spec.tensors[i].size
    return tuple(t.name for i, t in enumerate(spec.tensors) if i in chosen)


# ------------------------------------------------------------------------------------- protection ----
class Protector:
    """The three ways to protect one update, with the HE key made once (not timed)."""

    def __init__(self, spec: BundleSpec, subset: Sequence[str], weight: float = SITE_WEIGHT) -> None:
        from secagg.he import PRESETS, make_secret_context

        self.spec, self.weight = spec, weight
        chosen = set(subset)
        self.subset = BundleSpec(tuple(t for t in spec.tensors if t.name in chosen))
        self.rest = BundleSpec(tuple(t for t in spec.tensors if t.name not in chosen))
        if not self.subset.tensors or not self.rest.tensors:
            raise ConfigError("the he-subset must hold some tensors and leave some out")
        self.secret = make_secret_context(PRESETS[HE_PRESET])

    def protect(self, mode: str, update: dict[str, np.ndarray]) -> bytes:
        from secagg.agent.protect import protect_he, protect_plain
        from secagg.framing import frame

        w = self.weight
        if mode == "raw":
            return b"".join(protect_plain(self.spec, self.spec.flatten(update) * w))
        if mode == "he-full":
            return b"".join(protect_he(self.secret, self.spec.flatten(update) * w))
        if mode == "he-subset":
            rest = {n: update[n] for n in self.rest.names}
            clear = b"".join(protect_plain(self.rest, self.rest.flatten(rest) * w))
            enc = {n: update[n] for n in self.subset.names}
            return b"".join(frame([clear])) + b"".join(protect_he(self.secret, self.subset.flatten(enc) * w))
        raise ConfigError(f"unknown training mode {mode!r}; known: {', '.join(TRAINING_MODES)}")

    def max_abs_err(self, mode: str, update: dict[str, np.ndarray], data: bytes) -> float:
        """Decode what ``protect`` sent (decrypting where encrypted) against the weighted update."""
        from secagg.framing import unframe
        from secagg.he import decrypt_vector

        expected = self.spec.flatten(update) * self.weight
        if mode == "raw":
            got = self.spec.flatten(from_safetensors(data))
        elif mode == "he-full":
            got = decrypt_vector(self.secret, unframe(io.BytesIO(data)), self.spec.size)
        else:
            records = unframe(io.BytesIO(data))
            clear = from_safetensors(next(records))
            enc = decrypt_vector(self.secret, records, self.subset.size)
            bundle = dict(clear) | dict(self.subset.unflatten(enc, dtype=np.float64))
            got = self.spec.flatten(bundle)
        return float(np.max(np.abs(got - expected)))


# ------------------------------------------------------------------------------------ measurement ----
@dataclass(frozen=True)
class TrainingConfig:
    volume: int | None = None  # None: DEFAULT_VOLUME of the device
    steps: int = 20
    batch: int = 1
    repeats: int = 3
    device: str = "auto"
    init_filters: int = 16  # 16 is the real SegResNet; smaller is for tests
    seed: int = 0

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.volume is not None and (self.volume < 8 or self.volume % 8):
            raise ConfigError(f"--volume must be a multiple of 8 (three stride-2 levels), got {self.volume}")
        for name in ("steps", "batch", "repeats", "init_filters"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")

    def resolve_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: torch sees no CUDA device here (use --device auto or cpu)")
        return self.device


@dataclass
class TrainingModeResult:
    mode: str
    params: int
    tensors: int
    encrypted_params: int
    encrypted_tensors: int
    bytes_sent: int
    bytes_ratio: float
    train_s: float
    train_cpu_s: float
    protect_s: float
    protect_cpu_s: float
    round_s: float
    round_cpu_s: float
    overhead_pct: float
    overhead_cpu_pct: float
    max_abs_err: float


@dataclass
class TrainingResult:
    device: str
    device_name: str
    machine: dict[str, Any]
    volume: int
    steps: int
    batch: int
    repeats: int
    init_filters: int
    params: int
    tensors: int
    raw_bytes: int
    he_params: str
    site_weight: float
    subset: list[str]
    subset_params: int
    subset_fraction: float
    loss_first: float
    loss_last: float
    modes: list[TrainingModeResult]
    runs: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: progress callback: (description, advance) -- the CLI draws it with rich
Progress = Callable[[str, int], None]


def _no_progress(_desc: str, _advance: int) -> None:
    return None


def progress_steps(config: TrainingConfig) -> int:
    """Progress steps of a whole run: train + three protections, per round, warm-up included."""
    return (config.repeats + 1) * (1 + len(TRAINING_MODES))


def _machine(device: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    out: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if device == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
    with contextlib.suppress(OSError):  # a shared machine: say how busy it was
        out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _batches(config: TrainingConfig, volume: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(config.seed)
    shape = (config.batch, 4, volume, volume, volume)
    x = torch.randn(shape, generator=g)
    y = (torch.rand((config.batch, 3, volume, volume, volume), generator=g) > 0.5).float()
    return x.to(device), y.to(device)


def _iter_rounds(n: int) -> Iterator[tuple[int, bool]]:
    yield 0, True
    for r in range(1, n + 1):
        yield r, False


def run_training(config: TrainingConfig, progress: Progress = _no_progress) -> TrainingResult:
    device = config.resolve_device()
    load_start = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []
    volume = config.volume or DEFAULT_VOLUME[device]
    torch.manual_seed(config.seed)
    model = SegResNetLike(init_filters=config.init_filters).to(device)
    model.train()
    spec = BundleSpec(tuple(TensorSpec(n, s) for n, s in segresnet_shapes(init_filters=config.init_filters)))
    state_names = [n for n, _ in model.state_dict().items()]
    if sorted(state_names) != sorted(spec.names):
        raise ConfigError("the model's state_dict does not match the SegResNet layout")  # a bug, loudly
    subset = subset_names(spec)
    protector = Protector(spec, subset)
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    x, y = _batches(config, volume, device)

    runs: list[dict[str, float]] = []
    losses: list[float] = []
    errors: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for r, warmup in _iter_rounds(config.repeats):
        tag = "warm-up" if warmup else f"round {r}/{config.repeats}"
        progress(f"training {tag}: {config.steps} steps", 0)
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        _sync(device)
        t0 = clock()
        for _ in range(config.steps):
            opt.zero_grad(set_to_none=True)
            loss = soft_dice_loss(model(x), y)
            loss.backward()
            opt.step()
        update = {
            k: (v.detach() - before[k]).to("cpu", torch.float32).numpy()
            for k, v in model.state_dict().items()
        }
        _sync(device)
        train = lap(t0)
        losses.append(float(loss.detach()))
        progress(f"training {tag}: protect", 1)
        run: dict[str, float] = {"train_s": train.wall, "train_cpu_s": train.cpu}
        for mode in TRAINING_MODES:
            progress(f"training {tag}: {mode}", 0)
            t0 = clock()
            data = protector.protect(mode, update)
            took: Lap = lap(t0)
            run[f"{mode}_protect_s"], run[f"{mode}_protect_cpu_s"] = took.wall, took.cpu
            sizes[mode] = len(data)
            if r == config.repeats:
                errors[mode] = protector.max_abs_err(mode, update, data)
            del data
            progress(f"training {tag}: {mode}", 1)
        if not warmup:
            runs.append(run)

    def med(key: str) -> float:
        return float(statistics.median(run[key] for run in runs))

    train_s, train_cpu = med("train_s"), med("train_cpu_s")
    raw_round = train_s + med("raw_protect_s")
    raw_round_cpu = train_cpu + med("raw_protect_cpu_s")
    raw_bytes = 4 * spec.size
    modes = []
    for mode in TRAINING_MODES:
        protect_s, protect_cpu = med(f"{mode}_protect_s"), med(f"{mode}_protect_cpu_s")
        enc = {"raw": 0, "he-full": spec.size, "he-subset": protector.subset.size}[mode]
        enc_t = {"raw": 0, "he-full": len(spec.tensors), "he-subset": len(protector.subset.tensors)}[mode]
        modes.append(
            TrainingModeResult(
                mode=mode,
                params=spec.size,
                tensors=len(spec.tensors),
                encrypted_params=enc,
                encrypted_tensors=enc_t,
                bytes_sent=sizes[mode],
                bytes_ratio=sizes[mode] / raw_bytes,
                train_s=train_s,
                train_cpu_s=train_cpu,
                protect_s=protect_s,
                protect_cpu_s=protect_cpu,
                round_s=train_s + protect_s,
                round_cpu_s=train_cpu + protect_cpu,
                overhead_pct=100.0 * (train_s + protect_s - raw_round) / raw_round,
                overhead_cpu_pct=100.0 * (train_cpu + protect_cpu - raw_round_cpu) / raw_round_cpu,
                max_abs_err=errors[mode],
            )
        )
    machine = _machine(device)
    if load_start:
        machine["loadavg_start"] = load_start
    return TrainingResult(
        device=device,
        device_name=machine.get("gpu", machine["cpu"]),
        machine=machine,
        volume=volume,
        steps=config.steps,
        batch=config.batch,
        repeats=config.repeats,
        init_filters=config.init_filters,
        params=spec.size,
        tensors=len(spec.tensors),
        raw_bytes=raw_bytes,
        he_params=protector.secret.params.describe(),
        site_weight=SITE_WEIGHT,
        subset=list(protector.subset.names),
        subset_params=protector.subset.size,
        subset_fraction=protector.subset.size / spec.size,
        loss_first=losses[0],
        loss_last=losses[-1],
        modes=modes,
        runs=runs,
    )


# ------------------------------------------------------------------------------------------ report ----
_MB = 1024 * 1024


def _s(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def markdown_table(result: TrainingResult) -> str:
    head = (
        "| mode | encrypted params | sent MiB | x raw | train s (cpu) | protect s (cpu) | round s (cpu) "
        "| overhead vs raw (cpu) | max abs err |"
    )
    rows = [head, "|" + "---|" * 9]
    for m in result.modes:
        share = f"{m.encrypted_params:,} ({100 * m.encrypted_params / m.params:.1f} %)"
        rows.append(
            f"| {m.mode} | {share} | {m.bytes_sent / _MB:.1f} | {m.bytes_ratio:.2f} "
            f"| {_s(m.train_s)} ({_s(m.train_cpu_s)}) | {_s(m.protect_s)} ({_s(m.protect_cpu_s)}) "
            f"| {_s(m.round_s)} ({_s(m.round_cpu_s)}) "
            f"| {m.overhead_pct:+.1f} % ({m.overhead_cpu_pct:+.1f} %) | {m.max_abs_err:.1e} |"
        )
    return "\n".join(rows) + "\n"


def describe(result: TrainingResult) -> str:
    """One paragraph naming what ran where (for results.md and the CLI)."""
    return (
        f"SegResNet-shaped model (init_filters={result.init_filters}): {result.params:,} parameters in "
        f"{result.tensors} tensors; device {result.device} ({result.device_name}, torch "
        f"{result.machine['torch']}, {result.machine['torch_threads']} threads); input "
        f"({result.batch}, 4, {result.volume}, {result.volume}, {result.volume}), {result.steps} Adam "
        f"step{'s' if result.steps > 1 else ''} per round, soft Dice loss ({result.loss_first:.4f} "
        f"after the warm-up round, {result.loss_last:.4f} after the last); median of {result.repeats} "
        f"rounds after one warm-up. "
        f"HE: {result.he_params}, update pre-weighted by {result.site_weight:g}. he-subset encrypts "
        f"{len(result.subset)} tensors ({', '.join(result.subset)}): {result.subset_params:,} parameters, "
        f"{100 * result.subset_fraction:.1f} %; the rest goes in clear.\n"
    )


def chart(result: TrainingResult, path: os.PathLike[str] | str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m.mode for m in result.modes]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (train_key, protect_key, overhead_key, label) in zip(
        axes[:2],
        [
            ("train_s", "protect_s", "overhead_pct", "round wall s"),
            ("train_cpu_s", "protect_cpu_s", "overhead_cpu_pct", "round CPU s"),
        ],
        strict=True,
    ):
        train = [getattr(m, train_key) for m in result.modes]
        protect = [getattr(m, protect_key) for m in result.modes]
        ax.bar(names, train, label="train")
        ax.bar(names, protect, bottom=train, label="protect")
        for i, m in enumerate(result.modes):
            ax.text(i, train[i] + protect[i], f"{getattr(m, overhead_key):+.1f} %", ha="center", va="bottom")
        ax.set_title(f"{label} (train + protect), overhead vs raw", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.15)
        ax.legend(fontsize=7, loc="lower right")
    sent = [m.bytes_sent / _MB for m in result.modes]
    axes[2].bar(names, sent, color="tab:green")
    for i, v in enumerate(sent):
        axes[2].text(i, v, f"{v:.0f}", ha="center", va="bottom")
    axes[2].set_title("MiB sent per site per round", fontsize=9)
    axes[2].grid(axis="y", alpha=0.3)
    axes[2].margins(y=0.15)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def title_of(result: TrainingResult) -> str:
    return (
        f"secagg bench --training: SegResNet-shaped ({result.params / 1e6:.2f}M params), "
        f"{result.device}, V={result.volume}, {result.steps} steps, median of {result.repeats}"
    )


def write_outputs(result: TrainingResult, out: os.PathLike[str] | str) -> tuple[str, str, str]:
    import json
    from pathlib import Path

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    js, md, png = folder / "results.json", folder / "results.md", folder / "results.png"
    js.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    title = title_of(result)
    md.write_text(f"# {title}\n\n{describe(result)}\n{markdown_table(result)}")
    chart(result, png, title)
    return str(js), str(md), str(png)
