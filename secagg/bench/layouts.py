"""Tensor layouts to benchmark: one flat tensor, or the real tensor shapes of MONAI's SegResNet.

Layout matters because NVFlare encrypts each tensor as its own CKKS vector (padding every tensor to
whole ciphertexts and attaching a serialised context to each), while secagg encrypts one flat slot
stream. A flat layout hides that difference; SegResNet's 83 tensors, many of them tiny (GroupNorm
weights of 16..128 values), show it.

The SegResNet shapes follow ``monai.networks.nets.SegResNet`` (Project-MONAI/MONAI,
``monai/networks/nets/segresnet.py`` and ``monai/networks/blocks/segresnet_block.py``) as configured
in MONAI's BraTS tutorial: 3-D, ``init_filters=16``, ``in_channels=4``, ``out_channels=3``,
``blocks_down=(1, 2, 2, 4)``, ``blocks_up=(1, 1, 1)``, GroupNorm, non-trainable upsampling. That is
4,702,227 parameters in 83 tensors, written out here so the benchmark does not depend on MONAI.
"""

from __future__ import annotations

from secagg.bundle import BundleSpec, TensorSpec
from secagg.errors import ConfigError

LAYOUTS = ("flat", "segresnet")

Shape = tuple[int, ...]


def _conv(cin: int, cout: int, k: int = 3) -> Shape:
    return (cout, cin, k, k, k)


def _resblock(prefix: str, c: int) -> list[tuple[str, Shape]]:
    """MONAI ResBlock: GroupNorm(c) -> ReLU -> conv3x3x3 (no bias), twice, plus identity."""
    return [
        (f"{prefix}.norm1.weight", (c,)),
        (f"{prefix}.norm1.bias", (c,)),
        (f"{prefix}.norm2.weight", (c,)),
        (f"{prefix}.norm2.bias", (c,)),
        (f"{prefix}.conv1.conv.weight", _conv(c, c)),
        (f"{prefix}.conv2.conv.weight", _conv(c, c)),
    ]


def segresnet_shapes(
    init_filters: int = 16,
    in_channels: int = 4,
    out_channels: int = 3,
    blocks_down: tuple[int, ...] = (1, 2, 2, 4),
    blocks_up: tuple[int, ...] = (1, 1, 1),
) -> list[tuple[str, Shape]]:
    """State-dict names and shapes of SegResNet, in MONAI's parameter order."""
    f = init_filters
    out: list[tuple[str, Shape]] = [("convInit.conv.weight", _conv(in_channels, f))]
    for i, n_blocks in enumerate(blocks_down):
        c = f * 2**i
        if i > 0:
            out.append((f"down_layers.{i}.0.conv.weight", _conv(c // 2, c)))
        first = 1  # index 0 of the Sequential is the pre-conv (or Identity, which has no parameters)
        for j in range(n_blocks):
            out += _resblock(f"down_layers.{i}.{first + j}", c)
    n_up = len(blocks_up)
    for i in range(n_up):
        c = f * 2 ** (n_up - i)
        for j in range(blocks_up[i]):
            out += _resblock(f"up_layers.{i}.{j}", c // 2)
        out.append((f"up_samples.{i}.0.conv.weight", _conv(c, c // 2, k=1)))
    out += [
        ("conv_final.0.weight", (f,)),
        ("conv_final.0.bias", (f,)),
        ("conv_final.2.conv.weight", _conv(f, out_channels, k=1)),
        ("conv_final.2.conv.bias", (out_channels,)),
    ]
    return out


def layout_spec(layout: str, params: int) -> BundleSpec:
    """The bundle to benchmark; ``params`` sizes the flat layout only (SegResNet's size is fixed)."""
    if layout == "flat":
        if isinstance(params, bool) or not isinstance(params, int) or params < 1:
            raise ConfigError(f"--params must be a positive integer, got {params!r}")
        return BundleSpec((TensorSpec("flat", (params,)),))
    if layout == "segresnet":
        return BundleSpec(tuple(TensorSpec(n, s) for n, s in segresnet_shapes()))
    raise ConfigError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
