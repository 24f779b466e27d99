"""Statistics of one stream scorer: counters for the final summary, latency quantiles, and the progress line.

Nothing here touches the data path: the control loop in `serve/stream.py` reports each finished batch, and asks
for the summary and the periodic progress line.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


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

    def record_batch(self, msgs: Sequence, n_scored: int, dead_stages: Sequence[str], batch_ms: float) -> None:
        """Count one delivered and committed batch; its end-to-end latency is from each message's broker time."""
        self.messages += len(msgs)
        self.alerts_scored += n_scored
        self.dead_letters += len(dead_stages)
        for stage in dead_stages:
            self.dead_by_stage[stage] = self.dead_by_stage.get(stage, 0) + 1
        self.batches += 1
        self.batch_ms.append(batch_ms)
        self.last_done = time.monotonic()
        now_ms = time.time() * 1000.0
        ts = [m.timestamp()[1] for m in msgs if m.timestamp()[0] != 0 and m.timestamp()[1] > 0]
        self.e2e.add([max(0.0, now_ms - t) for t in ts])

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


class ProgressWindow:
    """The batches finished since the previous progress line; the line's rate is over the real interval."""

    def __init__(self):
        self._window: deque = deque()  # (time, n alerts, batch ms)
        self._last = time.monotonic()

    def restart(self) -> None:
        """The first line's interval starts now (when the scorer starts consuming)."""
        self._last = time.monotonic()

    def add(self, n_alerts: int, batch_ms: float) -> None:
        self._window.append((time.monotonic(), n_alerts, batch_ms))

    def take(self) -> tuple[float, float | None, float | None]:
        """(alerts/s, batch p50 ms, batch p99 ms) since the previous call; starts the next window."""
        now = time.monotonic()
        span = max(now - self._last, 1e-9)
        self._last = now
        batches, self._window = list(self._window), deque()
        p50, p99 = _quantiles([w[2] for w in batches])
        return sum(w[1] for w in batches) / span, p50, p99


PROGRESS_FORMAT = ("%.1f alerts/s | batch p50 %s ms p99 %s ms | lag %s | scored %d dead letters %d | batches %d | "
                   "partitions %d")


def progress_args(rate: float, p50: float | None, p99: float | None, lag: int | None, stats: StreamStats,
                  partitions: int) -> tuple:
    """The arguments of `PROGRESS_FORMAT` (the caller logs, so the log record names the stream loop)."""
    return (rate, _fmt_ms(p50), _fmt_ms(p99), "?" if lag is None else lag, stats.alerts_scored, stats.dead_letters,
            stats.batches, partitions)


def consumer_lag(consumer, logger: logging.Logger) -> int | None:
    """Messages of the assigned partitions not yet scored and committed: high watermark - committed offset.

    Counted from the committed offsets, not the fetch position: librdkafka prefetches ahead, so the position
    says what is in memory, not what is done. None if the broker cannot be asked now.
    """
    try:
        parts = consumer.assignment()
        if not parts:
            return 0
        total = 0
        for tp in consumer.committed(parts, timeout=2.0):
            # The high watermark of the last fetch response first (no round trip, and exact on tansu, whose
            # ListOffsets answers the base offset of the last record batch + 1, low by up to a batch).
            lo, hi = consumer.get_watermark_offsets(tp, cached=True)
            if hi is None or hi < 0:
                lo, hi = consumer.get_watermark_offsets(tp, timeout=2.0, cached=False)
            done = tp.offset if tp.offset >= 0 else max(lo, 0)  # nothing committed yet: the whole log is to do
            total += max(0, hi - done)
        return total
    except Exception as e:  # noqa: BLE001 -- observability must not kill the stream
        logger.debug("lag unavailable: %s", e)
        return None


def _cpu_seconds() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _round(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


def _fmt_ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


__all__ = ["LatencyHistogram", "StreamStats", "ProgressWindow", "PROGRESS_FORMAT", "progress_args", "consumer_lag"]
