"""The prepare step: cleaning cuts, split by source, N_max, checked row by row on hand-built tables."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from btsbot_jax.constants import METADATA_COLUMNS
from btsbot_jax.data.prepare import PrepareError, assign_splits, prepare_training_set, select_alerts
from btsbot_jax.data.training_set import load_split


def _alert(obj, sset, jd, *, isdiffpos="t", fid=1, sg1=0.5, sg2=0.5, mag=18.0, **extra):
    row = {c: 0.0 for c in METADATA_COLUMNS}
    row.update(objectId=obj, source_set=sset, jd=float(jd), isdiffpos=isdiffpos, fid=fid, sgscore1=sg1,
               sgscore2=sg2, magpsf=mag)
    row.update(extra)
    return row


def _triplets_for(table):
    """Triplets whose every pixel holds the row number, so the written rows can be traced back."""
    return np.broadcast_to(np.arange(len(table), dtype=np.float32)[:, None, None, None],
                           (len(table), 63, 63, 3)).copy()


def test_cleaning_cuts_alert_by_alert():
    rows = [
        _alert("A", "trues", 1),                                   # kept
        _alert("A", "trues", 2, isdiffpos="f"),                   # negative subtraction
        _alert("A", "trues", 3, fid=3),                            # i band
        _alert("A", "trues", 4, sg1=-999.0, sg2=-999.0),          # no PS1 neighbour
        _alert("A", "trues", 5, sg1=-999.0, sg2=0.2),             # one neighbour is enough
        _alert("A", "trues", 6, sg1=0.0, sg2=-999.0),             # sgscore1 == 0 passes (>= 0)
        _alert("A", "trues", 7, isdiffpos="1"),                   # old packets spell true as '1'
        _alert("A", "trues", 8, isdiffpos=True),                  # CSV round trip
        _alert("A", "trues", 9, isdiffpos="0"),
    ]
    kept, summary = select_alerts(pd.DataFrame(rows), n_max=None)
    assert kept["jd"].tolist() == [1.0, 5.0, 6.0, 7.0, 8.0]
    assert kept["row"].tolist() == [0, 4, 5, 6, 7]
    assert summary["removed"] == {"isdiffpos_not_true": 2, "fid_not_1_or_2": 1, "no_ps1_neighbour_sgscore": 1,
                                  "dims_peak_brighter_than_18.5": 0}
    assert summary["alerts_in"] == 9 and summary["alerts_kept"] == 5


def test_dims_sources_dropped_on_their_peak():
    rows = [
        _alert("D1", "dims", 1, mag=19.0), _alert("D1", "dims", 2, mag=18.5),   # peak exactly 18.5 -> dropped
        _alert("D2", "dims", 1, mag=19.2), _alert("D2", "dims", 2, mag=18.6),   # peak 18.6 -> kept
        # D3's only bright alert is a negative subtraction, cut first: its peak among clean alerts is 18.9
        _alert("D3", "dims", 1, mag=17.0, isdiffpos="f"), _alert("D3", "dims", 2, mag=18.9),
        _alert("T1", "trues", 1, mag=16.0),                                       # bright trues are not touched
        _alert("R1", "rejects", 1, mag=15.0),
    ]
    kept, summary = select_alerts(pd.DataFrame(rows), n_max=None)
    assert sorted(kept["objectId"].unique()) == ["D2", "D3", "R1", "T1"]
    assert summary["dims_sources_dropped_for_peak"] == ["D1"]
    assert summary["removed"]["dims_peak_brighter_than_18.5"] == 2
    # a source-level catalogue peak, when present, is what decides (as in the original pipeline)
    t = pd.DataFrame(rows).assign(peakmag=[18.7, 18.7, 18.4, 18.4, 18.9, 18.9, 16.0, 15.0])
    kept, _ = select_alerts(t, n_max=None)
    assert sorted(kept["objectId"].unique()) == ["D1", "D3", "R1", "T1"]


def test_split_by_source_rule_and_fractions():
    objs = [f"ZTF{i:06d}" for i in range(20000)]
    s = assign_splits(objs[::-1], seed=7)  # input order does not matter
    u = np.random.default_rng(7).random(len(objs))  # sorted objectIds, one draw each
    want = np.where(u < 0.81, "train", np.where(u < 0.90, "val", "test"))
    assert s.index.tolist() == objs
    assert (s.to_numpy() == want).all()
    frac = s.value_counts(normalize=True)
    assert abs(frac["train"] - 0.81) < 0.01 and abs(frac["val"] - 0.09) < 0.006 and abs(frac["test"] - 0.10) < 0.006


def _n_max_table(num_sources=60, n_alerts=9):
    rows = []
    for i in range(num_sources):
        sset = ("trues", "vars", "dims", "rejects")[i % 4]
        mag = 19.0 if sset == "dims" else 18.0
        # jd deliberately not in row order, so "latest by jd" differs from "last rows"
        for j in np.random.default_rng(i).permutation(n_alerts):
            rows.append(_alert(f"S{i:03d}", sset, 100 + j, mag=mag))
    return pd.DataFrame(rows)


def test_n_max_per_source_and_split():
    table = _n_max_table()
    n_max = 4
    kept, summary = select_alerts(table, n_max=n_max, seed=3)
    split_of = assign_splits(table["objectId"], seed=3)
    assert set(split_of.unique()) == {"train", "val", "test"}  # the case covers every split
    for obj, grp in table.groupby("objectId"):
        got = kept[kept["objectId"] == obj]
        sset, split = grp["source_set"].iloc[0], split_of[obj]
        assert (got["split"] == split).all()
        if sset == "vars":  # latest n_max by jd, in every split
            assert sorted(got["jd"]) == sorted(grp["jd"].nlargest(n_max))
        elif split == "train":  # a random subset of n_max
            assert len(got) == n_max and set(got["row"]) <= set(grp.index)
        else:  # val/test keep everything else
            assert sorted(got["row"]) == sorted(grp.index)
    # random subsets differ between sources (not "the first n_max rows" every time)
    train_true = kept[(kept["split"] == "train") & (kept["source_set"] == "trues")]
    firsts = {tuple(sorted(g["jd"])) for _, g in train_true.groupby("objectId")}
    assert len(firsts) > 1
    assert summary["removed"]["beyond_n_max_4"] == len(table) - len(kept)


def test_files_written_and_read_back(tmp_path):
    table = _n_max_table(40, 6)
    trip = _triplets_for(table)
    res = prepare_training_set(table.drop(columns=["drb"]).assign(drb=0.7), trip, tmp_path, version="v9", n_max=3,
                               seed=1)
    total = 0
    for split in ("train", "val", "test"):
        csv, npy = res.files[split]
        assert csv.name == f"{split}_cand_v9_N3.csv" and npy.name == f"{split}_triplets_v9_N3.npy"
        s = load_split(tmp_path, split)
        total += len(s)
        assert (s.cand["split"] == split).all()
        # the row of each alert in the input is traceable through its triplet
        rows = s.triplets[:, 0, 0, 0].astype(int)
        pd.testing.assert_series_equal(s.cand["jd"], table["jd"].iloc[rows].reset_index(drop=True),
                                       check_names=False)
        assert (s.labels == (s.cand["source_set"] == "trues")).all()
        assert (s.cand["new_drb"] == 0.7).all()
        np.testing.assert_array_equal(s.metadata[:, METADATA_COLUMNS.index("drb")], np.float32(0.7))
    assert total == res.summary["alerts_kept"]
    # no source straddles splits
    objs = [set(load_split(tmp_path, s).cand["objectId"]) for s in ("train", "val", "test")]
    assert not (objs[0] & objs[1] or objs[0] & objs[2] or objs[1] & objs[2])
    # same seed -> identical files
    res2 = prepare_training_set(table.drop(columns=["drb"]).assign(drb=0.7), trip, tmp_path / "again",
                                version="v9", n_max=3, seed=1)
    for split in ("train", "val", "test"):
        assert res.files[split][0].read_bytes() == res2.files[split][0].read_bytes()
        assert res.files[split][1].read_bytes() == res2.files[split][1].read_bytes()


def test_source_sets_from_a_mapping_and_bad_inputs(tmp_path):
    table = _n_max_table(8, 3)
    sets = table.groupby("objectId")["source_set"].first()
    bare = table.drop(columns=["source_set"])
    a, _ = select_alerts(table, n_max=2, seed=0)
    b, _ = select_alerts(bare, sets.to_dict(), n_max=2, seed=0)
    c, _ = select_alerts(bare, sets.rename("source_set").reset_index(), n_max=2, seed=0)
    pd.testing.assert_frame_equal(a, b[a.columns])
    pd.testing.assert_frame_equal(a, c[a.columns])
    with pytest.raises(PrepareError, match="no 'source_set' column"):
        select_alerts(bare)
    with pytest.raises(PrepareError, match="S000"):
        select_alerts(bare, {k: v for k, v in sets.items() if k != "S000"})
    with pytest.raises(PrepareError, match="'galaxies'"):
        select_alerts(table.assign(source_set="galaxies"))
    with pytest.raises(PrepareError, match="label 1 .* 'vars'|has label"):
        select_alerts(table.assign(label=1))
    with pytest.raises(PrepareError, match=r"lacks column\(s\) \['fid'\]"):
        select_alerts(table.drop(columns=["fid"]))
    mixed = table.copy()
    mixed.loc[0, "source_set"] = "rejects" if mixed.loc[0, "source_set"] != "rejects" else "vars"
    with pytest.raises(PrepareError, match="more than one source set"):
        select_alerts(mixed)
    with pytest.raises(PrepareError, match="triplets"):
        prepare_training_set(table, np.zeros((3, 63, 63, 3), np.float32), tmp_path)


def test_cli(tmp_path):
    table = _n_max_table(12, 4)
    table.to_csv(tmp_path / "alerts.csv", index=False)
    np.save(tmp_path / "trip.npy", _triplets_for(table))
    r = subprocess.run([sys.executable, "-m", "btsbot_jax.cli.prepare", f"--candidates={tmp_path / 'alerts.csv'}",
                        f"--triplets={tmp_path / 'trip.npy'}", f"--out={tmp_path / 'out'}", "--n_max=2",
                        "--data_version=v3"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "alerts in: 48" in r.stdout
    assert sum(len(load_split(tmp_path / "out", s)) for s in ("train", "val", "test")) > 0
    bad = subprocess.run([sys.executable, "-m", "btsbot_jax.cli.prepare", f"--candidates={tmp_path / 'alerts.csv'}",
                          f"--triplets={tmp_path / 'missing.npy'}", f"--out={tmp_path / 'out2'}"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "missing.npy: no such file" in bad.stderr
