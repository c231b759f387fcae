"""The cross-site metrics matrix: rows are models (the final global model, then each site's last local
model), columns are the evaluating sites; each cell is what that site measured of that model on its
own held-out data. Written by the aggregator to the job's output as ``cross_site.json`` and a heat map
``cross_site.png`` of one metric (see :meth:`Matrix.plotted_metric`), and returned by ``admin
download``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secagg.crossval.wire import GLOBAL
from secagg.fsio import atomic_write

JSON_FILE = "cross_site.json"
PNG_FILE = "cross_site.png"
FORMAT = "secagg-cross-site/v1"


@dataclass
class Matrix:
    job: str
    #: evaluating sites, in order (the columns)
    sites: list[str]
    #: ``model -> evaluator -> metric -> value``; model ``global`` or a site's name
    cells: dict[str, dict[str, dict[str, float]]]
    #: whether local models travelled at all (every site consented)
    shared: bool
    #: sites that did not share their local model, with the reason code
    not_shared: dict[str, str] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return [GLOBAL] + [s for s in self.sites if s in self.cells and s != GLOBAL]

    def plotted_metric(self) -> str | None:
        """The metric reported in the most cells; of those, the first the script reports (its own
        order, so a script that sends ``{"val_auc": ..., "n_val": ...}`` gets AUC drawn); None
        without any."""
        counts = Counter(m for row in self.cells.values() for cell in row.values() for m in cell)
        if not counts:
            return None
        return sorted(counts.items(), key=lambda kv: -kv[1])[0][0]  # a stable sort keeps that order

    def table(self, metric: str) -> dict[str, dict[str, float]]:
        """``model -> evaluator -> value`` of one metric (NaN where a cell lacks it)."""
        return {
            model: {s: float(self.cells.get(model, {}).get(s, {}).get(metric, math.nan)) for s in self.sites}
            for model in self.models
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "job": self.job,
            "sites": self.sites,
            "models": self.models,
            "shared": self.shared,
            "not_shared": dict(sorted(self.not_shared.items())),
            "plotted_metric": self.plotted_metric(),
            "matrix": {m: self.cells.get(m, {}) for m in self.models},
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Matrix:
        if doc.get("format") != FORMAT:
            raise ValueError("not a secagg cross-site matrix")
        return cls(
            str(doc["job"]),
            list(doc["sites"]),
            {str(k): dict(v) for k, v in doc["matrix"].items()},
            bool(doc["shared"]),
            dict(doc.get("not_shared") or {}),
        )

    def write(self, folder: Path) -> list[Path]:
        """``cross_site.json`` and (where any cell has a number) ``cross_site.png`` in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        out = [folder / JSON_FILE]
        atomic_write(out[0], json.dumps(self.to_dict(), indent=2, sort_keys=True).encode())
        metric = self.plotted_metric()
        if metric is not None:
            heat_map(self, metric, folder / PNG_FILE)
            out.append(folder / PNG_FILE)
        return out


def read(folder: Path) -> Matrix | None:
    path = folder / JSON_FILE
    return Matrix.from_dict(json.loads(path.read_text())) if path.is_file() else None


def heat_map(matrix: Matrix, metric: str, path: Path) -> None:
    """One metric of the matrix as an annotated heat map (missing cells blank)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    table = matrix.table(metric)
    rows = matrix.models
    data = np.array([[table[r][s] for s in matrix.sites] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 * len(matrix.sites) + 3, 0.6 * len(rows) + 2), dpi=120)
    im = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(matrix.sites)), matrix.sites)
    ax.set_yticks(range(len(rows)), [f"{r} (local)" if r != GLOBAL else "global" for r in rows])
    ax.set_xlabel("evaluated at (held-out data of)")
    ax.set_ylabel("model")
    for i in range(len(rows)):
        for j in range(len(matrix.sites)):
            if math.isfinite(data[i, j]):
                light = float(np.asarray(im.norm(data[i, j]))) > 0.6  # dark text on viridis' light end
                shade = "k" if light else "w"
                ax.text(j, i, f"{data[i, j]:.3g}", ha="center", va="center", color=shade, fontsize=8)
    ax.set_title(f"cross-site {metric}")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)


__all__ = ["FORMAT", "JSON_FILE", "PNG_FILE", "Matrix", "heat_map", "read"]
