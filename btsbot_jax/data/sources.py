"""Random-access sources of a training set's splits (train/val/test), as the training loop reads them.

Both kinds gather rows by index, so a process reads only the rows of its slice of each global batch
(`pipeline.train_dataset` / `eval_dataset`); the triplets are never all in memory."""

from __future__ import annotations

from typing import Any

import ml_collections

from btsbot_jax.data import pipeline


def load_sources(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """train/val (and test if present) from `config.data_dir`.

    `config.data_source`: 'files' reads the training-set format directly (memory-mapped); 'tfds' goes through the
    `btsbot_alerts` TFDS builder (built once into `config.tfds_data_dir` from data_dir as its manual_dir; with
    several JAX processes, process 0 builds it while the others wait, then every process opens it)."""
    if not config.data_dir:
        raise ValueError("config.data_dir is empty: pass --config.data_dir=DIR (a folder in the training-set format)")
    version = config.get("data_version") or None
    n_max = config.get("data_n_max") or None
    source = config.get("data_source", "files")
    if source == "files":
        from btsbot_jax.data.training_set import DatasetError, load_split

        out = {}
        for split in ("train", "val", "test"):
            try:
                out[split] = pipeline.ArraySource.from_split(load_split(config.data_dir, split, version, n_max))
            except DatasetError:
                if split == "test":
                    continue
                raise
        return out
    if source == "tfds":
        import jax

        from btsbot_jax.data import tfds_builder

        tfds_dir = config.get("tfds_data_dir") or None
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            if jax.process_index() == 0:
                tfds_builder.prepare(config.data_dir, tfds_dir, version=version, n_max=n_max)
            multihost_utils.sync_global_devices("btsbot_alerts prepared")
        return tfds_builder.load_sources(config.data_dir, data_dir=tfds_dir, version=version, n_max=n_max)
    raise ValueError(f"config.data_source must be 'files' or 'tfds', got {source!r}")
