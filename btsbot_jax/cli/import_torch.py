"""`btsbot-import-torch --model_dir=DIR --out=OUT`: a BTSbot v2 Hub snapshot (PyTorch) -> btsbot-jax model directory.

DIR holds train_config.json and pytorch_model.bin and/or model.safetensors (e.g. a folder downloaded with
`huggingface_hub.snapshot_download("nabeelr/BTSbot-convnext-pico-galaxyzoo-metadata")`). Needs no PyTorch.
"""

import sys

from absl import flags

from btsbot_jax.cli import run

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "BTSbot v2 snapshot folder: train_config.json + pytorch_model.bin / "
                    "model.safetensors.")
flags.DEFINE_string("out", None, "Output model directory (orbax checkpoint + model_card.json).")
flags.DEFINE_string("model_version", None, "Version string for the model card (default: the Hub repo id when the "
                    "folder is in a huggingface cache, else the folder name).")


def _main(argv):
    del argv
    from btsbot_jax.inference.import_torch import TorchImportError, import_torch

    try:
        out = import_torch(FLAGS.model_dir, FLAGS.out, version=FLAGS.model_version)
    except (FileNotFoundError, TorchImportError) as e:
        print(f"btsbot-import-torch: error: {e}", file=sys.stderr)
        return 2
    print(f"imported {FLAGS.model_dir} -> {out}")
    return 0


def main():
    run(_main, required=["model_dir", "out"])


if __name__ == "__main__":
    main()
