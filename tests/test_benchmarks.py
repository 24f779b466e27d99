"""Benchmarks: each runs end to end in --quick mode and writes a JSON of the documented structure (speed is not
checked here: timings on a shared machine belong in benchmarks/README.md, as ratios). Plus exact checks of the
pieces the benchmarks and the speed work rely on: the timing statistics, the FLOP count, the scorer's bucket plan
and the model's skipped rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import V101_SAVED_MODEL, ZTF_ALERTS

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(script: str, tmp_path: Path, *args: str, timeout: int = 600) -> dict:
    out = tmp_path / script
    proc = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), "--quick", f"--out_dir={out}", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jsons = sorted(out.glob("*.json"))
    pngs = sorted(out.glob("*.png"))
    assert len(jsons) == 1 and len(pngs) == 1, (jsons, pngs)
    assert pngs[0].read_bytes()[:8] == PNG_MAGIC
    report = json.loads(jsons[0].read_text())
    _check_machine(report["machine"])
    return report


def _check_machine(m: dict) -> None:
    for key in ("date_utc", "cpu_model", "cpu_count", "device_kind", "device_count", "devices", "versions",
                "load_average_at_start", "load_average_at_end", "machine_busy", "jax_backend"):
        assert key in m, key
    assert m["device_count"] == len(m["devices"]) >= 1
    assert {"jax", "jaxlib", "numpy"} <= set(m["versions"])


def _check_summary(s: dict, items: int) -> None:
    assert s["items_per_call"] == items and s["calls"] >= 1
    assert s["throughput"] > 0 and all(x > 0 for x in s["throughput_per_round"])
    lat = s["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]


# ------------------------------------------------------------------------------------------------ smoke runs
@pytest.mark.slow
def test_inference_quick(tmp_path):
    r = _run("inference", tmp_path)
    assert r["benchmark"] == "inference" and r["config"]["batch_sizes"] == [1, 64]
    assert {"jax", "jax_raw"} <= set(r["runtimes"])
    assert r["model"]["flops_per_alert"] == common.mm_cnn_flops()
    assert r["compute_limit"]["alerts_per_s"] > 0
    assert set(r["best_fraction_of_compute_limit"]) == set(r["runtimes"])
    for b in ("1", "64"):
        for name in r["runtimes"]:
            _check_summary(r["results"][b][name], int(b))
        _check_summary(r["results"][b]["compute_limit"], 2 * 1024**3 / common.mm_cnn_flops())
        # every float32 runtime scores the benchmark inputs like the reference (a fast wrong model is no result)
        diffs = r["max_abs_score_difference_vs_reference"][b]
        assert set(diffs) == set(r["runtimes"]) and max(diffs.values()) < 1e-4, diffs
    assert set(r["runtimes"]) | set(r["skipped"]) >= {"jax", "jax_raw", "stablehlo", "onnx", "tf_v101"}
    if V101_SAVED_MODEL.exists():
        assert "tf_v101" in r["runtimes"] and r["model"]["source"].startswith("v1.0.1")
        assert r["ratios_vs_tf_v101"]["64"]["tf_v101"]["ratio"] == 1.0
        assert [t["target"] for t in r["targets"]] == ["JAX scorer >= 1.0x TF v1.0.1 at batch 1",
                                                       "JAX scorer >= 1.0x TF v1.0.1 at batch 64"]
        for t in r["targets"]:
            assert t["met"] == (t["ratio"] >= 1.0)


@pytest.mark.slow
def test_end_to_end_quick(tmp_path):
    r = _run("end_to_end", tmp_path)
    assert r["benchmark"] == "end_to_end"
    res = r["results"]["64"]
    _check_summary(res["pipeline"], 128)
    _check_summary(res["model_only"], 128)
    acc = r["pipeline_accounting"]["64"]
    assert acc["records"] == 256 == acc["scored"] + acc["rejected"] + acc["duplicates"]
    assert acc["duplicates"] == 0  # every copy got fresh candids
    assert set(r["stage_ms_per_alert"]["pipeline_serial_one_pass"]) == {"decode_avro", "cutouts_and_features",
                                                                        "model"}
    if ZTF_ALERTS.exists():
        assert "real ZTF" in r["corpus"]["description"] and r["corpus"]["packets"] >= 36
    if V101_SAVED_MODEL.exists():
        _check_summary(res["kowalski"], 16)
        agree = r["kowalski_agreement"]
        assert agree["alerts_compared"] >= 60 and agree["max_abs_difference"] < 1e-4
        assert agree["scored_by_one_only"] == 0
        assert set(r["stage_ms_per_alert"]["kowalski"]) == {"read", "stamps", "features", "model"}
        assert {t["target"] for t in r["targets"]} == {"end-to-end >= 0.8x model-only",
                                                       "end-to-end >= 3x the Kowalski-style per-alert loop"}


@pytest.mark.slow
def test_training_quick(tmp_path):
    r = _run("training", tmp_path)
    assert r["benchmark"] == "training"
    assert r["model"]["parameters_ours"] == r["model"]["parameters_keras"] == 227_811 + 50
    for name in ("jax_train_step", "keras_fit"):
        _check_summary(r["results_samples_per_s"][name], 2 * 64)
    assert r["targets"][0]["target"] == "training >= 1.5x Keras fit"


# ------------------------------------------------------------------------------------------------ pieces
def test_flops_of_mm_cnn():
    # convs: 25 * 2 * (63^2 * (3*32 + 32*32) + 31^2 * (32*64 + 64*64)); dense: 2 * (25*128 + 128*128 + 3264*8 + 8)
    assert common.mm_cnn_flops() == 517_483_200 + 91_408


def test_summary_and_ratio_statistics():
    a = common.summarize([[0.1, 0.1], [0.2, 0.2]], items_per_call=4)
    assert a["calls"] == 4 and a["throughput"] == pytest.approx(16 / 0.6, abs=1e-3)
    assert a["throughput_per_round"] == pytest.approx([40.0, 20.0])
    assert a["latency_ms"]["p50"] == pytest.approx(150.0) and a["latency_ms"]["min"] == pytest.approx(100.0)
    b = common.summarize([[0.2], [0.2]], items_per_call=4)
    r = common.ratio(a, b)
    assert r["ratio"] == pytest.approx((16 / 0.6) / 20.0, abs=1e-4)
    assert (r["per_round_min"], r["per_round_max"]) == pytest.approx((1.0, 2.0))


def test_interleave_alternates_and_rotates():
    calls = []
    cases = {k: (lambda k=k: calls.append(k)) for k in "ABC"}
    out = common.interleave(cases, rounds=3, slice_seconds=0.0, min_calls=2, warmup=0)
    assert "".join(calls) == "AABBCC" + "BBCCAA" + "CCAABB"
    assert all(len(out[k]) == 3 and all(len(r) == 2 for r in out[k]) for k in "ABC")


def test_scorer_bucket_plan():
    from btsbot_jax.inference.scorer import DEFAULT_BUCKETS, _chunk_plans

    plans = _chunk_plans(DEFAULT_BUCKETS, call_rows=8)
    assert plans[512] == [256, 256]  # not one 1024 call with 512 rows of padding
    assert plans[1000] == [1024] and plans[1] == [1] and plans[64] == [64] and plans[300] == [256, 64]
    for r in range(1, 1024):
        p = plans[r]
        assert set(p) <= set(DEFAULT_BUCKETS) and sum(p) >= r > sum(p) - min(p)  # covers r, last call not idle


def test_scorer_splits_like_padding(tmp_path):
    """512 rows scored as 2 x 256 equal the same rows scored one by one (padding or splitting must not matter)."""
    from btsbot_jax.inference.scorer import load_scorer
    from btsbot_jax.models import create_model, default_model_config
    from btsbot_jax.models.model_dir import make_model_card, save_model

    cfg = default_model_config()
    save_model(create_model(cfg, seed=1), tmp_path / "m", make_model_card(cfg, version="t"))
    scorer = load_scorer(tmp_path / "m", buckets=(1, 8, 64))
    rng = np.random.default_rng(0)
    t = rng.random((72, 63, 63, 3), dtype=np.float32) * 0.02
    m = rng.normal(size=(72, 25)).astype(np.float32)
    assert scorer._plan(72) == [64, 8]
    full = scorer(t, m)
    np.testing.assert_allclose(full[:9], np.concatenate([scorer(t[i:i + 1], m[i:i + 1]) for i in range(9)]),
                               atol=1e-6)
    np.testing.assert_allclose(full[64:], scorer(t[64:], m[64:]), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("image_size,kernel", [(63, 5), (63, 3), (63, 7), (40, 5), (17, 3)])
def test_image_branch_skipped_rows_change_nothing(image_size, kernel):
    """The image branch computes only the conv rows its VALID pools keep; the result equals the plain SAME
    convolutions of the same modules exactly, for any image size and kernel of the search space."""
    from flax import nnx

    from btsbot_jax.models import create_model, default_model_config

    cfg = default_model_config("um_cnn")
    cfg.image_size, cfg.conv_kernel, cfg.conv1_channels, cfg.conv2_channels = image_size, kernel, 8, 16
    model = create_model(cfg, seed=3)
    model.eval()
    im = model.image

    def plain(x):
        x = nnx.relu(im.conv2(nnx.relu(im.conv1(x))))
        x = nnx.max_pool(x, (2, 2), (2, 2), "VALID")
        x = nnx.relu(im.conv4(nnx.relu(im.conv3(x))))
        return nnx.max_pool(x, (4, 4), (4, 4), "VALID").reshape(x.shape[0], -1)

    x = np.random.default_rng(1).normal(size=(3, image_size, image_size, 3)).astype(np.float32)
    ours, ref = np.asarray(im(x)), np.asarray(plain(x))
    assert ours.shape == ref.shape == (3, im.out_features)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6 * np.abs(ref).max())


@pytest.mark.slow
def test_pairwise_quick(tmp_path):
    """Each pair in its own process, A/A included: the JSON has per-round ratios whose median/min/max are
    consistent, the markdown table has one row per (pair, batch), and int8 vs float ONNX ran."""
    out = tmp_path / "pairwise"
    proc = subprocess.run([sys.executable, str(BENCH / "pairwise.py"), "--quick", f"--out_dir={out}"],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (js,), (md,) = sorted(out.glob("*.json")), sorted(out.glob("*.md"))
    r = json.loads(js.read_text())
    _check_machine(r["machine"])
    assert r["benchmark"] == "pairwise_inference" and r["config"]["onnxruntime_spinning"] is False
    assert set(r["pairs"]) == {"aa_ort", "int8_vs_ort"} and not r["skipped"]
    assert r["compute_limit"]["best_gflops"] > 0
    for name, p in r["pairs"].items():
        assert (p["a"], p["b"]) == {"aa_ort": ("onnx", "onnx"), "int8_vs_ort": ("onnx_int8", "onnx")}[name]
        for b in ("1", "64"):
            x = p["batches"][b]
            _check_summary(x["a"], int(b))
            _check_summary(x["b"], int(b))
            per = x["ratio_per_round"]
            assert len(per) == 2 and x["ratio_min"] == min(per) and x["ratio_max"] == max(per)
            assert x["ratio_min"] <= x["ratio_median"] <= x["ratio_max"]
            assert r["ratios"][name][b]["ratio_median"] == x["ratio_median"]
            frac = r["fraction_of_compute_limit"][name][b]["a"]
            assert frac == pytest.approx(x["a"]["throughput"] * common.mm_cnn_flops()
                                         / (r["compute_limit"]["best_gflops"] * 1e9), rel=1e-3)
        assert p["batches"]["64"]["max_abs_score_difference"] < (1e-6 if name == "aa_ort" else 0.5)
    rows = [line for line in md.read_text().splitlines() if line.startswith("| aa_ort") or line.startswith("| int8")]
    assert len(rows) == 4


@pytest.mark.slow
def test_pairwise_v2_quick(tmp_path):
    """--v2: BTSbot v2 ConvNeXt-pico fusion against v1.0.1 mm_cnn, in JAX and in ONNX Runtime; each side's share of
    the compute limit uses its own model's FLOPs (XLA's cost analysis for v2), and the v2 target is judged at batch
    64 and 512 only."""
    out = tmp_path / "pairwise_v2"
    proc = subprocess.run([sys.executable, str(BENCH / "pairwise.py"), "--quick", "--v2", f"--out_dir={out}"],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((out / "pairwise_v2_cpu_quick.json").read_text())
    assert set(r["pairs"]) == {"v2_vs_v1_jax", "v2_vs_v1_ort"} and not r["skipped"]
    assert (r["pairs"]["v2_vs_v1_jax"]["a"], r["pairs"]["v2_vs_v1_ort"]["a"]) == ("jax_v2", "onnx_v2")
    v2_flops = r["model"]["v2_flops_per_alert"]
    assert 0.1e9 < v2_flops < 0.2e9 < common.mm_cnn_flops()  # pico fusion at 63x63: ~3.5x fewer FLOPs than mm_cnn
    gf = r["compute_limit"]["best_gflops"] * 1e9
    for name, p in r["pairs"].items():
        for b in ("1", "64"):
            x = p["batches"][b]
            _check_summary(x["a"], int(b))
            assert r["fraction_of_compute_limit"][name][b]["a"] == pytest.approx(x["a"]["throughput"] * v2_flops / gf,
                                                                               rel=1e-3)
            assert r["fraction_of_compute_limit"][name][b]["b"] == pytest.approx(
                x["b"]["throughput"] * common.mm_cnn_flops() / gf, rel=1e-3)
    assert [(t["pair"], t["batch"]) for t in r["targets"]] == [("v2_vs_v1_jax", "64")]


@pytest.mark.slow
def test_spark_score_quick(tmp_path):
    """btsbot-spark-score on local[1] and local[2] against btsbot-score on a small simulated archive: the counts
    agree, the scores are the same, and overhead and scaling are derived from the runs."""
    out = tmp_path / "spark"
    proc = subprocess.run([sys.executable, str(BENCH / "spark_score.py"), "--quick", f"--out_dir={out}",
                           f"--workdir={tmp_path / 'work'}"], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((out / "spark_score_cpu_quick.json").read_text())
    _check_machine(r["machine"])
    assert r["pin_cores"] is True
    for cores, master in ((1, "local[1]"), (2, "local[2]")):
        ref = r["runs"][f"btsbot-score[{cores}]"]
        assert ref["cores"] == r["runs"][master]["cores"] == cores
        assert r["alerts"] == ref["summary"]["records_read"] > 500
        run = r["runs"][master]
        assert run["parity"] == {"same_candids": True, "rows": ref["summary"]["scored"],
                                 "max_abs_score_diff": pytest.approx(0.0, abs=1e-6)}
        assert run["summary"]["records_read"] == (run["summary"]["scored"] + run["summary"]["rejected"]
                                                  + run["summary"]["duplicates"])
        assert r["derived"][f"overhead_{master}"] == pytest.approx(ref["alerts_per_s_wall"] / run["alerts_per_s_wall"])
    assert r["derived"]["scaling_local1_to_local2"] == pytest.approx(
        r["runs"]["local[2]"]["alerts_per_s_wall"] / r["runs"]["local[1]"]["alerts_per_s_wall"])


@pytest.mark.slow
def test_scorer_ab_quick(tmp_path):
    """Compile-option variants of the scorer are checked against the default before they are timed."""
    out = tmp_path / "ab"
    proc = subprocess.run([sys.executable, str(BENCH / "scorer_ab.py"), "--quick", f"--out_dir={out}"],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((out / "scorer_ab_cpu_quick.json").read_text())
    _check_machine(r["machine"])
    rows = r["results"]["64"]
    assert set(rows) == {"aa_default", "no_ynn"}
    assert rows["aa_default"]["max_abs_diff_vs_default"] == 0.0
    for row in rows.values():
        assert row["max_abs_diff_vs_default"] <= 1e-6 and "error" not in row
        assert row["ratio_min"] <= row["ratio_median"] <= row["ratio_max"]
        assert row["variant_per_s"] > 0 and row["default_per_s"] > 0
