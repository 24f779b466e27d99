"""Agreement of a model with a reference model: hand-worked values, and the packet path on real alerts."""

import math

import numpy as np
import pytest
from conftest import ZTF_ALERTS, require

from btsbot_jax.evaluation.agreement import agreement, labelled_metrics, sim_to_real


def test_agreement_by_hand():
    ref = np.array([0.9, 0.8, 0.2, 0.1, 0.6])  # decisions 1 1 0 0 1
    s = np.array([0.7, 0.4, 0.3, 0.05, 0.95])  # decisions 1 0 0 0 1
    a = agreement(s, ref)
    assert a["alerts"] == 5 and a["reference_positive"] == 3 and a["model_positive"] == 2
    assert a["decision_agreement"] == pytest.approx(4 / 5)
    # positives (by reference) 0.7, 0.4, 0.95 vs negatives 0.3, 0.05: every positive outranks every negative
    assert a["auc_vs_reference_decisions"] == 1.0
    # ranks of s: 4 3 2 1 5; of ref: 5 4 2 1 3 -> d^2 = 1+1+0+0+4 = 6 -> 1 - 6*6/(5*24) = 0.7
    assert a["spearman"] == pytest.approx(0.7)
    assert a["max_abs_diff"] == pytest.approx(0.4)


def test_agreement_degenerate_cases():
    a = agreement(np.array([0.9, 0.8]), np.array([0.7, 0.6]))  # the reference has one class only
    assert math.isnan(a["auc_vs_reference_decisions"]) and a["decision_agreement"] == 1.0
    with pytest.raises(ValueError, match="two vectors"):
        agreement(np.zeros(3), np.zeros(4))
    m = labelled_metrics(np.array([0.9, 0.2, 0.6, 0.4]), np.array([1, 0, 0, 1]))
    assert m["accuracy"] == 0.5 and m["auc"] == pytest.approx(0.75) and m["positives"] == 2


@pytest.mark.slow
def test_sim_to_real_on_real_packets(v101_checkpoint, usage_examples):
    require(ZTF_ALERTS)
    import btsbot_jax
    from btsbot_jax.models import create_model, default_model_config
    from btsbot_jax.models.model_dir import make_model_card, save_model

    ref = btsbot_jax.load_scorer(v101_checkpoint)
    from btsbot_jax.serve.batch import score_paths

    scored = score_paths(ref, [ZTF_ALERTS]).scores
    first = scored["candid"].to_numpy()[:10]
    same = sim_to_real(ref, ref, [ZTF_ALERTS], subsets={"first ten": set(first.tolist()), "none": set()})
    p = same["packets"]
    assert p["alerts"] == 36 and p["decision_agreement"] == 1.0 and p["max_abs_diff"] == 0.0
    assert p["spearman"] == pytest.approx(1.0)
    sub = same["packets_by_subset"]
    assert sub["first ten"]["alerts"] == 10 and sub["none"]["alerts"] == 0
    assert sub["first ten"]["reference_positive"] == int((scored["score"].to_numpy()[:10] > 0.5).sum())

    table, triplets, metadata = usage_examples
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        cfg = default_model_config("mm_cnn")
        other_dir = save_model(create_model(cfg, seed=3), f"{d}/m", make_model_card(cfg, version="random"))
        other = btsbot_jax.load_scorer(other_dir)
        res = sim_to_real(other, ref, [ZTF_ALERTS], labelled=(triplets, metadata, table["label"].to_numpy()))
        s_other = other(triplets, metadata)
    # the labelled view is the direct computation on the 39 alerts
    assert res["labelled"]["model"] == labelled_metrics(s_other, table["label"].to_numpy())
    assert res["labelled"]["reference"]["auc"] == 1.0  # v1.0.1 ranks the 39 labelled alerts perfectly
    assert res["packets"]["alerts"] == 36 and res["rejected"] == 0 and res["records_read"] == 36
    assert 0.0 <= res["packets"]["decision_agreement"] <= 1.0
