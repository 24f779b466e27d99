"""The `prepare` step: per-alert tables with source labels -> the published training-set format
(Rehemtulla et al. 2024).

Input is one row per alert (objectId, jd, the candidate fields, the custom features) with the triplets in the same
row order, and each source's set (`trues`, `vars`, `dims`, `rejects`), either as a `source_set` column or as a
separate objectId -> set mapping. Output is what the BTS authors published and what
`btsbot_jax.data.training_set.load_split`
reads: `{split}_cand_{version}_N{n_max}.csv` + `{split}_triplets_{version}_N{n_max}.npy` per split.

The steps, in the order of the original pipeline:

1. cleaning cuts per alert: `isdiffpos` true, `fid` in {1, 2}, `sgscore1 >= 0 or sgscore2 >= 0`;
2. drop `dims` sources whose peak is <= 18.5 mag (the source's `peakmag` column when the table has one, as the
   original used the catalogue's peak; otherwise the brightest `magpsf` among its alerts that passed step 1);
3. split by source, not by alert: sources sorted by objectId, one uniform draw u each from
   `numpy.random.default_rng(seed)`; train if u < 0.81, val if u < 0.90, else test;
4. N_max per source: in train, `trues`/`dims`/`rejects` keep a random subset of at most `n_max` alerts (the
   `n_max` smallest of one uniform key per alert, drawn after the split draws); `vars` keep their latest `n_max`
   alerts by jd in every split; val/test keep every other alert.

Nothing is lost silently: every input alert is accounted for in the summary (kept, or removed with the cut that
removed it), and the summary is written beside the files as `prepare_summary_{version}_N{n_max}.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from btsbot_jax.constants import IMAGE_SIZE, NUM_CHANNELS
from btsbot_jax.data.training_set import SPLITS

SOURCE_SETS = ("trues", "vars", "dims", "rejects")
POSITIVE_SETS = ("trues",)
SPLIT_FRACTIONS = (0.81, 0.09, 0.10)
DIMS_PEAK_LIMIT = 18.5
REQUIRED_COLUMNS = ("objectId", "jd", "isdiffpos", "fid", "sgscore1", "sgscore2", "magpsf")
_TRUE_STRINGS = {"t", "true", "1", "1.0", "y", "yes"}
_CHUNK = 4096


class PrepareError(ValueError):
    """Input that cannot be turned into a training set (missing column, unknown source set, bad shapes...)."""


@dataclasses.dataclass
class PrepareResult:
    """Paths of the files written per split and the accounting of every input alert."""

    out_dir: Path
    files: dict[str, tuple[Path, Path]]
    summary: dict

    def counts(self) -> pd.DataFrame:
        """Alerts per split and source set (sources in brackets are in `summary`)."""
        return pd.DataFrame(self.summary["alerts"]).fillna(0).astype(int)


def isdiffpos_true(values: pd.Series) -> np.ndarray:
    """ZTF writes isdiffpos as 't'/'f' (older packets '1'/'0'); CSV round trips give True/False or 1/0."""
    if values.dtype == bool:
        return values.to_numpy()
    if pd.api.types.is_numeric_dtype(values):
        return (values.to_numpy() == 1)
    return values.astype(str).str.strip().str.lower().isin(_TRUE_STRINGS).to_numpy()


def _attach_sets(table: pd.DataFrame, source_sets) -> pd.DataFrame:
    if source_sets is None:
        if "source_set" not in table.columns:
            raise PrepareError("the alert table has no 'source_set' column and no source_sets mapping was given")
        sets = table["source_set"].astype(str)
    else:
        if isinstance(source_sets, pd.DataFrame):
            if not {"objectId", "source_set"} <= set(source_sets.columns):
                raise PrepareError("a source_sets table needs columns 'objectId' and 'source_set'")
            dup = source_sets["objectId"][source_sets["objectId"].duplicated()]
            if len(dup):
                raise PrepareError(f"source {dup.iloc[0]!r} appears more than once in source_sets")
            source_sets = dict(zip(source_sets["objectId"], source_sets["source_set"]))
        mapping = source_sets if isinstance(source_sets, Mapping) else dict(source_sets)
        sets = table["objectId"].map(mapping)
        missing = table["objectId"][sets.isna()]
        if len(missing):
            raise PrepareError(
                f"{missing.nunique()} source(s) have no source set, e.g. {missing.iloc[0]!r}"
            )
        sets = sets.astype(str)
    bad = ~sets.isin(SOURCE_SETS)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise PrepareError(
            f"alert of {table['objectId'].iloc[i]!r} has source set {sets.iloc[i]!r}; expected one of {SOURCE_SETS}"
        )
    per_source = sets.groupby(table["objectId"].to_numpy()).nunique()
    if (per_source > 1).any():
        obj = per_source.index[per_source > 1][0]
        raise PrepareError(f"source {obj!r} has alerts in more than one source set")
    out = table.copy()
    out["source_set"] = sets.to_numpy()
    want_label = out["source_set"].isin(POSITIVE_SETS).astype(np.int64)
    if "label" in out.columns:
        lab = pd.to_numeric(out["label"], errors="coerce")
        wrong = lab.to_numpy() != want_label.to_numpy()
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            raise PrepareError(
                f"alert of {out['objectId'].iloc[i]!r} has label {out['label'].iloc[i]!r} but its source set is "
                f"{out['source_set'].iloc[i]!r} (label 1 only for {POSITIVE_SETS})"
            )
    out["label"] = want_label.to_numpy()
    return out


def assign_splits(object_ids, seed: int = 2, fractions=SPLIT_FRACTIONS) -> pd.Series:
    """Split name per source (index: objectIds sorted), from one seeded uniform draw per source."""
    objs = np.sort(pd.unique(np.asarray(object_ids)))
    u = np.random.default_rng(seed).random(len(objs))
    edges = np.cumsum(fractions)
    names = np.where(u < edges[0], SPLITS[0], np.where(u < edges[1], SPLITS[1], SPLITS[2]))
    return pd.Series(names, index=objs, name="split")


def _n_max_mask(t: pd.DataFrame, keys: np.ndarray, n_max: int) -> np.ndarray:
    """Rows kept by the N_max rule (t has split, source_set, objectId, jd; keys one uniform per row)."""
    obj = t["objectId"].to_numpy()
    keep = np.ones(len(t), bool)
    is_var = (t["source_set"] == "vars").to_numpy()
    if is_var.any():
        # latest n_max by jd (ties: the later row wins, like a stable sort on jd then taking the tail)
        sub = pd.DataFrame({"obj": obj[is_var], "jd": t["jd"].to_numpy()[is_var],
                            "row": np.arange(len(t))[is_var]})
        sub = sub.sort_values(["obj", "jd", "row"], kind="stable")
        from_end = sub.groupby("obj", sort=False).cumcount(ascending=False).to_numpy()
        keep[sub["row"].to_numpy()[from_end >= n_max]] = False
    rand = ((t["split"] == "train") & t["source_set"].isin(["trues", "dims", "rejects"])).to_numpy()
    if rand.any():
        sub = pd.DataFrame({"obj": obj[rand], "key": keys[rand], "row": np.arange(len(t))[rand]})
        sub = sub.sort_values(["obj", "key", "row"], kind="stable")
        rank = sub.groupby("obj", sort=False).cumcount().to_numpy()
        keep[sub["row"].to_numpy()[rank >= n_max]] = False
    return keep


def select_alerts(table: pd.DataFrame, source_sets=None, *, n_max: int = 100, seed: int = 2
                  ) -> tuple[pd.DataFrame, dict]:
    """Apply the cuts, split and N_max; return the kept rows (with `split`, `source_set`, `label`, and `row`, the
    row number in the input) and the accounting of every input alert."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise PrepareError(f"the alert table lacks column(s) {missing}")
    if n_max is not None and int(n_max) < 1:
        raise PrepareError(f"n_max must be >= 1, got {n_max}")
    t = _attach_sets(table.reset_index(drop=True), source_sets)
    t["row"] = np.arange(len(t))
    n_in = len(t)
    removed: dict[str, int] = {}

    cut = ~isdiffpos_true(t["isdiffpos"])
    removed["isdiffpos_not_true"] = int(cut.sum())
    t = t[~cut]
    fid = pd.to_numeric(t["fid"], errors="coerce")
    cut = ~fid.isin([1, 2]).to_numpy()
    removed["fid_not_1_or_2"] = int(cut.sum())
    t = t[~cut]
    sg1 = pd.to_numeric(t["sgscore1"], errors="coerce").to_numpy()
    sg2 = pd.to_numeric(t["sgscore2"], errors="coerce").to_numpy()
    cut = ~((sg1 >= 0) | (sg2 >= 0))
    removed["no_ps1_neighbour_sgscore"] = int(cut.sum())
    t = t[~cut]

    dims = t["source_set"] == "dims"
    peak_col = "peakmag" if "peakmag" in t.columns else "magpsf"
    peak = pd.to_numeric(t[peak_col], errors="coerce").groupby(t["objectId"].to_numpy()).transform("min")
    cut = (dims & (peak <= DIMS_PEAK_LIMIT)).to_numpy()
    removed["dims_peak_brighter_than_18.5"] = int(cut.sum())
    dropped_dims = sorted(pd.unique(t["objectId"][cut]).tolist())
    t = t[~cut]

    split_of = assign_splits(t["objectId"], seed)
    t = t.assign(split=t["objectId"].map(split_of).to_numpy())
    rng_keys = np.random.default_rng([seed, 1]).random(len(t))
    if n_max is not None:
        keep = _n_max_mask(t, rng_keys, int(n_max))
        removed[f"beyond_n_max_{n_max}"] = int((~keep).sum())
        t = t[keep]
    t = t.reset_index(drop=True)

    assert n_in == len(t) + sum(removed.values())
    summary = {
        "alerts_in": n_in,
        "alerts_kept": len(t),
        "removed": removed,
        "dims_sources_dropped_for_peak": dropped_dims,
        "alerts": {s: {k: int(v) for k, v in t[t["split"] == s]["source_set"].value_counts().items()}
                   for s in SPLITS},
        "sources": {s: {k: int(v) for k, v in
                        t[t["split"] == s].groupby("source_set")["objectId"].nunique().items()} for s in SPLITS},
        "seed": int(seed),
        "n_max": None if n_max is None else int(n_max),
        "split_fractions": list(SPLIT_FRACTIONS),
        "dims_peak_from": peak_col,
    }
    return t, summary


def _check_triplets(triplets, n: int) -> None:
    shape = getattr(triplets, "shape", None)
    if shape is None or len(shape) != 4 or tuple(shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE, NUM_CHANNELS):
        raise PrepareError(f"triplets must have shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}, {NUM_CHANNELS}), got {shape}")
    if shape[0] != n:
        raise PrepareError(f"the alert table has {n} rows but there are {shape[0]} triplets")


def _write_triplets(path: Path, triplets, rows: np.ndarray) -> None:
    """Chunked gather into a .npy file, so a memory-mapped input larger than RAM is fine."""
    if len(rows) == 0:  # a memory map cannot be empty
        np.save(path, np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, NUM_CHANNELS), np.float32))
        return
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                    shape=(len(rows), IMAGE_SIZE, IMAGE_SIZE, NUM_CHANNELS))
    for i in range(0, len(rows), _CHUNK):
        out[i:i + _CHUNK] = np.asarray(triplets[rows[i:i + _CHUNK]], dtype=np.float32)
    out.flush()
    del out


def prepare_training_set(table: pd.DataFrame, triplets, out_dir: str | os.PathLike, *, version: str = "v10",
                         n_max: int = 100, seed: int = 2, source_sets=None) -> PrepareResult:
    """Write `{split}_cand_{version}_N{n_max}.csv` + `{split}_triplets_{version}_N{n_max}.npy` for train/val/test.

    `table`: one row per alert, same order as `triplets` (N, 63, 63, 3). `source_sets`: None (use the table's
    `source_set` column), a mapping objectId -> set, or a DataFrame with `objectId` and `source_set`. A `label`
    column, if present, must agree with the sets (1 for trues, 0 otherwise); it is written either way. The CSV
    keeps every input column, adds `source_set`, `split`, `label`, and `new_drb` (the published spelling of
    `drb`) when only `drb` is present.
    """
    _check_triplets(triplets, len(table))
    kept, summary = select_alerts(table, source_sets, n_max=n_max, seed=seed)
    if "new_drb" not in kept.columns and "drb" in kept.columns:
        kept["new_drb"] = kept["drb"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for split in SPLITS:
        part = kept[kept["split"] == split]
        rows = part["row"].to_numpy()
        csv = out / f"{split}_cand_{version}_N{n_max}.csv"
        npy = out / f"{split}_triplets_{version}_N{n_max}.npy"
        part.drop(columns=["row"]).to_csv(csv, index=False)
        _write_triplets(npy, triplets, rows)
        files[split] = (csv, npy)
    summary["version"] = version
    (out / f"prepare_summary_{version}_N{n_max}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return PrepareResult(out, files, summary)
