"""Scripts under experiments/ that compute the figures of the docs, on inputs whose answer is known."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
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



def test_explain_source_finds_the_feature_the_score_hangs_on(tmp_path):
    """A scorer that reads only peakmag_so_far (and the images' sum): swapping that feature for the label-1 median
    gives the score at that median exactly, and it ranks first; the other swaps change nothing."""
    mod = _load("explain_source")
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 6)):
        _split(tmp_path, split, rng, n)
    j = METADATA_COLUMNS.index("peakmag_so_far")

    def scorer(t, m):
        return 1 / (1 + np.exp(-4 * (18.5 - m[:, j]))) + 0 * t.sum(axis=(1, 2, 3))

    from btsbot_jax.data.training_set import load_split

    test, train = load_split(tmp_path, "test"), load_split(tmp_path, "train")
    faint = test.cand.loc[test.labels == 0, "objectId"].iloc[0]
    res = mod.explain(scorer, str(tmp_path), faint, reference=scorer)
    typical = np.median(train.metadata[train.labels == 1, j])
    assert res["n_alerts"] == 5 and res["label"] == 0 and res["reference_mean_score"] == res["mean_score"]
    top = res["features"][0]
    assert top["feature"] == "peakmag_so_far" and top["typical_label_1"] == pytest.approx(typical)
    assert top["score_with_typical"] == pytest.approx(1 / (1 + np.exp(-4 * (18.5 - typical))), rel=1e-6)
    assert all(r["score_with_typical"] == pytest.approx(res["mean_score"]) for r in res["features"][1:])
    # whole swaps: label-1 metadata lifts the score, label-1 images (all zeros here) change nothing
    assert res["its_images_with_label_1_metadata"] > 0.5 > res["mean_score"]
    assert res["label_1_images_with_its_metadata"] == pytest.approx(res["mean_score"])
    with pytest.raises(SystemExit, match="no alerts"):
        mod.explain(scorer, str(tmp_path), "nobody")


def test_sim_to_real_records_the_sources_the_auc_hangs_on():
    """The run's JSON names the sources whose removal raises the simulated test AUC most, with set and sub-type."""
    mod = _load("sim_to_real")
    cand = pd.DataFrame({"objectId": ["a"] * 2 + ["b"] * 2 + ["c"] * 10 + ["d"] * 2,
                         "source_set": ["trues"] * 4 + ["vars"] * 10 + ["rejects"] * 2,
                         "subtype": ["SN Ia"] * 2 + ["TDE"] * 2 + ["QSO"] * 10 + ["dipole"] * 2})
    labels = np.array([1] * 4 + [0] * 12)
    scores = np.array([0.9, 0.8, 0.7, 0.6] + [0.95] * 10 + [0.1, 0.2])  # the QSO outranks every true
    top = mod._largest_influence(cand, labels, scores)
    assert top[0] == {"objectId": "c", "label": 0, "n_alerts": 10, "mean_score": 0.95,
                      "auc_change": round(1.0 - 8 / 48, 4), "source_set": "vars", "subtype": "QSO"}
    assert len(top) == 3 and [r["objectId"] for r in top][1:] == ["a", "b"]  # equal changes keep objectId order

def test_sim_to_real_subsets_split_the_real_packets():
    """The views of experiments/sim_to_real.py partition the real packets: placeholder host fields or real ones, and
    the real ones by whether ZTF matched a known asteroid within 10" (counted here with fastavro, not our reader)."""
    import fastavro
    from conftest import ZTF_ALERTS, require

    require(ZTF_ALERTS)
    subsets = _load("sim_to_real").placeholder_subsets([ZTF_ALERTS])
    known, other = set(), set()
    for path in sorted(ZTF_ALERTS.rglob("*.avro")):
        with open(path, "rb") as f:
            for rec in fastavro.reader(f):
                ss = rec["candidate"]["ssdistnr"]
                (known if ss is not None and 0 <= ss < 10 else other).add(rec["candid"])
    assert subsets["placeholder host fields"] == set()  # the kowalski packets are raw ZTF
    assert subsets["real host fields"] == known | other and len(known) == 15 and len(other) == 21
    assert subsets["real host fields, known asteroids"] == known
    assert subsets["real host fields, no known asteroid"] == other


def test_sim_to_real_table_adds_the_asteroid_column_only_when_every_run_has_it(tmp_path):
    import json

    mod = _load("sim_to_real")
    view = {"auc": 0.9, "auc_source_bootstrap_90": [0.8, 0.95], "alerts": 100, "positives": 40}
    agree = {"auc_vs_reference_decisions": 0.8, "decision_agreement": 0.7, "spearman": 0.6,
             "model_positive": 33, "reference_positive": 22}
    paths = []
    for seed, subsets in ((0, ("real host fields", "real host fields, known asteroids")), (1, ("real host fields",))):
        d = {"trained": f"demo, btsbot-simulate --num_sources=400 --seed={seed}", "model_on_simulated": view,
             "reference_on_simulated": view, "packets": agree, "labelled": {"model": {"auc": 0.5}},
             "packets_by_subset": {k: agree for k in subsets}}
        paths.append(tmp_path / f"{seed}.json")
        paths[-1].write_text(json.dumps(d))
    both = mod.markdown_table(paths).splitlines()
    assert len(both) == 4 and all(r.count("|") == 12 for r in both)  # one JSON lacks the view: no column
    one = mod.markdown_table(paths[:1]).splitlines()
    assert one[0].endswith("known asteroids (110): positives, model / v1.0.1 |") and one[2].endswith("| 33 / 22 |")
    assert all(r.count("|") == 13 for r in one)
