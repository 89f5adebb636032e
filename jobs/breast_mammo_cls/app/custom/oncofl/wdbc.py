"""Breast Cancer Wisconsin (Diagnostic) split across three sites: real data, non-IID label ratios, held-out test set.

The 569 cases (212 malignant) ship with scikit-learn. A stratified 20 % is held out; the rest is dealt to three
sites with different malignant shares (about 60 %, 34 % and 21 %), each split 80/20 into training and validation.
Each case is a one-row CSV of the 30 features (the datalist's ``image``); its ``label`` is 1 = malignant, 0 = benign.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SITES = ("site-1", "site-2", "site-3")
MALIGNANT_SHARE = (0.5, 0.3, 0.2)  # of the pooled malignant cases, per site
BENIGN_SHARE = (0.2, 0.35, 0.45)


def load() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features [569, 30], labels (1 = malignant) and feature names, from scikit-learn's bundled copy."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return data.data.astype(np.float64), (data.target == 0).astype(np.int64), list(data.feature_names)


def split(seed: int, holdout_fraction: float = 0.2) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Indices of the held-out set and of each site's cases (stratified, seeded)."""
    _, y, _ = load()
    rng = np.random.default_rng(seed)
    holdout, sites = [], {s: [] for s in SITES}
    for label, shares in ((1, MALIGNANT_SHARE), (0, BENIGN_SHARE)):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_hold = round(len(idx) * holdout_fraction)
        holdout += list(idx[:n_hold])
        rest = idx[n_hold:]
        bounds = np.round(np.cumsum((0,) + shares) * len(rest)).astype(int)
        for site, lo, hi in zip(SITES, bounds[:-1], bounds[1:]):
            sites[site] += list(rest[lo:hi])
    return np.array(sorted(holdout)), {s: rng.permutation(v) for s, v in sites.items()}


def _write_cases(folder: Path, indices: np.ndarray, x: np.ndarray, y: np.ndarray, names: list[str]) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in indices:
        path = folder / f"case_{i:04d}.csv"
        path.write_text(",".join(names) + "\n" + ",".join(repr(float(v)) for v in x[i]) + "\n")
        entries.append({"image": f"cases/{path.name}", "label": int(y[i])})
    return entries


def generate(out_dir: str | Path, *, seed: int = 0, val_fraction: float = 0.2) -> Path:
    """Write ``site-N/`` (cases + datalist), ``holdout/`` and ``site_configs/`` under ``out_dir``."""
    out_dir = Path(out_dir).resolve()
    x, y, names = load()
    holdout, sites = split(seed)
    configs = out_dir / "site_configs"
    configs.mkdir(parents=True, exist_ok=True)
    for site, indices in sites.items():
        entries = _write_cases(out_dir / site / "cases", indices, x, y, names)
        n_val = round(len(entries) * val_fraction)
        datalist = {"training": entries[n_val:], "validation": entries[:n_val]}
        (out_dir / site / "datalist.json").write_text(json.dumps(datalist, indent=1) + "\n")
        config = {"site_name": site, "data_root": f"../{site}", "cache_dir": f"../cache/{site}", "num_workers": 2}
        (configs / f"{site}.json").write_text(json.dumps(config, indent=2) + "\n")
    entries = _write_cases(out_dir / "holdout" / "cases", holdout, x, y, names)
    (out_dir / "holdout" / "datalist.json").write_text(json.dumps({"testing": entries}, indent=1) + "\n")
    return out_dir
