"""`btsbot-import-keras --saved_model=DIR --out=CKPT_DIR`: Keras BTSbot weights -> btsbot-jax model directory."""

import os

from absl import app, flags

from btsbot_jax.importer import import_keras

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "Keras SavedModel directory of a BTSbot mm_cnn (e.g. v1.0.1).")
flags.DEFINE_string("out", None, "Output model directory (orbax checkpoint + model_card.json).")
flags.DEFINE_string("model_version", "v1.0.1", "Version string written into the model card.")


def _main(argv):
    del argv
    out = import_keras(FLAGS.saved_model, FLAGS.out, version=FLAGS.model_version)
    print(f"imported {FLAGS.saved_model} -> {out}")


def main():
    flags.mark_flags_as_required(["saved_model", "out"])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(_main)
