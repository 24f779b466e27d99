"""Export parity: every format scores like the Flax model (v1.0.1 on real alerts, fresh models of each architecture
on random inputs), the ONNX export of v1.0.1 takes the same decisions as the published TF SavedModel on every real
packet in ../shared/data, the artifacts have the names/shapes brokers call, and bad requests fail clearly."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ZTF_ALERTS, ZTF_ALERTS_FINK, require

from btsbot_jax.inference.export import (
    CHOICES,
    ExportError,
    build_onnx,
    export_model,
    model_weights,
    probe_inputs,
    savedmodel_op_types,
)
from btsbot_jax.inference.runtimes import OnnxScorer, SavedModelScorer, StableHLOScorer
from btsbot_jax.inference.scorer import load_scorer
from btsbot_jax.models import create_model, default_model_config
from btsbot_jax.models.model_dir import make_model_card, save_model

FORMATS = ("stablehlo", "onnx", "savedmodel")
RUNTIME_CLASS = {"stablehlo": StableHLOScorer, "onnx": OnnxScorer, "savedmodel": SavedModelScorer}


@pytest.fixture(scope="module")
def v101_export(v101_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("v101_export") / "all"
    export_model(v101_checkpoint, out, "all")
    return out


def test_v101_exports_match_flax_on_real_alerts(v101_export, v101_checkpoint, usage_examples, tf_v101):
    table, triplets, metadata = usage_examples
    flax = load_scorer(v101_checkpoint)(triplets, metadata)
    expected = table["expected_scores"].to_numpy()
    tf_scores = tf_v101(triplets, metadata)
    for fmt in FORMATS:
        scorer = load_scorer(v101_export / fmt)
        assert isinstance(scorer, RUNTIME_CLASS[fmt]) and scorer.version == "v1.0.1"
        got = scorer(triplets, metadata)
        assert got.dtype == np.float32 and got.shape == (39,)
        err = np.abs(got - flax).max()
        print(f"{fmt}: max|export-flax| = {err:.2e}, max|export-published| = {np.abs(got - expected).max():.2e}, "
              f"max|export-tf| = {np.abs(got - tf_scores).max():.2e} on 39 real alerts")
        assert err < 1e-5
        assert np.abs(got - expected).max() < 1e-5
        np.testing.assert_array_equal(got > 0.5, expected > 0.5)
    assert 0 < (expected > 0.5).sum() < 39  # both decisions occur, so the comparison means something


@pytest.mark.slow
def test_v101_exports_match_flax_on_simulated_packets(v101_export, v101_checkpoint, tmp_path):
    """Mock ZTF packets from the simulator, through the same ingestion code as real ones."""
    from btsbot_jax.ingest.features import prepare_batch
    from btsbot_jax.ingest.readers import iter_alerts
    from btsbot_jax.sim.pipeline import SimConfig, simulate

    simulate(tmp_path / "sim", SimConfig(num_sources=12, seed=3, workers=1, training_set=False))
    alerts = list(iter_alerts(tmp_path / "sim"))
    prep = prepare_batch(alerts)
    assert len(prep) > 100 and len(prep) + len(prep.rejected) == len(alerts)
    flax = load_scorer(v101_checkpoint)(prep.triplets, prep.metadata)
    for fmt in FORMATS:
        got = load_scorer(v101_export / fmt)(prep.triplets, prep.metadata)
        err = np.abs(got - flax).max()
        print(f"{fmt}: max|export-flax| = {err:.2e} on {len(prep)} simulated alerts ({(flax > 0.5).sum()} above 0.5)")
        assert err < 1e-5
        np.testing.assert_array_equal(got > 0.5, flax > 0.5)


def _randomised_model(arch: str, seed: int, **sizes):
    """A fresh model whose biases and BatchNorm statistics are non-trivial too (fresh ones are 0 and 1, which
    would not exercise the bias and normalisation paths of the exported graphs)."""
    from flax import nnx

    cfg = default_model_config(arch)
    cfg.update(sizes)
    model = create_model(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    pure = nnx.to_pure_dict(state)

    def perturb(path, x):
        x = np.asarray(x)
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if name.endswith("bn/mean"):
            return rng.normal(0, 50, x.shape).astype(np.float32)
        if name.endswith("bn/var"):
            return rng.uniform(0.1, 500, x.shape).astype(np.float32)
        if name.endswith(("bias", "bn/scale")):
            return (x + rng.normal(0, 0.2, x.shape)).astype(np.float32)
        if "conv" in name:  # Glorot kernels leave L2-normalised cutouts (~0.02 a pixel) near zero: amplify
            return (3 * x).astype(np.float32)
        return x

    import jax

    pure = jax.tree_util.tree_map_with_path(perturb, pure)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    return cfg, model


# one per architecture, with non-default sizes (an even kernel exercises the asymmetric SAME padding)
FRESH = {
    "mm_cnn": {},
    "um_cnn": dict(conv_kernel=4, conv1_channels=8, conv2_channels=12, head_neurons=5),
    "um_nn": dict(meta_fc1_neurons=24, meta_fc2_neurons=16, head_neurons=3),
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(FRESH))
def test_fresh_models_of_each_architecture_export_equal(arch, tmp_path):
    cfg, model = _randomised_model(arch, seed=7, **FRESH[arch])
    save_model(model, tmp_path / "model", make_model_card(cfg, version=f"fresh-{arch}"))
    card = export_model(tmp_path / "model", tmp_path / "export", "all")
    assert card["format"] == "btsbot-jax/export-all" and card["architecture"] == arch
    rng = np.random.default_rng(1)
    t = rng.gamma(2.0, 1.0, size=(37, 63, 63, 3)).astype(np.float32)
    yy, xx = np.mgrid[:63, :63]
    star = np.exp(-((yy - 31) ** 2 + (xx - 31) ** 2) / 6)[..., None]  # a point source of random brightness
    t += rng.uniform(0, 80, (37, 1, 1, 3)).astype(np.float32) * star
    t /= np.linalg.norm(t, axis=(1, 2), keepdims=True)
    w = model_weights(model)
    m = rng.normal(0, 60, size=(37, 25)).astype(np.float32)
    if "metadata/bn/mean" in w:
        m += w["metadata/bn/mean"]
    model.eval()
    flax = np.asarray(model(t, m))[:, 0]
    assert 0.01 < flax.std()  # scores spread out, so equal scores are not a coincidence of saturation
    for fmt in FORMATS:
        got = load_scorer(tmp_path / "export" / fmt)(t, m)
        err = np.abs(got - flax).max()
        print(f"{arch} {fmt}: max|export-flax| = {err:.2e} on 37 random inputs; "
              f"at export time {card['verification'][fmt]['max_abs_diff']:.2e}")
        assert err < 1e-5
        assert card["verification"][fmt]["max_abs_diff"] < 1e-5
        sub = json.loads((tmp_path / "export" / fmt / "model_card.json").read_text())
        assert sub["format"] == f"btsbot-jax/{fmt}" and sub["model_config"] == card["model_config"]
    # the `all` directory itself loads its default runtime
    assert isinstance(load_scorer(tmp_path / "export"), StableHLOScorer)


def test_onnx_graph_is_what_boom_expects(v101_export):
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(v101_export / "onnx" / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    assert [(i.name, dims(i)) for i in model.graph.input] == [("triplet", ["N", 63, 63, 3]), ("metadata", ["N", 25])]
    assert [(o.name, dims(o)) for o in model.graph.output] == [("fc_out", ["N", 1])]
    assert {o.domain: o.version for o in model.opset_import} == {"": 17}
    assert {n.op_type for n in model.graph.node} <= {
        "Transpose", "Conv", "Relu", "MaxPool", "Flatten", "Add", "Sqrt", "Reciprocal", "Mul", "Sub", "Gemm",
        "Concat", "Sigmoid"}
    props = {p.key: p.value for p in model.metadata_props}
    assert props["version"] == "v1.0.1" and json.loads(props["metadata_columns"])[17] == "drb"
    assert json.loads(props["model_card"])["model_version"] == "v1.0.1" and props["output_meaning"] == "score"
    # dynamic batch straight in onnxruntime, the way BOOM calls it
    sess = ort.InferenceSession(str(v101_export / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        t, m = np.zeros((n, 63, 63, 3), np.float32), np.zeros((n, 25), np.float32)
        (out,) = sess.run(["fc_out"], {"triplet": t, "metadata": m})
        assert out.shape == (n, 1) and out.dtype == np.float32


def test_savedmodel_has_v101_signature_and_plain_ops(v101_export):
    import tensorflow as tf
    from conftest import V101_SAVED_MODEL

    ours = tf.saved_model.load(str(v101_export / "savedmodel")).signatures["serving_default"]
    ref = tf.saved_model.load(str(V101_SAVED_MODEL)).signatures["serving_default"]
    assert ours.structured_input_signature == ref.structured_input_signature
    assert ours.structured_outputs.keys() == ref.structured_outputs.keys() == {"fc_out"}
    assert ours.structured_outputs["fc_out"].shape.as_list() == ref.structured_outputs["fc_out"].shape.as_list()
    ops = savedmodel_op_types(v101_export / "savedmodel")
    assert "XlaCallModule" not in ops and {"Conv2D", "MaxPool", "MatMul", "Sigmoid"} <= ops
    assert not any(op.startswith("Xla") for op in ops)


def test_savedmodel_answers_kowalskis_call_like_v101(v101_export, usage_examples):
    """Kowalski: `tf.keras.models.load_model(dir)` (Keras 2), then `model([triplet, features], training=False)`
    one alert at a time with float64 numpy inputs and features shaped (1, 25, 1). tf_keras is Keras 2 here."""
    tf_keras = pytest.importorskip("tf_keras")
    from conftest import V101_SAVED_MODEL

    _, triplets, metadata = usage_examples
    ours = tf_keras.models.load_model(str(v101_export / "savedmodel"))
    ref = tf_keras.models.load_model(str(V101_SAVED_MODEL))
    for i in (0, 7, 38):
        t = triplets[i : i + 1].astype(np.float64)
        f = np.expand_dims(metadata[i].astype(np.float64), axis=[0, -1])
        a = ours([t, f], training=False).numpy()[0]
        b = ref([t, f], training=False).numpy()[0]
        assert a.shape == b.shape == (1,)
        assert abs(float(a[0]) - float(b[0])) < 1e-5
        # the other input order of Kowalski's config
        assert abs(float(ours([f, t], training=False).numpy()[0][0]) - float(a[0])) < 1e-7


def test_stablehlo_runs_with_plain_jax_only(v101_export, usage_examples, tmp_path):
    """The artifact needs jax and numpy only: no btsbot_jax, no Flax, no checkpoint."""
    _, triplets, metadata = usage_examples
    np.save(tmp_path / "t.npy", triplets)
    np.save(tmp_path / "m.npy", metadata)
    code = f"""
import sys, numpy as np, jax
exp = jax.export.deserialize(bytearray(open({str(v101_export / 'stablehlo' / 'model.jax_export')!r}, 'rb').read()))
out = np.asarray(exp.call(np.load({str(tmp_path / 't.npy')!r}), np.load({str(tmp_path / 'm.npy')!r})))
np.save({str(tmp_path / 'out.npy')!r}, out)
assert not any(m.split('.')[0] in ('flax', 'btsbot_jax', 'orbax', 'tensorflow') for m in sys.modules), 'heavy import'
print(exp.platforms, exp.in_avals)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "('cpu', 'cuda')" in res.stdout and "float32[N,63,63,3]" in res.stdout
    out = np.load(tmp_path / "out.npy")
    assert out.shape == (39, 1)
    np.testing.assert_allclose(out[:, 0], load_scorer(v101_export / "stablehlo")(triplets, metadata), atol=1e-6)


def _real_packets():
    from btsbot_jax.ingest.features import prepare_batch
    from btsbot_jax.ingest.readers import iter_alerts

    alerts = [a for p in (require(ZTF_ALERTS), require(ZTF_ALERTS_FINK)) for a in iter_alerts(p)]
    prep = prepare_batch(alerts)
    assert len(prep) + len(prep.rejected) == len(alerts)
    first = ~prep.info["candid"].duplicated().to_numpy()  # fink publishes 3 alerts in two topic files
    return prep, first


@pytest.mark.slow
def test_onnx_v101_same_decisions_as_published_tf_on_all_real_packets(v101_export, tf_v101):
    prep, first = _real_packets()
    assert first.sum() == 768 and not prep.rejected, [r.reason for r in prep.rejected[:5]]
    t, m = prep.triplets[first], prep.metadata[first]
    onnx_scores = load_scorer(v101_export / "onnx")(t, m)
    tf_scores = np.concatenate([tf_v101(t[i : i + 256], m[i : i + 256]) for i in range(0, len(t), 256)])
    err = np.abs(onnx_scores - tf_scores).max()
    margin = np.abs(tf_scores - 0.5).min()
    print(f"768 real packets: max|onnx-tf| = {err:.2e}; {(tf_scores > 0.5).sum()} above 0.5; "
          f"closest TF score to 0.5 is {margin:.2e} away")
    np.testing.assert_array_equal(onnx_scores > 0.5, tf_scores > 0.5)
    assert err < 1e-5
    assert 0 < (tf_scores > 0.5).sum() < 768


def test_probe_inputs_look_like_real_inputs():
    cfg = default_model_config("mm_cnn")
    w = model_weights(create_model(cfg))
    t, m = probe_inputs(w, {"image_size": 63, "num_metadata": 25}, n=10)
    assert t.shape == (10, 63, 63, 3) and m.shape == (10, 25) and t.dtype == m.dtype == np.float32
    full = np.linalg.norm(t[:7], axis=(1, 2))
    np.testing.assert_allclose(full, 1.0, rtol=1e-5)  # L2-normalised cutouts
    assert (t[-3:, -5:] == np.float32(1e-9)).all()  # CCD-edge padding
    np.testing.assert_array_equal(probe_inputs(w, {"image_size": 63, "num_metadata": 25}, n=10)[1], m)


# ------------------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory):
    cfg = default_model_config("um_nn")
    cfg.meta_fc1_neurons, cfg.meta_fc2_neurons = 8, 8
    d = tmp_path_factory.mktemp("small") / "model"
    save_model(create_model(cfg), d, make_model_card(cfg, version="small"))
    return d


def test_unsupported_format_is_refused(small_model_dir, tmp_path):
    with pytest.raises(ExportError, match=r"unsupported export format 'tflite'; expected one of stablehlo, onnx"):
        export_model(small_model_dir, tmp_path / "o", "tflite")
    assert CHOICES == ("stablehlo", "onnx", "savedmodel", "onnx_int8", "all")
    with pytest.raises(ExportError, match="unknown StableHLO platform"):
        export_model(small_model_dir, tmp_path / "o", "stablehlo", platforms=("gpu9000",))


def test_missing_directory_is_refused(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        export_model(tmp_path / "nope", tmp_path / "o", "onnx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="neither a model directory"):
        export_model(tmp_path / "empty", tmp_path / "o", "onnx")
    assert not (tmp_path / "o").exists()


def test_unknown_architecture_is_refused(small_model_dir, tmp_path):
    d = tmp_path / "weird"
    shutil.copytree(small_model_dir, d)
    card = json.loads((d / "model_card.json").read_text())
    card["architecture"] = "resnet50"
    (d / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ExportError, match="cannot export architecture 'resnet50'; supported"):
        export_model(d, tmp_path / "o", "onnx")


def test_checkpoint_of_another_architecture_is_refused(small_model_dir, tmp_path):
    """A card that claims mm_cnn over um_nn weights: the weights do not fit, and the export says so."""
    d = tmp_path / "lying"
    shutil.copytree(small_model_dir, d)
    card = json.loads((d / "model_card.json").read_text())
    card["architecture"] = card["model_config"]["architecture"] = "mm_cnn"
    (d / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ExportError, match="cannot export: .*(do not fit|weight names differ|shape)"):
        export_model(d, tmp_path / "o", "onnx")


def test_builders_refuse_unknown_layers():
    w = model_weights(create_model(default_model_config("um_nn")))
    spec = {"architecture": "um_nn", "image_size": 63, "num_metadata": 25, "bn_epsilon": 1e-3}
    with pytest.raises(ExportError, match=r"missing \['image/conv1/bias'"):
        build_onnx(w, {**spec, "architecture": "mm_cnn"})
    with pytest.raises(ExportError, match="unexpected"):
        build_onnx({**w, "head/extra/kernel": np.zeros((2, 2), np.float32)}, spec)


def test_export_of_an_export_and_existing_out_are_refused(small_model_dir, tmp_path):
    export_model(small_model_dir, tmp_path / "onnx", "onnx")
    with pytest.raises(ExportError, match="is already an export"):
        export_model(tmp_path / "onnx", tmp_path / "again", "onnx")
    with pytest.raises(ExportError, match="exists and is not empty"):
        export_model(small_model_dir, tmp_path / "onnx", "onnx")
    with pytest.raises(ExportError, match="inside the checkpoint"):
        export_model(small_model_dir, small_model_dir / "export", "onnx")
    before = (tmp_path / "onnx" / "model.onnx").stat().st_mtime_ns
    export_model(small_model_dir, tmp_path / "onnx", "onnx", overwrite=True)
    assert (tmp_path / "onnx" / "model.onnx").stat().st_mtime_ns != before


def test_failed_parity_check_writes_nothing(small_model_dir, tmp_path, monkeypatch):
    import btsbot_jax.inference.export as export

    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # nothing can pass
    with pytest.raises(ExportError, match="does not reproduce the Flax model"):
        export_model(small_model_dir, tmp_path / "o", "onnx")
    assert list(tmp_path.iterdir()) == []  # neither the export nor its temporary directory


@pytest.mark.slow
def test_cli_exports_a_training_workdir(small_model_dir, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(small_model_dir, workdir / "best")
    cmd = [sys.executable, "-m", "btsbot_jax.cli.export", f"--checkpoint={workdir}", "--format=onnx",
           f"--out={tmp_path / 'onnx'}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "onnx" in res.stdout and "max|export - flax|" in res.stdout
    card = json.loads((tmp_path / "onnx" / "model_card.json").read_text())
    assert card["format"] == "btsbot-jax/onnx" and card["version"] == "small"
    assert card["exported_from"]["path"].endswith("run/best")
    # bad requests: clear message, non-zero exit
    bad = subprocess.run(cmd[:3] + ["--format=tflite", f"--out={tmp_path / 'x'}"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "tflite" in bad.stderr and "stablehlo" in bad.stderr
    missing = subprocess.run([*cmd[:3], f"--checkpoint={tmp_path / 'nope'}", "--format=onnx",
                              f"--out={tmp_path / 'y'}"], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "does not exist" in missing.stderr  # README: 2 = unusable checkpoint


@pytest.mark.slow
def test_packaged_v101_exports_describe_themselves(tmp_path):
    """No ../shared needed: the weights shipped in the package export, and each artifact says what it is."""
    import onnx
    import tensorflow as tf

    from btsbot_jax import __version__

    card = export_model("v1.0.1", tmp_path / "onnx", "onnx")
    assert card["version"] == "v1.0.1" and card["exported_from"]["format"] == "btsbot-jax/safetensors"
    assert card["verification"]["max_abs_diff"] < 1e-5
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "onnx" / "model.onnx")).metadata_props}
    inside = json.loads(props["model_card"])
    assert inside == card["deployment"] and inside["model_version"] == "v1.0.1"
    assert inside["btsbot_jax_version"] == __version__ and inside["architecture"] == "mm_cnn"
    export_model("v1.0.1", tmp_path / "sm", "savedmodel")
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    assert set(loaded.signatures) == {"serving_default", "model_card"}
    assert json.loads(loaded.signatures["model_card"]()["model_card"].numpy()) == inside
    rng = np.random.default_rng(1)
    t = rng.normal(size=(4, 63, 63, 3)).astype(np.float32)
    t /= np.linalg.norm(t, axis=(1, 2), keepdims=True)
    m = rng.normal(size=(4, 25)).astype(np.float32)
    flax = load_scorer("v1.0.1")(t, m)
    for d in ("onnx", "sm"):
        np.testing.assert_allclose(load_scorer(tmp_path / d)(t, m), flax, atol=1e-5, rtol=0)
