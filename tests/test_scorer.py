"""Foundation parity: the imported v1.0.1 weights reproduce the published scores, and the scorer refuses bad input."""

import json
import shutil

import numpy as np
import pytest

from btsbot_jax.inference.scorer import DEFAULT_BUCKETS, InputError, load_scorer
from btsbot_jax.models import create_model, default_model_config
from btsbot_jax.models.model_dir import CheckpointError, load_model, save_model


def test_v101_parity_with_expected_scores_and_tf(v101_checkpoint, usage_examples, tf_v101):
    table, triplets, metadata = usage_examples
    scorer = load_scorer(v101_checkpoint)
    ours = scorer(triplets, metadata)
    assert ours.dtype == np.float32 and ours.shape == (39,)
    expected = table["expected_scores"].to_numpy()
    tf_scores = tf_v101(triplets, metadata)
    err_expected = np.abs(ours - expected).max()
    err_tf = np.abs(ours - tf_scores).max()
    print(f"v1.0.1 parity on 39 real alerts: max|jax-expected|={err_expected:.2e} max|jax-tf|={err_tf:.2e}")
    assert err_expected < 1e-5
    assert err_tf < 1e-5
    # decisions agree, and both classes occur so the check means something
    np.testing.assert_array_equal(ours > 0.5, expected > 0.5)
    assert 0 < (expected > 0.5).sum() < 39


def test_model_card_of_import(v101_checkpoint):
    card = json.loads((v101_checkpoint / "model_card.json").read_text())
    assert card["version"] == "v1.0.1" and card["architecture"] == "mm_cnn"
    assert card["metadata_columns"][17] == "drb" and len(card["metadata_columns"]) == 25
    assert card["provenance"]["source"] == "keras-savedmodel"
    assert len(card["provenance"]["variables_sha256"]) == 64


def test_any_batch_size_uses_fixed_buckets(v101_checkpoint, usage_examples):
    _, triplets, metadata = usage_examples
    scorer = load_scorer(v101_checkpoint, buckets=(1, 8, 64))
    full = scorer(triplets, metadata)
    for n in (1, 3, 8, 9, 39):
        np.testing.assert_allclose(scorer(triplets[:n], metadata[:n]), full[:n], atol=1e-6)
    assert scorer.compiled_sizes() == 3  # sizes 1, 3, 8, 9, 39 -> buckets 1, 8, 64 only
    # more rows than the largest bucket are chunked
    big_t = np.concatenate([triplets] * 3)
    big_m = np.concatenate([metadata] * 3)
    np.testing.assert_allclose(scorer(big_t, big_m), np.concatenate([full] * 3), atol=1e-6)
    assert scorer.compiled_sizes() == 3


def test_save_load_roundtrip(tmp_path):
    from btsbot_jax.models.model_dir import make_model_card

    cfg = default_model_config("um_nn")
    cfg.meta_fc1_neurons = 16
    model = create_model(cfg, seed=3)
    save_model(model, tmp_path / "m", make_model_card(cfg, version="test"))
    loaded, card = load_model(tmp_path / "m")
    assert card["architecture"] == "um_nn" and card["model_config"]["meta_fc1_neurons"] == 16
    np.testing.assert_array_equal(loaded.metadata.fc1.kernel.value, model.metadata.fc1.kernel.value)
    t, m = np.zeros((2, 63, 63, 3), np.float32), np.ones((2, 25), np.float32)
    model.eval()
    np.testing.assert_allclose(load_scorer(tmp_path / "m")(t, m), np.asarray(model(t, m))[:, 0], atol=1e-7)


@pytest.fixture(scope="module")
def small_scorer(tmp_path_factory):
    from btsbot_jax.models.model_dir import make_model_card

    cfg = default_model_config()
    d = tmp_path_factory.mktemp("m") / "model"
    save_model(create_model(cfg), d, make_model_card(cfg, version="t"))
    return load_scorer(d)


@pytest.mark.parametrize(
    "t_shape,m_shape,match",
    [
        ((2, 63, 63), (2, 25), r"triplets must have shape \(N, 63, 63, 3\)"),
        ((2, 64, 64, 3), (2, 25), r"got \(2, 64, 64, 3\)"),
        ((2, 63, 63, 3), (2, 24), r"metadata must have shape \(N, 25\), got \(2, 24\)"),
        ((2, 63, 63, 3), (3, 25), "disagree on N: 2 vs 3"),
    ],
)
def test_wrong_shapes_are_refused(small_scorer, t_shape, m_shape, match):
    with pytest.raises(InputError, match=match):
        small_scorer(np.zeros(t_shape, np.float32), np.zeros(m_shape, np.float32))


def test_nan_and_inf_are_refused_naming_row_and_column(small_scorer):
    t = np.zeros((4, 63, 63, 3), np.float32)
    m = np.zeros((4, 25), np.float32)
    t[2, 5, 5, 1] = np.nan
    with pytest.raises(InputError, match=r"triplets contain NaN or inf in row\(s\) \[2\]"):
        small_scorer(t, m)
    t[2, 5, 5, 1] = 0
    m[3, 5] = np.inf
    with pytest.raises(InputError, match="first: row 3, magpsf"):
        small_scorer(t, m)


def test_missing_or_foreign_checkpoint(tmp_path, v101_checkpoint):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_scorer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a model directory"):
        load_scorer(tmp_path / "empty")
    # weights of mm_cnn under a card claiming a different-sized architecture
    bad = tmp_path / "bad"
    shutil.copytree(v101_checkpoint, bad)
    card = json.loads((bad / "model_card.json").read_text())
    card["model_config"]["conv1_channels"] = 16
    (bad / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="conv1"):
        load_scorer(bad)
    with pytest.raises(CheckpointError, match="expected 'um_nn'"):
        load_model(v101_checkpoint, architecture="um_nn")


def test_default_buckets():
    assert DEFAULT_BUCKETS == (1, 8, 64, 256, 1024)


def test_empty_batch_gives_empty_scores(small_scorer):
    out = small_scorer(np.zeros((0, 63, 63, 3), np.float32), np.zeros((0, 25), np.float32))
    assert out.shape == (0,) and out.dtype == np.float32


def test_input_checks_import_without_flax():
    import subprocess
    import sys

    code = ("import sys; import btsbot_jax.inference.validation as i; "
            "assert 'flax' not in sys.modules and 'tensorflow' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_model_compile_options_apply_on_cpu_and_unknown_ones_fall_back(caplog):
    """A model's `cpu_compiler_options` reach XLA (v2 models carry YNNPACK settings); an option value this jaxlib
    rejects falls back to XLA's defaults with a warning, and the scores are those of a plain scorer."""
    import jax

    from btsbot_jax.inference.scorer import Scorer
    from btsbot_jax.models import v2

    cfg = default_model_config("mm_cnn")
    rng = np.random.default_rng(3)
    t = rng.normal(size=(5, 63, 63, 3)).astype(np.float32)
    m = rng.normal(size=(5, 25)).astype(np.float32)
    plain = Scorer(create_model(cfg, seed=0), {"version": "t"}, buckets=(8,))
    assert plain.compiler_options == {}
    ref = plain(t, m)

    model = create_model(cfg, seed=0)
    model.cpu_compiler_options = dict(v2.CPU_COMPILER_OPTIONS)
    tuned = Scorer(model, {"version": "t"}, buckets=(8,))
    assert tuned.compiler_options == (v2.CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else {})
    np.testing.assert_allclose(tuned(t, m), ref, atol=1e-5)

    bad = create_model(cfg, seed=0)
    bad.cpu_compiler_options = {"xla_cpu_experimental_ynn_fusion_type": "NOT_A_FUSION_TYPE"}
    fallback = Scorer(bad, {"version": "t"}, buckets=(8,))
    if jax.default_backend() == "cpu":
        with caplog.at_level("WARNING", logger="btsbot_jax.inference.scorer"):
            got = fallback(t, m)
        assert fallback.compiler_options == {} and "rejects the model's XLA:CPU options" in caplog.text
    else:
        got = fallback(t, m)
    np.testing.assert_array_equal(got, ref)
