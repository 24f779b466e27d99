"""Score alerts on Apache Spark: Fink-style alert tables and archives of raw ZTF packets (optional extra `[spark]`).

Two entry points, both `mapInArrow` over Arrow batches, both running the same ingestion and model as `btsbot-score`
(`btsbot_jax.ingest.features.prepare_batch`, `btsbot_jax.serve.batch.score_prepared`):

- `add_scores(df, checkpoint)`: a DataFrame of alerts in the ZTF layout (`candid`, `objectId`, `candidate`,
  `prv_candidates`, `cutout*` columns, as Fink keeps them) -> the same DataFrame plus a score column (null where the
  alert was rejected) and a reason column (null where it was scored). What a Fink science module returns.
- `score_files(spark, inputs, checkpoint)`: avro files, folders, .tar/.tar.gz and parquet files through Spark's
  `binaryFile` source into our decoder (`btsbot_jax.ingest.readers.iter_file_bytes`) -> one row per record read,
  scored or rejected; `score_archive` then settles duplicates across the whole job and splits the rows into the
  scores and rejected tables of `btsbot-score` (the library behind `btsbot-spark-score`).

The model is loaded once per Python worker process (`get_scorer`: a module-level cache keyed by the model path),
not per batch or row: Spark reuses its Python workers across tasks (`spark.python.worker.reuse`, on by default).

Duplicates follow `btsbot-score`'s rule, decided over the whole job: records are ordered as `btsbot-score` reads
them (inputs in the order given, folders depth-first in sorted name order, records in file order) and a record
whose candid was scored by an earlier record is a duplicate. So records read = scored + rejected + duplicates.

Retries: scoring is deterministic (same partition -> same batches -> same scores), and the outputs are written with
Spark's parquet commit protocol in overwrite mode, so a retried task (or a rerun job) neither duplicates nor loses
rows. Fault injection for tests: with BTSBOT_SPARK_FAIL_FIRST_ATTEMPT=1 in the Python workers' environment, the
first attempt of the scoring task of partition 0 kills its worker process after its first output batch.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from btsbot_jax import __version__
from btsbot_jax.ingest.features import Prepared, prepare_batch
from btsbot_jax.ingest.readers import (
    AVRO_SUFFIXES,
    PARQUET_SUFFIXES,
    SCORING_PROJECTION,
    TAR_SUFFIXES,
    ZTF_TOP_LEVEL,
    RawAlert,
    iter_file_bytes,
    project,
)
from btsbot_jax.serve.batch import REJECTED_COLUMNS, SCORE_COLUMNS, score_prepared

SCORE_COL = "btsbot_score"
REASON_COL = "btsbot_reason"
FAIL_ENV = "BTSBOT_SPARK_FAIL_FIRST_ATTEMPT"
ALERT_FILE_REGEX = "(?i)(" + "|".join(s.replace(".", r"\.") for s in AVRO_SUFFIXES + PARQUET_SUFFIXES
                                       + TAR_SUFFIXES) + ")$"
# One row per record read (score_files). _input/_file/_record order the records as btsbot-score reads them;
# _key is the candid that decides duplicates (the scored candid, or for a rejected record its top-level candid).
RECORD_DDL = ("_input INT, _file STRING, _record LONG, _key LONG, scored BOOLEAN, candid LONG, objectId STRING, "
              "jd DOUBLE, magpsf DOUBLE, fid LONG, score FLOAT, night STRING, model_version STRING, source STRING, "
              "reason STRING, kind STRING")
ORDER_COLUMNS = ("_input", "_file", "_record")

_SCORERS: dict[tuple, Any] = {}
_LOADS = collections.Counter()


# ------------------------------------------------------------------------------------------------ model cache
def get_scorer(checkpoint: str | os.PathLike, buckets: Sequence[int] | None = None):
    """The scorer for `checkpoint`, loaded at the first call in this process and kept (one per Python worker)."""
    key = (os.fspath(checkpoint), tuple(buckets) if buckets else None)
    scorer = _SCORERS.get(key)
    if scorer is None:
        from btsbot_jax.inference.scorer import load_scorer

        scorer = load_scorer(key[0], **({"buckets": key[1]} if key[1] else {}))
        _SCORERS[key] = scorer
        _LOADS[key] += 1
    return scorer


def load_count(checkpoint: str | os.PathLike, buckets: Sequence[int] | None = None) -> int:
    """How many times this process has loaded that model (the cache keeps it at 1)."""
    return _LOADS[(os.fspath(checkpoint), tuple(buckets) if buckets else None)]


def _maybe_fail() -> None:
    """Test hook (see the module docstring), called once an output batch has been sent: kill this worker on the
    first attempt of partition 0's task."""
    if os.environ.get(FAIL_ENV) != "1":
        return
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is not None and ctx.partitionId() == 0 and ctx.attemptNumber() == 0:
        os._exit(17)


# ----------------------------------------------------------------------------------------- pipelined scoring
def _pipelined(scorer, chunks: Iterator[tuple[Any, list[RawAlert]]], batch_size: int, use_rb: bool
               ) -> Iterator[tuple[Any, Prepared, np.ndarray]]:
    """(tag, prepared, scores) per chunk; the model runs in a thread while the next chunk is decoded and prepared
    (as in btsbot-score; JAX releases the GIL while it computes)."""
    pending = None
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="btsbot-spark") as pool:
        for tag, alerts in chunks:
            prepared = prepare_batch(alerts, use_rb=use_rb)
            # a full batch runs as one call of batch_size rows (as in btsbot-score); a task's short last batch
            # takes the scorer's own buckets instead of being padded up to a full batch
            fut = pool.submit(score_prepared, scorer, prepared, 0)
            if pending is not None:
                yield pending[0], pending[1], pending[2].result()
            pending = (tag, prepared, fut)
        if pending is not None:
            yield pending[0], pending[1], pending[2].result()


# --------------------------------------------------------------------------------------- Fink-style tables
def _project_struct(arr, fields: Sequence[str]):
    import pyarrow as pa

    have = [f for f in fields if arr.type.get_field_index(f) >= 0]
    return pa.StructArray.from_arrays([arr.field(f) for f in have], names=have, mask=arr.is_null())


def _scoring_columns(batch) -> dict[str, Any]:
    """The ZTF columns of an Arrow batch, with candidate/prv_candidates cut to what scoring reads before they
    become Python objects (the same records as `project(rec, SCORING_PROJECTION)`, much less conversion work)."""
    import pyarrow as pa

    cols = {}
    for name in ZTF_TOP_LEVEL:
        if name not in batch.schema.names:
            continue
        col = batch.column(name)
        sub = SCORING_PROJECTION.get(name)
        if isinstance(sub, tuple) and pa.types.is_struct(col.type):
            col = _project_struct(col, sub)
        elif isinstance(sub, tuple) and pa.types.is_list(col.type) and pa.types.is_struct(col.type.value_type):
            values = _project_struct(col.values, sub)
            col = pa.ListArray.from_arrays(col.offsets, values, mask=col.is_null())
        elif sub is not None and not isinstance(sub, tuple):  # SKIP
            continue
        cols[name] = col
    return cols


def table_mapper(checkpoint: str, *, batch_size: int = 256, use_rb: bool = False, buckets=None,
                 score_col: str = SCORE_COL, reason_col: str = REASON_COL) -> Callable:
    """The mapInArrow function of `add_scores` (usable as is in a Fink science module)."""

    def mapper(batches):
        import pyarrow as pa

        scorer = get_scorer(checkpoint, buckets)

        def chunks():
            for batch in batches:
                cols = _scoring_columns(batch)
                table = pa.Table.from_arrays(list(cols.values()), names=list(cols)) if cols else None
                for start in range(0, batch.num_rows, batch_size) if batch.num_rows else [0]:
                    stop = min(start + batch_size, batch.num_rows)
                    recs = table.slice(start, stop - start).to_pylist() if table is not None else [{}] * (stop - start)
                    alerts = [RawAlert(f"dataframe row {start + i}", project(r, SCORING_PROJECTION))
                              for i, r in enumerate(recs)]
                    yield (batch, start, stop), alerts

        for (batch, start, stop), prepared, scores in _pipelined(scorer, chunks(), batch_size, use_rb):
            n = stop - start
            out_score = np.full(n, np.nan, np.float32)
            valid = np.zeros(n, bool)
            reasons: list[str | None] = [None] * n
            for src, s in zip(prepared.info["source"].tolist(), scores):
                i = int(src.rsplit(" ", 1)[1]) - start
                out_score[i], valid[i] = s, True
            for r in prepared.rejected:
                reasons[int(r.source.rsplit(" ", 1)[1]) - start] = r.reason
            part = batch.slice(start, n)
            arrays = list(part.columns) + [pa.array(out_score, pa.float32(), mask=~valid),
                                           pa.array(reasons, pa.string())]
            yield pa.RecordBatch.from_arrays(arrays, names=list(part.schema.names) + [score_col, reason_col])
            _maybe_fail()

    return mapper


def add_scores(df, checkpoint: str | os.PathLike, *, batch_size: int = 256, use_rb: bool = False,
               buckets: Sequence[int] | None = None, score_col: str = SCORE_COL, reason_col: str = REASON_COL):
    """`df` (alerts in the ZTF layout, e.g. a Fink alert table) plus `score_col` (float, null when the alert was
    rejected) and `reason_col` (why it was rejected, null when scored). Every row stays; nothing is deduplicated.
    The checkpoint path must be readable where the Python workers run."""
    from pyspark.sql.types import FloatType, StringType, StructField, StructType

    for c in ("candidate",):
        if c not in df.columns:
            raise ValueError(f"no column {c!r}: not a DataFrame of ZTF alerts (columns: {df.columns[:12]}...)")
    schema = StructType(list(df.schema.fields) + [StructField(score_col, FloatType(), True),
                                                  StructField(reason_col, StringType(), True)])
    fn = table_mapper(os.fspath(checkpoint), batch_size=batch_size, use_rb=use_rb, buckets=buckets,
                      score_col=score_col, reason_col=reason_col)
    return df.mapInArrow(fn, schema)


# --------------------------------------------------------------------------------------------- alert files
def local_name(uri: str) -> str:
    """What btsbot-score would call a file: the plain path for file: URIs, the URI otherwise."""
    u = urlparse(uri)
    return unquote(u.path) if u.scheme in ("", "file") else uri


def file_key(uri: str) -> str:
    """Sort key of a file in btsbot-score's reading order (depth-first, sorted names): path components joined by
    NUL, which sorts below every character, so "a/b" < "a.x" as in a sorted walk."""
    return "\x00".join(p for p in unquote(urlparse(uri).path).split("/") if p)


def _nights(jd: np.ndarray) -> list[str]:
    """UT date (YYYYMMDD) of each jd: the night label of ZTF's archive."""
    days = np.floor(np.asarray(jd, np.float64) - 2440587.5).astype("int64").astype("datetime64[D]")
    return [str(d).replace("-", "") for d in days]


def files_mapper(checkpoint: str, *, batch_size: int = 256, use_rb: bool = False, buckets=None) -> Callable:
    """The mapInArrow function of `score_files`: (path, content, _input) rows -> RECORD_DDL rows."""

    def mapper(batches):
        import pyarrow as pa

        scorer = get_scorer(checkpoint, buckets)
        version = str(getattr(scorer, "version", "unknown"))

        def chunks():
            pending: list[RawAlert] = []
            order: list[tuple[int, str, int, int | None, str]] = []
            for batch in batches:
                paths = batch.column("path").to_pylist()
                inputs = batch.column("_input").to_pylist()
                contents = batch.column("content")
                for i, uri in enumerate(paths):
                    fk = file_key(uri)
                    for j, a in enumerate(iter_file_bytes(contents[i].as_py() or b"", local_name(uri),
                                                          projection=SCORING_PROJECTION)):
                        pending.append(a)
                        order.append((inputs[i], fk, j, a.candid if a.error is None else None, a.source))
                        if len(pending) >= batch_size:
                            yield order, pending
                            pending, order = [], []
            if pending:
                yield order, pending

        for order, prepared, scores in _pipelined(scorer, chunks(), batch_size, use_rb):
            by_source: dict[str, collections.deque] = collections.defaultdict(collections.deque)
            # prepared rows name their input by source; a source repeats only if a file was given twice (then the
            # copies are identical, and the first scored one comes first in `info` as in the input)
            for o in order:
                by_source[o[4]].append(o)
            info = prepared.info
            n_ok, n_rej = len(info), len(prepared.rejected)
            ords = [by_source[s].popleft() for s in info["source"].tolist()]
            ords += [by_source[r.source].popleft() for r in prepared.rejected]
            cand = info["candid"].tolist() + [r.candid for r in prepared.rejected]
            cols = {
                "_input": pa.array([o[0] for o in ords], pa.int32()),
                "_file": pa.array([o[1] for o in ords], pa.string()),
                "_record": pa.array([o[2] for o in ords], pa.int64()),
                "_key": pa.array(info["candid"].tolist() + [o[3] for o in ords[n_ok:]], pa.int64()),
                "scored": pa.array([True] * n_ok + [False] * n_rej, pa.bool_()),
                "candid": pa.array([None if c is None or c is _NA else int(c) for c in cand], pa.int64()),
                "objectId": pa.array(info["objectId"].tolist() + [r.objectId for r in prepared.rejected], pa.string()),
                "jd": pa.array(info["jd"].tolist() + [None] * n_rej, pa.float64()),
                "magpsf": pa.array(info["magpsf"].tolist() + [None] * n_rej, pa.float64()),
                "fid": pa.array([None if f is _NA else f for f in info["fid"].tolist()] + [None] * n_rej, pa.int64()),
                "score": pa.array(list(scores) + [None] * n_rej, pa.float32()),
                "night": pa.array(_nights(info["jd"].to_numpy()) + [None] * n_rej, pa.string()),
                "model_version": pa.array([version] * n_ok + [None] * n_rej, pa.string()),
                "source": pa.array(info["source"].tolist() + [r.source for r in prepared.rejected], pa.string()),
                "reason": pa.array([None] * n_ok + [r.reason for r in prepared.rejected], pa.string()),
                "kind": pa.array([None] * n_ok + [r.kind for r in prepared.rejected], pa.string()),
            }
            yield pa.RecordBatch.from_arrays(list(cols.values()), names=list(cols))
            _maybe_fail()

    return mapper


try:  # pandas' missing value, as it comes out of Int64 columns' tolist()
    import pandas as _pd

    _NA = _pd.NA
except ImportError:  # pragma: no cover
    _NA = object()


def read_alert_files(spark, inputs: Sequence[str]):
    """Spark DataFrame (path, content, _input) of the alert files under `inputs`, and the inputs that could not be
    listed [(path, reason)]. Folders are read recursively and keep only alert file names (as btsbot-score's walk);
    a file given by name is read whatever its name."""
    from pyspark.sql import functions as F

    jvm = spark.sparkContext._jvm
    hconf = spark.sparkContext._jsc.hadoopConfiguration()
    frames, unreadable = [], []
    for i, p in enumerate(inputs):
        try:
            hp = jvm.org.apache.hadoop.fs.Path(p)
            is_dir = hp.getFileSystem(hconf).getFileStatus(hp).isDirectory()
        except Exception as e:  # noqa: BLE001 - py4j wraps the JVM's FileNotFoundException etc.
            msg = str(e).strip().splitlines()
            unreadable.append((p, "no such file or directory" if "FileNotFound" in str(e) else msg[0][:300]))
            continue
        df = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(p)
        if is_dir:
            df = df.filter(F.col("path").rlike(ALERT_FILE_REGEX))
        frames.append(df.select("path", "content", F.lit(i).cast("int").alias("_input")))
        empty = _empty_files(df, is_dir)
        if empty:  # Spark's file scan drops 0-byte files; btsbot-score reports each as a rejected record
            frames.append(spark.createDataFrame([(u, bytearray(), i) for u in empty], "path STRING, content BINARY, "
                                                "_input INT"))
    if not frames:
        from pyspark.sql.types import BinaryType, IntegerType, StringType, StructField, StructType

        schema = StructType([StructField("path", StringType()), StructField("content", BinaryType()),
                             StructField("_input", IntegerType())])
        return spark.createDataFrame([], schema), unreadable
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out, unreadable


def _empty_files(df, is_dir: bool) -> list[str]:
    """The alert files of a binaryFile DataFrame that its scan leaves out: those of 0 bytes (the file index lists
    them, the scan skips them). Costs one scan of file names, no file contents."""
    import re

    rx = re.compile(ALERT_FILE_REGEX)
    listed = [u for u in df.inputFiles() if not is_dir or rx.search(u)]
    seen = {urlparse(r["path"]).path for r in df.select("path").collect()}
    return sorted(u for u in listed if urlparse(u).path not in seen)


def score_files(spark, inputs: Sequence[str], checkpoint: str | os.PathLike, *, batch_size: int = 256,
                use_rb: bool = False, buckets: Sequence[int] | None = None):
    """One row per record read under `inputs` (RECORD_DDL): scored, or rejected with its reason; duplicates not yet
    settled (see `settle_duplicates`). Returns (DataFrame, unreadable input paths)."""
    files, unreadable = read_alert_files(spark, list(map(os.fspath, inputs)))
    fn = files_mapper(os.fspath(checkpoint), batch_size=batch_size, use_rb=use_rb, buckets=buckets)
    return files.mapInArrow(fn, RECORD_DDL), unreadable


def settle_duplicates(records):
    """Adds `duplicate`: the record's candid was scored by a record read earlier (btsbot-score's rule, whole job)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = F.struct(*ORDER_COLUMNS)
    first = F.min(F.when(F.col("scored"), order)).over(Window.partitionBy("_key"))
    dup = F.col("_key").isNotNull() & first.isNotNull() & (order > first)
    return records.withColumn("duplicate", F.coalesce(dup, F.lit(False)))


def score_archive(spark, inputs: Sequence[str], checkpoint: str | os.PathLike, output: str, *,
                  batch_size: int = 256, use_rb: bool = False, partition_by: Sequence[str] = ("night",),
                  buckets: Sequence[int] | None = None) -> dict[str, Any]:
    """Score everything under `inputs` and write OUTPUT/scores (parquet, partitioned by `partition_by`) and
    OUTPUT/rejected (parquet), each in btsbot-score's columns and reading order; returns the summary (the same keys
    as btsbot-score's). Overwrites both datasets (a rerun replaces, never appends)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    records, unreadable = score_files(spark, inputs, checkpoint, batch_size=batch_size, use_rb=use_rb,
                                      buckets=buckets)
    labelled = settle_duplicates(records).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        agg = labelled.agg(
            F.count(F.lit(1)).alias("records_read"),
            F.sum((F.col("scored") & ~F.col("duplicate")).cast("long")).alias("scored"),
            F.sum((~F.col("scored") & ~F.col("duplicate")).cast("long")).alias("rejected"),
            F.sum(F.col("duplicate").cast("long")).alias("duplicates"),
            F.countDistinct("_input", "_file").alias("files"),
            F.max("model_version").alias("model_version"),
        ).collect()[0].asDict()
        kinds = (labelled.filter(~F.col("scored") & ~F.col("duplicate")).groupBy("kind").count()
                 .orderBy(F.desc("count"), "kind").collect())
        ordered = labelled.orderBy(*ORDER_COLUMNS)
        scores = (ordered.filter(F.col("scored") & ~F.col("duplicate"))
                  .withColumn("btsbot_jax_version", F.lit(__version__)).select(*SCORE_COLUMNS, "night"))
        rejected = ordered.filter(~F.col("scored") & ~F.col("duplicate")).select(*REJECTED_COLUMNS)
        w = scores.write.mode("overwrite")
        if partition_by:
            w = w.partitionBy(*partition_by)
        w.parquet(_join(output, "scores"))
        rejected.write.mode("overwrite").parquet(_join(output, "rejected"))
    finally:
        labelled.unpersist()
    seconds = time.perf_counter() - t0
    n_in = int(agg["records_read"])
    summary = {
        "records_read": n_in,
        "scored": int(agg["scored"] or 0),
        "rejected": int(agg["rejected"] or 0),
        "rejected_by_kind": {r["kind"]: int(r["count"]) for r in kinds},
        "duplicates": int(agg["duplicates"] or 0),
        "seconds": seconds,
        "alerts_per_s": n_in / seconds if seconds > 0 else float("nan"),
        "model_version": agg["model_version"] or "unknown",
        "files": int(agg["files"]),
        "unreadable_paths": [f"{p}: {r}" for p, r in unreadable],
        "master": spark.sparkContext.master,
        "default_parallelism": spark.sparkContext.defaultParallelism,
        "output": {"scores": _join(output, "scores"), "rejected": _join(output, "rejected")},
    }
    if n_in != summary["scored"] + summary["rejected"] + summary["duplicates"]:
        raise AssertionError(f"lost alerts: read {n_in} != scored {summary['scored']} + rejected "
                             f"{summary['rejected']} + duplicates {summary['duplicates']}")
    return summary


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def spark_session(master: str | None = None, app_name: str = "btsbot-spark-score",
                  conf: dict[str, str] | None = None):
    """A SparkSession with what scoring wants, unless the job's configuration (spark-submit --conf, `conf`) says
    otherwise: Arrow batches of a few files each; files packed into tasks by their size (ZTF packets are ~70 kB,
    and the 4 MB default cost per file would give tasks of ~30 alerts, one short model batch each); adaptive
    execution allowed to coalesce the partitions of the cached per-record table (otherwise every later stage runs
    spark.sql.shuffle.partitions tiny tasks); on a local master, Python workers running this interpreter."""
    import sys

    from pyspark.sql import SparkSession

    b = SparkSession.builder.appName(app_name)
    if master:
        b = b.master(master)
    if (master or "").startswith("local") and not os.environ.get("PYSPARK_PYTHON"):
        os.environ["PYSPARK_PYTHON"] = sys.executable  # what pyspark reads for its workers' interpreter
    if (master or "").startswith("local") and "spark.driver.memory" not in (conf or {}):
        # a local master's executors live in the driver's JVM, whose 1 GB default heap does not hold two tasks'
        # Arrow batches of ~70 MB avro files (the JVM died so); the heap is a ceiling, not a reservation
        b = b.config("spark.driver.memory", "4g")
    for k, v in (conf or {}).items():
        b = b.config(k, v)
    spark = b.getOrCreate()
    given = spark.sparkContext.getConf()
    for k, v in SESSION_DEFAULTS.items():
        if not given.contains(k):
            spark.conf.set(k, v)
    return spark


SESSION_DEFAULTS = {
    "spark.sql.execution.arrow.maxRecordsPerBatch": "64",
    "spark.sql.files.openCostInBytes": "65536",
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning": "true",
}


__all__ = ["add_scores", "table_mapper", "score_files", "files_mapper", "settle_duplicates", "score_archive",
           "read_alert_files", "get_scorer", "load_count", "spark_session", "SCORE_COL", "REASON_COL", "RECORD_DDL"]
