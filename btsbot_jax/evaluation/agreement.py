"""How far a model agrees with a reference model on the same alerts: the sim-to-real check.

A model trained only on the simulated survey has never seen a real alert; the real packets we have carry no BTS
labels, but the published v1.0.1 model's decisions on them are the best stand-in. `agreement` compares two score
vectors alert by alert: ROC AUC of the model's scores against the reference's decisions (score > threshold),
the fraction of identical decisions, and Spearman's rank correlation. `sim_to_real` runs both models over packets
with the production ingestion (`btsbot_jax.serve.batch.score_paths`) and, when given, over labelled alerts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np


def agreement(scores: np.ndarray, reference: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Alert-level agreement of `scores` with `reference` (same alerts, same order)."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    s = np.asarray(scores, np.float64)
    r = np.asarray(reference, np.float64)
    if s.shape != r.shape or s.ndim != 1:
        raise ValueError(f"scores {s.shape} and reference {r.shape} must be two vectors of one length")
    ref_pos = r > threshold
    both = np.unique(ref_pos).size == 2
    return {
        "alerts": int(s.size),
        "reference_positive": int(ref_pos.sum()),
        "model_positive": int((s > threshold).sum()),
        "auc_vs_reference_decisions": float(roc_auc_score(ref_pos, s)) if both else math.nan,
        "decision_agreement": float(np.mean((s > threshold) == ref_pos)) if s.size else math.nan,
        "spearman": float(spearmanr(s, r).statistic) if s.size > 1 else math.nan,
        "max_abs_diff": float(np.max(np.abs(s - r))) if s.size else math.nan,
        "threshold": threshold,
    }


def labelled_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """ROC AUC and accuracy of `scores` against true labels (the 39 labelled real alerts, for instance)."""
    from sklearn.metrics import roc_auc_score

    s, y = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    return {"alerts": int(s.size), "positives": int(y.sum()),
            "auc": float(roc_auc_score(y, s)) if np.unique(y).size == 2 else math.nan,
            "accuracy": float(np.mean((s > threshold) == y)) if s.size else math.nan}


def sim_to_real(model, reference, packets: Sequence[str | os.PathLike], *, labelled=None,
                threshold: float = 0.5, subsets: Mapping[str, Collection[int]] | None = None) -> dict[str, Any]:
    """Score `packets` with both scorers and compare; `labelled` = (triplets, metadata, labels) adds a labelled view.
    `subsets` = {name: candids} adds the same comparison on those alerts only (`packets_by_subset`).

    `model` and `reference` are scorers (`btsbot_jax.load_scorer(...)`). Alerts either model rejects are counted,
    not compared (both use the same ingestion, so they reject the same ones)."""
    from btsbot_jax.serve.batch import score_paths

    a = score_paths(model, list(packets), progress=False)
    b = score_paths(reference, list(packets), progress=False)
    merged = a.scores[["candid", "score"]].merge(b.scores[["candid", "score"]], on="candid", suffixes=("", "_ref"))
    out: dict[str, Any] = {
        "model_version": getattr(model, "version", None), "reference_version": getattr(reference, "version", None),
        "packets": agreement(merged["score"].to_numpy(), merged["score_ref"].to_numpy(), threshold),
        "records_read": int(a.summary["records_read"]),
        "rejected": int(len(a.rejected)),
    }
    if subsets:
        cand = merged["candid"].to_numpy()
        out["packets_by_subset"] = {}
        for name, candids in subsets.items():
            keep = np.isin(cand, np.fromiter(candids, np.int64, len(candids)))
            out["packets_by_subset"][name] = agreement(merged["score"].to_numpy()[keep],
                                                       merged["score_ref"].to_numpy()[keep], threshold)
    if labelled is not None:
        triplets, metadata, labels = labelled
        out["labelled"] = {"model": labelled_metrics(model(triplets, metadata), labels, threshold),
                           "reference": labelled_metrics(reference(triplets, metadata), labels, threshold)}
    return out
