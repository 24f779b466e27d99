"""Alert readers: records equal fastavro's/pyarrow's, every container type, sharding, and damaged input that
never crashes and never loses a record."""

import io
import shutil
import tarfile

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from alert_corpus import avro_bytes, record_offset, synthetic_packet, synthetic_schema
from conftest import ZTF_ALERTS, ZTF_ALERTS_FINK, require

from btsbot_jax.ingest.avro import SKIP, compile_decoder
from btsbot_jax.ingest.readers import (
    SCORING_PROJECTION,
    AlertReadError,
    RawAlert,
    ReadStats,
    decode_avro_bytes,
    iter_alerts,
    project,
)


@pytest.fixture(scope="module")
def packets():
    """Seven synthetic packets as fastavro reads them back (float fields rounded to float32 by the schema)."""
    made = [synthetic_packet(candid=3000000000015015000 + i, objectId=f"ZTF24test{i:03d}", seed=i, n_prv=i % 5)
            for i in range(7)]
    return list(fastavro.reader(io.BytesIO(avro_bytes(synthetic_schema(), made))))


@pytest.fixture()
def folder(tmp_path, packets):
    """packets spread over nested folders: single-record files, a 3-record file, plus non-alert files."""
    s = synthetic_schema()
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "0.avro").write_bytes(avro_bytes(s, packets[:1]))
    (tmp_path / "a" / "b" / "1.avro").write_bytes(avro_bytes(s, packets[1:4], codec="deflate"))
    (tmp_path / "a" / "b" / "2.avro").write_bytes(avro_bytes(s, packets[4:5]))
    (tmp_path / "c.avro").write_bytes(avro_bytes(s, packets[5:7]))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "a" / "b" / "image.png").write_bytes(b"\x89PNG")
    return tmp_path


def test_real_avro_records_equal_fastavro():
    require(ZTF_ALERTS)
    require(ZTF_ALERTS_FINK)
    paths = sorted(ZTF_ALERTS.rglob("*.avro")) + sorted(ZTF_ALERTS_FINK.rglob("*.avro"))
    assert len(paths) == 36 + 611
    ours = list(iter_alerts(paths))
    scoring = list(iter_alerts(paths, projection=SCORING_PROJECTION))
    assert len(ours) == len(scoring) == 647
    for path, a, s in zip(paths, ours, scoring):
        with open(path, "rb") as f:
            (ref,) = list(fastavro.reader(f))
        assert a.error is None and a.source == f"{path}#0"
        assert a.record == ref  # the compiled decoder gives fastavro's dicts exactly
        assert s.record == project(ref, SCORING_PROJECTION)
    # the projection really drops what it skips
    assert all("fp_hists" not in s.record for s in scoring)
    assert any("fp_hists" in a.record for a in ours)  # schema 4.01 packets have it


def test_real_parquet_rows_equal_pyarrow():
    require(ZTF_ALERTS_FINK)
    paths = sorted(ZTF_ALERTS_FINK.rglob("*.parquet"))
    stats = ReadStats()
    got = list(iter_alerts(paths, stats=stats))
    assert len(got) == 124 and stats.files == 2 and stats.undecodable == 0
    ref = []
    for p in paths:
        t = pq.read_table(p)
        cols = [c for c in t.column_names if c in got[0].record]
        ref += [(f"{p}#{i}", r) for i, r in enumerate(t.select(cols).to_pylist())]
    assert [a.source for a in got] == [s for s, _ in ref]
    assert all(a.record == r for a, (_, r) in zip(got, ref))
    assert "cdsxmatch" not in got[0].record  # broker columns are not read


def test_compiled_decoder_equals_fastavro_on_synthetic_schema(packets):
    schema = synthetic_schema()
    data = avro_bytes(schema, packets)
    ref = list(fastavro.reader(io.BytesIO(data)))
    got = [a.record for a in decode_avro_bytes(data, "k")]
    assert got == ref == packets
    proj = {"prv_candidates": ("jd", "magpsf"), "cutoutTemplate": SKIP}
    dec = compile_decoder(schema, proj)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), packets[3])
    rec, end = dec(buf.getvalue(), 0)
    assert end == len(buf.getvalue())
    assert rec == project(packets[3], proj)
    assert set(rec["prv_candidates"][0]) == {"jd", "magpsf"} and "cutoutTemplate" not in rec


def test_logical_types_are_left_to_fastavro():
    schema = {"type": "record", "name": "r", "fields": [
        {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}
    assert compile_decoder(schema) is None
    data = avro_bytes(schema, [{"t": 1700000000000}])
    (a,) = decode_avro_bytes(data, "k")
    assert a.error is None and a.record == next(fastavro.reader(io.BytesIO(data)))


def test_decode_avro_bytes_sources(packets):
    s = synthetic_schema()
    (one,) = decode_avro_bytes(avro_bytes(s, packets[:1]), "ztf_20240101_programid1/0/42")
    assert one.source == "ztf_20240101_programid1/0/42" and one.candid == packets[0]["candid"]
    assert one.objectId == packets[0]["objectId"]
    many = decode_avro_bytes(avro_bytes(s, packets[:3]), "t/0/43")
    assert [a.source for a in many] == ["t/0/43#0", "t/0/43#1", "t/0/43#2"]


def test_folder_recursive_sorted_and_skips_counted(folder, packets):
    stats = ReadStats()
    got = list(iter_alerts(folder, stats=stats))
    assert [a.record["candid"] for a in got] == [p["candid"] for p in packets]
    assert got[1].source == f"{folder}/a/b/1.avro#0" and got[3].source == f"{folder}/a/b/1.avro#2"
    assert stats.records == 7 and stats.files == 4 and stats.skipped_files == 2 and stats.undecodable == 0


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tar.gz")])
def test_tarballs_equal_folder(folder, packets, tmp_path_factory, mode, suffix):
    tar = tmp_path_factory.mktemp("tar") / f"night{suffix}"
    with tarfile.open(tar, mode) as tf:
        tf.add(folder, arcname="20240101")
    stats = ReadStats()
    got = list(iter_alerts(tar, stats=stats))
    assert [a.record for a in got] == [a.record for a in iter_alerts(folder)]
    assert got[0].source == f"{tar}:20240101/a/0.avro#0"
    assert stats.skipped_files == 2


def test_parquet_written_from_packets(tmp_path, packets):
    path = tmp_path / "alerts.parquet"
    pq.write_table(pa.Table.from_pylist(packets), path, row_group_size=3)
    got = list(iter_alerts(path))
    assert [a.record for a in got] == packets
    assert [a.source for a in got] == [f"{path}#{i}" for i in range(7)]


@pytest.mark.parametrize("num_shards", [2, 3, 5])
def test_shards_cover_every_record_exactly_once(folder, tmp_path, packets, num_shards):
    pq.write_table(pa.Table.from_pylist(packets), folder / "z.parquet", row_group_size=2)
    everything = [a.source for a in iter_alerts([folder, folder / "c.avro"])]
    assert len(everything) == 7 + 7 + 2
    shards = []
    for k in range(num_shards):
        stats = ReadStats()
        shards.append([a.source for a in iter_alerts([folder, folder / "c.avro"], num_shards=num_shards,
                                                     shard_index=k, stats=stats)])
        assert stats.records + stats.other_shards == len(everything)
        assert all(a is not None for a in shards[-1])
    merged = [s for shard in shards for s in shard]
    assert sorted(merged) == sorted(everything)  # disjoint and complete
    # deterministic: the record ordinal decides (round robin in reading order)
    assert shards[0] == everything[0::num_shards]
    with pytest.raises(ValueError):
        list(iter_alerts(folder, num_shards=2, shard_index=2))


def test_every_truncation_point_yields_one_record_and_no_exception(packets):
    data = avro_bytes(synthetic_schema(), packets[:1])
    step = max(1, len(data) // 300)
    for cut in list(range(0, len(data), step)) + [len(data) - 16, len(data) - 1, len(data)]:
        got = decode_avro_bytes(data[:cut], "f")
        assert len(got) == 1, cut
        if cut >= len(data) - 16:  # only (part of) the final sync marker is missing: the record is whole
            assert got[0].error is None and got[0].record == packets[0]
        else:
            assert got[0].record is None and got[0].error, cut


def test_random_corruption_never_raises(packets):
    data = avro_bytes(synthetic_schema(), packets[:3])
    rng = np.random.default_rng(0)
    for _ in range(60):
        b = bytearray(data)
        for i in rng.integers(0, len(b), size=int(rng.integers(1, 6))):
            b[i] = int(rng.integers(0, 256))
        got = decode_avro_bytes(bytes(b), "f")
        assert len(got) >= 1
        assert all(isinstance(a, RawAlert) and (a.record is None) == (a.error is not None) for a in got)


def test_corrupt_record_in_multi_record_block_accounts_for_the_rest(packets):
    data = bytearray(avro_bytes(synthetic_schema(), packets[:3], sync_interval=10**8))  # one block of 3
    off = record_offset(bytes(data))
    data[off:off + 12] = b"\xff" * 12
    got = decode_avro_bytes(bytes(data), "f")
    assert [a.source for a in got] == ["f#0", "f#1", "f#2"]
    assert all(a.record is None for a in got)
    assert "corrupt avro record" in got[0].error and "earlier record" in got[1].error


def test_damaged_sync_marker_resynchronises(packets):
    s = synthetic_schema()
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(s), packets[:3], sync_interval=1)  # one block per record
    data = bytearray(buf.getvalue())
    sync = bytes(data[-16:])
    first = data.find(sync, record_offset(bytes(data)))  # the sync after block 0
    data[first] ^= 0xFF
    got = decode_avro_bytes(bytes(data), "f")
    assert got[0].record == packets[0]
    assert got[1].record is None and "sync marker" in got[1].error
    assert [a.record for a in got[2:]] == packets[1:3] or [a.record for a in got[2:]] == packets[2:3]


def test_empty_and_garbage_files_are_records_not_crashes(tmp_path):
    (tmp_path / "empty.avro").write_bytes(b"")
    (tmp_path / "junk.avro").write_bytes(b"hello world")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "bad.tar.gz").write_bytes(b"\x1f\x8b not really")
    got = {a.source.split("/")[-1]: a for a in iter_alerts(tmp_path)}
    assert set(got) == {"empty.avro#0", "junk.avro#0", "bad.parquet#0", "bad.tar.gz#0"}
    assert got["empty.avro#0"].error == "empty file (0 bytes)"
    assert "not an avro container" in got["junk.avro#0"].error
    assert "unreadable parquet" in got["bad.parquet#0"].error
    assert "tarball" in got["bad.tar.gz#0"].error


def test_truncated_tarball_reports_the_lost_rest(folder, tmp_path):
    tar = tmp_path / "night.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(folder, arcname="n")
    data = tar.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    got = list(iter_alerts(cut))
    assert got[-1].record is None and "rest of the archive is lost" in got[-1].error
    assert all(a.error is None for a in got[:-1])


def test_unreadable_paths(tmp_path, folder):
    with pytest.raises(AlertReadError, match="no such file"):
        list(iter_alerts(tmp_path / "missing"))
    (tmp_path / "data.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(AlertReadError, match="not an avro, parquet or tar"):
        list(iter_alerts(tmp_path / "data.bin"))
    (tmp_path / "nottar.tar").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(AlertReadError, match="tarball"):
        list(iter_alerts(tmp_path / "nottar.tar"))
    # one rule for a named file that cannot be opened as its kind: an unreadable path, whatever the kind
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(AlertReadError, match="not a readable parquet file"):
        list(iter_alerts(tmp_path / "junk.parquet"))
    (tmp_path / "junk.avro").write_bytes(b"hello world")
    with pytest.raises(AlertReadError, match="not a readable avro file: not an avro container"):
        list(iter_alerts(tmp_path / "junk.avro"))
    (tmp_path / "empty.avro").write_bytes(b"")
    with pytest.raises(AlertReadError, match="empty file"):
        list(iter_alerts(tmp_path / "empty.avro"))
    stats = ReadStats()
    assert list(iter_alerts([tmp_path / "junk.parquet", tmp_path / "nottar.tar"], stats=stats,
                            errors="collect")) == []
    assert [p for p, _ in stats.unreadable_paths] == [str(tmp_path / "junk.parquet"), str(tmp_path / "nottar.tar")]
    stats = ReadStats()
    got = list(iter_alerts([tmp_path / "missing", folder / "c.avro"], stats=stats, errors="collect"))
    assert len(got) == 2 and stats.unreadable_paths[0][0] == str(tmp_path / "missing")
    # a file named without a known suffix is recognised by its content
    shutil.copy(folder / "c.avro", tmp_path / "alert.bin")
    assert len(list(iter_alerts(tmp_path / "alert.bin"))) == 2


RICH_SCHEMA = {
    "type": "record", "name": "Rich", "namespace": "t", "fields": [
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": ["null", "double"]},
        {"name": "s", "type": ["string", "null"]},
        {"name": "raw", "type": "bytes"},
        {"name": "e", "type": {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN", "BLUE"]}},
        {"name": "fx", "type": {"type": "fixed", "name": "Four", "size": 4}},
        {"name": "m", "type": {"type": "map", "values": ["null", "long"]}},
        {"name": "u3", "type": ["null", "int", "string"]},
        {"name": "nested", "type": {"type": "record", "name": "Inner", "fields": [
            {"name": "x", "type": "double"}, {"name": "tags", "type": {"type": "array", "items": "string"}},
            {"name": "c", "type": "Colour"}]}},
        {"name": "inners", "type": ["null", {"type": "array", "items": ["t.Inner", "null"]}]},
        {"name": "again", "type": ["null", "Four"]},
    ]}


def _rich_record(rng, i):
    inner = lambda: {"x": float(rng.normal()), "tags": [f"t{j}" * j for j in range(int(rng.integers(0, 4)))],  # noqa: E731
                     "c": ["RED", "GREEN", "BLUE"][int(rng.integers(0, 3))]}
    return {
        "b": bool(i % 2), "i": int(rng.integers(-2**31, 2**31)), "l": int(rng.integers(-2**63, 2**63 - 1)),
        "f": float(np.float32(rng.normal())), "d": None if i % 3 == 0 else float(rng.normal()),
        "s": None if i % 4 == 0 else "é" * int(rng.integers(0, 200)), "raw": rng.bytes(int(rng.integers(0, 300))),
        "e": ["RED", "GREEN", "BLUE"][i % 3], "fx": rng.bytes(4),
        "m": {f"k{j}": (None if j % 2 else int(rng.integers(-1000, 10**12))) for j in range(int(rng.integers(0, 5)))},
        "u3": [None, int(rng.integers(-70, 70)), "x" * i][i % 3], "nested": inner(),
        "inners": None if i % 5 == 0 else [inner() if j % 3 else None for j in range(int(rng.integers(0, 70)))],
        "again": None if i % 2 else rng.bytes(4),
    }


def test_compiled_decoder_equals_fastavro_on_every_avro_type():
    rng = np.random.default_rng(7)
    records = [_rich_record(rng, i) for i in range(60)]
    for codec in ("null", "deflate"):
        data = avro_bytes(RICH_SCHEMA, records, codec=codec, sync_interval=2000)  # several blocks
        ref = list(fastavro.reader(io.BytesIO(data)))
        got = decode_avro_bytes(data, "x")
        assert [a.error for a in got] == [None] * 60
        assert [a.record for a in got] == ref
    proj = {"nested": ("tags",), "inners": ("c",), "m": SKIP, "raw": SKIP, "u3": SKIP}
    got = [a.record for a in decode_avro_bytes(avro_bytes(RICH_SCHEMA, records), "x", projection=proj)]
    assert got == [project(r, proj) for r in ref]
    assert "m" not in got[0] and set(got[0]["nested"]) == {"tags"}
