"""Scripts under experiments/ that compute the figures of the docs, on inputs whose answer is known."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
from conftest import REPO

from btsbot_jax.constants import METADATA_COLUMNS


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _split(path, split: str, rng, n_sources: int, flip: bool = False) -> None:
    """Sources of 5 alerts each; label 1 iff the source's peakmag_so_far is <= 18.5 (inverted with `flip`)."""
    rows = []
    for s in range(n_sources):
        peak = rng.uniform(17.0, 20.0)
        label = int((peak <= 18.5) != flip)
        for i in range(5):
            r = {c: rng.normal() for c in METADATA_COLUMNS}
            r.update(objectId=f"{split}{s}", label=label, peakmag_so_far=peak, jd=2459000.0 + i)
            rows.append(r)
    pd.DataFrame(rows).to_csv(path / f"{split}_cand_v10_N100.csv", index=False)
    np.save(path / f"{split}_triplets_v10_N100.npy", np.zeros((len(rows), 63, 63, 3), np.float32))


def test_metadata_gbt_finds_the_threshold_and_counts_sources(tmp_path):
    """The trees recover a label that is a threshold on one feature (AUC 1), and score the inverse rule 0."""
    gbt = _load("metadata_gbt")
    rng = np.random.default_rng(0)
    _split(tmp_path, "train", rng, 60)
    _split(tmp_path, "val", rng, 12)
    _split(tmp_path, "test", rng, 10, flip=True)
    out = gbt.run(str(tmp_path))
    assert out["train_sources"] == 60 and out["val_sources"] == 12 and out["test_sources"] == 10
    assert out["val_alerts"] == 60 and out["test_alerts"] == 50
    assert out["val_auc"] == 1.0 and out["test_auc"] == 0.0
