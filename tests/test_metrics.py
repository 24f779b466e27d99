"""BTS metrics with answers worked out by hand: alert level at score > threshold, inclusion rules, completeness and
purity overall and per peak bin, timeliness."""

import numpy as np
import pandas as pd
import pytest

from btsbot_jax.evaluation.metrics import (
    DEFAULT_BIN_EDGES,
    MetricsError,
    alert_metrics,
    peak_bin_index,
    peak_bin_labels,
    policy_metrics,
    source_bootstrap_auc,
    source_influence_auc,
    source_table,
    timeliness,
)
from btsbot_jax.evaluation.policies import BTS_P1, BTS_P2, group_alerts

J0 = 2460000.0


def test_alert_metrics_by_hand():
    labels = [0, 0, 1, 1, 1, np.nan]
    scores = [0.2, 0.5, 0.5, 0.7, 0.9, 0.99]  # 0.5 is not > 0.5; the unlabelled alert is ignored
    m = alert_metrics(labels, scores)
    # predictions 0 0 0 1 1 -> TN 2, FP 0, FN 1, TP 2
    assert m["confusion_matrix"]["counts"] == [[2, 0], [1, 2]]
    assert m["n_alerts"] == 5 and m["n_unlabelled"] == 1 and m["n_predicted_positive"] == 2
    assert m["accuracy"] == pytest.approx(4 / 5)
    assert m["balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["precision"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(0.8)
    np.testing.assert_allclose(m["confusion_matrix_normalized"], [[1, 0], [1 / 3, 2 / 3]])
    # AUC = P(score_pos > score_neg) + 0.5 P(tie): pairs (0.5,0.2) 1, (0.5,0.5) 0.5, and 4 wins -> 5.5/6
    assert m["roc_auc"] == pytest.approx(5.5 / 6)
    assert m["roc_curve"]["fpr"][-1] == 1.0 and m["roc_curve"]["tpr"][-1] == 1.0
    assert m["roc_curve"]["thresholds"][0] is None  # sklearn's +inf "select nothing" point


def test_alert_metrics_threshold_and_single_class():
    m = alert_metrics([0, 0, 1, 1], [0.2, 0.5, 0.5, 0.7], threshold=0.3)
    assert m["confusion_matrix"]["counts"] == [[1, 1], [0, 2]] and m["decision"] == "score > 0.3"
    one = alert_metrics([1, 1, 1], [0.9, 0.4, 0.8])
    assert one["roc_auc"] is None and one["roc_curve"] is None and one["balanced_accuracy"] is None
    assert one["recall"] == pytest.approx(2 / 3) and one["precision"] == 1.0
    assert one["confusion_matrix_normalized"][0] == [None, None]  # no true class-0 alerts: undefined, not 0
    none = alert_metrics([np.nan], [0.3])
    assert none["n_alerts"] == 0 and none["accuracy"] is None


def test_peak_bins_edges():
    assert len(DEFAULT_BIN_EDGES) == 7 and DEFAULT_BIN_EDGES[0] == 17.0 and DEFAULT_BIN_EDGES[-1] == 18.5
    labels = peak_bin_labels()
    assert labels[0] == "<17.00" and labels[1] == "17.00-17.25" and labels[6] == "18.25-18.50" and labels[7] == ">18.50"
    peaks = [16.99, 17.0, 17.2499, 17.25, 18.2499, 18.25, 18.5, 18.5001, 21.0]
    np.testing.assert_array_equal(peak_bin_index(peaks), [0, 1, 1, 2, 5, 6, 6, 7, 7])


# (objectId, label, save day or None, [(day, magpsf, score), ...])
SOURCES = [
    ("tp_tie19", 1, 3.5, [(1, 19.0, 0.9), (2, 18.0, 0.9), (3, 18.9, 0.9)]),  # p1,p2 at day 3; -0.5 d vs save
    ("tp_peak185", 1, 1.75, [(1, 18.5, 0.9), (2, 18.7, 0.8)]),  # p1,p2 at day 2; +0.25 d
    ("fn_onepos", 1, None, [(1, 18.0, 0.9), (2, 18.0, 0.2), (3, 17.5, 0.4)]),  # never selected
    ("tp_late", 1, None, [(1, 18.9, 0.9), (2, 18.8, 0.9), (3, 18.6, 0.3), (4, 18.4, 0.2), (5, 18.3, 0.7)]),
    ("fp_half", 0, None, [(1, 18.0, 0.5), (2, 18.0, 0.5), (3, 18.0, 0.51), (4, 18.1, 0.6)]),  # selected day 4
    ("single", 1, None, [(1, 17.0, 0.99)]),  # excluded: 1 alert
    ("unlabelled", None, None, [(1, 18.0, 0.9), (2, 18.1, 0.9)]),  # selected, but not counted
    ("faint_true", 1, None, [(1, 18.6, 0.9), (2, 18.7, 0.9)]),  # excluded: label 1 with peak > 18.5
    ("faint_false", 0, None, [(1, 18.6, 0.9), (2, 18.7, 0.9)]),  # included: p1 FP, p2 TN, bin >18.50
    ("bright_tp", 1, None, [(1, 16.5, 0.9), (2, 16.8, 0.9)]),  # bin <17.00
]


def _table(sources=SOURCES):
    rows = []
    for oid, label, save, alerts in sources:
        for day, mag, score in alerts:
            rows.append({"objectId": oid, "jd": J0 + day, "magpsf": mag, "score": score,
                         "label": np.nan if label is None else label,
                         "save_jd": np.nan if save is None else J0 + save})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)


def _sources(t):
    g = group_alerts(t["objectId"].to_numpy(object), t["jd"], t["magpsf"], t["score"])
    o = g.order
    return source_table(g, [BTS_P1, BTS_P2], labels=t["label"].to_numpy()[o], save_jd=t["save_jd"].to_numpy()[o])


def test_source_table_by_hand():
    s = _sources(_table()).set_index("objectId")
    assert s.loc["tp_tie19", "peak_magpsf"] == 18.0 and s.loc["tp_tie19", "peak_jd"] == J0 + 2
    assert not s.loc["single", "included"] and s.loc["single", "excluded_reason"] == "fewer than 2 alerts"
    assert not s.loc["unlabelled", "included"] and s.loc["unlabelled", "excluded_reason"] == "unlabelled"
    assert s.loc["unlabelled", "bts_p1_selected"] and s.loc["unlabelled", "bts_p1_outcome"] == ""
    assert s.loc["faint_true", "excluded_reason"] == "label 1 but peak magpsf > 18.5"
    assert s.loc["faint_false", "included"] and s.loc["faint_false", "peak_bin"] == ">18.50"
    assert s.loc["bright_tp", "peak_bin"] == "<17.00" and s.loc["tp_peak185", "peak_bin"] == "18.25-18.50"
    assert pd.isna(s.loc["unlabelled", "label"]) and s.loc["fp_half", "label"] == 0
    want = {  # (p1 outcome, p2 outcome)
        "tp_tie19": ("TP", "TP"), "tp_peak185": ("TP", "TP"), "fn_onepos": ("FN", "FN"), "tp_late": ("TP", "TP"),
        "fp_half": ("FP", "FP"), "faint_false": ("FP", "TN"), "bright_tp": ("TP", "TP"),
    }
    for oid, (o1, o2) in want.items():
        assert (s.loc[oid, "bts_p1_outcome"], s.loc[oid, "bts_p2_outcome"]) == (o1, o2), oid
    assert s.loc["tp_late", "bts_p2_jd"] == J0 + 4 and s.loc["tp_late", "bts_p2_magpsf"] == 18.4
    assert s.loc["tp_late", "bts_p1_jd"] == J0 + 2
    assert s.loc["fp_half", "bts_p1_alert_number"] == 4
    assert s.loc["tp_tie19", "bts_p1_minus_save_jd_days"] == -0.5
    assert s.loc["tp_peak185", "bts_p1_minus_save_jd_days"] == 0.25
    assert s["bts_p1_minus_trigger_jd_days"].isna().all()


def test_policy_metrics_by_hand():
    s = _sources(_table())
    p1 = policy_metrics(s, BTS_P1)
    # included: 5 label-1 (tie19, peak185, onepos, late, bright_tp) + 2 label-0 (fp_half, faint_false)
    assert (p1["TP"], p1["FP"], p1["FN"], p1["TN"]) == (4, 2, 1, 0)
    assert p1["completeness"] == pytest.approx(4 / 5) and p1["purity"] == pytest.approx(4 / 6)
    assert p1["n_selected_all_sources"] == 8  # + unlabelled + faint_true, which are not counted
    p2 = policy_metrics(s, BTS_P2)
    assert (p2["TP"], p2["FP"], p2["FN"], p2["TN"]) == (4, 1, 1, 1)
    assert p2["completeness"] == pytest.approx(4 / 5) and p2["purity"] == pytest.approx(4 / 5)
    bins = {b["bin"]: b for b in p2["per_peak_bin"]}
    assert sum(b["n_sources"] for b in bins.values()) == 7
    assert (bins["<17.00"]["TP"], bins["<17.00"]["completeness"]) == (1, 1.0)
    assert (bins["17.50-17.75"]["FN"], bins["17.50-17.75"]["completeness"], bins["17.50-17.75"]["purity"]) == (
        1, 0.0, None)
    # 18.00-18.25: tp_tie19 (peak 18.0) and fp_half (peak 18.0)
    assert (bins["18.00-18.25"]["TP"], bins["18.00-18.25"]["FP"], bins["18.00-18.25"]["purity"]) == (1, 1, 0.5)
    # 18.25-18.50: tp_peak185 (18.5, closed top edge) and tp_late (18.3)
    assert bins["18.25-18.50"]["TP"] == 2
    assert bins[">18.50"]["TN"] == 1 and bins[">18.50"]["completeness"] is None
    lo, hi = p2["completeness_interval68"]
    assert lo < 0.8 < hi
    t = p2["timeliness"]["save_jd"]
    assert t["n"] == 2 and t["n_true_positives_without_reference"] == 2
    assert t["median_days"] == pytest.approx(-0.125) and t["median_hours"] == pytest.approx(-3.0)
    assert t["fraction_earlier"] == 0.5
    assert p2["timeliness"]["trigger_jd"]["n"] == 0


def test_timeliness_summary():
    t = timeliness([-1.0, -0.5, 0.0, 0.25, np.nan, 2.0], n_true_positives=6)
    assert t["n"] == 5 and t["n_true_positives_without_reference"] == 1
    assert t["median_days"] == 0.0 and t["mean_days"] == pytest.approx(0.15)
    assert t["mean_hours"] == pytest.approx(3.6)
    assert t["fraction_earlier"] == pytest.approx(0.4)
    assert sum(t["histogram"]["counts"]) == 5 and t["quantiles_days"]["q50"] == 0.0


def test_inconsistent_source_values_are_errors():
    t = _table()
    t.loc[t["objectId"] == "tp_late", "label"] = [1, 0, 1, 1, 1]
    with pytest.raises(MetricsError, match="label must be the same.*tp_late"):
        _sources(t)
    t = _table()
    t.loc[t.index[t["objectId"] == "tp_tie19"][0], "save_jd"] = J0 + 9
    with pytest.raises(MetricsError, match="save_jd must be the same.*tp_tie19"):
        _sources(t)
    # a save_jd given on only some alerts of a source is fine (NaN = unknown)
    t = _table()
    t.loc[t.index[t["objectId"] == "tp_tie19"][0], "save_jd"] = np.nan
    assert _sources(t).set_index("objectId").loc["tp_tie19", "save_jd"] == J0 + 3.5


def _bootstrap_case():
    """3 label-1 sources of 2 alerts (0.8, 0.9); label 0: two sources of 2 alerts at 0.1 and one of 10 alerts at 0.95
    (a near-threshold source that outranks every positive)."""
    src = ["p1"] * 2 + ["p2"] * 2 + ["p3"] * 2 + ["n1"] * 2 + ["n2"] * 2 + ["n3"] * 10
    labels = [1] * 6 + [0] * 14
    scores = [0.8, 0.9] * 3 + [0.1] * 4 + [0.95] * 10
    return labels, scores, src


def test_source_bootstrap_auc_by_hand():
    labels, scores, src = _bootstrap_case()
    assert alert_metrics(labels, scores)["roc_auc"] == pytest.approx(4 / 14)
    b = source_bootstrap_auc(labels, scores, src, n_resamples=1000, confidence=0.90, seed=0)
    # Every positive resample scores the same, so a resample's AUC depends only on how many times k the bright label-0
    # source is drawn among 3: k ~ Binomial(3, 1/3), AUC(k) = 2(3-k) / (2(3-k) + 10k): 1, 4/14, 2/22, 0 with
    # probabilities 8/27, 12/27, 6/27, 1/27. The 5% quantile falls in k = 2 (P(k = 3) = 3.7%), the 95% in k = 0.
    assert b["interval"] == pytest.approx([2 / 22, 1.0], abs=1e-12)
    p = np.array([8, 12, 6, 1]) / 27
    v = np.array([1.0, 4 / 14, 2 / 22, 0.0])
    assert b["standard_error"] == pytest.approx(np.sqrt(p @ (v - p @ v) ** 2), rel=0.1)
    assert (b["n_resamples"], b["n_sources_label_1"], b["n_sources_label_0"], b["n_alerts"]) == (1000, 3, 3, 20)
    # the same seed gives the same interval; an alert-level bootstrap would be far narrower (20 "independent" alerts)
    assert source_bootstrap_auc(labels, scores, src, seed=0)["interval"] == b["interval"]


def test_source_bootstrap_auc_edges():
    labels, scores, src = _bootstrap_case()
    sep = source_bootstrap_auc(labels, [0.9] * 6 + [0.1] * 14, src)
    assert sep["interval"] == [1.0, 1.0] and sep["standard_error"] == 0.0
    # unlabelled alerts are left out, as in alert_metrics
    withnan = source_bootstrap_auc(labels + [np.nan], scores + [0.99], src + ["u1"], seed=0)
    assert withnan["interval"] == source_bootstrap_auc(labels, scores, src, seed=0)["interval"]
    assert withnan["n_alerts"] == 20
    few = source_bootstrap_auc([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2], ["a", "a", "b", "c"])
    assert few["interval"] is None and few["n_resamples"] == 0 and "2 labelled sources" in few["reason"]
    with pytest.raises(MetricsError, match="label must be the same.*n3"):
        source_bootstrap_auc(labels[:-1] + [1], scores, src)
    # the work cap: resamples x alerts <= max_work, but never fewer than the floor
    assert source_bootstrap_auc(labels, scores, src, max_work=20 * 300)["n_resamples"] == 300
    assert source_bootstrap_auc(labels, scores, src, max_work=1.0)["n_resamples"] == 200


def test_weighted_auc_equals_sklearn():
    from sklearn.metrics import roc_auc_score

    from btsbot_jax.evaluation.metrics import _score_ranks, weighted_auc

    rng = np.random.default_rng(3)
    for n, levels in ((50, 7), (2000, 40), (5000, 0)):  # heavy ties, some ties, (almost) none
        s = rng.integers(0, levels, n) / levels if levels else rng.random(n)
        y = (rng.random(n) < 0.3 + 0.4 * s).astype(np.int64)
        w = rng.integers(0, 4, n).astype(np.float64)  # bootstrap multiplicities, zeros included
        rank, n_rank = _score_ranks(s)
        assert weighted_auc(y, rank, n_rank, w) == pytest.approx(roc_auc_score(y, s, sample_weight=w), rel=1e-12)
        assert weighted_auc(y, rank, n_rank, np.ones(n)) == pytest.approx(roc_auc_score(y, s), rel=1e-12)


def test_source_influence_auc_by_hand():
    """The bootstrap case: the 10-alert label-0 source at 0.95 outranks every positive, so the split's AUC is 4/14
    and without that source it separates perfectly; leaving out other sources changes less or nothing."""
    labels, scores, src = _bootstrap_case()
    t = source_influence_auc(labels, scores, src).set_index("objectId")
    auc = 4 / 14  # 6 positives x 14 negatives: each positive beats the 4 alerts at 0.1 only -> 24 / 84
    assert t.loc["n3", "roc_auc_without"] == pytest.approx(1.0)
    assert t.loc["n3", "auc_change"] == pytest.approx(1.0 - auc)
    # without a 0.1 source: each positive beats 2 of 12 negatives
    assert t.loc["n1", "roc_auc_without"] == pytest.approx(2 / 12)
    # without a positive source: the 4 remaining positives beat 4 of 14 each, as before
    assert t.loc["p2", "roc_auc_without"] == pytest.approx(4 / 14) and t.loc["p2", "auc_change"] == pytest.approx(0)
    assert t.loc["n3", "n_alerts"] == 10 and t.loc["n3", "mean_score"] == pytest.approx(0.95)
    assert list(t["label"]) == [1, 1, 1, 0, 0, 0]
    # the last source of a class leaves no AUC: NaN, not an error
    one = source_influence_auc([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2], ["a", "a", "b", "c"]).set_index("objectId")
    assert np.isnan(one.loc["a", "roc_auc_without"]) and one.loc["b", "roc_auc_without"] == 1.0
    with pytest.raises(MetricsError, match="label must be the same.*n3"):
        source_influence_auc(labels[:-1] + [1], scores, src)


def test_source_influence_auc_equals_sklearn_without_each_source():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    for n, levels in ((400, 6), (3000, 0)):  # heavy ties; (almost) none
        src = rng.integers(0, 60, n)
        y = (src % 3 == 0).astype(np.float64)
        s = (rng.integers(0, levels, n) / levels if levels else rng.random(n)) + 0.2 * y
        y[:5] = np.nan  # unlabelled alerts are left out, as in alert_metrics
        t = source_influence_auc(y, s, src)
        keep = np.isfinite(y)
        full = roc_auc_score(y[keep], s[keep])
        for r in t.itertuples():
            k = keep & (src.astype(str) != r.objectId)
            assert r.roc_auc_without == pytest.approx(roc_auc_score(y[k], s[k]), rel=1e-12)
            assert r.auc_change == pytest.approx(r.roc_auc_without - full, abs=1e-12)
