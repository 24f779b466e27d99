"""The BTSbot models of Rehemtulla et al. 2024 in Flax NNX (Rehemtulla et al. 2024, Table 2).

`mm_cnn` is the production model (image triplet + 25 metadata features); `um_cnn` and `um_nn` are the
paper's single-modality ablations. Every size and rate comes from a config that uses the paper's names, so a
hyperparameter search or an imported checkpoint only ever changes the config, never this code.
Layers are initialised like Keras (Glorot-uniform kernels, zero biases) so training from scratch matches the
original recipe, and the variable layout mirrors the Keras model so imported weights map one to one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from btsbot_jax.constants import IMAGE_SIZE, METADATA_COLUMNS, NUM_CHANNELS

ARCHITECTURES = ("mm_cnn", "um_cnn", "um_nn")

_kernel_init = nnx.initializers.glorot_uniform()


def default_model_config(architecture: str = "mm_cnn") -> ml_collections.ConfigDict:
    """Table 2 of the paper: the hyperparameters of the production model."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}")
    return ml_collections.ConfigDict(
        dict(
            architecture=architecture,
            conv1_channels=32,
            conv2_channels=64,
            conv_kernel=5,
            conv_dropout1=0.50,
            conv_dropout2=0.55,
            meta_fc1_neurons=128,
            meta_dropout=0.25,
            meta_fc2_neurons=128,
            comb_fc_neurons=8,
            comb_dropout=0.20,
            head_neurons=8,
            head_dropout=0.20,
            metadata_cols=list(METADATA_COLUMNS),
            image_size=IMAGE_SIZE,
            bn_momentum=0.99,
            bn_epsilon=1e-3,
        )
    )


def _max_pool(x: jax.Array, size: int) -> jax.Array:
    # lax.reduce_window (what nnx.max_pool lowers to) is the fast path on XLA:CPU; VALID like Keras MaxPool2D.
    return nnx.max_pool(x, window_shape=(size, size), strides=(size, size), padding="VALID")


def _same_conv_rows(n_out: int, n_in: int, k: int) -> tuple[int, tuple[int, int]]:
    """A SAME convolution (kernel k, stride 1) computing only its first `n_out` rows (and columns) from an input
    of `n_in`: (input rows it reads, (low, high) zero padding). Same values as SAME on those rows."""
    lo = (k - 1) // 2
    keep = min(n_in, n_out + k - 1 - lo)
    return keep, (lo, n_out + k - 1 - lo - keep)


def _conv(conv: nnx.Conv, x: jax.Array, keep: int, pad: tuple[int, int]) -> jax.Array:
    y = jax.lax.conv_general_dilated(x[:, :keep, :keep], conv.kernel.value, (1, 1), (pad, pad),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + conv.bias.value


def _dense(n_in: int, n_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, kernel_init=_kernel_init, rngs=rngs)


class ImageBranch(nnx.Module):
    """Two conv blocks: (conv, conv, maxpool 2, dropout) then (conv, conv, maxpool 4, dropout), flattened NHWC."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        k = (cfg.conv_kernel, cfg.conv_kernel)
        c1, c2 = cfg.conv1_channels, cfg.conv2_channels
        conv = lambda i, o: nnx.Conv(i, o, k, padding="SAME", kernel_init=_kernel_init, rngs=rngs)
        self.conv1 = conv(NUM_CHANNELS, c1)
        self.conv2 = conv(c1, c1)
        self.drop1 = nnx.Dropout(cfg.conv_dropout1, rngs=rngs)
        self.conv3 = conv(c1, c2)
        self.conv4 = conv(c2, c2)
        self.drop2 = nnx.Dropout(cfg.conv_dropout2, rngs=rngs)
        side = (cfg.image_size // 2) // 4
        self.out_features = side * side * c2
        # The VALID pools drop trailing rows/columns (63 -> 31 keeps 62, 31 -> 7 keeps 28), so pixels that never
        # reach the output need not be computed. Walking back from the flatten: conv4 needs 28 of its 31 rows,
        # conv3 30 of 31, conv2 62 of 63 -- 9% of the FLOPs (18% of conv4), identical values on what is kept.
        s1, s2, kk = cfg.image_size, cfg.image_size // 2, cfg.conv_kernel
        r4, pad4 = _same_conv_rows(4 * side, s2, kk)  # conv4 reads r4 rows of conv3's output
        r3, pad3 = _same_conv_rows(r4, s2, kk)        # conv3 computes r4 rows from r3 pooled rows
        r2, pad2 = _same_conv_rows(2 * r3, s1, kk)    # conv2 computes the 2*r3 rows the first pool reads
        r1, pad1 = _same_conv_rows(r2, s1, kk)
        self._rows = ((r1, pad1), (r2, pad2), (r3, pad3), (r4, pad4))

    def __call__(self, x: jax.Array) -> jax.Array:
        (r1, p1), (r2, p2), (r3, p3), (r4, p4) = self._rows
        x = nnx.relu(_conv(self.conv1, x, r1, p1))
        x = nnx.relu(_conv(self.conv2, x, r2, p2))
        x = self.drop1(_max_pool(x, 2))
        x = nnx.relu(_conv(self.conv3, x, r3, p3))
        x = nnx.relu(_conv(self.conv4, x, r4, p4))
        x = self.drop2(_max_pool(x, 4))
        return x.reshape((x.shape[0], -1))  # channels-last flatten, as Keras Flatten on NHWC


class MetadataBranch(nnx.Module):
    """BatchNorm over the raw features, Dense-ReLU, Dropout, Dense-ReLU."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        n_meta = len(cfg.metadata_cols)
        self.bn = nnx.BatchNorm(
            n_meta, momentum=cfg.bn_momentum, epsilon=cfg.bn_epsilon, use_fast_variance=False, rngs=rngs
        )
        self.fc1 = _dense(n_meta, cfg.meta_fc1_neurons, rngs)
        self.drop = nnx.Dropout(cfg.meta_dropout, rngs=rngs)
        self.fc2 = _dense(cfg.meta_fc1_neurons, cfg.meta_fc2_neurons, rngs)
        self.out_features = cfg.meta_fc2_neurons

    def __call__(self, m: jax.Array) -> jax.Array:
        m = self.bn(m)
        m = self.drop(nnx.relu(self.fc1(m)))
        return nnx.relu(self.fc2(m))


class Head(nnx.Module):
    """Dense-ReLU, Dropout, Dense(1) producing a logit."""

    def __init__(self, n_in: int, neurons: int, dropout: float, *, rngs: nnx.Rngs):
        self.fc = _dense(n_in, neurons, rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.out = _dense(neurons, 1, rngs)

    def __call__(self, h: jax.Array) -> jax.Array:
        return self.out(self.drop(nnx.relu(self.fc(h))))


class BTSbot(nnx.Module):
    """One class for the three architectures; `logits` for training, `__call__` gives the sigmoid score (N, 1)."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        arch = cfg.architecture
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
        self.architecture = arch
        self.image_size = int(cfg.image_size)
        self.num_metadata = len(cfg.metadata_cols)
        n_in = 0
        self.image = ImageBranch(cfg, rngs=rngs) if arch in ("mm_cnn", "um_cnn") else None
        if self.image is not None:
            n_in += self.image.out_features
        self.metadata = MetadataBranch(cfg, rngs=rngs) if arch in ("mm_cnn", "um_nn") else None
        if self.metadata is not None:
            n_in += self.metadata.out_features
        if arch == "mm_cnn":
            self.head = Head(n_in, cfg.comb_fc_neurons, cfg.comb_dropout, rngs=rngs)
        else:
            self.head = Head(n_in, cfg.head_neurons, cfg.head_dropout, rngs=rngs)

    def logits(self, triplets: jax.Array, metadata: jax.Array) -> jax.Array:
        parts = []
        if self.image is not None:
            parts.append(self.image(triplets))
        if self.metadata is not None:
            parts.append(self.metadata(metadata))
        h = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)  # [image, metadata] as in Keras
        return self.head(h)

    def __call__(self, triplets: jax.Array, metadata: jax.Array) -> jax.Array:
        return nnx.sigmoid(self.logits(triplets, metadata))


def create_model(cfg: ml_collections.ConfigDict | None = None, seed: int = 0) -> BTSbot:
    """Build a freshly initialised model from a model config (defaults: the paper's mm_cnn)."""
    cfg = default_model_config() if cfg is None else cfg
    return BTSbot(cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def count_parameters(model: nnx.Module) -> tuple[int, int]:
    """(trainable parameters, BatchNorm statistics)."""
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    n_stats = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
    return int(n_params), int(n_stats)
