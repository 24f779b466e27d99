"""`btsbot-import-keras --saved_model=DIR --out=CKPT_DIR`: Keras BTSbot weights -> btsbot-jax model directory."""

from absl import flags

from btsbot_jax.cli import UsageError, run

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "Keras SavedModel directory of a BTSbot mm_cnn (e.g. v1.0.1).")
flags.DEFINE_string("out", None, "Output model directory (orbax checkpoint + model_card.json).")
flags.DEFINE_string("model_version", "v1.0.1", "Version string written into the model card.")


def _main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {argv[1:]}")
    from btsbot_jax.inference.import_keras import import_keras

    out = import_keras(FLAGS.saved_model, FLAGS.out, version=FLAGS.model_version)
    print(f"imported {FLAGS.saved_model} -> {out}")
    return 0


def main():
    run(_main, required=["saved_model", "out"], paths=["saved_model", "out"])


if __name__ == "__main__":
    main()
