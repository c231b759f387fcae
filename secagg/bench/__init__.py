"""``secagg bench``: measured overhead of each protection mode, side by side with NVIDIA FLARE's HE.

Every mode runs the library's own code on a synthetic round (:mod:`.workload`) in the layout asked
for (:mod:`.layouts`); the aggregator step runs in a process of its own so its peak RSS is its own.
See BENCHMARKS.md for the latest numbers and the command that produced them.
"""

from secagg.bench.layouts import LAYOUTS, layout_spec, segresnet_shapes
from secagg.bench.runner import ALL_MODES, MODES, BenchConfig, ModeResult, measure_mode, run_bench
from secagg.bench.workload import Workload

__all__ = [
    "ALL_MODES",
    "LAYOUTS",
    "MODES",
    "BenchConfig",
    "ModeResult",
    "Workload",
    "layout_spec",
    "measure_mode",
    "run_bench",
    "segresnet_shapes",
]
