"""The int8 path (btsbot_jax.inference.quantize, `btsbot-export --format=onnx_int8`): exact checks of the agreement
statistics and the configuration, and the acceptance figures of the v1.0.1 int8 export: decisions at 0.5 identical
to float32 v1.0.1 on >= 99.5% of the real packets, and identical bts_p1 / bts_p2 selections on a simulated survey's
test split."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ZTF_ALERTS, ZTF_ALERTS_FINK, require

from btsbot_jax.inference import quantize as q
from btsbot_jax.inference.export import ExportError, export_model
from btsbot_jax.inference.runtimes import ONNX_INT8_FORMAT, OnnxScorer
from btsbot_jax.inference.scorer import load_scorer


def test_agreement_counts_flips_and_differences():
    ref = np.array([0.1, 0.49, 0.51, 0.9, 0.5], np.float32)
    got = np.array([0.12, 0.52, 0.51, 0.7, 0.5], np.float32)
    a = q.agreement(ref, got)
    assert a["n"] == 5 and a["n_flipped"] == 1 and a["flipped_rows"] == [1]
    assert a["identical_decisions"] == pytest.approx(0.8)
    assert a["max_abs_diff"] == pytest.approx(0.2, abs=1e-6)
    assert a["mean_abs_diff"] == pytest.approx((0.02 + 0.03 + 0 + 0.2 + 0) / 5, abs=1e-6)
    # 0.5 itself is not a positive (the policies use score > 0.5)
    assert q.agreement(np.array([0.5]), np.array([0.5000001]))["n_flipped"] == 1
    with pytest.raises(ValueError, match="shape"):
        q.agreement(ref, got[:3])


def test_config_names_and_excluded_nodes():
    c = q.QuantConfig("minmax", ("conv1", "metadata", "head"))
    assert c.nodes_to_exclude() == sorted(["image/conv1/conv", "metadata/fc1/gemm", "metadata/fc1/relu",
                                           "metadata/fc2/gemm", "metadata/fc2/relu", "head/fc/gemm", "head/fc/relu",
                                           "head/out/gemm"])
    assert c.name == "minmax,float[conv1+metadata+head],bias-corrected"
    assert q.QuantConfig("minmax", ("conv1",)).name == "minmax,float[conv1]"  # final Dense int8: nothing to correct
    with pytest.raises(q.QuantizationError, match="unknown node group"):
        q.QuantConfig("minmax", ("conv9",)).nodes_to_exclude()
    assert q.DEFAULT_CONFIG in q.DEFAULT_CANDIDATES
    assert {c.method for c in q.DEFAULT_CANDIDATES} == set(q.METHODS)


def test_quantize_rejects_bad_calibration(tmp_path):
    with pytest.raises(q.QuantizationError, match="calibration method"):
        q.quantize(tmp_path / "x.onnx", tmp_path / "y.onnx", np.zeros((1, 63, 63, 3)), np.zeros((1, 25)),
                   q.QuantConfig("median"))
    with pytest.raises(q.QuantizationError, match="non-empty"):
        q.quantize(tmp_path / "x.onnx", tmp_path / "y.onnx", np.zeros((0, 63, 63, 3)), np.zeros((0, 25)))


def _scores_by_candid(scorer, paths):
    from btsbot_jax.serve.batch import score_paths

    res = score_paths(scorer, paths, progress=False)
    return res.scores.set_index("candid")["score"].sort_index(), res


@pytest.fixture(scope="module")
def v101_int8(v101_checkpoint, tmp_path_factory):
    """The v1.0.1 int8 export, calibrated on a simulated survey and half of the real packets. The candidate list is
    cut to the configuration the full search chooses for these weights (DEFAULT_CONFIG), to keep the test to a few
    minutes; the other candidates only cost time."""
    require(ZTF_ALERTS)
    out = tmp_path_factory.mktemp("int8") / "v101_int8"
    card = export_model(v101_checkpoint, out, "onnx_int8",
                        int8_options={"real_paths": [ZTF_ALERTS, ZTF_ALERTS_FINK], "sim_sources": 60,
                                      "candidates": [q.DEFAULT_CONFIG]})
    return out, card


@pytest.mark.slow
def test_v101_int8_decisions_on_real_packets(v101_int8, v101_checkpoint):
    out, card = v101_int8
    assert card["format"] == ONNX_INT8_FORMAT
    assert json.loads((out / "model_card.json").read_text())["quantization"]["name"] == card["quantization"]["name"]
    int8 = load_scorer(out)
    assert isinstance(int8, OnnxScorer)
    paths = [ZTF_ALERTS, ZTF_ALERTS_FINK]
    f32, res = _scores_by_candid(load_scorer(v101_checkpoint), paths)
    i8, _ = _scores_by_candid(int8, paths)
    assert len(f32) == res.summary["scored"] == 768 and (i8.index == f32.index).all()
    a = q.agreement(f32.to_numpy(), i8.to_numpy())
    print(f"int8 vs float32 v1.0.1 on {a['n']} real packets: {a['identical_decisions']:.2%} identical decisions "
          f"({a['n_flipped']} flipped), max |diff| {a['max_abs_diff']:.4f}, mean {a['mean_abs_diff']:.4f} "
          f"[{card['quantization']['name']}]")
    assert a["identical_decisions"] >= 0.995
    assert 0 < (f32 > 0.5).sum() < len(f32)  # both decisions occur among the real packets


@pytest.mark.slow
def test_v101_int8_policies_on_simulated_test_split(v101_int8, v101_checkpoint, tmp_path):
    """bts_p1 / bts_p2 select the same sources at the same alert with int8 as with float32, on a simulated survey
    independent of the calibration one (other seed)."""
    from btsbot_jax.data.training_set import load_split
    from btsbot_jax.evaluation.policies import group_alerts, select
    from btsbot_jax.sim.pipeline import SimConfig, simulate

    out, _ = v101_int8
    simulate(tmp_path / "sim", SimConfig(num_sources=300, seed=77, workers=1, keep_packets=False))
    split = load_split(tmp_path / "sim", "test", mmap=False)
    f32 = load_scorer(v101_checkpoint)(split.triplets, split.metadata)
    i8 = load_scorer(out)(split.triplets, split.metadata)
    a = q.agreement(f32, i8)
    print(f"int8 vs float32 on {a['n']} simulated test alerts: {a['identical_decisions']:.2%} identical, "
          f"max |diff| {a['max_abs_diff']:.4f}")
    assert a["identical_decisions"] >= 0.995
    c = split.cand
    for policy in ("bts_p1", "bts_p2"):
        s32 = select(group_alerts(c["objectId"], c["jd"], c["magpsf"], f32), policy)
        s8 = select(group_alerts(c["objectId"], c["jd"], c["magpsf"], i8), policy)
        assert s32["selected"].sum() > 0, policy  # the comparison means something
        np.testing.assert_array_equal(s32["selected"], s8["selected"])
        np.testing.assert_array_equal(s32["alert_number"], s8["alert_number"])


@pytest.mark.slow
def test_int8_export_refuses_below_agreement_and_writes_nothing(v101_checkpoint, tmp_path):
    out = tmp_path / "nope"
    with pytest.raises(ExportError, match="nothing was written"):
        export_model(v101_checkpoint, out, "onnx_int8",
                     int8_options={"sim_sources": 20, "candidates": [q.DEFAULT_CONFIG], "min_identical": 1.01})
    assert not out.exists() and not list(tmp_path.glob(".nope*"))
