"""Live scoring from Kafka: consume ZTF/Rubin-style avro packets, score micro-batches, publish one result per alert.

Delivery is at-least-once. Auto-commit is off; each micro-batch (up to `max_batch` messages or `max_wait_ms`) is
decoded, prepared, scored, its results and dead letters are produced and *acknowledged by the broker* (and written
to the parquet output, if any), and only then are the batch's offsets committed synchronously. A crash anywhere
before the commit re-delivers the batch to whichever group member owns the partition next, so an alert can be
scored twice but never lost. Scale-out is Kafka's consumer group: run more processes with the same group id and
the broker splits the partitions among them; we add no coordination of our own.

This module is the control loop (consumer, group callbacks, batching, commits); the pieces it drives each have
their own module: `stream_batch` (decode, prepare and score one micro-batch), `stream_sink` (result and
dead-letter topics, parquet parts, the delivery check; the dead-letter format is described there) and
`stream_stats` (counters, latency quantiles, the progress line).
"""

from __future__ import annotations

import bisect
import concurrent.futures
import dataclasses
import itertools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from btsbot_jax.serve import kafka_config
from btsbot_jax.serve.stream_batch import Batch, decode_batch, score_rows
from btsbot_jax.serve.stream_sink import (
    REJECTED_COLUMNS,
    RESULT_COLUMNS,
    DeadLetter,
    ParquetParts,
    ResultSink,
    StreamError,
    ensure_topics,
    rejected_path,
)
from btsbot_jax.serve.stream_stats import (
    PROGRESS_FORMAT,
    LatencyHistogram,
    ProgressWindow,
    StreamStats,
    consumer_lag,
    progress_args,
)

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
# Commit errors of a broker that is away (down, restarting, electing a coordinator): wait and retry.
_TRANSIENT_ERRORS = {"_TRANSPORT", "_TIMED_OUT", "_WAIT_COORD", "_ALL_BROKERS_DOWN", "COORDINATOR_NOT_AVAILABLE",
                     "NOT_COORDINATOR", "COORDINATOR_LOAD_IN_PROGRESS", "REQUEST_TIMED_OUT", "NETWORK_EXCEPTION"}

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

    def __repr__(self) -> str:  # the client settings may hold secrets (sasl.password, ...): never in a log line
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["consumer_config"] = kafka_config.redact(self.consumer_config)
        fields["producer_config"] = kafka_config.redact(self.producer_config)
        return f"StreamConfig({', '.join(f'{k}={v!r}' for k, v in fields.items())})"

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
    """`["fetch.wait.max.ms=100", "sasl.password=@/run/secrets/pw", ...]` -> dict: see `kafka_config` (values
    from files / the environment; ints and booleans converted; a ConfigError, a ValueError, names a bad pair)."""
    return kafka_config.parse_config_pairs(pairs)


# ------------------------------------------------------------------------------------------------ the scorer
class StreamScorer:
    """The consume -> decode -> prepare -> score -> produce -> commit loop of one group member.

    `scorer` is a `btsbot_jax.inference.scorer.Scorer` (or any callable `(triplets, metadata) -> (N,)` with a
    `version`).
    `run()` returns the summary dict; `stop()` (thread- and signal-safe) finishes the current batch and exits.
    """

    def __init__(self, scorer: Callable, config: StreamConfig, *, logger: logging.Logger | None = None,
                 on_batch: Callable[[dict[str, Any]], None] | None = None):
        config.validate()
        from btsbot_jax.serve.batch import check_scorer_columns

        check_scorer_columns(scorer)  # refuse a model that wants its metadata in another column order
        self.scorer = scorer
        self.config = config
        self.log = logger or log
        self.model_version = str(getattr(scorer, "version", "unknown"))
        self.stats = StreamStats()
        self.on_batch = on_batch
        self.sink = ResultSink(model_version=self.model_version, output_topic=config.output_topic,
                               dead_letter_topic=config.dead_letter_topic, output_path=config.output_path,
                               flush_timeout_s=config.flush_timeout_s)
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self._assigned: set[tuple[str, int]] = set()
        self._last_activity = time.monotonic()
        self._progress = ProgressWindow()  # the batches since the last progress line
        self._consumer = None
        self._pending: Batch | None = None  # scored (or being scored), not yet delivered and committed
        self._taken = 0  # messages taken from the consumer

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
        from confluent_kafka import Consumer

        cfg = self.config
        if cfg.create_topics:
            created = ensure_topics(cfg.bootstrap_servers, [cfg.output_topic, cfg.dead_letter_topic],
                                    cfg.output_partitions)
            if created:
                self.log.info("created topic(s) %s", ", ".join(created))
        self.sink.open(cfg.producer_conf())
        self._consumer = Consumer(cfg.consumer_conf(), logger=self.log)
        self._consumer.subscribe(list(cfg.topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)
        self.log.info("consuming %s as group %s (model %s, max_batch %d, max_wait_ms %d)",
                      ",".join(cfg.topics), cfg.group_id, self.model_version, cfg.max_batch, cfg.max_wait_ms)
        self.log.info("consumer settings %s; producer settings %s", kafka_config.redact(cfg.consumer_conf()),
                      kafka_config.redact(cfg.producer_conf()))
        next_log = time.monotonic() + cfg.log_every_s
        self._progress.restart()
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
            self.sink.close()
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

    def _stage(self, msgs: Sequence) -> Batch:
        t0 = time.monotonic()
        if self.stats.first_message is None:
            self.stats.first_message = t0
        return decode_batch(msgs, t0, use_rb=self.config.use_rb)

    def _submit(self, batch: Batch, pool: concurrent.futures.Executor | None) -> Batch:
        """Start the model on the batch: in `pool` (JAX releases the GIL, so the next batch decodes meanwhile)."""
        if batch.has_rows:
            args = (self.scorer, batch.prep.triplets, batch.prep.metadata)
            if pool is None:
                batch.scores = score_rows(*args)
            else:
                batch.future = pool.submit(score_rows, *args)
        return batch

    def _finish(self, batch: Batch) -> dict[str, Any]:
        """Wait for the scores, deliver results and dead letters, then commit the batch's offsets."""
        if batch.future is not None:
            batch.scores = batch.future.result()
        results = batch.results(self.model_version)
        msgs, letters = batch.msgs, batch.letters
        self.sink.deliver(msgs, results, letters)
        self._commit(msgs)
        batch_ms = (time.monotonic() - batch.t0) * 1000.0
        self.stats.record_batch(msgs, len(results), [d.stage for d in letters], batch_ms)
        self._progress.add(len(results) + len(letters), batch_ms)
        info = {"messages": len(msgs), "scored": len(results), "dead_letters": len(letters), "batch_ms": batch_ms}
        if self.on_batch is not None:
            self.on_batch(info)
        return info

    def _commit(self, msgs) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        last: dict[tuple[str, int], int] = {}
        for m in msgs:
            key = (m.topic(), m.partition())
            last[key] = max(last.get(key, -1), m.offset())
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in sorted(last.items())]
        # A broker that is down or restarting refuses commits for a while: retry until flush_timeout_s (the same
        # patience the results got) rather than give up, so the scorer rides out a broker restart by itself.
        deadline = time.monotonic() + self.config.flush_timeout_s
        for attempt in itertools.count():
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
                transient = err.retriable() or err.name() in _TRANSIENT_ERRORS
                if err.fatal() or not transient or time.monotonic() >= deadline:
                    raise StreamError(f"offset commit refused: {err}") from e
                self.log.warning("commit failed (%s), retrying", err)
                time.sleep(min(0.5 * (attempt + 1), 5.0))
        bad = [tp for tp in out or () if tp.error is not None]
        if bad:
            self.stats.commit_failures += 1
            self.log.warning("commit failed for %s: %s", _fmt_partitions(bad), bad[0].error)
        else:
            self.stats.commits += 1

    # -------------------------------------------------------------------------------------------- logging
    def _lag(self) -> int | None:
        lag = consumer_lag(self._consumer, self.log)
        if lag is not None:
            self.stats.lag = lag
        return lag

    def log_progress(self) -> None:
        """One line over the batches finished since the previous line (rate over the real interval)."""
        rate, p50, p99 = self._progress.take()
        self.log.info(PROGRESS_FORMAT, *progress_args(rate, p50, p99, self._lag(), self.stats, len(self._assigned)))


def _fmt_partitions(parts) -> str:
    by_topic: dict[str, list[int]] = {}
    for p in parts:
        bisect.insort(by_topic.setdefault(p.topic, []), p.partition)
    return "; ".join(f"{t}[{','.join(map(str, ps))}]" for t, ps in sorted(by_topic.items())) or "-"


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


# The pieces are importable from here as before the split (`from btsbot_jax.serve.stream import ...`).
__all__ = ["StreamConfig", "StreamScorer", "StreamStats", "StreamError", "ParquetParts", "ResultSink",
           "DeadLetter", "LatencyHistogram", "ensure_topics", "parse_config_pairs", "rejected_path", "warmup",
           "DEFAULT_CONSUMER_CONFIG", "DEFAULT_PRODUCER_CONFIG", "RESULT_COLUMNS", "REJECTED_COLUMNS"]
