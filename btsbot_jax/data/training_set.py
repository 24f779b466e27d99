"""Reader for the published BTSbot training-set format (Rehemtulla et al. 2024).

A data directory holds, per split, `{split}_cand_{version}_N{n_max}.csv` (one row per alert: objectId, jd, label,
candidate fields, custom features, `new_drb`) and `{split}_triplets_{version}_N{n_max}.npy` (N, 63, 63, 3) in the
same row order. The real BTS training set (Zenodo 10839690) and the simulator's output are both read by this code
unchanged. Triplets are memory-mapped so a large split never has to fit in RAM.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from btsbot_jax.constants import COLUMN_ALIASES, METADATA_COLUMNS

SPLITS = ("train", "val", "test")
_NAME = re.compile(r"^(?P<split>[A-Za-z0-9]+)_cand_(?P<version>.+)_N(?P<n_max>\d+)\.csv$")


class DatasetError(ValueError):
    """A data directory that does not hold a readable split in the training-set format."""


@dataclasses.dataclass
class Split:
    """One split: the alert table, its triplets (N,63,63,3) and the model's metadata matrix (N,25) float32."""

    name: str
    cand: pd.DataFrame
    triplets: np.ndarray
    metadata: np.ndarray
    labels: np.ndarray
    csv_path: Path
    npy_path: Path

    def __len__(self) -> int:
        return len(self.cand)


def split_files(data_dir: str | os.PathLike, split: str, version: str | None = None,
                n_max: int | None = None) -> tuple[Path, Path]:
    """Locate the csv/npy pair of a split; `version`/`n_max` pick one when several are present."""
    d = Path(data_dir)
    if not d.is_dir():
        raise DatasetError(f"data directory {str(d)!r} does not exist")
    found = []
    for p in sorted(d.glob(f"{split}_cand_*_N*.csv")):
        m = _NAME.match(p.name)
        if not m or m["split"] != split:
            continue
        if version is not None and m["version"] != version:
            continue
        if n_max is not None and int(m["n_max"]) != int(n_max):
            continue
        found.append((p, d / f"{split}_triplets_{m['version']}_N{m['n_max']}.npy"))
    if not found:
        raise DatasetError(
            f"{d}: no {split}_cand_<version>_N<n_max>.csv"
            + (f" for version={version}" if version else "") + (f" n_max={n_max}" if n_max else "")
        )
    if len(found) > 1:
        names = ", ".join(p.name for p, _ in found)
        raise DatasetError(f"{d}: several candidates for split {split!r} ({names}); pass version/n_max")
    csv, npy = found[0]
    if not npy.is_file():
        raise DatasetError(f"{d}: {csv.name} has no matching triplets file {npy.name}")
    return csv, npy


def metadata_matrix(table: pd.DataFrame, columns: Sequence[str] = METADATA_COLUMNS) -> np.ndarray:
    """The (N, 25) float32 model input from a table, accepting the published aliases (new_drb, nnondet)."""
    reverse = {}
    for alias, name in COLUMN_ALIASES.items():
        reverse.setdefault(name, []).append(alias)
    out = np.empty((len(table), len(columns)), np.float32)
    for j, c in enumerate(columns):
        # prefer the training-set spelling when both exist (the published CSVs carry both drb and new_drb,
        # and the model was trained on new_drb)
        for name in [*reverse.get(c, []), c]:
            if name in table.columns:
                out[:, j] = table[name].to_numpy(np.float32)
                break
        else:
            raise DatasetError(f"metadata column {c!r} (or an alias of it) is missing from the table")
    return out


def require_rows(split: str, n: int, where: str) -> None:
    """Training cannot use an empty split (a validation loss over no alerts is nan): say so, with the file."""
    if n == 0:  # e.g. a survey of too few sources for the 81/9/10 split by source
        name = {"val": "validation", "train": "training"}.get(split, split)
        raise DatasetError(f"the {name} split is empty ({where} has no alerts): too few sources for the split by "
                           "source; simulate or prepare a larger set")


def load_split(data_dir: str | os.PathLike, split: str, version: str | None = None, n_max: int | None = None,
               mmap: bool = True) -> Split:
    csv, npy = split_files(data_dir, split, version, n_max)
    cand = pd.read_csv(csv)
    trip = np.load(npy, mmap_mode="r" if mmap else None)
    if trip.ndim != 4 or trip.shape[1:] != (63, 63, 3):
        raise DatasetError(f"{npy}: triplets have shape {trip.shape}, expected (N, 63, 63, 3)")
    if len(trip) != len(cand):
        raise DatasetError(f"{csv.name} has {len(cand)} rows but {npy.name} has {len(trip)} triplets")
    if "label" not in cand.columns:
        raise DatasetError(f"{csv}: no 'label' column")
    return Split(split, cand, trip, metadata_matrix(cand), cand["label"].to_numpy(np.int32), csv, npy)
