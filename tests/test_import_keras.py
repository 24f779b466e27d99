"""The Keras import: mapping exactness, the command line, and refusal of what is not a BTSbot SavedModel."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import V101_SAVED_MODEL, require
from flax import nnx

from btsbot_jax.inference.import_keras import import_keras, read_keras_weights
from btsbot_jax.models.model_dir import load_model


def test_every_keras_variable_lands_unchanged(v101_checkpoint):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(V101_SAVED_MODEL / "variables" / "variables"))
    model, _ = load_model(v101_checkpoint)
    pairs = {
        "layer_with_weights-0/kernel": model.image.conv1.kernel,
        "layer_with_weights-3/bias": model.image.conv4.bias,
        "layer_with_weights-4/moving_variance": model.metadata.bn.var,
        "layer_with_weights-4/gamma": model.metadata.bn.scale,
        "layer_with_weights-7/kernel": model.head.fc.kernel,
        "layer_with_weights-8/bias": model.head.out.bias,
    }
    for key, var in pairs.items():
        ref = reader.get_tensor(key + "/.ATTRIBUTES/VARIABLE_VALUE")
        np.testing.assert_array_equal(np.asarray(var.value), ref)
    n = sum(x.size for x in read_keras_weights(V101_SAVED_MODEL).values())
    params = sum(x.size for x in __import__("jax").tree.leaves(nnx.state(model, (nnx.Param, nnx.BatchStat))))
    assert n == params == 227_811 + 50


@pytest.mark.slow
def test_cli_writes_a_loadable_model_directory(tmp_path):
    require(V101_SAVED_MODEL)
    out = tmp_path / "v101"
    r = subprocess.run(
        [sys.executable, "-m", "btsbot_jax.cli.import_keras", f"--saved_model={V101_SAVED_MODEL}", f"--out={out}"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    card = json.loads((out / "model_card.json").read_text())
    assert card["version"] == "v1.0.1" and card["provenance"]["saved_model_dir"].endswith("best_model")


@pytest.mark.slow
def test_cli_reports_a_missing_directory(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "btsbot_jax.cli.import_keras", f"--saved_model={tmp_path / 'nope'}",
         f"--out={tmp_path / 'o'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 2
    assert "no variables/variables.index" in r.stderr and "nope" in r.stderr


def test_a_savedmodel_of_another_architecture_is_refused(tmp_path):
    import tensorflow as tf

    class Other(tf.Module):
        def __init__(self):
            self.w = tf.Variable(tf.zeros((3, 3)))

    tf.saved_model.save(Other(), str(tmp_path / "other"))
    with pytest.raises(ValueError, match="is not a BTSbot mm_cnn"):
        import_keras(tmp_path / "other", tmp_path / "out")
