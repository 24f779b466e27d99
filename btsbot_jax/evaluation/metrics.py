"""The BTS metrics (Rehemtulla et al. 2024): alert level at a score threshold, source level per policy, timeliness.

Alert level uses scikit-learn (accuracy, balanced accuracy, precision/recall/F1, ROC, AUC, confusion matrix); the
confusion matrix is normalised by true class (rows sum to 1: row 1 is the recall of bright transients). The
decision is ``score > threshold`` (strict, default 0.5), the same convention the policies use.

Source level: one row per source with its label, peak (brightest magpsf over its alerts in the split), whether
it is in the evaluation (inclusion rules below), and per policy whether / when / at what magnitude it was selected.
Inclusion (the paper): a source needs >= 2 alerts in the split; label-1 sources whose brightest alert in the split is
fainter than 18.5 are left out; unlabelled sources are left out of completeness/purity but keep their selection
record. Completeness = TP/(TP+FN), purity = TP/(TP+FP) over included sources, overall and per peak-magnitude bin.

Peak-magnitude bins: 0.25 mag from 17.0 to 18.5, left-closed ``[a, a+0.25)`` except the last, ``[18.25, 18.5]``,
which is closed because 18.5 itself is "bright". Sources brighter than 17.0 are NOT folded into the first bin: they
get their own bin ``<17.0`` (so the 17.0-17.25 bin means what it says), and included sources fainter than 18.5
(label 0 only, after the inclusion rule) get ``>18.5``, where completeness is undefined but purity shows how many
faint non-BTS sources a policy lets through. Overall numbers count every included source once.

Timeliness: selection jd minus the human save jd (or trigger jd) over true positives, in days (negative = the
policy selected the source before the humans did); median in days and hours, quantiles and a histogram.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from btsbot_jax.evaluation.policies import BRIGHT_LIMIT, GroupedAlerts, Policy, group_first_true, select

DEFAULT_THRESHOLD = 0.5
MIN_ALERTS = 2
DEFAULT_BIN_EDGES = tuple(17.0 + 0.25 * k for k in range(7))  # 17.00, 17.25, ..., 18.50 (exact in binary)
TIMELINESS_REFERENCES = ("save_jd", "trigger_jd")
OUTCOMES = ("TP", "FP", "FN", "TN")


class MetricsError(ValueError):
    """Inputs that make a metric meaningless (e.g. a source whose alerts disagree on its label)."""


def _f(x: Any) -> float | None:
    """float for JSON: None for NaN/inf/None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


# ---- alert level --------------------------------------------------------------------------------------------------

def alert_metrics(labels: Any, scores: Any, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """All alert-level numbers at ``score > threshold`` over the labelled alerts (NaN label = unlabelled, skipped).

    Numbers that a single-class sample cannot define (AUC, balanced accuracy, precision without positives...) are
    None rather than a misleading 0.
    """
    y = np.asarray(labels, np.float64)
    s = np.asarray(scores, np.float64)
    have = np.isfinite(y)
    y = y[have].astype(np.int64)
    s = s[have]
    pred = (s > threshold).astype(np.int64)
    n_pos = int(y.sum())
    n_neg = int(len(y) - n_pos)
    out: dict[str, Any] = {
        "threshold": float(threshold),
        "decision": f"score > {threshold:g}",
        "n_alerts": int(len(y)),
        "n_unlabelled": int((~have).sum()),
        "n_positive": n_pos,
        "n_negative": n_neg,
        "n_predicted_positive": int(pred.sum()),
    }
    if len(y) == 0:
        out.update(accuracy=None, balanced_accuracy=None, precision=None, recall=None, f1=None, roc_auc=None,
                   confusion_matrix=None, confusion_matrix_normalized=None, roc_curve=None)
        return out
    both = n_pos > 0 and n_neg > 0
    cm = skm.confusion_matrix(y, pred, labels=[0, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        cm_norm = cm / cm.sum(axis=1, keepdims=True)
    out["accuracy"] = _f(skm.accuracy_score(y, pred))
    out["balanced_accuracy"] = _f(skm.balanced_accuracy_score(y, pred)) if both else None
    out["precision"] = _f(skm.precision_score(y, pred, zero_division=np.nan))
    out["recall"] = _f(skm.recall_score(y, pred, zero_division=np.nan))
    out["f1"] = _f(skm.f1_score(y, pred, zero_division=np.nan))
    out["confusion_matrix"] = {"rows": "true class 0, 1", "columns": "predicted class 0, 1",
                               "counts": cm.tolist()}
    out["confusion_matrix_normalized"] = [[_f(v) for v in row] for row in cm_norm]
    if both:
        fpr, tpr, thr = skm.roc_curve(y, s)
        # what roc_auc_score computes (trapezoids over this same curve), without sorting a million scores twice
        out["roc_auc"] = _f(skm.auc(fpr, tpr))
        # roc_curve's first threshold is +inf (the "select nothing" point); JSON has no inf, so it becomes None
        out["roc_curve"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": [_f(t) for t in thr]}
    else:
        out["roc_auc"] = None
        out["roc_curve"] = None
    return out


# Work cap of the source bootstrap: resamples x alerts. A test split of a few thousand alerts gets all 1,000 resamples
# (a second or two); a night of a million alerts gets 200 (the floor), so the report's cost stays bounded.
BOOTSTRAP_MAX_WORK = 2e8
BOOTSTRAP_MIN_RESAMPLES = 200


def _score_ranks(scores: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense rank of each score among the distinct scores (0 = lowest), and the number of distinct scores."""
    uniq, rank = np.unique(scores, return_inverse=True)
    return rank.ravel(), int(uniq.size)


def weighted_auc(labels: np.ndarray, rank: np.ndarray, n_rank: int, weights: np.ndarray) -> float:
    """``roc_auc_score(labels, scores, sample_weight=weights)`` from the scores' dense ranks (`_score_ranks`):
    P(positive > negative) + 0.5 P(tie) over weighted pairs. sklearn sorts the scores on every call; the
    bootstrap calls this hundreds of times on the same scores, so it sorts once and each call is two bincounts
    and a cumulative sum (equal to sklearn to rounding, `tests/test_metrics.py`)."""
    wp = np.bincount(rank, weights=weights * labels, minlength=n_rank)
    wn = np.bincount(rank, weights=weights * (1 - labels), minlength=n_rank)
    below = np.cumsum(wn) - wn  # negative weight strictly below each distinct score
    return float(wp @ (below + 0.5 * wn) / (wp.sum() * wn.sum()))


def _labelled_by_source(labels: Any, scores: Any, sources: Any):
    """The labelled alerts (NaN labels left out, as in `alert_metrics`) as (labels, scores, source code per alert,
    source names, label per source); a source whose alerts disagree on the label is an error."""
    y = np.asarray(labels, np.float64)
    s = np.asarray(scores, np.float64)
    src = np.asarray(sources, dtype=object)
    have = np.isfinite(y)
    y, s, src = y[have].astype(np.int64), s[have], src[have]
    codes, names = pd.factorize(src)
    n_src = len(names)
    lab_lo = np.full(n_src, 2, np.int64)
    lab_hi = np.full(n_src, -1, np.int64)
    np.minimum.at(lab_lo, codes, y)
    np.maximum.at(lab_hi, codes, y)
    if (mixed := np.flatnonzero(lab_lo != lab_hi)).size:
        raise MetricsError(f"the label must be the same for all alerts of a source; {mixed.size} source(s) "
                           f"disagree, e.g. {', '.join(map(str, names[mixed[:5]]))}")
    return y, s, codes, names, lab_lo


def source_bootstrap_auc(labels: Any, scores: Any, sources: Any, *, n_resamples: int = 1000,
                         confidence: float = 0.90, seed: int = 0,
                         max_work: float = BOOTSTRAP_MAX_WORK) -> dict[str, Any]:
    """Percentile interval of the alert-level ROC AUC when the *sources* are resampled (scipy.stats.bootstrap).

    A test split of a few dozen sources holds some with 100+ alerts each, so one near-threshold source can move the
    alert-level AUC by several hundredths; resampling alerts would hide that, because a source's alerts are not
    independent. The bootstrap is stratified (label-1 and label-0 sources resampled separately, so every resample
    defines an AUC) and exact: drawing a source k times is the same as giving its alerts weight k, the AUC's
    ``sample_weight`` (`weighted_auc`). Unlabelled alerts (NaN label) are left out, as in `alert_metrics`.
    """
    from scipy import stats

    y, s, codes, names, lab_lo = _labelled_by_source(labels, scores, sources)
    n_src = len(names)
    pos, neg = np.flatnonzero(lab_lo == 1), np.flatnonzero(lab_lo == 0)
    out: dict[str, Any] = {
        "method": "stratified source bootstrap (scipy.stats.bootstrap, percentile): label-1 and label-0 sources "
                  "resampled separately with replacement; each resample's alert-level ROC AUC",
        "confidence": float(confidence), "seed": int(seed),
        "n_sources_label_1": int(pos.size), "n_sources_label_0": int(neg.size), "n_alerts": int(y.size),
    }
    if pos.size < 2 or neg.size < 2:
        return {**out, "n_resamples": 0, "interval": None, "standard_error": None,
                "reason": "needs >= 2 labelled sources of each class"}
    n = int(min(n_resamples, max(BOOTSTRAP_MIN_RESAMPLES, max_work // max(1, y.size))))

    rank, n_rank = _score_ranks(s)  # sorted once; each resample is then O(alerts)

    def auc(pos_draw: np.ndarray, neg_draw: np.ndarray) -> float:
        k = np.bincount(pos_draw, minlength=n_src) + np.bincount(neg_draw, minlength=n_src)
        return weighted_auc(y, rank, n_rank, k[codes].astype(np.float64))

    res = stats.bootstrap((pos, neg), auc, n_resamples=n, confidence_level=confidence, method="percentile",
                          vectorized=False, paired=False, rng=np.random.default_rng(seed))
    ci = res.confidence_interval
    return {**out, "n_resamples": n, "interval": [_f(ci.low), _f(ci.high)],
            "standard_error": _f(res.standard_error)}


def source_influence_auc(labels: Any, scores: Any, sources: Any) -> pd.DataFrame:
    """For every source, the alert-level ROC AUC of the split without it, exactly (one sort for all sources).

    Which sources decide a small test split's AUC, and by how much: the bootstrap interval says how far the AUC can
    move; this says which source moves it. With U the count of (positive, negative) alert pairs ranked right (ties
    0.5), each positive alert's share of U is the negative weight below its score plus half the tied one, each
    negative alert's the positive weight above plus half the tied one; leaving out a source subtracts its alerts'
    shares from U and its alerts from the pair count. Equal to ``roc_auc_score`` on the split without the source
    (`tests/test_metrics.py`). Columns: objectId, label, n_alerts, mean_score, roc_auc_without (NaN where the
    source is the last of its class), auc_change (roc_auc_without - the split's AUC: positive = the source costs
    the split that much). Unlabelled alerts (NaN label) are left out, as in `alert_metrics`."""
    y, s, codes, names, lab_lo = _labelled_by_source(labels, scores, sources)
    n_src = len(names)
    rank, n_rank = _score_ranks(s)
    wp = np.bincount(rank, weights=y.astype(np.float64), minlength=n_rank)
    wn = np.bincount(rank, weights=(1 - y).astype(np.float64), minlength=n_rank)
    n_below = np.cumsum(wn) - wn  # negatives strictly below each distinct score
    p_above = wp.sum() - np.cumsum(wp)  # positives strictly above
    share = np.where(y == 1, n_below[rank] + 0.5 * wn[rank], p_above[rank] + 0.5 * wp[rank])
    n_pos, n_neg = float(wp.sum()), float(wn.sum())
    u = float(share[y == 1].sum())
    per_share = np.bincount(codes, weights=share, minlength=n_src)
    per_n = np.bincount(codes, minlength=n_src).astype(np.float64)
    per_score = np.bincount(codes, weights=s, minlength=n_src) / np.maximum(per_n, 1)
    lab = lab_lo
    pos_left = n_pos - np.where(lab == 1, per_n, 0.0)
    neg_left = n_neg - np.where(lab == 0, per_n, 0.0)
    pairs = pos_left * neg_left
    with np.errstate(invalid="ignore", divide="ignore"):
        without = np.where(pairs > 0, (u - per_share) / pairs, np.nan)
    auc = u / (n_pos * n_neg) if n_pos * n_neg > 0 else np.nan
    return pd.DataFrame({"objectId": names.astype(str) if len(names) else np.array([], str), "label": lab,
                         "n_alerts": per_n.astype(np.int64), "mean_score": per_score, "roc_auc_without": without,
                         "auc_change": without - auc})


def largest_influence(table: pd.DataFrame, top: int) -> pd.DataFrame:
    """The `top` rows of a `source_influence_auc` table whose removal raises the AUC most (ties in table order)."""
    return table.dropna(subset=["auc_change"]).sort_values("auc_change", ascending=False, kind="stable").head(top)


# ---- source level -------------------------------------------------------------------------------------------------

def _per_source_constant(values: np.ndarray, alerts: GroupedAlerts, name: str, atol: float = 0.0) -> np.ndarray:
    """One value per source from a per-alert column that should be constant per source (NaN = unknown)."""
    v = np.asarray(values, np.float64)
    lo = np.fmin.reduceat(v, alerts.starts)
    hi = np.fmax.reduceat(v, alerts.starts)
    bad = hi - lo > atol
    if bad.any():
        ids = alerts.object_ids[np.flatnonzero(bad)]
        raise MetricsError(
            f"{name} must be the same for all alerts of a source; {int(bad.sum())} source(s) disagree, e.g. "
            + ", ".join(f"{o} ({lo[i]:g} vs {hi[i]:g})" for o, i in zip(ids[:5], np.flatnonzero(bad)[:5]))
        )
    return lo


def peak_bin_labels(edges: Sequence[float] = DEFAULT_BIN_EDGES) -> list[str]:
    e = list(edges)
    inner = [f"{a:.2f}-{b:.2f}" for a, b in zip(e[:-1], e[1:])]
    return [f"<{e[0]:.2f}", *inner, f">{e[-1]:.2f}"]


def peak_bin_index(peak: Any, edges: Sequence[float] = DEFAULT_BIN_EDGES) -> np.ndarray:
    """Bin number per source: 0 = brighter than edges[0], 1..K = [e_k, e_k+1) (last closed), K+1 = fainter."""
    p = np.asarray(peak, np.float64)
    e = np.asarray(edges, np.float64)
    k = np.searchsorted(e, p, side="right")  # number of edges <= p: 0 below, len(e) at or above the top edge
    k = np.where(p == e[-1], len(e) - 1, k)  # the top edge itself belongs to the last (closed) bin
    return k.astype(np.int64)


def source_table(alerts: GroupedAlerts, policies: Iterable[Policy], *, labels: Any = None, save_jd: Any = None,
                 trigger_jd: Any = None, min_alerts: int = MIN_ALERTS, bright_limit: float = BRIGHT_LIMIT,
                 bin_edges: Sequence[float] = DEFAULT_BIN_EDGES, threshold: float = DEFAULT_THRESHOLD
                 ) -> pd.DataFrame:
    """One row per source (sorted objectId order): label, peak, inclusion, and per policy its selection.

    ``labels``, ``save_jd``, ``trigger_jd`` are per alert in SORTED order (``x_input[alerts.order]``), NaN where
    unknown; each must be constant within a source.
    """
    if alerts.n_alerts == 0:
        raise MetricsError("no alerts to evaluate")
    nan = np.full(alerts.n_alerts, np.nan)
    lab = _per_source_constant(nan if labels is None else labels, alerts, "label")
    save = _per_source_constant(nan if save_jd is None else save_jd, alerts, "save_jd", atol=1e-6)
    trig = _per_source_constant(nan if trigger_jd is None else trigger_jd, alerts, "trigger_jd", atol=1e-6)
    odd = np.isfinite(lab) & (lab != 0) & (lab != 1)
    if odd.any():
        i = int(np.flatnonzero(odd)[0])
        raise MetricsError(f"labels must be 0, 1 or missing; source {alerts.object_ids[i]} has {lab[i]:g}")
    starts, n = alerts.starts, alerts.counts
    peak = np.minimum.reduceat(alerts.magpsf, starts)
    peak_pos = group_first_true(alerts.magpsf == peak[alerts.group], alerts)
    positive = (alerts.score > threshold).astype(np.int64)

    labelled = np.isfinite(lab)
    few = n < min_alerts
    faint_true = labelled & (lab == 1) & (peak > bright_limit)
    reasons = np.full(len(n), "", dtype=object)
    for mask, why in ((few, f"fewer than {min_alerts} alerts"), (~labelled, "unlabelled"),
                      (faint_true, f"label 1 but peak magpsf > {bright_limit:g}")):
        reasons[mask] = np.where(reasons[mask] == "", why, reasons[mask] + "; " + why)
    included = ~(few | ~labelled | faint_true)
    bins = peak_bin_index(peak, bin_edges)
    names = peak_bin_labels(bin_edges)

    df = pd.DataFrame({
        "objectId": alerts.object_ids,
        "label": pd.array(lab, dtype="Int64"),
        "n_alerts": n,
        "n_alerts_score_gt_threshold": np.add.reduceat(positive, starts),
        "max_score": np.maximum.reduceat(alerts.score, starts),
        "first_jd": alerts.jd[starts],
        "last_jd": alerts.jd[starts + n - 1],
        "peak_magpsf": peak,
        "peak_jd": alerts.jd[peak_pos],
        "peak_bin": np.asarray(names, dtype=object)[bins],
        "included": included,
        "excluded_reason": reasons,
        "save_jd": save,
        "trigger_jd": trig,
    })
    lab_int = np.where(labelled, lab, -1)
    for pol in policies:
        sel = select(alerts, pol)
        p = pol.name
        s = sel["selected"].to_numpy()
        df[f"{p}_selected"] = s
        df[f"{p}_jd"] = sel["jd"].to_numpy()
        df[f"{p}_magpsf"] = sel["magpsf"].to_numpy()
        df[f"{p}_alert_number"] = sel["alert_number"].to_numpy()
        outcome = np.select([s & (lab_int == 1), s & (lab_int == 0), ~s & (lab_int == 1), ~s & (lab_int == 0)],
                            list(OUTCOMES), default="")
        df[f"{p}_outcome"] = np.where(included, outcome, "")
        for ref in TIMELINESS_REFERENCES:
            delta = df[f"{p}_jd"].to_numpy() - df[ref].to_numpy()
            df[f"{p}_minus_{ref}_days"] = np.where(df[f"{p}_outcome"].to_numpy() == "TP", delta, np.nan)
    return df


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def _interval(k: int, n: int) -> list[float] | None:
    """68.27% Wilson binomial interval (astropy), the usual error bar for a completeness/purity fraction."""
    if n == 0:
        return None
    from astropy.stats import binom_conf_interval

    lo, hi = binom_conf_interval(k, n, confidence_level=0.6827, interval="wilson")
    return [float(lo), float(hi)]


def _counts(outcome: np.ndarray) -> dict[str, Any]:
    c = {o: int((outcome == o).sum()) for o in OUTCOMES}
    tp, fp, fn = c["TP"], c["FP"], c["FN"]
    c["n_sources"] = int(sum(c[o] for o in OUTCOMES))
    c["n_selected"] = tp + fp
    c["completeness"] = _rate(tp, tp + fn)
    c["completeness_interval68"] = _interval(tp, tp + fn)
    c["purity"] = _rate(tp, tp + fp)
    c["purity_interval68"] = _interval(tp, tp + fp)
    return c


def timeliness(delta_days: Any, n_true_positives: int | None = None, bins: int | str = "auto") -> dict[str, Any]:
    """Summary of selection-minus-human times in days (negative = earlier than the humans)."""
    d = np.asarray(delta_days, np.float64)
    d = d[np.isfinite(d)]
    out: dict[str, Any] = {"n": int(d.size)}
    if n_true_positives is not None:
        out["n_true_positives_without_reference"] = int(n_true_positives - d.size)
    if d.size == 0:
        out.update(median_days=None, median_hours=None, mean_days=None, histogram=None)
        return out
    q = np.quantile(d, [0.1, 0.25, 0.5, 0.75, 0.9])
    counts, edges = np.histogram(d, bins=bins if d.size > 1 else 1)
    out.update(
        median_days=float(q[2]), median_hours=float(q[2] * 24.0),
        mean_days=float(d.mean()), mean_hours=float(d.mean() * 24.0),
        quantiles_days={"q10": float(q[0]), "q25": float(q[1]), "q50": float(q[2]), "q75": float(q[3]),
                        "q90": float(q[4])},
        min_days=float(d.min()), max_days=float(d.max()),
        fraction_earlier=float((d < 0).mean()), fraction_same_or_later=float((d >= 0).mean()),
        histogram={"edges_days": edges.tolist(), "counts": counts.tolist()},
    )
    return out


def policy_metrics(sources: pd.DataFrame, policy: Policy, bin_edges: Sequence[float] = DEFAULT_BIN_EDGES, *,
                   include_timeliness: bool = True) -> dict[str, Any]:
    """Completeness, purity (overall and per peak bin) and timeliness of one policy from `source_table`'s rows.

    ``include_timeliness=False`` leaves the ``timeliness`` entry to `policy_timeliness` (the report's timeliness
    piece adds it)."""
    p = policy.name
    inc = sources["included"].to_numpy()
    outcome = sources[f"{p}_outcome"].to_numpy()[inc]
    bins = sources["peak_bin"].to_numpy()[inc]
    labels = peak_bin_labels(bin_edges)
    e = list(bin_edges)
    lows = [None, *e]
    highs = [*e, None]
    per_bin = []
    for name, lo, hi in zip(labels, lows, highs):
        row = {"bin": name, "peak_mag_low": lo, "peak_mag_high": hi}
        row.update(_counts(outcome[bins == name]))
        per_bin.append(row)
    overall = _counts(outcome)
    out = {
        "description": policy.description,
        "params": dict(policy.params),
        **overall,
        # selections among every source, included or not (what a broker would have sent to follow-up)
        "n_selected_all_sources": int(sources[f"{p}_selected"].sum()),
        "per_peak_bin": per_bin,
    }
    if include_timeliness:
        out["timeliness"] = policy_timeliness(sources, policy)
    return out


def policy_timeliness(sources: pd.DataFrame, policy: Policy) -> dict[str, Any]:
    """`timeliness` of one policy's true positives (included sources) against each human reference time."""
    p = policy.name
    inc = sources["included"].to_numpy()
    tp = int((sources[f"{p}_outcome"].to_numpy()[inc] == "TP").sum())
    return {ref: timeliness(sources.loc[inc, f"{p}_minus_{ref}_days"], tp) for ref in TIMELINESS_REFERENCES}


def inclusion_summary(sources: pd.DataFrame) -> dict[str, Any]:
    lab = sources["label"]
    inc = sources["included"].to_numpy()
    reasons = sources.loc[~inc, "excluded_reason"].value_counts()
    return {
        "n_sources": int(len(sources)),
        "n_included": int(inc.sum()),
        "n_included_label_1": int(((lab == 1).fillna(False).to_numpy() & inc).sum()),
        "n_included_label_0": int(((lab == 0).fillna(False).to_numpy() & inc).sum()),
        "n_excluded": int((~inc).sum()),
        "excluded_by_reason": {str(k): int(v) for k, v in reasons.items()},
    }


__all__ = [
    "BOOTSTRAP_MAX_WORK", "DEFAULT_BIN_EDGES", "DEFAULT_THRESHOLD", "MIN_ALERTS", "MetricsError", "OUTCOMES",
    "TIMELINESS_REFERENCES", "alert_metrics", "inclusion_summary", "peak_bin_index", "peak_bin_labels",
    "largest_influence", "policy_metrics", "policy_timeliness", "source_bootstrap_auc", "source_influence_auc",
    "source_table", "timeliness", "weighted_auc",
]
