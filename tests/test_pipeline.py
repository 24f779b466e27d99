"""tf.data pipeline: exact augmentations, untouched metadata, seeded order, resumable epochs, per-host slices."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from btsbot_jax.data import pipeline as ip


@pytest.fixture(scope="module")
def source():
    rng = np.random.default_rng(0)
    n = 200
    return ip.ArraySource(rng.random((n, 63, 63, 3), dtype=np.float32), rng.random((n, 25), dtype=np.float32),
                          rng.integers(0, 2, n).astype(np.int32))


def test_each_flip_and_rotation_matches_numpy():
    x = np.random.default_rng(1).random((16, 63, 63, 3), dtype=np.float32)
    combos = list(itertools.product([False, True], [False, True], range(4)))
    for i, (h, v, k) in enumerate(combos):
        out = ip.augment_batch(x[i:i + 1], [h], [v], [k]).numpy()[0]
        ref = x[i]
        if h:
            ref = ref[:, ::-1, :]  # left-right: reverse the width axis
        if v:
            ref = ref[::-1, :, :]  # up-down: reverse the height axis
        ref = np.rot90(ref, k, axes=(0, 1))  # counter-clockwise quarter turns
        np.testing.assert_array_equal(out, ref, err_msg=f"hflip={h} vflip={v} k={k}")
    # a whole batch with a different draw per sample
    h = np.array([c[0] for c in combos])
    v = np.array([c[1] for c in combos])
    k = np.array([c[2] for c in combos])
    out = ip.augment_batch(x, h, v, k).numpy()
    ref = np.stack([ip.augment_numpy(x[i], h[i], v[i], k[i]) for i in range(16)])
    np.testing.assert_array_equal(out, ref)
    # the 8 dihedral images of a non-symmetric image are distinct (no two draws collapse)
    imgs = {ip.augment_batch(x[:1], [h_], [v_], [k_]).numpy().tobytes() for h_, v_, k_ in combos}
    assert len(imgs) == 8


def test_draw_probabilities():
    h, v, k = (t.numpy() for t in ip.augmentation_draws(seed=5, epoch=0, batch_index=0, global_batch=40000))
    assert abs(h.mean() - 0.5) < 0.01 and abs(v.mean() - 0.5) < 0.01
    counts = np.bincount(k, minlength=4) / len(k)
    assert counts.shape == (4,) and np.all(np.abs(counts - 0.25) < 0.01)
    assert abs(np.corrcoef(h, v)[0, 1]) < 0.02
    # pure in its arguments
    again = ip.augmentation_draws(seed=5, epoch=0, batch_index=0, global_batch=40000)
    np.testing.assert_array_equal(k, again[2].numpy())
    other = ip.augmentation_draws(seed=5, epoch=0, batch_index=1, global_batch=40000)
    assert not np.array_equal(k, other[2].numpy())


def _epoch(source, **kw):
    return list(ip.as_numpy(ip.train_dataset(source, **kw)))


def test_training_batches_are_augmented_rows_with_untouched_metadata(source):
    seed, epoch, bs = 3, 2, 32
    batches = _epoch(source, global_batch=bs, seed=seed, epoch=epoch)
    perm = ip.epoch_permutation(len(source), seed, epoch)
    assert len(batches) == len(source) // bs
    for b, batch in enumerate(batches):
        idx = perm[b * bs:(b + 1) * bs]
        h, v, k = (t.numpy() for t in ip.augmentation_draws(seed, epoch, b, bs))
        want = np.stack([ip.augment_numpy(source.triplets[i], h[j], v[j], k[j]) for j, i in enumerate(idx)])
        np.testing.assert_array_equal(batch["triplet"], want)
        np.testing.assert_array_equal(batch["metadata"], source.metadata[idx])  # bit for bit
        np.testing.assert_array_equal(batch["label"], source.labels[idx])
    # at least some samples were actually transformed
    assert not np.array_equal(batches[0]["triplet"], source.triplets[perm[:bs]])



def test_no_second_ps1_hides_the_second_ps1_source_of_the_drawn_samples():
    """`no_second_ps1=p`: the drawn samples get sgscore2 = distpsnr2 = -999 and nmtchps capped at 1, every other
    value (images, labels, other columns, undrawn samples) bit for bit as without it; the draws are a fixed
    function of (seed, epoch, batch), apart from the image draws, at rate p."""
    from btsbot_jax.constants import METADATA_COLUMNS as C

    rng = np.random.default_rng(1)
    n = 256
    meta = rng.normal(5, 1, (n, 25)).astype(np.float32)
    meta[:, C.index("nmtchps")] = rng.integers(0, 9, n)
    src = ip.ArraySource(rng.random((n, 63, 63, 3), dtype=np.float32), meta, rng.integers(0, 2, n).astype(np.int32))
    seed, epoch, bs = 3, 1, 64
    plain = _epoch(src, global_batch=bs, seed=seed, epoch=epoch)
    hid = _epoch(src, global_batch=bs, seed=seed, epoch=epoch, no_second_ps1=0.3)
    sent = [C.index("sgscore2"), C.index("distpsnr2")]
    j = C.index("nmtchps")
    n_hidden = 0
    for b, (x, y) in enumerate(zip(plain, hid)):
        hide = ip.no_second_ps1_draws(seed, epoch, b, bs, 0.3).numpy()
        n_hidden += int(hide.sum())
        np.testing.assert_array_equal(x["triplet"], y["triplet"])
        np.testing.assert_array_equal(x["label"], y["label"])
        np.testing.assert_array_equal(x["metadata"][~hide], y["metadata"][~hide])
        assert np.all(y["metadata"][hide][:, sent] == -999.0)
        np.testing.assert_array_equal(y["metadata"][hide][:, j], np.minimum(x["metadata"][hide][:, j], 1))
        rest = [c for c in range(25) if c not in (*sent, j)]
        np.testing.assert_array_equal(x["metadata"][hide][:, rest], y["metadata"][hide][:, rest])
    assert 0.2 < n_hidden / (len(plain) * bs) < 0.4
    again = _epoch(src, global_batch=bs, seed=seed, epoch=epoch, no_second_ps1=0.3)
    np.testing.assert_array_equal(again[2]["metadata"], hid[2]["metadata"])
    other = ip.no_second_ps1_draws(seed, epoch + 1, 0, bs, 0.3).numpy()
    assert not np.array_equal(other, ip.no_second_ps1_draws(seed, epoch, 0, bs, 0.3).numpy())
    # hosts get their slice of the same draws
    half = _epoch(src, global_batch=bs, seed=seed, epoch=epoch, no_second_ps1=0.3, process_index=1, process_count=2)
    np.testing.assert_array_equal(half[0]["metadata"], hid[0]["metadata"][bs // 2:])

def test_seeded_order_resume_and_no_augmentation(source):
    a = _epoch(source, global_batch=32, seed=1, epoch=0)
    b = _epoch(source, global_batch=32, seed=1, epoch=0)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    c = _epoch(source, global_batch=32, seed=1, epoch=1)
    assert not np.array_equal(a[0]["metadata"], c[0]["metadata"])  # each epoch reshuffles
    d = _epoch(source, global_batch=32, seed=2, epoch=0)
    assert not np.array_equal(a[0]["metadata"], d[0]["metadata"])
    # resuming mid-epoch gives the tail of the same epoch, augmentations included
    tail = _epoch(source, global_batch=32, seed=1, epoch=0, start_step=4)
    assert len(tail) == len(a) - 4
    for x, y in zip(a[4:], tail):
        np.testing.assert_array_equal(x["triplet"], y["triplet"])
    # augment=False: the raw rows
    plain = _epoch(source, global_batch=32, seed=1, epoch=0, augment=False)
    perm = ip.epoch_permutation(len(source), 1, 0)
    np.testing.assert_array_equal(plain[1]["triplet"], source.triplets[perm[32:64]])


def test_hosts_read_their_slice_of_the_same_global_batch(source):
    full = _epoch(source, global_batch=32, seed=4, epoch=1)
    parts = [_epoch(source, global_batch=32, seed=4, epoch=1, process_index=p, process_count=4) for p in range(4)]
    for b in range(len(full)):
        for key in ("triplet", "metadata", "label"):
            np.testing.assert_array_equal(np.concatenate([parts[p][b][key] for p in range(4)]), full[b][key])
    with pytest.raises(ValueError, match="not divisible"):
        ip.train_dataset(source, global_batch=30, seed=0, epoch=0, process_count=4)


def test_eval_batches_are_the_file_rows_in_order_never_augmented(source):
    batches = list(ip.as_numpy(ip.eval_dataset(source, global_batch=64)))
    assert len(batches) == 4  # 200 rows -> 3 full batches + 1 padded
    trip = np.concatenate([b["triplet"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == len(source) and mask[: len(source)].all()
    np.testing.assert_array_equal(trip[mask], source.triplets)
    np.testing.assert_array_equal(np.concatenate([b["metadata"] for b in batches])[mask], source.metadata)
    parts = [list(ip.as_numpy(ip.eval_dataset(source, global_batch=64, process_index=p, process_count=2)))
             for p in range(2)]
    np.testing.assert_array_equal(np.concatenate([parts[0][3]["triplet"], parts[1][3]["triplet"]]),
                                  batches[3]["triplet"])


def test_memory_mapped_split_is_gathered_in_any_order(tmp_path, source):
    np.save(tmp_path / "t.npy", source.triplets)
    mm = ip.ArraySource(np.load(tmp_path / "t.npy", mmap_mode="r"), source.metadata, source.labels)
    idx = np.array([150, 3, 77, 3, 0])
    t, m, y = mm.gather(idx)
    np.testing.assert_array_equal(t, source.triplets[idx])
    np.testing.assert_array_equal(m, source.metadata[idx])
    np.testing.assert_array_equal(y, source.labels[idx])


def test_an_empty_split_is_refused_with_its_name(tmp_path):
    """Training on an empty validation split ended in 'validation loss is nan; training diverged' (issue 20 item 5)."""
    import synthetic_training

    from btsbot_jax.data.training_set import DatasetError, load_split

    synthetic_training.write_split(tmp_path, "val", 0, seed=1)
    split = load_split(tmp_path, "val")  # reading an empty split is fine; training on it is not
    assert len(split) == 0
    with pytest.raises(DatasetError, match="the validation split is empty"):
        ip.ArraySource.from_split(split)
