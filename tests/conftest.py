"""Shared fixtures. Real data lives in ../shared/data beside the checkout; tests that need it skip with the
reason where it is absent, so the project still passes on a machine without it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BTSBOT_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"
V101_SAVED_MODEL = DATA / "btsbot_v1.0.1" / "best_model"
EXAMPLES = DATA / "btsbot_examples"
ZTF_ALERTS = DATA / "ztf_alerts"
ZTF_ALERTS_FINK = DATA / "ztf_alerts_fink"


def require(path: Path) -> Path:
    """Skip the calling test, with the reason, when a piece of ../shared/data is not on this machine."""
    if not path.exists():
        pytest.skip(f"{path} is absent (real data from ../shared/data is not on this machine)")
    return path


@pytest.fixture(scope="session")
def v101_checkpoint(tmp_path_factory) -> Path:
    """The published v1.0.1 weights imported into a btsbot-jax model directory (once per session)."""
    require(V101_SAVED_MODEL)
    from btsbot_jax.inference.import_keras import import_keras

    return import_keras(V101_SAVED_MODEL, tmp_path_factory.mktemp("v101") / "model")


@pytest.fixture(scope="session")
def tf_v101():
    """The original TF SavedModel's serving function: f(triplets, metadata) -> scores (N,)."""
    require(V101_SAVED_MODEL)
    import tensorflow as tf

    fn = tf.saved_model.load(str(V101_SAVED_MODEL)).signatures["serving_default"]

    def score(triplets, metadata):
        out = fn(triplet=tf.constant(np.asarray(triplets, np.float32)),
                 metadata=tf.constant(np.asarray(metadata, np.float32)))
        return out["fc_out"].numpy()[:, 0]

    return score


@pytest.fixture(scope="session")
def usage_examples():
    """The 39 labelled real alerts: (table, triplets float32, metadata float32)."""
    require(EXAMPLES)
    import pandas as pd

    from btsbot_jax.data.training_set import metadata_matrix

    table = pd.read_csv(EXAMPLES / "usage_candidates.csv")
    triplets = np.load(EXAMPLES / "usage_triplets.npy").astype(np.float32)
    return table, triplets, metadata_matrix(table)
