"""`btsbot-import-keras --saved_model=DIR --out=CKPT_DIR`: Keras BTSbot weights -> btsbot-jax model directory."""

import sys

from absl import flags

from btsbot_jax.cli import run

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "Keras SavedModel directory of a BTSbot mm_cnn (e.g. v1.0.1).")
flags.DEFINE_string("out", None, "Output model directory (orbax checkpoint + model_card.json).")
flags.DEFINE_string("model_version", "v1.0.1", "Version string written into the model card.")


def _main(argv):
    del argv
    from btsbot_jax.inference.import_keras import import_keras

    try:
        out = import_keras(FLAGS.saved_model, FLAGS.out, version=FLAGS.model_version)
    except (FileNotFoundError, ValueError) as e:
        print(f"btsbot-import-keras: error: {e}", file=sys.stderr)
        return 2
    print(f"imported {FLAGS.saved_model} -> {out}")
    return 0


def main():
    run(_main, required=["saved_model", "out"])


if __name__ == "__main__":
    main()
