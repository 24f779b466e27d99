"""Live scoring from Kafka: consume ZTF/Rubin-style avro packets, score micro-batches, publish one result per alert.

Delivery is at-least-once. Auto-commit is off; each micro-batch (up to `max_batch` messages or `max_wait_ms`) is
decoded, prepared, scored, its results and dead letters are produced and *acknowledged by the broker* (and written
to the parquet output, if any), and only then are the batch's offsets committed synchronously. A crash anywhere
before the commit re-delivers the batch to whichever group member owns the partition next, so an alert can be
scored twice but never lost. Scale-out is Kafka's consumer group: run more processes with the same group id and
the broker splits the partitions among them; we add no coordination of our own.

Dead letters: the value is the original message bytes untouched (so a dead-letter topic can be replayed into a
fixed scorer), the key is the original key, and the reason travels in headers (`btsbot.reason`, `btsbot.stage`,
`btsbot.source`, `btsbot.topic`, `btsbot.partition`, `btsbot.offset`, `btsbot.candid`, `btsbot.objectId`,
`btsbot.model_version`).
"""

from __future__ import annotations

import bisect
import concurrent.futures
import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from btsbot_jax import __version__

log = logging.getLogger("btsbot_jax.serve.stream")

# Consumer settings the scorer needs for its delivery guarantee; user overrides of these are refused.
REQUIRED_CONSUMER_CONFIG = {"enable.auto.commit": False, "enable.auto.offset.store": False}

# Defaults an operator may override (`--consumer_config key=value`).
# session.timeout.ms: how long the group waits for a silent member before giving its partitions away, and (on
# tansu) how long a brand-new group holds the first JoinGroup (session.timeout.ms / 2, rounded up to whole
# seconds) to let other members arrive. librdkafka's 45 s default means a 23 s wait before the first alert and a
# crashed scorer's partitions idle for 45 s, too long for Rubin's 60 s delivery budget; 10 s is well inside
# Kafka's allowed range (group.min.session.timeout.ms = 6 s by default).
DEFAULT_CONSUMER_CONFIG = {
    "auto.offset.reset": "earliest",
    "session.timeout.ms": 10000,
    "heartbeat.interval.ms": 1000,
    "max.poll.interval.ms": 300000,
}
DEFAULT_PRODUCER_CONFIG = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 20,
    "message.max.bytes": 8 * 1024 * 1024,  # dead letters carry whole packets (ZTF ~70 kB, some much larger)
}

# Fatal commit errors that only mean "this partition is no longer ours": the next owner re-scores the batch.
_REBALANCE_ERRORS = {"REBALANCE_IN_PROGRESS", "ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "_ASSIGNMENT_LOST",
                     "FENCED_INSTANCE_ID", "_STATE", "_NO_OFFSET"}

RESULT_COLUMNS = ("candid", "objectId", "jd", "magpsf", "score", "model_version", "btsbot_jax_version", "topic",
                  "partition", "offset")
REJECTED_COLUMNS = ("candid", "objectId", "stage", "reason", "source", "topic", "partition", "offset")


class StreamError(RuntimeError):
    """The scorer cannot guarantee delivery (results not acknowledged, commit refused): stop without committing."""


@dataclasses.dataclass
class StreamConfig:
    bootstrap_servers: str
    topics: Sequence[str]
    group_id: str
    output_topic: str | None = None
    dead_letter_topic: str | None = None
    output_path: str | None = None          # parquet dataset directory: one part file per batch
    max_batch: int = 256
    max_wait_ms: int = 500
    max_alerts: int | None = None           # stop after this many messages (tests, backfills)
    idle_timeout_s: float | None = None     # stop after this long without a message (drain a topic and exit)
    log_every_s: float = 10.0
    flush_timeout_s: float = 60.0
    use_rb: bool = False
    pipeline: bool = True                   # decode the next batch while the model scores this one
    create_topics: bool = True              # create missing output/dead-letter topics at start
    output_partitions: int = 1              # partitions of output topics created by us
    consumer_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    producer_config: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        if not self.bootstrap_servers:
            raise ValueError("bootstrap_servers is required")
        if not self.topics:
            raise ValueError("at least one input topic is required")
        if not self.group_id:
            raise ValueError("group_id is required")
        if not (self.output_topic or self.output_path):
            raise ValueError("results need somewhere to go: give output_topic and/or output_path")
        if not (self.dead_letter_topic or self.output_path):
            raise ValueError("dead letters need somewhere to go: give dead_letter_topic and/or output_path")
        if self.max_batch < 1 or self.max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {self.max_batch}, {self.max_wait_ms}")
        for key, want in REQUIRED_CONSUMER_CONFIG.items():
            got = self.consumer_config.get(key, want)
            if str(got).lower() != str(want).lower():
                raise ValueError(f"consumer setting {key}={got} would break at-least-once delivery; it must be {want}")

    def consumer_conf(self) -> dict[str, Any]:
        conf = {"bootstrap.servers": self.bootstrap_servers, "group.id": self.group_id,
                "client.id": f"btsbot-stream-{socket.gethostname()}-{os.getpid()}"}
        conf.update(DEFAULT_CONSUMER_CONFIG)
        conf.update(self.consumer_config)
        conf.update(REQUIRED_CONSUMER_CONFIG)
        return conf

    def producer_conf(self) -> dict[str, Any]:
        conf = {"bootstrap.servers": self.bootstrap_servers,
                "client.id": f"btsbot-stream-{socket.gethostname()}-{os.getpid()}"}
        conf.update(DEFAULT_PRODUCER_CONFIG)
        conf.update(self.producer_config)
        return conf


def parse_config_pairs(pairs: Iterable[str]) -> dict[str, Any]:
    """`["fetch.wait.max.ms=100", ...]` -> dict; ints and booleans are converted (librdkafka accepts strings too)."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value, got {pair!r}")
        v: Any = value.strip()
        if v.lower() in ("true", "false"):
            v = v.lower() == "true"
        else:
            try:
                v = int(v)
            except ValueError:
                pass
        out[key.strip()] = v
    return out


# --------------------------------------------------------------------------------------------------- statistics
class LatencyHistogram:
    """Log-spaced histogram (0.01 ms .. ~3 h, 2.5% bins) for p50/p99 over a whole night in constant memory."""

    _EDGES = np.geomspace(1e-2, 1e7, 560)

    def __init__(self):
        self.counts = np.zeros(len(self._EDGES) + 1, np.int64)
        self.n = 0

    def add(self, values_ms: Iterable[float]) -> None:
        v = np.asarray(list(values_ms) if not isinstance(values_ms, np.ndarray) else values_ms, np.float64)
        if v.size:
            np.add.at(self.counts, np.searchsorted(self._EDGES, v), 1)
            self.n += v.size

    def quantile(self, q: float) -> float | None:
        if self.n == 0:
            return None
        k = int(np.searchsorted(np.cumsum(self.counts), math.ceil(q * self.n)))
        return float(self._EDGES[min(k, len(self._EDGES) - 1)])


def _quantiles(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    a = np.asarray(values, np.float64)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


@dataclasses.dataclass
class StreamStats:
    """Counters of one scorer process; `summary()` is what the final log line and the CLI's JSON report show."""

    started: float = dataclasses.field(default_factory=time.monotonic)
    cpu_start: float = dataclasses.field(default_factory=lambda: _cpu_seconds())
    first_message: float | None = None
    last_done: float | None = None
    messages: int = 0
    alerts_scored: int = 0
    dead_letters: int = 0
    batches: int = 0
    commits: int = 0
    commit_failures: int = 0
    dropped_revoked: int = 0
    consumer_errors: int = 0
    assignments: int = 0
    revocations: int = 0
    lag: int | None = None
    batch_ms: list[float] = dataclasses.field(default_factory=list)
    e2e: LatencyHistogram = dataclasses.field(default_factory=LatencyHistogram)
    dead_by_stage: dict[str, int] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        now = time.monotonic()
        # From the first message to the last batch done: the idle tail of --idle_timeout_s does not dilute it.
        active = (self.last_done - self.first_message) if self.first_message is not None and self.last_done else 0.0
        p50, p99 = _quantiles(self.batch_ms)
        return {
            "messages": self.messages,
            "alerts_scored": self.alerts_scored,
            "dead_letters": self.dead_letters,
            "dead_letters_by_stage": dict(self.dead_by_stage),
            "batches": self.batches,
            "commits": self.commits,
            "commit_failures": self.commit_failures,
            "dropped_after_revoke": self.dropped_revoked,
            "consumer_errors": self.consumer_errors,
            "assignments": self.assignments,
            "revocations": self.revocations,
            "consumer_lag": self.lag,
            "wall_s": round(now - self.started, 3),
            # CPU time of the whole process (all threads) since the scorer started: the load-independent cost.
            "cpu_s": round(_cpu_seconds() - self.cpu_start, 3),
            "active_s": round(active, 3),
            "alerts_per_s": round((self.alerts_scored + self.dead_letters) / active, 1) if active > 0 else None,
            "batch_latency_ms_p50": _round(p50),
            "batch_latency_ms_p99": _round(p99),
            "e2e_latency_ms_p50": _round(self.e2e.quantile(0.5)),
            "e2e_latency_ms_p99": _round(self.e2e.quantile(0.99)),
        }


def _cpu_seconds() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _round(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


# ------------------------------------------------------------------------------------------------------ sinks
class ParquetParts:
    """A parquet dataset directory written one part file per batch, atomically (tmp file + fsync + rename).

    A single parquet file is unreadable until its footer is written, so appending row groups to one file would
    lose everything on a kill -9; per-batch parts are readable at any moment (`pandas.read_parquet(DIR)`), and
    files of several scorers in one group can share the directory (host and pid are in the names).
    """

    def __init__(self, path: str | os.PathLike, schema):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.seq = 0
        self.prefix = f"part-{_dt.datetime.now(_dt.UTC):%Y%m%dT%H%M%S}-{socket.gethostname()}-{os.getpid()}"

    def write(self, rows: dict[str, list]) -> Path | None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        n = len(next(iter(rows.values()))) if rows else 0
        if n == 0:
            return None
        table = pa.Table.from_pydict(rows, schema=self.schema)
        name = f"{self.prefix}-{self.seq:06d}.parquet"
        self.seq += 1
        tmp = self.path / f".{name}.tmp"  # dot files are ignored by pyarrow/pandas dataset readers
        with open(tmp, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / name)
        return self.path / name


def _result_schema():
    import pyarrow as pa

    return pa.schema([("candid", pa.int64()), ("objectId", pa.string()), ("jd", pa.float64()),
                      ("magpsf", pa.float64()), ("score", pa.float32()), ("model_version", pa.string()),
                      ("btsbot_jax_version", pa.string()), ("topic", pa.string()), ("partition", pa.int32()),
                      ("offset", pa.int64())])


def _rejected_schema():
    import pyarrow as pa

    return pa.schema([("candid", pa.int64()), ("objectId", pa.string()), ("stage", pa.string()),
                      ("reason", pa.string()), ("source", pa.string()), ("topic", pa.string()),
                      ("partition", pa.int32()), ("offset", pa.int64())])


def rejected_path(output_path: str | os.PathLike) -> Path:
    """Where dead letters go on disk beside `--output`: `X.parquet` -> `X.rejected.parquet` (also a directory)."""
    p = Path(output_path)
    stem = p.name[: -len(".parquet")] if p.name.endswith(".parquet") else p.name
    return p.with_name(stem + ".rejected.parquet")


def ensure_topics(bootstrap_servers: str, topics: Iterable[str], partitions: int = 1, timeout: float = 30.0,
                  admin_config: dict[str, Any] | None = None) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap_servers, **(admin_config or {})})
    wanted = [t for t in dict.fromkeys(topics) if t]
    existing = admin.list_topics(timeout=timeout).topics
    missing = [t for t in wanted if t not in existing]
    if not missing:
        return []
    futures = admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing])
    for fut in futures.values():
        try:
            fut.result(timeout=timeout)
        except KafkaException as e:
            if e.args and e.args[0].name() == "TOPIC_ALREADY_EXISTS":  # another scorer of the group was first
                continue
            raise
    return missing


# ------------------------------------------------------------------------------------------------ the scorer
@dataclasses.dataclass
class _Letter:
    msg_index: int
    stage: str
    reason: str
    source: str
    candid: int | None = None
    objectId: str | None = None


@dataclasses.dataclass
class _Batch:
    msgs: list
    t0: float
    letters: list[_Letter] = dataclasses.field(default_factory=list)
    alerts: list = dataclasses.field(default_factory=list)
    origin: dict[str, int] = dataclasses.field(default_factory=dict)  # alert source -> index of its message
    prep: Any = None
    future: concurrent.futures.Future | None = None
    scores: tuple[np.ndarray, np.ndarray] | None = None

    def index_of(self, source: str) -> int:
        i = self.origin.get(source)
        return i if i is not None else _msg_of(source, self.msgs)


def _decode(decode_avro_bytes, value: bytes, src: str):
    """Decode with the scoring projection (light curves trimmed to what the features use) where available."""
    from btsbot_jax.ingest import readers as alerts

    projection = getattr(alerts, "SCORING_PROJECTION", None)
    if projection is None:
        return decode_avro_bytes(value, source=src)
    return decode_avro_bytes(value, source=src, projection=projection)


def _json_float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


class StreamScorer:
    """The consume -> decode -> prepare -> score -> produce -> commit loop of one group member.

    `scorer` is a `btsbot_jax.inference.scorer.Scorer` (or any callable `(triplets, metadata) -> (N,)` with a
    `version`).
    `run()` returns the summary dict; `stop()` (thread- and signal-safe) finishes the current batch and exits.
    """

    def __init__(self, scorer: Callable, config: StreamConfig, *, logger: logging.Logger | None = None,
                 on_batch: Callable[[dict[str, Any]], None] | None = None):
        config.validate()
        self.scorer = scorer
        self.config = config
        self.log = logger or log
        self.model_version = str(getattr(scorer, "version", "unknown"))
        self.stats = StreamStats()
        self.on_batch = on_batch
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self._assigned: set[tuple[str, int]] = set()
        self._last_activity = time.monotonic()
        self._window = deque()  # (time, n alerts, batch ms) of the batches since the last progress line
        self._last_log = time.monotonic()
        self._consumer = None
        self._producer = None
        self._pending: _Batch | None = None  # scored (or being scored), not yet delivered and committed
        self._taken = 0  # messages taken from the consumer
        self._results = ParquetParts(config.output_path, _result_schema()) if config.output_path else None
        self._rejected = (ParquetParts(rejected_path(config.output_path), _rejected_schema())
                          if config.output_path else None)

    # -------------------------------------------------------------------------------------------- control
    def stop(self, reason: str = "stop requested") -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -------------------------------------------------------------------------------------------- callbacks
    def _on_assign(self, consumer, partitions) -> None:
        self.stats.assignments += 1
        self._assigned.update((p.topic, p.partition) for p in partitions)
        self._last_activity = time.monotonic()
        self.log.info("assigned %d partition(s): %s", len(partitions), _fmt_partitions(partitions))

    def _on_revoke(self, consumer, partitions) -> None:
        # Callbacks run inside consume(), between batches; the one batch that may be in flight (in the model) is
        # delivered and committed now, before the partitions go to another member, so it is not scored twice.
        self._finish_pending()
        self.stats.revocations += 1
        self._assigned.difference_update((p.topic, p.partition) for p in partitions)
        self.log.info("revoked %d partition(s): %s", len(partitions), _fmt_partitions(partitions))

    def _on_lost(self, consumer, partitions) -> None:
        self.stats.revocations += 1
        self._assigned.difference_update((p.topic, p.partition) for p in partitions)
        self.log.warning("lost %d partition(s) (session expired?): %s; their uncommitted alerts go to the next "
                         "owner", len(partitions), _fmt_partitions(partitions))

    # -------------------------------------------------------------------------------------------- main loop
    def run(self) -> dict[str, Any]:
        from confluent_kafka import Consumer, Producer

        cfg = self.config
        if cfg.create_topics:
            created = ensure_topics(cfg.bootstrap_servers, [cfg.output_topic, cfg.dead_letter_topic],
                                    cfg.output_partitions)
            if created:
                self.log.info("created topic(s) %s", ", ".join(created))
        self._producer = Producer(cfg.producer_conf())
        self._consumer = Consumer(cfg.consumer_conf(), logger=self.log)
        self._consumer.subscribe(list(cfg.topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)
        self.log.info("consuming %s as group %s (model %s, max_batch %d, max_wait_ms %d)",
                      ",".join(cfg.topics), cfg.group_id, self.model_version, cfg.max_batch, cfg.max_wait_ms)
        next_log = time.monotonic() + cfg.log_every_s
        self._last_log = time.monotonic()
        self._last_activity = time.monotonic()
        failed = None
        pool = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="btsbot-stream-model")
                if cfg.pipeline else None)
        try:
            while not self._stop.is_set():
                n = cfg.max_batch
                if cfg.max_alerts is not None:
                    n = min(n, cfg.max_alerts - self._taken)
                    if n <= 0:
                        self.stop(f"max_alerts={cfg.max_alerts} reached")
                        break
                # While a batch is in the model, take only what is already fetched (a burst fills it anyway), so
                # a quiet stream never holds a scored batch back for max_wait_ms.
                wait = 0.0 if self._pending is not None else cfg.max_wait_ms / 1000.0
                got = self._handle_errors(self._consumer.consume(num_messages=n, timeout=wait))
                staged = self._stage(got) if got else None
                self._taken += len(got)
                self._finish_pending()
                if staged is not None:
                    self._pending = self._submit(staged, pool)
                    if pool is None:
                        self._finish_pending()
                    self._last_activity = time.monotonic()
                now = time.monotonic()
                if (cfg.idle_timeout_s is not None and self._pending is None
                        and now - self._last_activity >= cfg.idle_timeout_s):
                    self.stop(f"idle for {cfg.idle_timeout_s:g} s")
                if now >= next_log:
                    self.log_progress()
                    next_log = now + cfg.log_every_s
            self._finish_pending()
        except BaseException as e:  # noqa: BLE001 -- report, close the clients, re-raise
            failed = e
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            self._close(failed)
        return self.stats.summary()

    def _finish_pending(self) -> None:
        batch, self._pending = self._pending, None
        if batch is not None:
            self._finish(batch)

    def _handle_errors(self, msgs) -> list:
        from confluent_kafka import KafkaError, KafkaException

        good = []
        for m in msgs:
            err = m.error()
            if err is None:
                if (m.topic(), m.partition()) in self._assigned:
                    good.append(m)
                else:  # fetched before a revoke: the new owner gets it from the committed offset
                    self.stats.dropped_revoked += 1
                continue
            if err.code() == KafkaError._PARTITION_EOF:
                continue
            if err.fatal():
                raise KafkaException(err)
            self.stats.consumer_errors += 1
            self.log.warning("consumer error: %s", err)
        return good

    def _close(self, failed: BaseException | None) -> None:
        try:
            if self._producer is not None:
                self._producer.flush(self.config.flush_timeout_s)
                self._producer = None  # librdkafka handle destroyed with the object (no close() in the API)
        finally:
            if self._consumer is not None:
                self._lag()  # last look at the lag before leaving the group
                self._consumer.close()  # leaves the group so the partitions move at once, no session timeout
                self._consumer = None
        summary = self.stats.summary()
        how = "failed: " + repr(failed) if failed is not None else (self._stop_reason or "stopped")
        self.log.info("stream %s; summary %s", how, json.dumps(summary, sort_keys=True))

    # -------------------------------------------------------------------------------------------- one batch
    def process_batch(self, msgs: Sequence) -> dict[str, Any]:
        """Score one micro-batch and make it durable; commit its offsets last. Raises StreamError if undeliverable."""
        return self._finish(self._submit(self._stage(msgs), None))

    def _stage(self, msgs: Sequence) -> _Batch:
        """Decode and prepare (CPU, Python): runs while the previous batch is in the model."""
        from btsbot_jax.ingest.features import prepare_batch
        from btsbot_jax.ingest.readers import decode_avro_bytes

        t0 = time.monotonic()
        if self.stats.first_message is None:
            self.stats.first_message = t0
        batch = _Batch(list(msgs), t0)
        for i, m in enumerate(batch.msgs):
            src = f"{m.topic()}/{m.partition()}/{m.offset()}"
            value = m.value()
            if not value:
                batch.letters.append(_Letter(i, "decode", f"{src}: empty message", src))
                continue
            try:
                decoded = _decode(decode_avro_bytes, value, src)
            except Exception as e:  # noqa: BLE001 -- any decoder failure is this message's problem, not the stream's
                batch.letters.append(_Letter(i, "decode", f"{src}: {type(e).__name__}: {e}", src))
                continue
            if not decoded:
                batch.letters.append(_Letter(i, "decode", f"{src}: avro container holds no record", src))
            for a in decoded:
                if a.error is not None or a.record is None:
                    batch.letters.append(_Letter(i, "decode", f"{a.source}: {a.error or 'no record'}", a.source,
                                                 *_ids(a.record)))
                else:
                    batch.origin[a.source] = i
                    batch.alerts.append(a)
        if batch.alerts:
            batch.prep = prepare_batch(batch.alerts, use_rb=self.config.use_rb)
            batch.alerts = []  # the decoded packets (with their stamps) are not needed any more
            for r in batch.prep.rejected:
                batch.letters.append(_Letter(batch.index_of(r.source), "prepare", r.reason, r.source, r.candid,
                                             r.objectId))
        return batch

    def _submit(self, batch: _Batch, pool: concurrent.futures.Executor | None) -> _Batch:
        """Start the model on the batch: in `pool` (JAX releases the GIL, so the next batch decodes meanwhile)."""
        if batch.prep is not None and len(batch.prep.info):
            args = (batch.prep.triplets, batch.prep.metadata)
            if pool is None:
                batch.scores = self._score(*args)
            else:
                batch.future = pool.submit(self._score, *args)
        return batch

    def _finish(self, batch: _Batch) -> dict[str, Any]:
        """Wait for the scores, deliver results and dead letters, then commit the batch's offsets."""
        msgs, letters = batch.msgs, batch.letters
        results: list[tuple[int, dict[str, Any]]] = []
        if batch.future is not None:
            batch.scores = batch.future.result()
        if batch.scores is not None:
            scores, ok = batch.scores
            info = batch.prep.info.reset_index(drop=True)
            for k, row in enumerate(info.itertuples(index=False)):
                i = batch.index_of(row.source)
                if not ok[k]:
                    letters.append(_Letter(i, "score", f"{row.source}: non-finite score or model input",
                                           row.source, _int_or_none(row.candid), _str_or_none(row.objectId)))
                    continue
                m = msgs[i]
                results.append((i, {
                    "candid": _int_or_none(row.candid), "objectId": _str_or_none(row.objectId),
                    "jd": _json_float(row.jd), "magpsf": _json_float(row.magpsf), "score": float(scores[k]),
                    "model_version": self.model_version, "btsbot_jax_version": __version__, "topic": m.topic(),
                    "partition": m.partition(),
                    "offset": m.offset(),
                }))
        self._deliver(msgs, results, letters)
        self._commit(msgs)
        batch_ms = (time.monotonic() - batch.t0) * 1000.0
        self._account(msgs, len(results), letters, batch_ms)
        info = {"messages": len(msgs), "scored": len(results), "dead_letters": len(letters), "batch_ms": batch_ms}
        if self.on_batch is not None:
            self.on_batch(info)
        return info

    def _score(self, triplets, metadata) -> tuple[np.ndarray, np.ndarray]:
        """Scores and a mask of rows that could be scored. A bad row must not sink its batch-mates."""
        from btsbot_jax.inference.scorer import InputError

        n = len(triplets)
        try:
            s = np.asarray(self.scorer(triplets, metadata), np.float32)
            return s, np.isfinite(s)
        except InputError:
            finite = (np.isfinite(np.asarray(triplets, np.float32)).reshape(n, -1).all(axis=1)
                      & np.isfinite(np.asarray(metadata, np.float32)).all(axis=1))
            s = np.full(n, np.nan, np.float32)
            if finite.any():
                s[finite] = self.scorer(np.asarray(triplets)[finite], np.asarray(metadata)[finite])
            return s, np.isfinite(s)

    def _deliver(self, msgs, results, letters) -> None:
        cfg = self.config
        errors: list[str] = []

        def on_delivery(err, _msg):
            if err is not None:
                errors.append(str(err))

        if cfg.output_topic:
            for i, r in results:
                self._produce(cfg.output_topic, json.dumps(r, separators=(",", ":")).encode(),
                              str(r["candid"]) if r["candid"] is not None else msgs[i].key(),
                              None, on_delivery)
        if cfg.dead_letter_topic:
            for d in letters:
                m = msgs[d.msg_index]
                headers = [("btsbot.reason", d.reason.encode()), ("btsbot.stage", d.stage.encode()),
                           ("btsbot.source", d.source.encode()), ("btsbot.topic", m.topic().encode()),
                           ("btsbot.partition", str(m.partition()).encode()),
                           ("btsbot.offset", str(m.offset()).encode()),
                           ("btsbot.model_version", self.model_version.encode())]
                if d.candid is not None:
                    headers.append(("btsbot.candid", str(d.candid).encode()))
                if d.objectId is not None:
                    headers.append(("btsbot.objectId", str(d.objectId).encode()))
                self._produce(cfg.dead_letter_topic, m.value() or b"", m.key(), headers, on_delivery)
        # The files are written while the producer delivers; both must be done before the commit.
        if self._results is not None and results:
            self._results.write({c: [r[c] for _, r in results] for c in RESULT_COLUMNS})
        if self._rejected is not None and letters:
            rows = [{"candid": d.candid, "objectId": d.objectId, "stage": d.stage, "reason": d.reason,
                     "source": d.source, "topic": msgs[d.msg_index].topic(),
                     "partition": msgs[d.msg_index].partition(), "offset": msgs[d.msg_index].offset()}
                    for d in letters]
            self._rejected.write({c: [r[c] for r in rows] for c in REJECTED_COLUMNS})
        left = self._producer.flush(cfg.flush_timeout_s)
        if left or errors:
            raise StreamError(
                f"{len(errors) + left} result/dead-letter message(s) not acknowledged by the broker "
                f"({left} still queued after {cfg.flush_timeout_s:g} s; first error: {errors[:1]}); "
                "offsets of this batch are NOT committed, it will be re-delivered")

    def _produce(self, topic, value, key, headers, on_delivery) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.1)
        self._producer.poll(0)

    def _commit(self, msgs) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        last: dict[tuple[str, int], int] = {}
        for m in msgs:
            key = (m.topic(), m.partition())
            last[key] = max(last.get(key, -1), m.offset())
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in sorted(last.items())]
        for attempt in range(3):
            try:
                out = self._consumer.commit(offsets=offsets, asynchronous=False)
                break
            except KafkaException as e:
                err = e.args[0]
                if err.name() in _REBALANCE_ERRORS:
                    # The partitions moved during the batch: its results are out, the next owner re-scores it
                    # (duplicates downstream at worst), nothing is lost.
                    self.stats.commit_failures += 1
                    self.log.warning("commit of %s failed (%s); the next owner re-scores these alerts",
                                     _fmt_partitions(offsets), err)
                    return
                if err.fatal() or not err.retriable() or attempt == 2:
                    raise StreamError(f"offset commit refused: {err}") from e
                self.log.warning("commit failed (%s), retrying", err)
                time.sleep(0.5 * (attempt + 1))
        bad = [tp for tp in out or () if tp.error is not None]
        if bad:
            self.stats.commit_failures += 1
            self.log.warning("commit failed for %s: %s", _fmt_partitions(bad), bad[0].error)
        else:
            self.stats.commits += 1

    def _account(self, msgs, n_scored: int, letters: list[_Letter], batch_ms: float) -> None:
        st = self.stats
        st.messages += len(msgs)
        st.alerts_scored += n_scored
        st.dead_letters += len(letters)
        for d in letters:
            st.dead_by_stage[d.stage] = st.dead_by_stage.get(d.stage, 0) + 1
        st.batches += 1
        st.batch_ms.append(batch_ms)
        st.last_done = time.monotonic()
        now_ms = time.time() * 1000.0
        ts = [m.timestamp()[1] for m in msgs if m.timestamp()[0] != 0 and m.timestamp()[1] > 0]
        st.e2e.add([max(0.0, now_ms - t) for t in ts])
        self._window.append((time.monotonic(), n_scored + len(letters), batch_ms))

    # -------------------------------------------------------------------------------------------- logging
    def _lag(self) -> int | None:
        """Messages of the assigned partitions not yet scored and committed: high watermark - committed offset.

        Counted from the committed offsets, not the fetch position: librdkafka prefetches ahead, so the position
        says what is in memory, not what is done. None if the broker cannot be asked now.
        """
        c = self._consumer
        try:
            parts = c.assignment()
            if not parts:
                self.stats.lag = 0
                return 0
            total = 0
            for tp in c.committed(parts, timeout=2.0):
                # The high watermark of the last fetch response first (no round trip, and exact on tansu, whose
                # ListOffsets answers the base offset of the last record batch + 1, low by up to a batch).
                lo, hi = c.get_watermark_offsets(tp, cached=True)
                if hi is None or hi < 0:
                    lo, hi = c.get_watermark_offsets(tp, timeout=2.0, cached=False)
                done = tp.offset if tp.offset >= 0 else max(lo, 0)  # nothing committed yet: the whole log is to do
                total += max(0, hi - done)
            self.stats.lag = total
            return total
        except Exception as e:  # noqa: BLE001 -- observability must not kill the stream
            self.log.debug("lag unavailable: %s", e)
            return None

    def log_progress(self) -> None:
        """One line over the batches finished since the previous line (rate over the real interval)."""
        now = time.monotonic()
        span = max(now - self._last_log, 1e-9)
        self._last_log = now
        batches, self._window = list(self._window), deque()
        n = sum(w[1] for w in batches)
        p50, p99 = _quantiles([w[2] for w in batches])
        lag = self._lag()
        st = self.stats
        self.log.info(
            "%.1f alerts/s | batch p50 %s ms p99 %s ms | lag %s | scored %d dead letters %d | batches %d | "
            "partitions %d", n / span, _fmt_ms(p50), _fmt_ms(p99), "?" if lag is None else lag, st.alerts_scored,
            st.dead_letters, st.batches, len(self._assigned))


def _int_or_none(x) -> int | None:
    try:
        return None if x is None or pd_isna(x) else int(x)
    except (TypeError, ValueError):
        return None


def _str_or_none(x) -> str | None:
    return None if x is None or pd_isna(x) else str(x)


def pd_isna(x) -> bool:
    import pandas as pd

    return bool(pd.isna(x)) if np.ndim(x) == 0 else False


def _ids(record) -> tuple[int | None, str | None]:
    if not isinstance(record, dict):
        return None, None
    cand = record.get("candid")
    obj = record.get("objectId")
    try:
        cand = int(cand) if cand is not None else None
    except (TypeError, ValueError):
        cand = None
    return cand, (str(obj) if obj is not None else None)


def _msg_of(source: str, msgs) -> int:
    """Message index of an alert source `topic/partition/offset[...]` when it is not in the lookup table."""
    keys = [f"{m.topic()}/{m.partition()}/{m.offset()}" for m in msgs]
    for i, k in enumerate(keys):
        if source == k or source.startswith(k + "#") or source.startswith(k + ":"):
            return i
    raise StreamError(f"cannot map alert source {source!r} back to a message of the batch")


def _fmt_partitions(parts) -> str:
    by_topic: dict[str, list[int]] = {}
    for p in parts:
        bisect.insort(by_topic.setdefault(p.topic, []), p.partition)
    return "; ".join(f"{t}[{','.join(map(str, ps))}]" for t, ps in sorted(by_topic.items())) or "-"


def _fmt_ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def warmup(scorer, max_batch: int) -> None:
    """Compile the scorer's batch buckets a stream of `max_batch` can hit, before joining the group."""
    buckets = getattr(scorer, "buckets", None)
    if not buckets:
        return
    size = getattr(scorer, "image_size", 63)
    ncol = len(getattr(scorer, "metadata_columns", ())) or 25
    for b in buckets:
        scorer(np.zeros((b, size, size, 3), np.float32), np.zeros((b, ncol), np.float32))
        if b >= max_batch:
            break


__all__ = ["StreamConfig", "StreamScorer", "StreamStats", "StreamError", "ParquetParts", "ensure_topics",
           "parse_config_pairs", "rejected_path", "warmup", "DEFAULT_CONSUMER_CONFIG", "DEFAULT_PRODUCER_CONFIG"]
