"""One micro-batch of Kafka messages: decode and prepare the packets, score them, and turn the scores into
result rows; every message that cannot be scored becomes a `DeadLetter` naming its stage and reason.

No Kafka calls here: the messages only need `topic()`, `partition()`, `offset()`, `value()` (confluent_kafka's
`Message`), so the pieces can run on any thread of the control loop in `serve/stream.py`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from btsbot_jax import __version__
from btsbot_jax.serve.stream_sink import DeadLetter, StreamError


@dataclasses.dataclass
class Batch:
    msgs: list
    t0: float
    letters: list[DeadLetter] = dataclasses.field(default_factory=list)
    alerts: list = dataclasses.field(default_factory=list)
    origin: dict[str, int] = dataclasses.field(default_factory=dict)  # alert source -> index of its message
    prep: Any = None
    future: concurrent.futures.Future | None = None
    scores: tuple[np.ndarray, np.ndarray] | None = None

    def index_of(self, source: str) -> int:
        i = self.origin.get(source)
        return i if i is not None else _msg_of(source, self.msgs)

    @property
    def has_rows(self) -> bool:
        return self.prep is not None and len(self.prep.info) > 0

    def results(self, model_version: str) -> list[tuple[int, dict[str, Any]]]:
        """(message index, result row) of each scored alert; a non-finite score becomes a dead letter."""
        results: list[tuple[int, dict[str, Any]]] = []
        if self.scores is None:
            return results
        scores, ok = self.scores
        info = self.prep.info.reset_index(drop=True)
        for k, row in enumerate(info.itertuples(index=False)):
            i = self.index_of(row.source)
            if not ok[k]:
                self.letters.append(DeadLetter(i, "score", f"{row.source}: non-finite score or model input",
                                               row.source, _int_or_none(row.candid), _str_or_none(row.objectId)))
                continue
            m = self.msgs[i]
            results.append((i, {
                "candid": _int_or_none(row.candid), "objectId": _str_or_none(row.objectId),
                "jd": _json_float(row.jd), "magpsf": _json_float(row.magpsf), "score": float(scores[k]),
                "model_version": model_version, "btsbot_jax_version": __version__, "topic": m.topic(),
                "partition": m.partition(),
                "offset": m.offset(),
            }))
        return results


def decode_batch(msgs: Sequence, t0: float, *, use_rb: bool = False) -> Batch:
    """Decode and prepare (CPU, Python): runs while the previous batch is in the model."""
    from btsbot_jax.ingest.features import prepare_batch
    from btsbot_jax.ingest.readers import decode_avro_bytes

    batch = Batch(list(msgs), t0)
    for i, m in enumerate(batch.msgs):
        src = f"{m.topic()}/{m.partition()}/{m.offset()}"
        value = m.value()
        if not value:
            batch.letters.append(DeadLetter(i, "decode", f"{src}: empty message", src))
            continue
        try:
            decoded = _decode(decode_avro_bytes, value, src)
        except Exception as e:  # noqa: BLE001 -- any decoder failure is this message's problem, not the stream's
            batch.letters.append(DeadLetter(i, "decode", f"{src}: {type(e).__name__}: {e}", src))
            continue
        if not decoded:
            batch.letters.append(DeadLetter(i, "decode", f"{src}: avro container holds no record", src))
        for a in decoded:
            if a.error is not None or a.record is None:
                batch.letters.append(DeadLetter(i, "decode", f"{a.source}: {a.error or 'no record'}", a.source,
                                                *_ids(a.record)))
            else:
                batch.origin[a.source] = i
                batch.alerts.append(a)
    if batch.alerts:
        batch.prep = prepare_batch(batch.alerts, use_rb=use_rb)
        batch.alerts = []  # the decoded packets (with their stamps) are not needed any more
        for r in batch.prep.rejected:
            batch.letters.append(DeadLetter(batch.index_of(r.source), "prepare", r.reason, r.source, r.candid,
                                            r.objectId))
    return batch


def score_rows(scorer: Callable, triplets, metadata) -> tuple[np.ndarray, np.ndarray]:
    """Scores and a mask of rows that could be scored. A bad row must not sink its batch-mates."""
    from btsbot_jax.inference.scorer import InputError

    n = len(triplets)
    try:
        s = np.asarray(scorer(triplets, metadata), np.float32)
        return s, np.isfinite(s)
    except InputError:
        finite = (np.isfinite(np.asarray(triplets, np.float32)).reshape(n, -1).all(axis=1)
                  & np.isfinite(np.asarray(metadata, np.float32)).all(axis=1))
        s = np.full(n, np.nan, np.float32)
        if finite.any():
            s[finite] = scorer(np.asarray(triplets)[finite], np.asarray(metadata)[finite])
        return s, np.isfinite(s)


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


def _int_or_none(x) -> int | None:
    try:
        return None if x is None or _isna(x) else int(x)
    except (TypeError, ValueError):
        return None


def _str_or_none(x) -> str | None:
    return None if x is None or _isna(x) else str(x)


def _isna(x) -> bool:
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


__all__ = ["Batch", "decode_batch", "score_rows"]
