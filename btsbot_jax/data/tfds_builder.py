"""TFDS builder `btsbot_alerts` over a directory in the published training-set format (manual_dir).

A user who downloads the BTS training set (Zenodo 10839690) or runs `btsbot-simulate` points TFDS at that folder::

    import tensorflow_datasets as tfds
    from btsbot_jax.data import tfds_builder  # registers `btsbot_alerts`
    builder = tfds_builder.BtsbotAlerts(data_dir="~/tensorflow_datasets")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir="path/to/files"))
    train = builder.as_data_source(split="train")  # random access: train[i] -> dict of numpy arrays

or trains on it with one flag: `btsbot-train ... --config.data_dir=path/to/files --config.data_source=tfds`.
Examples hold the model inputs (triplet (63,63,3) float32, metadata (25,) float32 in the model's column order,
label) and the fields an evaluation needs (objectId, candid, jd, magpsf, source_set, row). The prepared files are
ArrayRecord (`as_data_source`), so training reads them by random access in the same seeded order as the .npy path;
`BtsbotAlerts(file_format="tfrecord")` builds a copy for `as_dataset` streaming instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from btsbot_jax.constants import IMAGE_SIZE, METADATA_COLUMNS, NUM_CHANNELS
from btsbot_jax.data.training_set import SPLITS, DatasetError, load_split, require_rows


class BtsbotAlertsConfig(tfds.core.BuilderConfig):
    """`file_version` / `n_max` pick the files `{split}_cand_{file_version}_N{n_max}.csv` (None: the only ones)."""

    def __init__(self, *, file_version: str | None = None, n_max: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.file_version = file_version
        self.n_max = n_max


class BtsbotAlerts(tfds.core.GeneratorBasedBuilder):
    """BTSbot alerts: image triplets, the 25 metadata features and bright-transient labels, per split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Training-set format of Rehemtulla et al. 2024 (csv + npy per split)."}
    BUILDER_CONFIGS = [
        BtsbotAlertsConfig(name="default", description="The only version/N_max present in manual_dir."),
        BtsbotAlertsConfig(name="v10_N100", file_version="v10", n_max=100,
                           description="The published BTS training set of the production model (v10, N_max 100)."),
    ]
    DEFAULT_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place the training-set files {split}_cand_{version}_N{n_max}.csv and {split}_triplets_{version}_N{n_max}.npy "
        "(train, val, test) in manual_dir: the BTS training set from https://doi.org/10.5281/zenodo.10839690, or "
        "the output folder of `btsbot-simulate --out=DIR`."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        f = tfds.features
        return self.dataset_info_from_configs(
            description="ZTF alerts labelled for the Bright Transient Survey (BTSbot training set format).",
            features=f.FeaturesDict({
                "triplet": f.Tensor(shape=(IMAGE_SIZE, IMAGE_SIZE, NUM_CHANNELS), dtype=np.float32),
                "metadata": f.Tensor(shape=(len(METADATA_COLUMNS),), dtype=np.float32),
                "label": f.ClassLabel(names=["not_bts", "bts"]),
                "objectId": f.Text(),
                "candid": np.int64,
                # tf.train.Example floats are 32-bit: jd must keep its float64 digits (0.04 d is an hour)
                "jd": f.Tensor(shape=(), dtype=np.float64, encoding=f.Encoding.BYTES),
                "magpsf": np.float32,
                "source_set": f.Text(),
                "row": np.int64,
            }),
            supervised_keys=None,
            homepage="https://github.com/nabeelre/BTSbot",
            citation="Rehemtulla et al. 2024, ApJ 972, 7 (arXiv:2401.15167)",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual = Path(dl_manager.manual_dir)
        out = {}
        for split in SPLITS:
            try:
                load_split(manual, split, self.builder_config.file_version, self.builder_config.n_max)
            except DatasetError:
                if split == "test":
                    continue
                raise
            out[split] = self._generate_examples(manual, split)
        return out

    def _generate_examples(self, manual: Path, split: str):
        s = load_split(manual, split, self.builder_config.file_version, self.builder_config.n_max)
        cand = s.cand
        get = lambda col, default, dtype: (cand[col].to_numpy() if col in cand.columns
                                           else np.full(len(cand), default)).astype(dtype)
        candid = get("candid", -1, np.int64)
        jd = get("jd", np.nan, np.float64)
        mag = get("magpsf", np.nan, np.float32)
        oid = cand["objectId"].astype(str).to_numpy() if "objectId" in cand.columns else np.full(len(cand), "")
        sset = cand["source_set"].astype(str).to_numpy() if "source_set" in cand.columns else np.full(len(cand), "")
        for i in range(len(s)):
            yield i, {
                "triplet": np.asarray(s.triplets[i], np.float32),
                "metadata": s.metadata[i],
                "label": int(s.labels[i]),
                "objectId": oid[i],
                "candid": candid[i],
                "jd": jd[i],
                "magpsf": mag[i],
                "source_set": sset[i],
                "row": i,
            }


class TfdsSource:
    """Random access to one prepared split (ArrayRecord) with the interface of `input_pipeline.ArraySource`.

    Rows come back in the order of the original files (the `row` feature), so seeds give the same epochs as
    reading the .npy files directly."""

    def __init__(self, data_source):
        self._ds = data_source
        n = len(data_source)
        rows = np.empty(n, np.int64)
        labels = np.empty(n, np.int32)
        meta = np.empty((n, len(METADATA_COLUMNS)), np.float32)
        for i in range(n):  # one pass for the small fields; triplets are read on demand
            ex = data_source[i]
            rows[i], labels[int(ex["row"])] = ex["row"], ex["label"]
            meta[int(ex["row"])] = ex["metadata"]
        self._pos = np.empty(n, np.int64)
        self._pos[rows] = np.arange(n)
        self.labels = labels
        self.metadata = meta
        self.triplets = _ShapeOnly((n, IMAGE_SIZE, IMAGE_SIZE, NUM_CHANNELS))

    def __len__(self) -> int:
        return len(self.labels)

    def gather(self, idx):
        idx = np.asarray(idx, np.int64)
        exs = self._ds.__getitems__(self._pos[idx].tolist())
        trip = np.stack([np.asarray(e["triplet"], np.float32) for e in exs])
        return trip, self.metadata[idx], self.labels[idx]


class _ShapeOnly:
    def __init__(self, shape):
        self.shape = shape


def _expand(path: str | os.PathLike | None) -> str | None:
    """`~` and $VARS expanded: TFDS would otherwise create a folder literally named `~` in the working directory."""
    return None if path is None else os.path.expandvars(os.path.expanduser(os.fspath(path)))


def builder(data_dir: str | os.PathLike | None = None, *, version: str | None = None, n_max: int | None = None
            ) -> BtsbotAlerts:
    data_dir = _expand(data_dir)
    if version is None and n_max is None:
        return BtsbotAlerts(data_dir=data_dir, file_format="array_record")
    for known in BtsbotAlerts.BUILDER_CONFIGS:  # TFDS refuses a custom config named like a registered one
        if known.file_version == version and known.n_max is not None and n_max is not None \
                and int(known.n_max) == int(n_max):
            return BtsbotAlerts(config=known.name, data_dir=data_dir, file_format="array_record")
    cfg = BtsbotAlertsConfig(name=f"{version or 'any'}_N{n_max or 'any'}", file_version=version, n_max=n_max)
    return BtsbotAlerts(config=cfg, data_dir=data_dir, file_format="array_record")


def prepare(manual_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None, *,
            version: str | None = None, n_max: int | None = None) -> BtsbotAlerts:
    """Build (once) the TFDS dataset from a training-set folder; returns the builder. `~`/$VARS are expanded."""
    b = builder(data_dir, version=version, n_max=n_max)
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=_expand(manual_dir)))
    return b


def load_sources(manual_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None, *,
                 version: str | None = None, n_max: int | None = None) -> dict[str, TfdsSource]:
    """train/val(/test) random-access sources through TFDS, building the dataset first if needed."""
    b = prepare(manual_dir, data_dir, version=version, n_max=n_max)
    for split in ("train", "val"):
        require_rows(split, b.info.splits[split].num_examples if split in b.info.splits else 0,
                     f"{split} of {manual_dir}")
    return {split: TfdsSource(b.as_data_source(split=split)) for split in b.info.splits
            if b.info.splits[split].num_examples}
