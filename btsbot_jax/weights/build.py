"""Re-create a packaged model directory from the published Keras SavedModel (run once per release of the weights).

    python -m btsbot_jax.weights.build SAVED_MODEL_DIR [OUT_DIR]

e.g. `python -m btsbot_jax.weights.build ../shared/data/btsbot_v1.0.1/best_model btsbot_jax/weights/v1.0.1`.
The weights go through the same importer as `btsbot-import-keras` (`btsbot_jax.inference.import_keras`) and are
written as one safetensors file; the upstream LICENSE next to SAVED_MODEL_DIR is copied beside them.
PROVENANCE.md is written by hand (it quotes the hashes this prints).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path

log = logging.getLogger("btsbot_jax.weights.build")

# Where the published weights come from (nabeelre/BTSbot, MIT): recorded in the shipped model card.
V101_SOURCE = {
    "saved_model_dir": "github.com/nabeelre/BTSbot production_models/v1.0.1.tar.gz (commit a70c0d8), best_model/",
    "upstream_license": "MIT (LICENSE beside this model card)",
    "converted_with": "python -m btsbot_jax.weights.build SAVED_MODEL_DIR (btsbot_jax.inference.import_keras)",
}


def build(saved_model_dir: str | os.PathLike, out_dir: str | os.PathLike, version: str = "v1.0.1") -> Path:
    """Import SAVED_MODEL_DIR into OUT_DIR as model_card.json + weights.safetensors (+ the upstream LICENSE)."""
    from btsbot_jax.inference.import_keras import import_keras

    src, out = Path(saved_model_dir), Path(out_dir)
    import_keras(src, out, version=version, weights_format="safetensors", provenance=V101_SOURCE)
    licence = src.parent / "LICENSE"
    if licence.is_file():
        shutil.copyfile(licence, out / "LICENSE")
    return out


def sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        log.error("usage:\n%s", __doc__)
        return 2
    out = build(argv[1], argv[2] if len(argv) == 3 else Path(__file__).parent / "v1.0.1")
    for f in sorted(out.iterdir()):
        log.info("%s: %d bytes, sha256 %s", f.name, f.stat().st_size, sha256(f))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main(sys.argv))
