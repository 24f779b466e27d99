"""`simulate(out_dir, config)`: a whole mock survey -> avro packets + truth table + the training-set files.

Work is cut into chunks of consecutive sources (a fixed size, independent of the number of processes); each
source draws from its own random streams (keyed by the run seed and the source index), so the output does not
depend on how chunks are spread over processes, and the same seed gives byte-identical files.

Per chunk, a worker simulates the sources, writes `alerts/sim_<chunk>.avro` (the alerts of the chunk in time
order, ZTF layout), and runs the ingestion code that scores real packets (`btsbot_jax.ingest.features.prepare_batch`)
on exactly the records in that file, so the training-set features are what `btsbot-score` computes on the
packets. The main process then hands the per-alert table and the triplets to `btsbot_jax.data.prepare
.prepare_training_set` (cleaning cuts, split by source, N_max).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from btsbot_jax.constants import IMAGE_SIZE, METADATA_COLUMNS
from btsbot_jax.ingest.features import prepare_batch
from btsbot_jax.sim.generate import simulate_source
from btsbot_jax.sim.packets import AlertEncoder, container_parts, sync_marker
from btsbot_jax.sim.population import MAX_DRAWS, SET_FRACTIONS, TRUE_SEEN_LIMIT, assign_sets, draw_source
from btsbot_jax.sim.survey import make_nights

ALERTS_DIR = "alerts"
TRUTH_FILE = "truth.csv"
ALERT_TABLE = "alerts.parquet"
SUMMARY_FILE = "simulation_summary.json"
_WORK = ".sim_work"
# candidate fields that are strings or identifiers of no use as table columns
_SKIP_COLUMNS = {"pdiffimfilename", "programpi", "rbversion", "drbversion", "ssnamenr"}


# Columns of the training-set CSVs: those of the published files (see ../shared/data/btsbot_examples/
# usage_candidates.csv, minus the ACAI scores we do not simulate) plus our source_set/subtype; every candidate field
# is in alerts.parquet.
TRAINING_COLUMNS = (
    "objectId", "jd", "label", "source_set", "subtype", "fid", "diffmaglim", "programid", "candid", "isdiffpos",
    "field", "ra", "dec", "magpsf", "sigmapsf", "chipsf", "magap", "sigmagap", "distnr", "magnr", "chinr", "sharpnr",
    "sky", "magdiff", "fwhm", "classtar", "mindtoedge", "seeratio", "nneg", "nbad", "magapbig", "sigmagapbig",
    "sgmag1", "srmag1", "simag1", "szmag1", "sgscore1", "distpsnr1", "ndethist", "ncovhist", "jdstarthist", "scorr",
    "sgmag2", "srmag2", "simag2", "szmag2", "sgscore2", "distpsnr2", "sgmag3", "srmag3", "simag3", "szmag3",
    "sgscore3", "distpsnr3", "nmtchps", "jdstartref", "dsnrms", "ssnrms", "magzpsci", "magzpsciunc", "magzpscirms",
    "clrcoeff", "clrcounc", "neargaia", "neargaiabright", "maggaia", "maggaiabright", "exptime", "drb", "new_drb",
    "peakmag", "peakmag_so_far", "maxmag_so_far", "age", "days_since_peak", "days_to_peak", "nnotdet",
)


@dataclasses.dataclass
class SimConfig:
    num_sources: int = 1000
    seed: int = 0
    version: str = "v10"
    n_max: int = 100
    fractions: dict = dataclasses.field(default_factory=lambda: dict(SET_FRACTIONS))
    workers: int = 0  # 0: os.cpu_count()
    chunk_sources: int = 40
    gzip_level: int = 1
    training_set: bool = True  # write the {split}_cand/_triplets files
    keep_packets: bool = True  # keep alerts/*.avro (False: only the training set and tables)
    split_seed: int | None = None  # seed of the split by source / N_max subsets (None: `seed`)


@dataclasses.dataclass
class SimResult:
    out_dir: Path
    num_alerts: int
    num_sources: int
    truth: pd.DataFrame
    alerts: pd.DataFrame
    files: dict
    summary: dict
    seconds: float
    timings: dict = dataclasses.field(default_factory=dict)  # wall seconds per stage (not written to disk)


def _chunk_name(k: int) -> str:
    return f"sim_{k:05d}.avro"


def _run_chunk(args) -> dict:
    """Simulate sources [lo, hi) of the run; write their packets and the chunk's triplets; return the tables."""
    k, lo, hi, sets, cfg, out_dir = args
    nights = make_nights(cfg.seed)
    records, truths = [], []
    for i in range(lo, hi):
        for draw in range(MAX_DRAWS):  # a true ZTF did not see bright is not a BTS true: draw it again
            src = draw_source(i, sets[i - lo], cfg.seed, draw)
            last = draw == MAX_DRAWS - 1
            recs, truth = simulate_source(src, nights, cfg.seed, level=cfg.gzip_level,
                                          seen_limit=None if last else TRUE_SEEN_LIMIT)
            if truth.pop("seen", True):
                break
        truth["draws"] = draw + 1
        records += recs
        truths.append(truth)
    # the chunk's alerts in time order (ties: by candid), as a night's stream would deliver them
    records.sort(key=lambda r: (r["candidate"]["jd"], r["candid"]))
    encoded, decoded = AlertEncoder().encode_source(records)
    path = Path(out_dir) / ALERTS_DIR / _chunk_name(k)
    with open(path, "wb") as fo:
        fo.writelines(container_parts(encoded, sync_marker("btsbot-jax-sim", cfg.seed, k)))
    # features by the ingestion code, on the records exactly as decoded from the file's bytes; the light-curve
    # features see the source's whole history (all its earlier alerts, as Kowalski computes them for BTSbot and
    # as the published training set has them: peakmag_so_far of a late alert is the real peak, not the peak of
    # the 30-day prv_candidates window)
    prepared = prepare_batch(decoded, history=_record_setters(decoded))
    by_candid = {r["candid"]: r for r in decoded}
    recs = [by_candid[int(c)] for c in prepared.info["candid"].to_numpy()]
    table = pd.DataFrame.from_records([r["candidate"] for r in recs])
    table = table.drop(columns=[c for c in _SKIP_COLUMNS if c in table.columns])
    table.insert(0, "objectId", [r["objectId"] for r in recs])
    meta = pd.DataFrame(prepared.metadata.astype(np.float64), columns=list(METADATA_COLUMNS))
    for c in METADATA_COLUMNS:  # the model's inputs exactly as the ingestion code made them (float32 values)
        table[c] = meta[c].to_numpy()
    table["new_drb"] = table["drb"]
    table["nnondet"] = table["nnotdet"]
    table["source_file"] = f"{ALERTS_DIR}/{path.name}"
    if cfg.training_set:
        np.save(Path(out_dir) / _WORK / f"triplets_{k:05d}.npy", prepared.triplets)
    rejected = [{"candid": r.candid, "objectId": r.objectId, "reason": r.reason} for r in prepared.rejected]
    return {"k": k, "table": table, "truth": truths, "rejected": rejected, "n_records": len(records)}


def _record_setters(records: list[dict]) -> dict[str, list]:
    """Per source, the earlier alerts' candidates that can matter to the light-curve features: the first
    detection and every one that set a new brightest or faintest magnitude so far.

    The features only use the minimum magnitude so far (and the jd of its first occurrence), the maximum, and the
    first jd; all of them are attained at such record-setting points, so passing only these as `history` gives
    exactly the features of passing every earlier alert (checked in tests/test_simulate.py), without the
    quadratic cost for sources with hundreds of alerts."""
    out: dict[str, list] = {}
    state: dict[str, tuple[float, float]] = {}
    for rec in sorted(records, key=lambda r: r["candidate"]["jd"]):
        c = rec["candidate"]
        oid = rec["objectId"]
        m = c["magpsf"]
        if oid not in state:
            state[oid] = (m, m)
            out[oid] = [c]
            continue
        lo, hi = state[oid]
        if m < lo or m > hi:
            out[oid].append(c)
            state[oid] = (min(lo, m), max(hi, m))
    return out


class _ChunkedTriplets:
    """Read-only (N, 63, 63, 3) view over the per-chunk triplet files, indexable by arrays of global rows (what
    prepare_training_set needs), without concatenating them in memory."""

    def __init__(self, paths: list[Path], counts: list[int]):
        self.paths = paths
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.shape = (int(self.offsets[-1]), IMAGE_SIZE, IMAGE_SIZE, 3)
        self.dtype = np.dtype(np.float32)
        self._maps: dict[int, np.ndarray] = {}

    def _map(self, c: int) -> np.ndarray:
        if c not in self._maps:
            self._maps[c] = np.load(self.paths[c], mmap_mode="r")
        return self._maps[c]

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.atleast_1d(np.asarray(rows, np.int64))
        out = np.empty((len(rows), *self.shape[1:]), np.float32)
        chunk = np.searchsorted(self.offsets, rows, side="right") - 1
        for c in np.unique(chunk):
            sel = np.flatnonzero(chunk == c)
            out[sel] = self._map(int(c))[rows[sel] - self.offsets[c]]
        return out


def _start_method() -> str:
    """fork where it is safe (fast, nothing to re-import); forkserver once JAX (multithreaded) is loaded in this
    process, e.g. inside a test session or a notebook that also scores, since forking a multithreaded process can
    deadlock the child."""
    methods = mp.get_all_start_methods()
    if "jax" in sys.modules and "forkserver" in methods:
        return "forkserver"
    if "fork" in methods:
        return "fork"
    return methods[0]


def simulate(out_dir: str | os.PathLike, config: SimConfig | None = None, progress: bool = False) -> SimResult:
    """Run the mock survey into `out_dir` (created; existing simulator outputs there are replaced)."""
    from btsbot_jax.data.prepare import prepare_training_set

    cfg = config or SimConfig()
    if cfg.num_sources < 1:
        raise ValueError(f"num_sources must be >= 1, got {cfg.num_sources}")
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    alerts_dir = out / ALERTS_DIR
    if alerts_dir.exists():
        for p in alerts_dir.glob("sim_*.avro"):
            p.unlink()
    alerts_dir.mkdir(exist_ok=True)
    work = out / _WORK
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()

    sets = assign_sets(cfg.num_sources, cfg.seed, cfg.fractions)
    tasks = []
    for k, lo in enumerate(range(0, cfg.num_sources, cfg.chunk_sources)):
        hi = min(lo + cfg.chunk_sources, cfg.num_sources)
        tasks.append((k, lo, hi, sets[lo:hi], cfg, str(out)))
    workers = cfg.workers or os.cpu_count() or 1
    results = []
    if workers == 1 or len(tasks) == 1:
        for t in tasks:
            results.append(_run_chunk(t))
    else:
        ctx = mp.get_context(_start_method())
        from tqdm.auto import tqdm

        with ctx.Pool(min(workers, len(tasks))) as pool:
            for r in tqdm(pool.imap(_run_chunk, tasks, chunksize=1), total=len(tasks), desc="chunks",
                          disable=not progress, leave=False):
                results.append(r)
    results.sort(key=lambda r: r["k"])
    timings = {"packets_and_features": time.perf_counter() - t0}
    t1 = time.perf_counter()

    truth = pd.DataFrame([t for r in results for t in r["truth"]])
    table = pd.concat([r["table"] for r in results], ignore_index=True) if results else pd.DataFrame()
    peak = truth.set_index("objectId")["peak_obs"]
    if len(table):
        table.insert(2, "label", table["objectId"].map(truth.set_index("objectId")["label"]).astype(int))
        table.insert(3, "source_set", table["objectId"].map(truth.set_index("objectId")["source_set"]))
        table.insert(4, "subtype", table["objectId"].map(truth.set_index("objectId")["subtype"]))
        table["peakmag"] = table["objectId"].map(peak)
    rejected = [x for r in results for x in r["rejected"]]
    n_records = sum(r["n_records"] for r in results)
    truth.to_csv(out / TRUTH_FILE, index=False)
    table.to_parquet(out / ALERT_TABLE, index=False)

    timings["tables"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    files = {}
    prep_summary = None
    if cfg.training_set and len(table):
        trip = _ChunkedTriplets([work / f"triplets_{r['k']:05d}.npy" for r in results],
                                [len(r["table"]) for r in results])
        res = prepare_training_set(table[list(TRAINING_COLUMNS)], trip, out, version=cfg.version,
                                   n_max=cfg.n_max, seed=cfg.seed if cfg.split_seed is None else cfg.split_seed)
        files = {k: [str(p) for p in v] for k, v in res.files.items()}
        prep_summary = res.summary
    shutil.rmtree(work, ignore_errors=True)
    timings["training_set"] = time.perf_counter() - t1
    if not cfg.keep_packets:
        shutil.rmtree(alerts_dir, ignore_errors=True)

    summary = {
        "seed": cfg.seed, "num_sources": cfg.num_sources, "alerts": n_records, "alerts_prepared": len(table),
        "alerts_rejected_by_ingestion": len(rejected), "rejected": rejected[:100],
        "sources_by_set": truth["source_set"].value_counts().sort_index().to_dict(),
        "sources_without_alerts": int((truth["n_alerts"] == 0).sum()),
        "alerts_by_set": (table["source_set"].value_counts().sort_index().to_dict() if len(table) else {}),
        "alerts_by_subtype": (table.groupby(["source_set", "subtype"]).size().rename("n").reset_index()
                              .to_dict(orient="records") if len(table) else []),
        "training_set": prep_summary,
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "workers"},
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    return SimResult(out, n_records, cfg.num_sources, truth, table, files, summary, time.perf_counter() - t0,
                     timings)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
