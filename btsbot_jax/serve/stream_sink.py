"""Where a stream scorer's output goes: result and dead-letter topics, parquet part files, and the delivery check.

`ResultSink.deliver` returns only once every result and dead letter of a batch is acknowledged by the broker and
written to disk; otherwise it raises `StreamError`, and the control loop must not commit the batch's offsets.

Dead letters: the value is the original message bytes untouched (so a dead-letter topic can be replayed into a
fixed scorer), the key is the original key, and the reason travels in headers (`btsbot.reason`, `btsbot.stage`,
`btsbot.source`, `btsbot.topic`, `btsbot.partition`, `btsbot.offset`, `btsbot.candid`, `btsbot.objectId`,
`btsbot.model_version`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

RESULT_COLUMNS = ("candid", "objectId", "jd", "magpsf", "score", "model_version", "btsbot_jax_version", "topic",
                  "partition", "offset")
REJECTED_COLUMNS = ("candid", "objectId", "stage", "reason", "source", "topic", "partition", "offset")


class StreamError(RuntimeError):
    """The scorer cannot guarantee delivery (results not acknowledged, commit refused): stop without committing."""


@dataclasses.dataclass
class DeadLetter:
    """One message that could not be scored: which message of the batch, at which stage, and why."""

    msg_index: int
    stage: str
    reason: str
    source: str
    candid: int | None = None
    objectId: str | None = None


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


class ResultSink:
    """Publishes one batch's results (JSON, keyed by candid) and dead letters, and writes its parquet parts.

    The Kafka producer is made by `open()` (so a sink can be built, and its config checked, before any
    connection); `close()` flushes what is still queued.
    """

    def __init__(self, *, model_version: str, output_topic: str | None = None,
                 dead_letter_topic: str | None = None, output_path: str | os.PathLike | None = None,
                 flush_timeout_s: float = 60.0):
        self.model_version = model_version
        self.output_topic = output_topic
        self.dead_letter_topic = dead_letter_topic
        self.flush_timeout_s = flush_timeout_s
        self.producer = None
        self._results = ParquetParts(output_path, _result_schema()) if output_path else None
        self._rejected = (ParquetParts(rejected_path(output_path), _rejected_schema())
                          if output_path else None)

    def open(self, producer_conf: dict[str, Any]) -> None:
        from confluent_kafka import Producer

        self.producer = Producer(producer_conf)

    def close(self) -> None:
        if self.producer is not None:
            self.producer.flush(self.flush_timeout_s)
            self.producer = None  # librdkafka handle destroyed with the object (no close() in the API)

    def deliver(self, msgs: Sequence, results: Sequence[tuple[int, dict[str, Any]]],
                letters: Sequence[DeadLetter]) -> None:
        """Produce and write everything of one batch; raise StreamError unless the broker acknowledged it all."""
        errors: list[str] = []

        def on_delivery(err, _msg):
            if err is not None:
                errors.append(str(err))

        if self.output_topic:
            for i, r in results:
                self._produce(self.output_topic, json.dumps(r, separators=(",", ":")).encode(),
                              str(r["candid"]) if r["candid"] is not None else msgs[i].key(),
                              None, on_delivery)
        if self.dead_letter_topic:
            for d in letters:
                m = msgs[d.msg_index]
                self._produce(self.dead_letter_topic, m.value() or b"", m.key(), self._headers(d, m), on_delivery)
        # The files are written while the producer delivers; both must be done before the commit.
        if self._results is not None and results:
            self._results.write({c: [r[c] for _, r in results] for c in RESULT_COLUMNS})
        if self._rejected is not None and letters:
            rows = [{"candid": d.candid, "objectId": d.objectId, "stage": d.stage, "reason": d.reason,
                     "source": d.source, "topic": msgs[d.msg_index].topic(),
                     "partition": msgs[d.msg_index].partition(), "offset": msgs[d.msg_index].offset()}
                    for d in letters]
            self._rejected.write({c: [r[c] for r in rows] for c in REJECTED_COLUMNS})
        left = self.producer.flush(self.flush_timeout_s)
        if left or errors:
            raise StreamError(
                f"{len(errors) + left} result/dead-letter message(s) not acknowledged by the broker "
                f"({left} still queued after {self.flush_timeout_s:g} s; first error: {errors[:1]}); "
                "offsets of this batch are NOT committed, it will be re-delivered")

    def _headers(self, d: DeadLetter, m) -> list[tuple[str, bytes]]:
        headers = [("btsbot.reason", d.reason.encode()), ("btsbot.stage", d.stage.encode()),
                   ("btsbot.source", d.source.encode()), ("btsbot.topic", m.topic().encode()),
                   ("btsbot.partition", str(m.partition()).encode()),
                   ("btsbot.offset", str(m.offset()).encode()),
                   ("btsbot.model_version", self.model_version.encode())]
        if d.candid is not None:
            headers.append(("btsbot.candid", str(d.candid).encode()))
        if d.objectId is not None:
            headers.append(("btsbot.objectId", str(d.objectId).encode()))
        return headers

    def _produce(self, topic, value, key, headers, on_delivery) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self.producer.poll(0.1)
        self.producer.poll(0)


__all__ = ["StreamError", "DeadLetter", "ResultSink", "ParquetParts", "ensure_topics", "rejected_path",
           "RESULT_COLUMNS", "REJECTED_COLUMNS"]
