"""Import the published Keras BTSbot weights (e.g. v1.0.1) into a btsbot-jax model directory.

Reads the SavedModel's variables with `tf.train.load_checkpoint` only: no Keras model code runs, so any TF
version that reads the checkpoint format works and the Keras/TF version the model was saved with does not matter.
Keras's `layer_with_weights-i` order is conv1..conv4, BatchNorm, meta_fc1, meta_fc2, comb_fc, fc_out
(see ../shared/data/btsbot_v1.0.1/SOURCE.md). Keras HWIO conv kernels and (in, out) dense kernels have the same
layout as Flax's, so the mapping is a renaming.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from btsbot_jax.models import create_model, default_model_config
from btsbot_jax.models.model_dir import make_model_card, save_model

_PREFIX = "layer_with_weights-{}/{}/.ATTRIBUTES/VARIABLE_VALUE"

# layer index in the Keras model -> (path in our nnx state, {keras name: our name})
_MM_CNN_MAP = {
    0: (("image", "conv1"), {"kernel": "kernel", "bias": "bias"}),
    1: (("image", "conv2"), {"kernel": "kernel", "bias": "bias"}),
    2: (("image", "conv3"), {"kernel": "kernel", "bias": "bias"}),
    3: (("image", "conv4"), {"kernel": "kernel", "bias": "bias"}),
    4: (("metadata", "bn"), {"gamma": "scale", "beta": "bias", "moving_mean": "mean", "moving_variance": "var"}),
    5: (("metadata", "fc1"), {"kernel": "kernel", "bias": "bias"}),
    6: (("metadata", "fc2"), {"kernel": "kernel", "bias": "bias"}),
    7: (("head", "fc"), {"kernel": "kernel", "bias": "bias"}),
    8: (("head", "out"), {"kernel": "kernel", "bias": "bias"}),
}


def _variables_prefix(saved_model_dir: Path) -> Path:
    prefix = saved_model_dir / "variables" / "variables"
    if not Path(str(prefix) + ".index").is_file():
        raise FileNotFoundError(
            f"{saved_model_dir}: no variables/variables.index; expected a Keras SavedModel directory"
        )
    return prefix


def read_keras_weights(saved_model_dir: str | os.PathLike) -> dict[tuple[str, ...], np.ndarray]:
    """The mm_cnn weights of a Keras SavedModel as {(module, layer, name): array}."""
    import tensorflow as tf  # heavy; only needed here

    prefix = _variables_prefix(Path(saved_model_dir))
    reader = tf.train.load_checkpoint(str(prefix))
    available = set(reader.get_variable_to_shape_map())
    out = {}
    for idx, (path, names) in _MM_CNN_MAP.items():
        for keras_name, our_name in names.items():
            key = _PREFIX.format(idx, keras_name)
            if key not in available:
                raise ValueError(
                    f"{saved_model_dir}: variable {key!r} is missing; this SavedModel is not a BTSbot mm_cnn"
                )
            out[(*path, our_name)] = np.asarray(reader.get_tensor(key), dtype=np.float32)
    return out


def _config_from_weights(w: dict[tuple[str, ...], np.ndarray]):
    cfg = default_model_config("mm_cnn")
    k1 = w[("image", "conv1", "kernel")]
    cfg.conv_kernel = int(k1.shape[0])
    cfg.conv1_channels = int(k1.shape[-1])
    cfg.conv2_channels = int(w[("image", "conv3", "kernel")].shape[-1])
    cfg.meta_fc1_neurons = int(w[("metadata", "fc1", "kernel")].shape[-1])
    cfg.meta_fc2_neurons = int(w[("metadata", "fc2", "kernel")].shape[-1])
    cfg.comb_fc_neurons = int(w[("head", "fc", "kernel")].shape[-1])
    if w[("metadata", "bn", "scale")].shape[0] != len(cfg.metadata_cols):
        raise ValueError("BatchNorm width does not match the 25 metadata columns")
    return cfg


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def import_keras(saved_model_dir: str | os.PathLike, out_dir: str | os.PathLike, version: str = "v1.0.1", *,
                 weights_format: str = "orbax", provenance: dict | None = None) -> Path:
    """Map a Keras BTSbot mm_cnn SavedModel onto the Flax mm_cnn and write a model directory.

    `weights_format` "safetensors" writes one file (how btsbot_jax/weights ships v1.0.1); `provenance` entries
    are added to (or replace) the recorded source, sha256 and reference."""
    from flax import nnx

    src = Path(saved_model_dir)
    weights = read_keras_weights(src)
    cfg = _config_from_weights(weights)
    model = create_model(cfg)
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    pure = nnx.to_pure_dict(state)
    for path, value in weights.items():
        node = pure
        for p in path[:-1]:
            node = node[p]
        expected = np.shape(node[path[-1]])
        if value.shape != expected:
            raise ValueError(f"{src}: {'/'.join(path)} has shape {value.shape}, mm_cnn expects {expected}")
        node[path[-1]] = value
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    card = make_model_card(
        cfg,
        version=version,
        provenance={
            "source": "keras-savedmodel",
            "saved_model_dir": str(src.resolve()),
            "variables_sha256": _sha256(Path(str(_variables_prefix(src)) + ".data-00000-of-00001")),
            "reference": "Rehemtulla et al. 2024, ApJ 972, 7; github.com/nabeelre/BTSbot",
            **(provenance or {}),
        },
    )
    return save_model(model, out_dir, card, weights_format=weights_format)
