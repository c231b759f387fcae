"""How many entries a job's update has, read from its model file's header without loading the weights.

SVT's privacy cost grows with the number of entries it releases, so admission needs the model's size
before anything runs. The update has the model's tensors (model minus global model), so the header of
the package's safetensors model is the count; safetensors checks the header against the file size.
"""

from __future__ import annotations

import math
from pathlib import Path

from safetensors import safe_open

from secagg.errors import ConfigError


def count_parameters(path: Path | str) -> int:
    """Entries over every tensor in the safetensors file ``path`` (a zero-dimensional tensor is one).

    Raises ``ConfigError`` when the file is missing or not safetensors: then the size, and with it an
    SVT job's worst-case spend, is unknown, and a budget cannot be checked.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            names: list[str] = f.keys()  # a safetensors handle is not iterable
            return sum(math.prod(f.get_slice(name).get_shape()) for name in names)
    except Exception as exc:  # safetensors raises its own (Rust) error types; OSError for a missing file
        raise ConfigError(f"{path.name}: cannot count the model's parameters ({exc})") from None
