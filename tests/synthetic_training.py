"""Tiny synthetic data sets in the training-set format for the training tests (learnable, deterministic).

Label-1 alerts carry a bright PSF-like blob in the difference image and brighter magpsf; label-0 alerts a
weaker, offset blob. Enough signal that a few epochs separate the classes; small enough for second-long tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from btsbot_jax.constants import METADATA_COLUMNS

SETS = ("trues", "vars", "dims", "rejects")


def alert_table(num_sources: int, seed: int = 0, max_alerts: int = 12) -> tuple[pd.DataFrame, np.ndarray]:
    """Per-alert table (with source_set, the cut columns, the 25 features) and triplets, before `prepare`."""
    rng = np.random.default_rng(seed)
    rows, trips = [], []
    yy, xx = np.mgrid[:63, :63]
    for s in range(num_sources):
        sset = SETS[s % 4]
        label = int(sset == "trues")
        n = int(rng.integers(2, max_alerts + 1))
        for j in range(n):
            row = {c: float(rng.normal()) for c in METADATA_COLUMNS}
            row.update(
                objectId=f"ZTF{seed:02d}{s:05d}", candid=int(seed * 10**9 + s * 100 + j), jd=2459000.5 + 2.0 * j
                + rng.random(), isdiffpos=str(rng.choice(["t", "f"], p=[0.95, 0.05])),
                fid=int(rng.choice([1, 2, 3], p=[0.48, 0.48, 0.04])),
                sgscore1=float(rng.choice([0.1, -999.0], p=[0.95, 0.05])), sgscore2=float(rng.uniform(0, 1)),
                magpsf=float(rng.uniform(16.5, 18.4) if label or sset == "vars" else rng.uniform(18.6, 20.5)),
                source_set=sset, label=label,
            )
            row["new_drb"] = row.pop("drb")
            rows.append(row)
            amp = 1.0 if label else 0.3
            cx, cy = (31, 31) if label else (31 + int(rng.integers(-10, 10)), 31 + int(rng.integers(-10, 10)))
            blob = amp * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 8.0)
            t = rng.normal(0, 0.05, (63, 63, 3)).astype(np.float32)
            t[..., 0] += blob
            t[..., 2] += blob
            t /= np.linalg.norm(t, axis=(0, 1), keepdims=True)
            trips.append(t)
    return pd.DataFrame(rows), np.stack(trips).astype(np.float32)


def write_split(out: Path, split: str, n: int, seed: int, version: str = "v0", n_max: int = 100) -> None:
    """One split of n alerts, balanced 1:3 positives, written directly in the published format."""
    table, trips = alert_table(max(4, n // 3), seed=seed)
    table, trips = table.iloc[:n].reset_index(drop=True), trips[:n]
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"{split}_cand_{version}_N{n_max}.csv", index=False)
    np.save(out / f"{split}_triplets_{version}_N{n_max}.npy", trips)


def training_dir(out: Path, n_train: int = 256, n_val: int = 96, n_test: int = 96) -> Path:
    for i, (split, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        write_split(out, split, n, seed=i + 1)
    return out
