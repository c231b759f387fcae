"""`secagg bench --training`: the SegResNet-shaped model is the layout's, and a tiny run reports every field.

No timing assertions: speed goals live in BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from secagg.bench import layout_spec, segresnet_shapes
from secagg.bench.training import (
    DEFAULT_VOLUME,
    TRAINING_MODES,
    SegResNetLike,
    TrainingConfig,
    TrainingModeResult,
    TrainingResult,
    subset_names,
)
from secagg.errors import ConfigError


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def test_model_state_dict_is_exactly_the_segresnet_layout() -> None:
    model = SegResNetLike()
    layout = segresnet_shapes()
    assert _shapes(model) == dict(layout)
    assert len(model.state_dict()) == len(layout) == 83
    assert sum(p.numel() for p in model.parameters()) == 4_702_227
    # no buffers: everything in the state dict is trained (and therefore in the update)
    assert set(model.state_dict()) == {n for n, _ in model.named_parameters()}
    # torch lists all up_layers before all up_samples (as MONAI does); otherwise the layout's order
    order = [n for n, _ in layout]
    up = [n for n in model.state_dict() if n.startswith("up_")]
    assert [n for n in model.state_dict() if not n.startswith("up_")] == [
        n for n in order if not n.startswith("up_")
    ]
    assert up == sorted(up, key=lambda n: (not n.startswith("up_layers"), order.index(n)))


def test_scaled_model_matches_scaled_layout_and_segments() -> None:
    model = SegResNetLike(init_filters=4)
    assert _shapes(model) == dict(segresnet_shapes(init_filters=4))
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 4, 16, 16, 16))
    assert out.shape == (2, 3, 16, 16, 16)


def test_subset_is_the_largest_tensors_to_ten_percent() -> None:
    spec = layout_spec("segresnet", 1)
    names = subset_names(spec)
    assert names == ("down_layers.3.1.conv1.conv.weight", "down_layers.3.1.conv2.conv.weight")
    size = sum(int(np.prod(dict(segresnet_shapes())[n])) for n in names)
    assert size == 884_736 and 0.10 <= size / spec.size <= 0.20


def test_device_auto_picks_cuda_when_torch_sees_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert TrainingConfig().resolve_device() == "cuda"
    assert DEFAULT_VOLUME["cuda"] > DEFAULT_VOLUME["cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert TrainingConfig().resolve_device() == "cpu"
    with pytest.raises(ConfigError, match="no CUDA"):
        TrainingConfig(device="cuda").resolve_device()


def _cli(argv: list[str]) -> tuple[int, str, str]:
    from secagg.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
    return code, stdout.getvalue(), stderr.getvalue()


TINY = ["bench", "--training", "--volume", "8", "--steps", "1", "--repeats", "1", "--init-filters", "4"]


def test_tiny_training_run_writes_every_field(tmp_path: Path) -> None:
    out = tmp_path / "o"
    code, stdout, stderr = _cli([*TINY, "--device", "cpu", "--out", str(out)])
    assert code == 0, stderr
    assert "| he-subset |" in stdout  # the table is printed
    result = json.loads((out / "results.json").read_text())
    assert set(result) == {f.name for f in fields(TrainingResult)}
    assert (result["device"], result["volume"], result["steps"], result["repeats"]) == ("cpu", 8, 1, 1)
    assert result["init_filters"] == 4 and result["tensors"] == 83
    assert result["params"] == sum(int(np.prod(s)) for _, s in segresnet_shapes(init_filters=4))
    assert result["raw_bytes"] == 4 * result["params"]
    assert result["machine"]["torch"] == torch.__version__
    assert 0.10 <= result["subset_fraction"] <= 0.20 and result["subset"]
    assert len(result["runs"]) == 1
    by_mode = {m["mode"]: m for m in result["modes"]}
    assert list(by_mode) == list(TRAINING_MODES)
    for mode, m in by_mode.items():
        assert set(m) == {f.name for f in fields(TrainingModeResult)}, mode
        assert m["train_s"] > 0 and m["protect_s"] > 0 and m["train_cpu_s"] > 0, mode
        assert m["round_s"] == pytest.approx(m["train_s"] + m["protect_s"])
        assert m["round_cpu_s"] == pytest.approx(m["train_cpu_s"] + m["protect_cpu_s"])
        assert m["bytes_ratio"] == pytest.approx(m["bytes_sent"] / result["raw_bytes"])
        assert m["max_abs_err"] < 1e-6, mode  # what was sent decodes to the weighted update
    raw, full, sub = by_mode["raw"], by_mode["he-full"], by_mode["he-subset"]
    assert raw["overhead_pct"] == 0 and raw["encrypted_params"] == 0
    assert full["encrypted_params"] == result["params"] and full["encrypted_tensors"] == 83
    assert sub["encrypted_params"] == result["subset_params"]
    assert raw["bytes_ratio"] < 1.05 < sub["bytes_sent"] / raw["bytes_sent"]
    assert sub["bytes_sent"] < full["bytes_sent"]
    assert "he-subset" in (out / "results.md").read_text()
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        ([*TINY, "--volume", "12"], 2, "multiple of 8"),
        ([*TINY, "--steps", "0"], 2, "positive integer"),
        ([*TINY, "--device", "gpu"], 2, "invalid choice"),
        (["bench", "--volume", "32"], 2, "--volume: only used with --training"),
        ([*TINY, "--layout", "segresnet"], 2, "--layout: not used with --training"),
        ([*TINY, "--compare", "nvflare"], 2, "--compare: not used with --training"),
    ],
)
def test_bad_training_arguments_are_refused(argv: list[str], code: int, words: str, tmp_path: Path) -> None:
    out = tmp_path / "o"
    got, _stdout, stderr = _cli([*argv, "--out", str(out)])
    assert got == code and words in stderr
    assert "Traceback" not in stderr
    assert not out.exists()


def test_cuda_asked_without_cuda_exits_1(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "o"
    code, _stdout, stderr = _cli([*TINY, "--device", "cuda", "--out", str(out)])
    assert code == 1 and "no CUDA" in stderr.strip().splitlines()[-1]
    assert not out.exists()
