"""The demo's data: scikit-learn's Wisconsin breast-cancer set (569 patients), split non-IID."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split


@dataclass(frozen=True)
class SiteData:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def skewed_split(n_sites: int, seed: int = 7, alpha: float = 1.0) -> list[SiteData]:
    """Label-skewed split: each class is spread over sites by a Dirichlet(alpha) draw, so sites
    differ in size and in their share of malignant cases, as hospitals do."""
    data = load_breast_cancer()
    x = data.data.astype(np.float64)
    x = (x - x.mean(axis=0)) / x.std(axis=0)  # consortium-agreed feature scaling
    y = (data.target == 0).astype(np.float32)  # 1 = malignant
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(n_sites)]
    for label in (0.0, 1.0):
        idx = rng.permutation(np.flatnonzero(y == label))
        shares = rng.dirichlet([alpha] * n_sites)
        shares = 0.15 / n_sites + 0.85 * shares  # every site keeps some of each class
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for i, chunk in enumerate(np.split(idx, cuts)):
            parts[i].extend(chunk.tolist())
    out = []
    for i, idx_list in enumerate(parts):
        idx = np.array(sorted(idx_list))
        xt, xv, yt, yv = train_test_split(x[idx], y[idx], test_size=0.25, random_state=seed, stratify=y[idx])
        out.append(SiteData(f"site-{i + 1}", xt.astype(np.float32), yt, xv.astype(np.float32), yv))
    return out


def write_site(site: SiteData, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "train.npz", x=site.x_train, y=site.y_train)
    np.savez(folder / "val.npz", x=site.x_val, y=site.y_val)
