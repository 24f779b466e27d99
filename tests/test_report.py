"""End-to-end evaluation: the 39 real labelled alerts scored by the imported v1.0.1 model (checked against sklearn
and a plain loop of the policies), both CLI modes, rejected rows, figures, custom policies."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from btsbot_jax.evaluation.metrics import _score_ranks, source_bootstrap_auc, weighted_auc
from btsbot_jax.evaluation.report import (
    EvaluationError,
    check_scores_table,
    evaluate_dataset,
    evaluate_scores,
    find_training_metrics,
    read_scores_table,
    summary_lines,
    write_report,
)

FIGURES = ("roc", "confusion_matrix", "score_vs_magpsf", "completeness_purity", "timeliness")


# name -> (bright limit, score threshold, alerts needed): the v1 paper's and BTSbot v2's production policies
POLICY_RULES = {"bts_p1": (None, 0.5, 2), "bts_p2": (18.5, 0.5, 2), "prod_p1": (None, 0.85, 1),
                "prod_p2": (18.5, 0.85, 1)}


def _policy_loop(table, bright_limit, score_threshold=0.5, min_positive=2):
    """Reference: each source's alerts in jd order, the papers' rule checked alert by alert."""
    out = {}
    for oid, src in table.sort_values("jd", kind="stable").groupby("objectId", sort=False):
        n_pos, brightest, out[oid] = 0, np.inf, None
        for r in src.itertuples():
            brightest = min(brightest, r.magpsf)
            n_pos += r.score > score_threshold and r.magpsf < 19
            if n_pos >= min_positive and (bright_limit is None or brightest <= bright_limit):
                out[oid] = (r.jd, r.magpsf)
                break
    return out


def _png_ok(path):
    import matplotlib.image

    img = matplotlib.image.imread(path)
    return img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300


def test_v101_on_the_39_real_alerts(v101_checkpoint, usage_examples):
    from btsbot_jax.inference.scorer import load_scorer

    table, triplets, metadata = usage_examples
    scores = load_scorer(v101_checkpoint)(triplets, metadata)
    t = table[["objectId", "jd", "magpsf", "label"]].assign(score=scores)
    ev = evaluate_scores(t)
    a = ev.report["alert_level"]
    y, pred = t["label"].to_numpy(), (scores > 0.5).astype(int)
    # independent computation straight from sklearn
    assert a["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert a["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert a["roc_auc"] == pytest.approx(skm.roc_auc_score(y, scores))
    assert a["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert a["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert a["f1"] == pytest.approx(skm.f1_score(y, pred))
    np.testing.assert_allclose(a["confusion_matrix_normalized"], skm.confusion_matrix(y, pred, normalize="true"))
    assert a["n_alerts"] == 39 and a["n_positive"] == int(y.sum())
    # the AUC's source bootstrap is in the report: the 39 alerts are two sources, one of each class, so it says the
    # AUC has no interval (it is one source's alerts ranked against the other's) instead of a spuriously narrow one
    b = a["roc_auc_source_bootstrap"]
    assert b == source_bootstrap_auc(y, scores, t["objectId"].to_numpy())
    assert (b["n_alerts"], b["n_sources_label_1"], b["n_sources_label_0"]) == (39, 1, 1)
    assert b["interval"] is None and "2 labelled sources of each class" in b["reason"]
    # the bootstrap's fast weighted AUC is sklearn's on these real scores (unit and bootstrap-like weights)
    rank, n_rank = _score_ranks(scores)
    for w in (np.ones(39), np.arange(39) % 3 + 0.0):
        assert weighted_auc(y, rank, n_rank, w) == pytest.approx(skm.roc_auc_score(y, scores, sample_weight=w),
                                                                 rel=1e-12)
    # source level against the loop reference
    src = ev.sources.set_index("objectId")
    label = t.groupby("objectId")["label"].first()
    peak = t.groupby("objectId")["magpsf"].min()
    assert set(src.index) == set(label.index)
    assert list(ev.report["source_level"]["policies"]) == list(POLICY_RULES)  # the default policies
    for name, rule in POLICY_RULES.items():
        ref = _policy_loop(t, *rule)
        for oid, sel in ref.items():
            assert bool(src.loc[oid, f"{name}_selected"]) == (sel is not None)
            if sel is not None:
                assert (src.loc[oid, f"{name}_jd"], src.loc[oid, f"{name}_magpsf"]) == sel
        inc = [o for o in ref if (t["objectId"] == o).sum() >= 2 and not (label[o] == 1 and peak[o] > 18.5)]
        tp = sum(ref[o] is not None and label[o] == 1 for o in inc)
        fp = sum(ref[o] is not None and label[o] == 0 for o in inc)
        fn = sum(ref[o] is None and label[o] == 1 for o in inc)
        p = ev.report["source_level"]["policies"][name]
        assert (p["TP"], p["FP"], p["FN"]) == (tp, fp, fn)
        assert p["completeness"] == pytest.approx(tp / (tp + fn))
        assert p["purity"] == (pytest.approx(tp / (tp + fp)) if tp + fp else None)
    p2 = ev.report["source_level"]["policies"]["bts_p2"]
    print(f"\nv1.0.1 on the 39 real alerts: accuracy {a['accuracy']:.4f}, balanced accuracy "
          f"{a['balanced_accuracy']:.4f}, AUC {a['roc_auc']:.4f}, precision {a['precision']:.4f}, recall "
          f"{a['recall']:.4f}, F1 {a['f1']:.4f}; bts_p2 completeness {p2['completeness']}, purity {p2['purity']}; "
          f"selections {src[['bts_p1_jd', 'bts_p1_magpsf', 'bts_p2_jd', 'bts_p2_magpsf']].to_dict('index')}")


def _dataset_dir(tmp_path, usage_examples):
    """The 39 real alerts written in the training-set format, with a made-up human save time and one bad row."""
    table, triplets, _ = usage_examples
    d = tmp_path / "data"
    d.mkdir()
    cand = table.drop(columns=["expected_scores"]).copy()
    bts = "ZTF23abhvlji"
    cand["save_jd"] = np.where(cand["objectId"] == bts, cand.loc[cand["objectId"] == bts, "jd"].sort_values().iloc[2],
                               np.nan)
    cand.loc[5, "sky"] = np.nan  # an alert the model must not score: rejected with its reason
    cand.to_csv(d / "test_cand_v10_N100.csv", index=False)
    np.save(d / "test_triplets_v10_N100.npy", triplets.astype(np.float32))
    return d


def _workdir(tmp_path, v101_checkpoint):
    """A training workdir as the trainer leaves it: best/ checkpoint and metrics.csv."""
    w = tmp_path / "workdir"
    w.mkdir()
    (w / "best").symlink_to(v101_checkpoint, target_is_directory=True)
    e = np.arange(1, 7)
    pd.DataFrame({"epoch": e, "loss": 0.6 / e, "val_loss": 0.5 / e + 0.02 * (e == 6), "accuracy": 1 - 0.3 / e,
                  "val_accuracy": 1 - 0.35 / e, "val_auc": 1 - 0.2 / e, "lr": 1e-4 * 0.4 ** (e // 5)}
                 ).to_csv(w / "metrics.csv", index=False)
    return w


@pytest.mark.slow
def test_cli_dataset_mode_with_workdir_matches_scores_mode(tmp_path, v101_checkpoint, usage_examples):
    data = _dataset_dir(tmp_path, usage_examples)
    work = _workdir(tmp_path, v101_checkpoint)
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "btsbot_jax.cli.evaluate", f"--checkpoint={work}", f"--data={data}",
                        "--split=test", f"--out={out}", "--noprogress"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "bts_p2: completeness" in r.stdout and "prod_p2: completeness" in r.stdout
    rep = json.loads((out / "report.json").read_text())
    assert list(rep["source_level"]["policies"]) == list(POLICY_RULES)  # btsbot-evaluate's default --policies
    inp = rep["input"]
    assert (inp["n_input_alerts"], inp["n_evaluated_alerts"], inp["n_rejected_alerts"]) == (39, 38, 1)
    assert inp["rejected_by_reason"] == {"metadata not finite: sky": 1}
    assert inp["model"]["version"] == "v1.0.1" and inp["training_metrics"].endswith("metrics.csv")
    rej = pd.read_csv(out / "rejected.csv")
    assert rej.loc[0, "row"] == 5 and rej.loc[0, "candid"] == usage_examples[0].loc[5, "candid"]
    # the scores it computed are the published v1.0.1 scores
    scores = pd.read_csv(out / "scores.csv")
    expected = usage_examples[0]["expected_scores"].drop(index=5).to_numpy()
    np.testing.assert_allclose(scores["score"].to_numpy(), expected, atol=1e-5)
    for f in (*FIGURES, "training_curves"):
        assert _png_ok(out / f"{f}.png"), f
    # timeliness with the made-up save time: selected at the 2nd alert, saved at the 3rd
    t = rep["source_level"]["policies"]["bts_p2"]["timeliness"]["save_jd"]
    jds = np.sort(usage_examples[0].loc[usage_examples[0]["objectId"] == "ZTF23abhvlji", "jd"].to_numpy())
    assert t["n"] == 1 and t["median_days"] == pytest.approx(jds[1] - jds[2])
    assert t["median_hours"] == pytest.approx((jds[1] - jds[2]) * 24)
    # the scores table it wrote reproduces every number in scores mode
    again = evaluate_scores(read_scores_table(out / "scores.csv"))
    assert again.report["alert_level"] == rep["alert_level"]
    assert again.report["source_level"] == rep["source_level"]
    src = pd.read_csv(out / "sources.csv").fillna({"excluded_reason": ""})
    pd.testing.assert_frame_equal(src, again.sources.reset_index(drop=True), check_dtype=False)


def test_evaluate_dataset_in_process(tmp_path, v101_checkpoint, usage_examples):
    """Library entry point with a data file path and an explicit scorer object; writes without figures."""
    from btsbot_jax.inference.scorer import load_scorer

    data = _dataset_dir(tmp_path, usage_examples)
    ev = evaluate_dataset(load_scorer(v101_checkpoint), str(data / "test_cand_v10_N100.csv"), progress=False,
                          threshold=0.9)
    assert ev.report["alert_level"]["threshold"] == 0.9 and len(ev.alerts) == 38 and len(ev.rejected) == 1
    files = write_report(ev, tmp_path / "r", figures=False)
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"report.json", "sources.csv", "rejected.csv",
                                                           "scores.csv", "roc_curve.csv"}
    assert files["report"].is_file()


def _scores_table():
    rows = []
    for oid, label, save, trig, alerts in [
        ("A", 1, 3.5, 2.5, [(1, 18.2, 0.9), (2, 18.0, 0.7), (3, 18.9, 0.9)]),
        ("B", 1, 1.0, None, [(1, 18.4, 0.8), (2, 18.6, 0.95), (3, 18.7, 0.99)]),
        ("C", 0, None, None, [(1, 17.5, 0.6), (2, 17.6, 0.7)]),
        ("D", 0, None, None, [(1, 19.5, 0.9), (2, 19.2, 0.1)]),
        ("E", None, None, None, [(1, 18.0, 0.9), (2, 18.0, 0.9)]),
    ]:
        for day, mag, score in alerts:
            rows.append({"objectId": oid, "jd": 2460100.0 + day, "magpsf": mag, "score": score,
                         "label": label, "save_jd": None if save is None else 2460100.0 + save,
                         "trigger_jd": None if trig is None else 2460100.0 + trig})
    rows.append({"objectId": "C", "jd": 2460103.0, "magpsf": 17.0, "score": np.nan, "label": 0})
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_cli_scores_mode_parquet_and_custom_policy(tmp_path):
    path = tmp_path / "scores.parquet"
    _scores_table().to_parquet(path)
    mod = tmp_path / "my_policies.py"
    mod.write_text(textwrap.dedent("""
        from btsbot_jax.evaluation.policies import group_cumsum, register_policy

        @register_policy("any_positive", "one alert with score > 0.5")
        def any_positive(a):
            return group_cumsum(a.score > 0.5, a) >= 1
    """))
    out = tmp_path / "rep"
    r = subprocess.run([sys.executable, "-m", "btsbot_jax.cli.evaluate", f"--scores={path}", f"--out={out}",
                        f"--policy_module={mod}", "--policies=bts_p1,bts_p2,any_positive"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert (rep["input"]["n_input_alerts"], rep["input"]["n_rejected_alerts"]) == (13, 1)
    assert rep["input"]["rejected_by_reason"] == {"score is missing": 1}
    pols = rep["source_level"]["policies"]
    # A: TP at day 2 (save 3.5, trigger 2.5); B: TP at day 2 for p1 and p2 (brightest 18.4); C: FP; D: TN (19.5 and
    # score 0.1); E unlabelled
    assert (pols["bts_p2"]["TP"], pols["bts_p2"]["FP"], pols["bts_p2"]["TN"]) == (2, 1, 1)
    assert pols["any_positive"]["FP"] == 2 and pols["any_positive"]["description"] == "one alert with score > 0.5"
    ts = pols["bts_p2"]["timeliness"]["save_jd"]
    assert ts["n"] == 2 and ts["median_days"] == pytest.approx(((2 - 3.5) + (2 - 1.0)) / 2)
    tt = pols["bts_p2"]["timeliness"]["trigger_jd"]
    assert tt["n"] == 1 and tt["median_hours"] == pytest.approx(-0.5 * 24)
    for f in FIGURES:
        assert _png_ok(out / f"{f}.png"), f
    assert not (out / "scores.csv").exists() and not (out / "training_curves.png").exists()
    assert "training_curves" in rep["figures_skipped"]
    src = pd.read_csv(out / "sources.csv").set_index("objectId")
    assert src.loc["E", "bts_p1_selected"] and not src.loc["E", "included"]
    assert src.loc["A", "bts_p2_jd"] == 2460102.0 and src.loc["A", "bts_p2_magpsf"] == 18.0


def test_production_policies_by_hand():
    """prod_p1/prod_p2 (one alert with score > 0.85 and magpsf < 19; prod_p2 also brightest so far <= 18.5) on the
    hand-built table, with the default policies. A: day 1 (0.9, 18.2) TP; B: day 2 (0.95, 18.6; brightest so far
    18.4) TP; C: no score above 0.85, TN (bts_p1 and bts_p2 call it a FP); D: 19.5 is not < 19, TN; E unlabelled."""
    ev = evaluate_scores(_scores_table())
    pols = ev.report["source_level"]["policies"]
    assert list(pols) == ["bts_p1", "bts_p2", "prod_p1", "prod_p2"]
    src = ev.sources.set_index("objectId")
    for name in ("prod_p1", "prod_p2"):
        p = pols[name]
        assert (p["TP"], p["FP"], p["FN"], p["TN"]) == (2, 0, 0, 2) and p["completeness"] == p["purity"] == 1.0
        assert p["n_selected_all_sources"] == 3 and p["params"]["score_threshold"] == 0.85
        assert (src.loc["A", f"{name}_jd"], src.loc["A", f"{name}_magpsf"]) == (2460101.0, 18.2)
        assert (src.loc["B", f"{name}_jd"], src.loc["B", f"{name}_magpsf"]) == (2460102.0, 18.6)
        assert not src.loc["C", f"{name}_selected"] and src.loc["C", f"{name}_outcome"] == "TN"
        assert src.loc["E", f"{name}_alert_number"] == 1 and not src.loc["E", "included"]
        ts, tt = p["timeliness"]["save_jd"], p["timeliness"]["trigger_jd"]
        assert ts["n"] == 2 and ts["median_days"] == pytest.approx(((1 - 3.5) + (2 - 1.0)) / 2)
        assert tt["n"] == 1 and tt["median_hours"] == pytest.approx((1 - 2.5) * 24)
    assert pols["bts_p2"]["FP"] == 1 and src.loc["C", "bts_p2_outcome"] == "FP"
    lines = [line for line in summary_lines(ev.report) if line.startswith("prod_p2:")]
    assert lines == ["prod_p2: completeness 100.0% (2/2), purity 100.0% (2/2), median selection - save -18.00 h "
                     "over 2 TPs"]


def test_cli_refuses_bad_usage(tmp_path):
    r = subprocess.run([sys.executable, "-m", "btsbot_jax.cli.evaluate", f"--out={tmp_path}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "exactly one of --checkpoint" in r.stderr
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"objectId": ["a"], "jd": [1.0], "score": [0.3]}).to_csv(bad, index=False)
    r = subprocess.run([sys.executable, "-m", "btsbot_jax.cli.evaluate", f"--scores={bad}", f"--out={tmp_path}/o"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "lacks column(s) ['magpsf']" in r.stderr


def test_scores_table_checks():
    t = _scores_table()
    clean, rej = check_scores_table(t)
    assert len(clean) + len(rej) == len(t) and rej["reason"].tolist() == ["score is missing"]
    t2 = t.copy()
    t2.loc[3, "label"] = 2
    with pytest.raises(EvaluationError, match=r"label must be 0, 1 or empty.*row 3 \(objectId 'B'"):
        check_scores_table(t2)
    t3 = t.copy().astype({"magpsf": object})
    t3.loc[0, "magpsf"] = "bright"
    t3.loc[1, "objectId"] = None
    _, rej = check_scores_table(t3)
    assert rej.set_index("row")["reason"].to_dict() == {0: "magpsf is not a number", 1: "objectId is missing",
                                                        12: "score is missing"}
    no_label = t.drop(columns=["label", "save_jd", "trigger_jd"]).dropna()
    ev = evaluate_scores(no_label)  # nothing labelled: selections still recorded, metrics undefined
    assert ev.report["alert_level"]["accuracy"] is None
    assert ev.report["source_level"]["inclusion"]["n_included"] == 0
    assert ev.sources["bts_p1_selected"].sum() == 4
    with pytest.raises(EvaluationError, match="unknown scores table format"):
        read_scores_table(__file__)


def test_large_roc_is_thinned_in_json_and_complete_in_csv(tmp_path):
    rng = np.random.default_rng(1)
    n = 6000
    y = np.repeat(rng.integers(0, 2, n // 20), 20)  # one label per source of 20 alerts
    t = pd.DataFrame({"objectId": [f"s{i // 20}" for i in range(n)], "jd": 2460000.0 + rng.random(n),
                      "magpsf": rng.uniform(16, 20, n), "label": y, "score": rng.beta(2, 2, n) * 0.8 + 0.1 * y})
    ev = evaluate_scores(t)
    a = ev.report["alert_level"]
    fpr, tpr, _ = skm.roc_curve(y, t["score"])
    assert a["roc_auc"] == pytest.approx(skm.roc_auc_score(y, t["score"]))
    assert a["roc_curve"]["n_points"] == len(fpr) > 1001 and a["roc_curve"]["n_points_in_report"] <= 1001
    assert a["roc_curve"]["fpr"][0] == 0.0 and a["roc_curve"]["tpr"][-1] == 1.0
    write_report(ev, tmp_path, figures=False)
    full = pd.read_csv(tmp_path / "roc_curve.csv")
    np.testing.assert_array_equal(full["fpr"], fpr)
    np.testing.assert_array_equal(full["tpr"], tpr)
    assert np.isinf(full["threshold"][0])
    json.loads((tmp_path / "report.json").read_text())  # strict JSON (no NaN/Infinity)


def test_find_training_metrics(tmp_path):
    (tmp_path / "work" / "best").mkdir(parents=True)
    (tmp_path / "work" / "metrics.csv").write_text("epoch,loss\n1,0.5\n")
    (tmp_path / "model").mkdir()
    assert find_training_metrics(tmp_path / "work") == tmp_path / "work" / "metrics.csv"
    assert find_training_metrics(tmp_path / "work" / "best") == tmp_path / "work" / "metrics.csv"
    assert find_training_metrics(tmp_path / "model") is None  # a plain model dir: no guessing from its parent


def test_pieces_yield_named_values_into_the_report(tmp_path):
    """An extra evaluator adds its numbers where it names them; two pieces writing one name is an error; a
    registered figure is drawn by the figure pieces and recorded under files / figures_skipped."""
    from btsbot_jax.evaluation import plots
    from btsbot_jax.evaluation.evaluators import EvaluatorError

    class MaxScore:
        name = "max_score"

        def run(self, ctx):
            yield "extra/max_score_label_1", ctx.alerts.loc[ctx.alerts["label"] == 1, "score"].max()
            yield ("source_level", "policies", "bts_p1", "n_sources_seen"), len(ctx.sources)

    t = _scores_table()
    ev = evaluate_scores(t, policies=["bts_p1"], extra_evaluators=[MaxScore()])
    assert ev.report["extra"] == {"max_score_label_1": 0.99}
    p1 = ev.report["source_level"]["policies"]["bts_p1"]
    assert p1["n_sources_seen"] == 5 and p1["TP"] == 2 and "timeliness" in p1
    # the built-in influence piece: every source's AUC without it in the sources table, the largest in the report
    from btsbot_jax.evaluation.metrics import source_influence_auc

    a = ev.alerts  # the checked alerts (C's alert without a score is in the rejected list)
    infl = source_influence_auc(a["label"], a["score"], a["objectId"]).set_index("objectId")
    src = ev.sources.set_index("objectId")
    assert np.isnan(src.loc["E", "roc_auc_without"])  # unlabelled: no influence on the AUC
    np.testing.assert_array_equal(src.loc[infl.index, "roc_auc_without"], infl["roc_auc_without"])
    # without D (label 0, a 0.9 alert that ties or beats most positives): sklearn on the labelled alerts left
    keep = (a["objectId"] != "D") & a["label"].notna()
    assert src.loc["D", "roc_auc_without"] == pytest.approx(
        skm.roc_auc_score(a.loc[keep, "label"], a.loc[keep, "score"]))
    top = ev.report["alert_level"]["roc_auc_source_influence"]["largest"]
    assert [r["objectId"] for r in top] == list(infl.dropna().sort_values("auc_change", ascending=False,
                                                                         kind="stable").index[:5])
    assert top[0]["roc_auc_without"] - ev.report["alert_level"]["roc_auc"] == pytest.approx(top[0]["auc_change"])

    class Clash:
        name = "clash"

        def run(self, ctx):
            yield "source_level/inclusion", {}

    with pytest.raises(EvaluatorError, match="source_level/inclusion is already in the report"):
        evaluate_scores(t, extra_evaluators=[Clash()])

    def n_sources(ev, path, **_):
        fig, ax = plots._figure(3, 3)
        ax[0, 0].bar([0], [len(ev.sources)])
        fig.savefig(path)

    try:
        plots.register_figure("n_sources")(n_sources)
        plots.register_figure("never")(lambda ev, path, **_: "nothing to draw")
        got = dict(plots.Figures(tmp_path, names=["n_sources", "never"]).run(ev))
    finally:
        plots._FIGURES.pop("n_sources", None)
        plots._FIGURES.pop("never", None)
    assert got == {"files/n_sources": tmp_path / "n_sources.png", "figures_skipped/never": "nothing to draw"}
    assert (tmp_path / "n_sources.png").stat().st_size > 1000
