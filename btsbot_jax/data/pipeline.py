"""tf.data input pipeline for training and evaluation (Rehemtulla et al. 2024, Table 3).

Design, chosen so that a run is reproducible from its seed and resumable at any epoch:

- the order of an epoch is a permutation drawn from `numpy.random.default_rng([seed, epoch])`, not a stateful
  shuffle buffer, so epoch `e` always sees the same batches whether the run started at epoch 0 or resumed at `e`;
- augmentation draws come from `tf.random.stateless_uniform` keyed by (seed, epoch, batch index), so they do not
  depend on tf.data's threading, on prefetching, or on how many hosts share the work;
- every batch is defined over the *global* batch; with several processes (hosts) each one reads only its own
  contiguous slice of it (`jax.process_index()` / `jax.process_count()`), so the global batch, and hence training,
  is the same on 1 or N hosts;
- triplets are gathered by index from a memory-mapped array (`dataset.load_split`) or a TFDS ArrayRecord data
  source (`tfds_builder`), so a split larger than RAM streams from disk.

The augmentation (horizontal flip p=0.5, vertical flip p=0.5, then rotation by k*90 degrees with k uniform in
{0,1,2,3}) is applied to training batches only; metadata are not touched unless a config asks for `no_second_ps1`
(`hide_second_ps1`; off in the paper's recipe). `augment_batch` is the pure function,
given explicit flip/rotation draws, that the tests compare with numpy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from btsbot_jax.constants import METADATA_COLUMNS
from btsbot_jax.data.training_set import Split, require_rows

# tf.data only prepares host-side batches; keep TF off any accelerator JAX is using.
try:  # pragma: no cover - depends on the machine
    tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):
    pass

_AUG_SALT = 0x5EED  # separates augmentation draws from other uses of the seed
_PS1_SALT = 0x5EC0  # and the no-second-PS1-source draws from the image draws


@dataclasses.dataclass
class ArraySource:
    """Random-access arrays of one split: triplets (N,63,63,3) (may be a memmap), metadata (N,25), labels (N,)."""

    triplets: Any
    metadata: np.ndarray
    labels: np.ndarray

    @classmethod
    def from_split(cls, split: Split) -> ArraySource:
        require_rows(split.name, len(split), split.csv_path.name)
        return cls(split.triplets, np.asarray(split.metadata, np.float32), np.asarray(split.labels, np.int32))

    def __len__(self) -> int:
        return len(self.labels)

    def gather(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows `idx` in that order; reads the (possibly memory-mapped) triplets in sorted order for locality."""
        idx = np.asarray(idx, np.int64)
        order = np.argsort(idx, kind="stable")
        trip = np.empty((len(idx), *self.triplets.shape[1:]), np.float32)
        trip[order] = self.triplets[idx[order]]
        return trip, self.metadata[idx], self.labels[idx]


# ----------------------------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------------------------


def augment_batch(triplets: tf.Tensor, hflip: tf.Tensor, vflip: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
    """Per-sample dihedral augmentation of an NHWC batch (H == W).

    For sample i: if hflip[i], mirror left-right (reverse W); then if vflip[i], mirror up-down (reverse H); then
    rotate counter-clockwise by k[i]*90 degrees. Equal, sample by sample, to
    `np.rot90(np.flipud?(np.fliplr?(x)), k, axes=(0, 1))` on an HWC array. Vectorised with tf.where so one
    batch is one graph op chain, whatever the draws.
    """
    x = tf.convert_to_tensor(triplets)
    sel = lambda c: tf.reshape(tf.cast(c, tf.bool), [-1, 1, 1, 1])
    k = tf.cast(k, tf.int32)
    x = tf.where(sel(hflip), tf.reverse(x, [2]), x)
    x = tf.where(sel(vflip), tf.reverse(x, [1]), x)
    # one quarter turn counter-clockwise == transpose H/W then reverse H (np.rot90 semantics)
    x = tf.where(sel(k % 2 == 1), tf.reverse(tf.transpose(x, [0, 2, 1, 3]), [1]), x)
    # half turn == reverse both axes; quarter and half turns commute, so k = (k % 2) + 2 * (k // 2)
    x = tf.where(sel(k >= 2), tf.reverse(x, [1, 2]), x)
    return x


def augment_numpy(triplet: np.ndarray, hflip: bool, vflip: bool, k: int) -> np.ndarray:
    """Reference semantics of `augment_batch` for one HWC triplet, in plain numpy."""
    x = triplet
    if hflip:
        x = np.fliplr(x)
    if vflip:
        x = np.flipud(x)
    return np.rot90(x, int(k), axes=(0, 1))


def no_second_ps1_draws(seed: int, epoch: int, batch_index: int, global_batch: int, p: float) -> tf.Tensor:
    """Which samples of one global batch are shown without a second PS1 source (`hide_second_ps1`), drawn with
    probability `p` from a stateless seed apart from the image draws; pure in its arguments."""
    s = tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + _PS1_SALT,
                  tf.cast(epoch, tf.int64) * 1_000_000_007 + tf.cast(batch_index, tf.int64)])
    return tf.random.stateless_uniform([global_batch], seed=s, dtype=tf.float32) < p


def hide_second_ps1(metadata: tf.Tensor, hide: tf.Tensor, columns=METADATA_COLUMNS) -> tf.Tensor:
    """Samples with `hide` look as if PS1 had no second source within 30": `sgscore2` = `distpsnr2` = -999 (the
    sentinel ZTF writes then) and `nmtchps` at most 1. Whether a field holds a second PS1 source is a property of
    the field, not of the transient; a training split of a few hundred sources can still carry the sentinel on
    one class only by chance, and a model then learns it as a class cue (docs/sim_to_real.md, section 10)."""
    cols = np.asarray(columns)
    h = hide[:, None]
    m = tf.where(h & np.isin(cols, ("sgscore2", "distpsnr2"))[None, :], tf.constant(-999.0, metadata.dtype), metadata)
    return tf.where(h & (cols == "nmtchps")[None, :], tf.minimum(m, tf.constant(1.0, metadata.dtype)), m)


def augmentation_draws(seed: int, epoch: int, batch_index: int, global_batch: int) -> tuple[tf.Tensor, ...]:
    """(hflip, vflip, k) for every sample of one global batch, from a stateless seed; pure in its arguments."""
    s = tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + _AUG_SALT,
                  tf.cast(epoch, tf.int64) * 1_000_000_007 + tf.cast(batch_index, tf.int64)])
    u = tf.random.stateless_uniform([global_batch, 3], seed=s, dtype=tf.float32)
    hflip = u[:, 0] < 0.5
    vflip = u[:, 1] < 0.5
    k = tf.minimum(tf.cast(tf.floor(u[:, 2] * 4.0), tf.int32), 3)
    return hflip, vflip, k


# ----------------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------------


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the training alerts in epoch `epoch` (the same on every host)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def steps_per_epoch(n: int, global_batch: int) -> int:
    """Training drops the last partial batch (fixed shapes: one compiled step; each epoch reshuffles)."""
    return n // global_batch


def _host_slice(global_batch: int, process_index: int, process_count: int) -> slice:
    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} is not divisible by the {process_count} processes")
    local = global_batch // process_count
    return slice(process_index * local, (process_index + 1) * local)


def _options(threads: int | None) -> tf.data.Options:
    opts = tf.data.Options()
    opts.deterministic = True
    if threads:
        opts.threading.private_threadpool_size = threads
    return opts


def train_dataset(source, *, global_batch: int, seed: int, epoch: int, start_step: int = 0, augment: bool = True,
                  process_index: int = 0, process_count: int = 1, prefetch: int = 2,
                  threads: int | None = None, no_second_ps1: float = 0.0) -> tf.data.Dataset:
    """One training epoch as a tf.data.Dataset of dicts {triplet, metadata, label}, this host's slice of each
    global batch, starting at batch `start_step` of the epoch. `no_second_ps1` > 0 shows that share of the samples
    without a second PS1 source (`hide_second_ps1`; the paper's recipe never touches metadata: 0)."""
    n = len(source)
    nsteps = steps_per_epoch(n, global_batch)
    if nsteps == 0:
        raise ValueError(f"the training split has {n} alerts, fewer than one batch of {global_batch}")
    hs = _host_slice(global_batch, process_index, process_count)
    perm = epoch_permutation(n, seed, epoch)[: nsteps * global_batch].reshape(nsteps, global_batch)
    idx = perm[start_step:, hs]
    steps = np.arange(start_step, nsteps, dtype=np.int64)
    local = hs.stop - hs.start
    shape = source.triplets.shape[1:] if hasattr(source, "triplets") else (63, 63, 3)
    n_meta = source.metadata.shape[1] if hasattr(source, "metadata") else 25

    def load(i, step):
        t, m, y = tf.numpy_function(source.gather, [i], [tf.float32, tf.float32, tf.int32], stateful=False)
        t.set_shape([local, *shape])
        m.set_shape([local, n_meta])
        y.set_shape([local])
        if augment:
            hf, vf, k = augmentation_draws(seed, epoch, step, global_batch)
            t = augment_batch(t, hf[hs.start:hs.stop], vf[hs.start:hs.stop], k[hs.start:hs.stop])
        if no_second_ps1 > 0:
            m = hide_second_ps1(m, no_second_ps1_draws(seed, epoch, step, global_batch, no_second_ps1)[hs])
        return {"triplet": t, "metadata": m, "label": y}

    ds = tf.data.Dataset.from_tensor_slices((idx, steps))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(prefetch).with_options(_options(threads))


def eval_dataset(source, *, global_batch: int, process_index: int = 0, process_count: int = 1,
                 prefetch: int = 2, threads: int | None = None) -> tf.data.Dataset:
    """The whole split in file order, never augmented; the last batch is padded (repeating row 0) to the fixed
    batch shape, and `mask` marks the real rows. Each host gets its slice of every global batch."""
    n = len(source)
    nb = -(-n // global_batch)
    hs = _host_slice(global_batch, process_index, process_count)
    flat = np.arange(nb * global_batch)
    mask = flat < n
    flat = np.where(mask, flat, 0)
    idx = flat.reshape(nb, global_batch)[:, hs]
    msk = mask.reshape(nb, global_batch)[:, hs]
    local = hs.stop - hs.start
    shape = source.triplets.shape[1:] if hasattr(source, "triplets") else (63, 63, 3)
    n_meta = source.metadata.shape[1] if hasattr(source, "metadata") else 25

    def load(i, m_):
        t, m, y = tf.numpy_function(source.gather, [i], [tf.float32, tf.float32, tf.int32], stateful=False)
        t.set_shape([local, *shape])
        m.set_shape([local, n_meta])
        y.set_shape([local])
        return {"triplet": t, "metadata": m, "label": y, "mask": m_}

    ds = tf.data.Dataset.from_tensor_slices((idx, msk))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(prefetch).with_options(_options(threads))


def as_numpy(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
    return ds.as_numpy_iterator()


def default_threads() -> int | None:
    """tf.data threads; BTSBOT_DATA_THREADS overrides (leave cores to XLA on small machines)."""
    v = os.environ.get("BTSBOT_DATA_THREADS")
    return int(v) if v else None
