"""Score alert packets: paths -> (scores table, rejected table, summary). The library behind `btsbot-score`.

Every input record ends up in exactly one place: scored, rejected (with the reason naming the alert), or counted
as a duplicate of a candid already scored in this run. `summary["records_read"] == scored + rejected + duplicates`
always holds (and is checked before returning). Decoding/feature work for the next batch overlaps with the model
running on the previous one (one scoring thread; JAX releases the GIL while it computes). With `workers` > 1 the
decoding runs in that many processes, each reading its own share of the records.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import os
import queue
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from btsbot_jax import __version__
from btsbot_jax.ingest.features import Prepared, Rejected, prepare_batch
from btsbot_jax.ingest.readers import SCORING_PROJECTION, AlertReadError, RawAlert, ReadStats, iter_alerts

# btsbot_jax_version: the code that made the table, so a reader of the file alone knows what scored it
SCORE_COLUMNS = ("candid", "objectId", "jd", "magpsf", "fid", "score", "model_version", "btsbot_jax_version", "source")
REJECTED_COLUMNS = ("candid", "objectId", "source", "reason", "kind")
TABLE_SUFFIXES = (".csv", ".parquet")


@dataclasses.dataclass
class ScoreResult:
    scores: pd.DataFrame      # SCORE_COLUMNS, one row per distinct scored candid, in input order
    rejected: pd.DataFrame    # REJECTED_COLUMNS, one row per rejected record
    summary: dict[str, Any]


def rejected_frame(rejected: Iterable[Rejected]) -> pd.DataFrame:
    rejected = list(rejected)
    return pd.DataFrame({
        # built as Int64 directly: a column of ints and None would pass through float64 and lose 19-digit candids
        "candid": pd.array([r.candid for r in rejected], dtype="Int64"),
        "objectId": pd.Series([r.objectId for r in rejected], dtype=object),
        "source": pd.Series([r.source for r in rejected], dtype=object),
        "reason": pd.Series([r.reason for r in rejected], dtype=object),
        "kind": pd.Series([r.kind for r in rejected], dtype=object),
    })


def _empty_scores() -> pd.DataFrame:
    df = pd.DataFrame({c: [] for c in SCORE_COLUMNS})
    return df.astype({"candid": "Int64", "objectId": object, "jd": float, "magpsf": float, "fid": "Int64",
                      "score": np.float32, "model_version": object, "btsbot_jax_version": object,
                      "source": object})


def _batches_from_alerts(alerts: Iterable[RawAlert], batch_size: int, use_rb: bool, seen: set[int]
                         ) -> Iterator[tuple[Prepared | None, int, int]]:
    """(prepared batch, records it stands for, duplicates skipped before decoding) from a RawAlert stream."""
    batch: list[RawAlert] = []
    n_in = dups = 0
    for a in alerts:
        n_in += 1
        c = a.candid if a.error is None else None
        if c is not None and c in seen:  # already scored: do not decode its stamps again
            dups += 1
            continue
        batch.append(a)
        if len(batch) >= batch_size:
            yield prepare_batch(batch, use_rb=use_rb), n_in, dups
            batch, n_in, dups = [], 0, 0
    if batch or n_in:
        yield (prepare_batch(batch, use_rb=use_rb) if batch else None), n_in, dups


def score_prepared(scorer, prepared: Prepared, pad_to: int = 0) -> np.ndarray:
    """float32 scores of a prepared batch. A batch shorter than `pad_to` (the last one, or one with rejections) is
    padded with zero rows so it reuses the full batch's compiled program (eval-mode rows are independent)."""
    n = len(prepared)
    if n == 0:
        return np.zeros((0,), np.float32)
    t, m = prepared.triplets, prepared.metadata
    if n < pad_to:
        t = np.concatenate([t, np.zeros((pad_to - n, *t.shape[1:]), t.dtype)])
        m = np.concatenate([m, np.zeros((pad_to - n, m.shape[1]), m.dtype)])
    return np.asarray(scorer(t, m), np.float32)[:n]


def _consume(scorer, batches: Iterable[tuple[Prepared | None, int, int]], progress: bool, pad_to: int = 0
             ) -> tuple[pd.DataFrame, list[Rejected], int, int]:
    """Score prepared batches (the model runs in a thread while the next batch is prepared); dedup by candid.

    Short batches are padded to `pad_to` rows so one compiled program serves the whole run."""
    version = getattr(scorer, "version", "unknown")
    seen = getattr(batches, "seen", None)
    seen = seen if seen is not None else set()
    counts = {"in": 0, "dups": 0}
    rejected: list[Rejected] = []
    frames: list[pd.DataFrame] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit=" alerts", desc="btsbot-score", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    def finish(prepared: Prepared, scores: np.ndarray) -> None:
        info = prepared.info
        keep = np.ones(len(info), bool)
        for i, c in enumerate(info["candid"].tolist()):  # repeats inside one batch or across batches
            if c in seen:
                keep[i] = False
                counts["dups"] += 1
            else:
                seen.add(c)
        df = info[keep].copy()
        df["score"] = scores[keep].astype(np.float32)
        df["model_version"] = version
        df["btsbot_jax_version"] = __version__
        frames.append(df[list(SCORE_COLUMNS)])

    def run(prepared: Prepared) -> np.ndarray:
        return score_prepared(scorer, prepared, pad_to)

    pending: tuple[Prepared, concurrent.futures.Future] | None = None
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="btsbot-score") as pool:
        for prepared, n_in, dups in batches:
            counts["in"] += n_in
            counts["dups"] += dups
            if prepared is not None:
                rejected.extend(prepared.rejected)
                fut = pool.submit(run, prepared)
                if pending is not None:
                    finish(pending[0], pending[1].result())
                pending = (prepared, fut)
            if bar is not None:
                bar.update(n_in)
                bar.set_postfix(scored=len(seen), rejected=len(rejected), refresh=False)
        if pending is not None:
            finish(pending[0], pending[1].result())
    if bar is not None:
        bar.close()
    scores = pd.concat(frames, ignore_index=True) if frames else _empty_scores()
    scores["candid"] = scores["candid"].astype("Int64")
    return scores, rejected, counts["in"], counts["dups"]


class _SeenBatches:
    """A batch iterator that shares the consumer's set of scored candids (so the reader can skip repeats)."""

    def __init__(self, make):
        self.seen: set[int] = set()
        self._it = make(self.seen)

    def __iter__(self):
        return self._it


def _summary(scorer, scores, rejected, n_in, duplicates, seconds, stats: ReadStats | None) -> dict[str, Any]:
    rej = rejected_frame(rejected)
    summary = {
        "records_read": n_in,
        "scored": len(scores),
        "rejected": len(rej),
        "rejected_by_kind": dict(collections.Counter(rej["kind"]).most_common()),
        "duplicates": duplicates,
        "seconds": seconds,
        "alerts_per_s": n_in / seconds if seconds > 0 else float("nan"),
        "model_version": getattr(scorer, "version", "unknown"),
        "btsbot_jax_version": __version__,
    }
    if stats is not None:
        summary.update(files=stats.files, skipped_files=stats.skipped_files,
                       skipped_examples=list(stats.skipped_examples),
                       unreadable_paths=[f"{p}: {r}" for p, r in stats.unreadable_paths],
                       other_shards=stats.other_shards)
    if n_in != summary["scored"] + summary["rejected"] + duplicates:  # the invariant users rely on
        raise AssertionError(f"lost alerts: read {n_in} != scored {summary['scored']} + rejected "
                             f"{summary['rejected']} + duplicates {duplicates}")
    return summary


def check_scorer_columns(scorer) -> None:
    """Refuse (ColumnOrderError) a scorer whose model expects the metadata columns in another order than
    `prepare_batch` builds them; scorers that state no order (plain callables) are taken as they are."""
    from btsbot_jax.inference.deployment import check_column_order

    columns = getattr(scorer, "metadata_columns", None)
    if columns is not None:
        where = getattr(scorer, "path", None) or f"model {getattr(scorer, 'version', '?')}"
        check_column_order(columns, str(where))


def score_alerts(scorer, alerts: Iterable[RawAlert], *, batch_size: int = 256, use_rb: bool = False,
                 progress: bool = False, stats: ReadStats | None = None) -> ScoreResult:
    """Score a stream of RawAlerts (see `score_paths`); `stats` is the reader's, for the summary."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_scorer_columns(scorer)
    t0 = time.perf_counter()
    batches = _SeenBatches(lambda seen: _batches_from_alerts(alerts, batch_size, use_rb, seen))
    scores, rejected, n_in, dups = _consume(scorer, batches, progress, pad_to=batch_size)
    summary = _summary(scorer, scores, rejected, n_in, dups, time.perf_counter() - t0, stats)
    return ScoreResult(scores, rejected_frame(rejected), summary)


# ------------------------------------------------------------------------------------ parallel decoding
def _worker_main(paths, num_shards, shard_index, batch_size, use_rb, errors, out) -> None:
    """One decode process: its share of the records -> prepared batches on `out`, then its ReadStats."""
    try:
        stats = ReadStats()
        alerts = iter_alerts(paths, num_shards=num_shards, shard_index=shard_index, stats=stats, errors=errors,
                             projection=SCORING_PROJECTION)
        for item in _batches_from_alerts(alerts, batch_size, use_rb, set()):
            out.put(("batch", item))
        out.put(("done", stats))
    except BaseException as e:  # noqa: BLE001 - report anything to the parent, which raises it
        import traceback

        out.put(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


@contextlib.contextmanager
def _main_module_not_reimported():
    """Start spawned processes without re-running the caller's `__main__`.

    A spawned child normally re-imports the parent's main script (by path or module name) before unpickling its
    target, so a plain script that calls `score_paths(..., workers=N)` at top level would run again in every worker
    (and fail). The decode workers only need this module, so the main module's path and spec are hidden while the
    processes start (multiprocessing reads them at `start()`)."""
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if main is not None and hasattr(main, k)}
    try:
        for k in saved:
            setattr(main, k, None) if k == "__spec__" else delattr(main, k)
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


def _parallel_batches(paths, workers, num_shards, shard_index, batch_size, use_rb, errors, stats_out: list):
    """Prepared batches from `workers` decode processes, merged round-robin (a deterministic order).

    Worker k reads the records with ordinal % (num_shards * workers) == shard_index + num_shards * k: together
    exactly this run's shard. Processes are spawned (not forked) so no JAX state is copied into them."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    total = num_shards * workers
    queues = [ctx.Queue(maxsize=4) for _ in range(workers)]
    procs = [ctx.Process(target=_worker_main, daemon=True, name=f"btsbot-decode-{k}",
                         args=(list(map(str, paths)), total, shard_index + num_shards * k, batch_size, use_rb,
                               errors, queues[k])) for k in range(workers)]
    with _main_module_not_reimported():
        for pr in procs:
            pr.start()
    try:
        live = list(range(workers))
        while live:
            for k in list(live):
                while True:
                    try:
                        msg = queues[k].get(timeout=2.0)
                        break
                    except queue.Empty:
                        if not procs[k].is_alive():
                            raise RuntimeError(f"decode worker {k} died (exit code {procs[k].exitcode})") from None
                if msg[0] == "batch":
                    yield msg[1]
                elif msg[0] == "done":
                    stats_out.append(msg[1])
                    live.remove(k)
                else:
                    raise RuntimeError(f"decode worker {k} failed: {msg[1]}")
    finally:
        for pr in procs:
            if pr.is_alive():
                pr.terminate()
            pr.join(timeout=5)


def _merge_stats(parts: list[ReadStats]) -> ReadStats:
    """Every worker walks all files (skipping others' records), so file counts come from one of them."""
    first = parts[0]
    merged = ReadStats(paths=first.paths, files=first.files, skipped_files=first.skipped_files,
                       skipped_examples=first.skipped_examples, unreadable_paths=first.unreadable_paths,
                       bytes_read=first.bytes_read)
    merged.records = sum(p.records for p in parts)
    merged.undecodable = sum(p.undecodable for p in parts)
    merged.other_shards = first.records + first.other_shards - merged.records
    return merged


def score_paths(scorer, paths, *, batch_size: int = 256, num_shards: int = 1, shard_index: int = 0,
                progress: bool = False, use_rb: bool = False, errors: str = "collect", workers: int = 1
                ) -> ScoreResult:
    """Score every alert under `paths` (avro files, folders, .tar/.tar.gz, parquet).

    Paths that cannot be read at all are listed in `summary["unreadable_paths"]` (errors="collect", the default)
    or raise AlertReadError (errors="raise"). `num_shards`/`shard_index` split the records deterministically
    (by reading order) so that N runs together score every record exactly once; duplicates are found within a
    run (shard). `workers` > 1 decodes in that many processes (the model still runs once, here); the rows then
    come in a deterministic order that differs from workers=1. The decode processes do not re-run the calling
    script, so this works from a plain script without an `if __name__ == "__main__":` guard. `progress=True` draws
    a progress bar on stderr.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    check_scorer_columns(scorer)
    if workers == 1:
        stats = ReadStats()
        alerts = iter_alerts(paths, num_shards=num_shards, shard_index=shard_index, stats=stats, errors=errors,
                             projection=SCORING_PROJECTION)
        result = score_alerts(scorer, alerts, batch_size=batch_size, use_rb=use_rb, progress=progress, stats=stats)
    else:
        if errors == "raise":  # fail fast, before starting processes
            for p in paths:
                if not os.path.exists(p):
                    raise AlertReadError(p, "no such file or directory")
        t0 = time.perf_counter()
        parts: list[ReadStats] = []
        batches = _parallel_batches(paths, workers, num_shards, shard_index, batch_size, use_rb, errors, parts)
        scores, rejected, n_in, dups = _consume(scorer, batches, progress, pad_to=batch_size)
        stats = _merge_stats(parts)
        summary = _summary(scorer, scores, rejected, n_in, dups, time.perf_counter() - t0, stats)
        result = ScoreResult(scores, rejected_frame(rejected), summary)
    result.summary["shard"] = f"{shard_index}/{num_shards}"
    result.summary["workers"] = workers
    return result


def format_summary(summary: dict[str, Any]) -> str:
    """One line: records read, scored, rejected (by reason), duplicates, alerts/s."""
    kinds = summary.get("rejected_by_kind") or {}
    rej = f"rejected {summary['rejected']}" + (" (" + ", ".join(f"{k}: {v}" for k, v in kinds.items()) + ")"
                                              if kinds else "")
    files = ""
    if "files" in summary:
        files = f" from {summary['files']} file(s)"
        if summary.get("skipped_files"):
            files += f", {summary['skipped_files']} non-alert file(s) skipped"
    line = (f"read {summary['records_read']} records{files}: scored {summary['scored']}, {rej}, "
            f"duplicates {summary['duplicates']}; {summary['alerts_per_s']:.1f} alerts/s "
            f"({summary['seconds']:.1f} s, model {summary['model_version']})")
    if summary.get("shard") and summary["shard"] != "0/1":
        line += f" [shard {summary['shard']}]"
    if summary.get("unreadable_paths"):
        line += f"; {len(summary['unreadable_paths'])} unreadable input path(s)"
    return line


def check_table_path(path: str | os.PathLike) -> Path:
    p = Path(os.path.expandvars(os.path.expanduser(os.fspath(path))))  # `~` is the home, never a folder named ~
    if p.suffix.lower() not in TABLE_SUFFIXES:
        raise ValueError(f"{p}: output must end in .csv or .parquet")
    return p


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table as .csv or .parquet (by the file name); parent folders are created.

    Whole or absent: written to a temporary file beside the target, fsynced, then renamed over it (atomic on one
    file system), so a kill or a full disk mid-write leaves the previous file (or none), never a truncated one;
    a failed write removes its temporary file and raises."""
    p = check_table_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            if p.suffix.lower() == ".csv":
                df.to_csv(f, index=False)
            else:
                df.to_parquet(f, index=False)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a table gets the usual permissions
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a power cut once the folder is synced
        dfd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # not every file system lets a folder be synced
        pass
    return p


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for every thread, for a moment)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    p = check_table_path(path)
    return pd.read_csv(p) if p.suffix.lower() == ".csv" else pd.read_parquet(p)


__all__ = ["ScoreResult", "SCORE_COLUMNS", "REJECTED_COLUMNS", "score_paths", "score_alerts", "format_summary",
           "write_table", "read_table", "rejected_frame", "check_table_path", "check_scorer_columns",
           "score_prepared"]
