"""TFDS builder `btsbot_alerts`: built from a training-set folder (manual_dir), it holds exactly the files' rows."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import synthetic_training  # noqa: E402

tfds = pytest.importorskip("tensorflow_datasets")

from btsbot_jax.data import pipeline as ip  # noqa: E402
from btsbot_jax.data import tfds_builder  # noqa: E402
from btsbot_jax.data.training_set import load_split  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    manual = synthetic_training.training_dir(root / "files", n_train=40, n_val=24, n_test=16)
    b = tfds_builder.prepare(manual, root / "tfds_data")
    return manual, root / "tfds_data", b


def test_examples_equal_the_files(built):
    manual, _, b = built
    assert b.name == "btsbot_alerts"
    assert set(b.info.splits) == {"train", "val", "test"}
    for split in ("train", "val", "test"):
        s = load_split(manual, split)
        assert b.info.splits[split].num_examples == len(s)
        src = b.as_data_source(split=split)
        rows = sorted((src[i] for i in range(len(src))), key=lambda e: int(e["row"]))
        assert len(rows) == len(s)
        for i, ex in enumerate(rows):
            np.testing.assert_array_equal(ex["triplet"], s.triplets[i])
            np.testing.assert_array_equal(ex["metadata"], s.metadata[i])
            assert ex["label"] == s.labels[i]
            assert ex["objectId"].decode() == s.cand["objectId"].iloc[i]
            assert ex["candid"] == s.cand["candid"].iloc[i]
            assert ex["jd"] == s.cand["jd"].iloc[i]
            assert ex["source_set"].decode() == s.cand["source_set"].iloc[i]


def test_random_access_source_matches_the_npy_reader(built):
    manual, data_dir, _ = built
    sources = tfds_builder.load_sources(manual, data_dir)  # already built: reuses it
    for split in ("train", "val"):
        ref = ip.ArraySource.from_split(load_split(manual, split))
        src = sources[split]
        assert len(src) == len(ref)
        np.testing.assert_array_equal(src.labels, ref.labels)
        np.testing.assert_array_equal(src.metadata, ref.metadata)
        idx = np.array([len(ref) - 1, 0, 5, 5, 3])
        for a, b in zip(src.gather(idx), ref.gather(idx)):
            np.testing.assert_array_equal(a, b)
    # hence identical training batches through either path
    a = next(ip.as_numpy(ip.train_dataset(sources["train"], global_batch=8, seed=3, epoch=1)))
    b = next(ip.as_numpy(ip.train_dataset(ip.ArraySource.from_split(load_split(manual, "train")),
                                          global_batch=8, seed=3, epoch=1)))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_training_config_switch(built):
    manual, data_dir, _ = built
    from btsbot_jax.configs import default
    from btsbot_jax.data.sources import load_sources

    c = default.get_config()
    c.update(data_dir=str(manual), data_source="tfds", tfds_data_dir=str(data_dir))
    sources = load_sources(c)
    assert set(sources) == {"train", "val", "test"}
    assert len(sources["test"]) == 16
    c.data_source = "parquet"
    with pytest.raises(ValueError, match="data_source"):
        load_sources(c)


def test_missing_manual_dir_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AssertionError, match="zenodo"):  # TFDS shows the manual download instructions
        tfds_builder.prepare(tmp_path / "empty", tmp_path / "d")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a training set")
    with pytest.raises(Exception, match="no train_cand"):
        tfds_builder.prepare(tmp_path / "other", tmp_path / "d")


def test_production_version_and_n_max_and_home_in_data_dir(tmp_path, monkeypatch):
    """v10/N100 is a registered config: asking for it must reuse it, not clash with it (issue 20 item 2); `~` in
    data_dir is the user's home, not a folder named `~` in the working directory (item 1)."""
    manual = tmp_path / "files"
    for i, (split, n) in enumerate((("train", 12), ("val", 6))):
        synthetic_training.write_split(manual, split, n, seed=i + 1, version="v10", n_max=100)
    synthetic_training.write_split(manual, "train", 5, seed=9, version="v11", n_max=10)  # another set beside it
    synthetic_training.write_split(manual, "val", 5, seed=8, version="v11", n_max=10)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    b = tfds_builder.prepare(manual, "~/tensorflow_datasets", version="v10", n_max=100)
    assert b.builder_config.name == "v10_N100"
    assert b.info.splits["train"].num_examples == 12 and b.info.splits["val"].num_examples == 6
    assert not (tmp_path / "~").exists()
    assert Path(b.data_dir).is_relative_to(tmp_path / "home" / "tensorflow_datasets")
    other = tfds_builder.prepare(manual, "$HOME/tensorflow_datasets", version="v11", n_max=10)
    assert other.info.splits["train"].num_examples == 5
