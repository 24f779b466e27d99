"""Readers for ZTF alert packets: avro files, folders, tarballs (.tar/.tar.gz) and parquet, streamed.

Everything comes out as `RawAlert(source, record, error)`, one per input record, in a deterministic order
(paths in the order given, folders walked in sorted order). A record whose bytes cannot be decoded comes out with
`error` set instead of being dropped, so a caller can always account for every record; a *path* that cannot be
read at all raises `AlertReadError`.

Avro: ZTF writes one small Object Container File per alert, each repeating the ~20 kB schema. fastavro's
`reader` re-parses that schema for every file (~3-4 ms, more than decoding the alert itself), so this module walks
the container framing itself (magic, metadata, sync-delimited blocks) and decodes each record with a decoder
compiled once per schema text (`btsbot_jax.ingest.avro`; fastavro's `schemaless_reader` where a schema is beyond
it, after the compiled validator has walked the record). Blocks compressed with deflate, bzip2 or xz are inflated
here with a size limit; other codecs (snappy, zstandard) are reported per file, not read. tests/test_readers.py
checks the records equal `fastavro.reader`'s on all real packets.

Limits (docs/security.md): a container's schema text (`MAX_SCHEMA_BYTES`), a block's stored and inflated size
(`MAX_BLOCK_BYTES`), every length and count inside a record (against the bytes that remain) and the schema's nesting
(`avro.check_schema`). Whatever breaks one comes out as a record with `error` set, never as an exception.

`projection=SCORING_PROJECTION` decodes only what scoring needs (24 of the ~100 `candidate` fields, `jd` and `magpsf` of
each `prv_candidates` entry, no `fp_hists`) and skips the rest without building it: ~3x less decoding work on a
typical ZTF alert. The default is the full packet.

Sharding: records are numbered in reading order across all paths (the record ordinal); shard k of N keeps the
ordinals with `ordinal % N == k`. Every shard sees the same order, so N shards cover every record exactly once.
A block whose records all belong to other shards is skipped without being decoded (one alert per file in ZTF
archives, so a shard decodes only its share).
"""

from __future__ import annotations

import bz2
import dataclasses
import io
import json
import lzma
import os
import tarfile
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import fastavro

from btsbot_jax.constants import CUSTOM_FEATURES, METADATA_COLUMNS
from btsbot_jax.ingest.avro import SKIP, check_schema, compile_decoder, compile_validator, min_encoded_size

AVRO_MAGIC = b"Obj\x01"
PARQUET_MAGIC = b"PAR1"
AVRO_SUFFIXES = (".avro",)
PARQUET_SUFFIXES = (".parquet", ".parq")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# Top-level columns of the ZTF alert layout; parquet dumps carry broker columns too, which are not read.
ZTF_TOP_LEVEL = ("schemavsn", "publisher", "objectId", "candid", "candidate", "prv_candidates", "fp_hists",
                 "cutoutScience", "cutoutTemplate", "cutoutDifference")
PARQUET_BATCH_ROWS = 256
MAX_SCHEMA_BYTES = 1 << 20   # writer schema text of one container (ZTF's: ~20 kB)
MAX_BLOCK_BYTES = 16 << 20   # one container block, stored and inflated (a ZTF alert: ~20-100 kB)
MAX_BLOCK_RECORDS = 10_000   # records one block may declare (ZTF: 1; fastavro's default blocks: ~16 kB)
MAX_MESSAGE_RECORDS = 10_000  # records one message (decode_avro_bytes) yields; the rest is one error row
CODECS = ("null", "deflate", "bzip2", "xz")
# What prepare_batch needs (and the light curve's essentials): every candidate field, a few fields of each
# prv_candidates entry, no forced-photometry history.
PRV_SCORING_FIELDS = ("jd", "magpsf")  # all the features read from the light curve (features.custom_features)
# the candidate fields scoring reads: the 19 straight features, what the 6 others need, ids and the use_rb fallback
CANDIDATE_SCORING_FIELDS = tuple(c for c in METADATA_COLUMNS if c not in CUSTOM_FEATURES) + (
    "candid", "jd", "jdstarthist", "fid", "rb")
SCORING_PROJECTION = {"candidate": CANDIDATE_SCORING_FIELDS, "prv_candidates": PRV_SCORING_FIELDS, "fp_hists": SKIP}


class AlertReadError(OSError):
    """An input path that cannot be read at all (missing, unreadable, not an alert file type)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclasses.dataclass
class RawAlert:
    """One input record: where it came from, the decoded packet (ZTF avro layout), or why it could not be decoded.

    `source` is "<path>#<record index>", "<tar path>:<member>#<i>", "<parquet>#<row>" or, from Kafka,
    "<topic>/<partition>/<offset>".
    """

    source: str
    record: dict | None
    error: str | None = None

    @property
    def candid(self) -> int | None:
        c = self.record.get("candid") if isinstance(self.record, dict) else None
        return int(c) if isinstance(c, int) else None

    @property
    def objectId(self) -> str | None:  # noqa: N802 - ZTF's spelling
        o = self.record.get("objectId") if isinstance(self.record, dict) else None
        return o if isinstance(o, str) else None


@dataclasses.dataclass
class ReadStats:
    """What a reader saw. `records` counts this shard's records (decoded or not); nothing else is dropped."""

    paths: int = 0
    files: int = 0               # avro files, tar members, parquet files opened
    records: int = 0             # records of this shard yielded (including undecodable ones)
    undecodable: int = 0         # of which `error` is set
    other_shards: int = 0        # records left to the other shards
    skipped_files: int = 0       # files in folders/tarballs that are not alert files
    skipped_examples: list[str] = dataclasses.field(default_factory=list)
    unreadable_paths: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    bytes_read: int = 0

    def skip(self, name: str) -> None:
        self.skipped_files += 1
        if len(self.skipped_examples) < 10:
            self.skipped_examples.append(name)


# --------------------------------------------------------------------------------------------------- avro
def project(record: dict, projection: dict | None) -> dict:
    """Apply a projection (see `avro_decoder.compile_decoder`) to an already decoded record."""
    if not projection or not isinstance(record, dict):
        return record
    out = {}
    for k, v in record.items():
        sub = projection.get(k)
        if sub == SKIP:
            continue
        if sub is not None:
            if isinstance(v, list):
                v = [{f: e[f] for f in sub if f in e} if isinstance(e, dict) else e for e in v]
            elif isinstance(v, dict):
                v = {f: v[f] for f in sub if f in v}
        out[k] = v
    return out


def _fastavro_decoder(parsed, projection, validate):
    """fastavro for schemas the compiler leaves to it, on records the compiled validator has walked first (so
    every count and length fastavro will trust has been checked against the data)."""
    def decode(b: bytes, p: int):
        if validate(b, p) > len(b):
            raise EOFError("record runs past the end of its block")
        fo = io.BytesIO(b)
        fo.seek(p)
        rec = fastavro.schemaless_reader(fo, parsed, None)
        return project(rec, projection), fo.tell()
    return decode


class _Decoder:
    """A record decoder and the fewest bytes a record of its schema takes."""

    __slots__ = ("decode", "min_size")

    def __init__(self, decode, min_size: int):
        self.decode = decode
        self.min_size = max(int(min_size), 1)  # a record of no size still counts one byte against a block

    def __call__(self, b: bytes, p: int):
        return self.decode(b, p)


class _SchemaCache:
    """Record decoders keyed by the schema's JSON text and the projection (ZTF repeats one schema per file)."""

    def __init__(self, size: int = 32):
        self._d: OrderedDict[tuple, Any] = OrderedDict()
        self._size = size
        self._last: tuple[bytes, str, Any] | None = None

    def get(self, text: bytes, projection: dict | None = None, key: str = ""):
        last = self._last  # a stream repeats one schema: comparing bytes (memcmp) beats hashing ~20 kB each time
        if last is not None and last[1] == key and last[0] == text:
            return last[2]
        dec = self._get(text, projection, key)
        self._last = (text, key, dec)
        return dec

    def _get(self, text: bytes, projection: dict | None, key: str):
        k = (text, key)
        dec = self._d.get(k)
        if dec is None:
            if len(text) > MAX_SCHEMA_BYTES:
                raise ValueError(f"schema of {len(text)} bytes (limit {MAX_SCHEMA_BYTES})")
            schema = json.loads(text)
            check_schema(schema)  # recursion, depth, sizes: before any decoder is built from it
            parsed = fastavro.parse_schema(schema)  # validates the schema whichever decoder runs
            dec = compile_decoder(schema, projection)
            if dec is None:
                validate = compile_validator(schema)
                if validate is None:
                    raise ValueError("schema construct beyond the bounded decoder")
                dec = _fastavro_decoder(parsed, projection, validate)
            dec = _Decoder(dec, min_encoded_size(schema))
            self._d[k] = dec
            if len(self._d) > self._size:
                self._d.popitem(last=False)
        else:
            self._d.move_to_end(k)
        return dec


_SCHEMAS = _SchemaCache()


class _Corrupt(Exception):
    pass


def _read_long(buf: bytes, pos: int) -> tuple[int, int]:
    """Avro zig-zag varint at `pos` -> (value, new pos)."""
    shift = 0
    acc = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise _Corrupt("unexpected end of data")
        b = buf[pos]
        pos += 1
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 63:
            raise _Corrupt("varint too long")
    return (acc >> 1) ^ -(acc & 1), pos


def _read_bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    size, pos = _read_long(buf, pos)
    if size < 0 or pos + size > len(buf):
        raise _Corrupt("length out of range")
    return buf[pos:pos + size], pos + size


def _parse_container_header(buf: bytes) -> tuple[dict[str, bytes], bytes, int]:
    if buf[:4] != AVRO_MAGIC:
        if buf[:1] == b"\0" and len(buf) > 5:  # Confluent wire format: magic 0, 4-byte schema id, bare avro
            raise _Corrupt(f"not an avro container file: schema-registry framing (magic byte 0, schema id "
                           f"{int.from_bytes(buf[1:5], 'big')}), whose schema is not in the message")
        raise _Corrupt(f"not an avro container file (starts with {bytes(buf[:8])!r})")
    pos = 4
    meta: dict[str, bytes] = {}
    while True:
        count, pos = _read_long(buf, pos)
        if count == 0:
            break
        if count < 0:
            count = -count
            _, pos = _read_long(buf, pos)  # block byte size
        for _ in range(count):
            k, pos = _read_bytes(buf, pos)
            v, pos = _read_bytes(buf, pos)
            meta[k.decode("utf-8", "replace")] = v
    if pos + 16 > len(buf):
        raise _Corrupt("truncated header (no sync marker)")
    return meta, buf[pos:pos + 16], pos + 16


_KEYS: dict[int, tuple[Any, str]] = {}


def _projection_key(projection: dict | None) -> str:
    """Cache key of a projection (memoised by identity: decode_avro_bytes runs once per Kafka message)."""
    if not projection:
        return ""
    hit = _KEYS.get(id(projection))
    if hit is None or hit[0] is not projection:
        hit = (projection, json.dumps(projection, sort_keys=True))
        _KEYS[id(projection)] = hit
    return hit[1]


class _Ordinals:
    """Record numbering across all paths of one read, the shard filter, and the decoding options."""

    def __init__(self, num_shards: int, shard_index: int, stats: ReadStats, projection: dict | None = None):
        self.projection = projection or None
        self.projection_key = _projection_key(projection)
        if num_shards < 1 or not 0 <= shard_index < num_shards:
            raise ValueError(f"need num_shards >= 1 and 0 <= shard_index < num_shards, got {shard_index}/{num_shards}")
        self.n = num_shards
        self.k = shard_index
        self.next = 0
        self.stats = stats

    def take(self, count: int = 1) -> list[int]:
        """Reserve `count` ordinals; return the positions (0..count-1) that belong to this shard."""
        first = self.next
        self.next += count
        if self.n == 1:
            mine = list(range(count))
        else:
            start = (self.k - first) % self.n
            mine = list(range(start, count, self.n))
        self.stats.other_shards += count - len(mine)
        return mine


def _emit(stats: ReadStats, alert: RawAlert) -> RawAlert:
    stats.records += 1
    if alert.error is not None:
        stats.undecodable += 1
    return alert


def _name(base: str, i: int, always_index: bool, total: int = 2) -> str:
    """Source of record `i`: "<base>#<i>", or just the base for a single-record Kafka message."""
    return f"{base}#{i}" if always_index or total != 1 else base


def _decode_container(buf: bytes, base: str, ords: _Ordinals, always_index: bool = True) -> Iterator[RawAlert]:
    """Records of one avro Object Container File; undecodable parts come out as errors, never silently."""
    stats = ords.stats
    stats.files += 1
    stats.bytes_read += len(buf)
    if len(buf) == 0:
        for _ in ords.take(1):
            yield _emit(stats, RawAlert(_name(base, 0, always_index, 1), None, "empty file (0 bytes)"))
        return
    try:
        meta, sync, pos = _parse_container_header(buf)
        codec = meta.get("avro.codec", b"null").decode("utf-8", "replace") or "null"
        schema_text = meta.get("avro.schema")
        if schema_text is None:
            raise _Corrupt("no avro.schema in the header")
        try:
            schema = _SCHEMAS.get(schema_text, ords.projection, ords.projection_key)
        except Exception as e:
            raise _Corrupt(f"unusable writer schema: {type(e).__name__}: {e}") from None
    except _Corrupt as e:
        for _ in ords.take(1):
            yield _emit(stats, RawAlert(_name(base, 0, always_index, 1), None, f"corrupt avro: {e}"))
        return
    if codec not in CODECS:
        for _ in ords.take(1):
            yield _emit(stats, RawAlert(_name(base, 0, always_index, 1), None,
                                        f"corrupt avro: codec {codec!r} not read (only {', '.join(CODECS)})"))
        return

    index = 0  # record index inside this file
    n = len(buf)
    single = None  # whether the file holds one record (decides the source name when not always_index)
    while pos < n:
        block_start = pos
        try:
            count, pos = _read_long(buf, pos)
            size, pos = _read_long(buf, pos)
            if count < 0 or size < 0 or (count > 0 and size == 0) or count > max(size, 1):
                raise _Corrupt(f"implausible block header (count={count}, size={size})")
            if size > MAX_BLOCK_BYTES:
                raise _Corrupt(f"block of {size} bytes (limit {MAX_BLOCK_BYTES})")
            if count > MAX_BLOCK_RECORDS:
                raise _Corrupt(f"block of {count} records (limit {MAX_BLOCK_RECORDS})")
            if codec == "null" and count * schema.min_size > size:
                raise _Corrupt(f"block declares {count} records of at least {schema.min_size} bytes in {size} bytes")
        except _Corrupt as e:
            for _ in ords.take(1):
                yield _emit(stats, RawAlert(_name(base, index, always_index, 2 if index else 1), None,
                                            f"corrupt avro: bad block header at byte {block_start}: {e}"))
            return
        if single is None:
            single = count == 1 and pos + size + 16 >= n
        total = 1 if single else 2
        end = pos + size
        mine = ords.take(count)
        if end > n:
            reason = (f"truncated avro file: block at byte {block_start} needs {size} bytes, "
                      f"{n - pos} left")
            if codec == "null" and mine:
                yield from _decode_block(buf[pos:n], schema, count, mine, base, index, always_index, total,
                                         stats, truncated_reason=reason)
            else:
                for j in mine:
                    yield _emit(stats, RawAlert(_name(base, index + j, always_index, total), None, reason))
            return
        if mine:
            data = buf[pos:end]
            if codec != "null":
                try:
                    data = _inflate_block(codec, data)
                except (_Corrupt, zlib.error, OSError, EOFError, ValueError, lzma.LZMAError) as e:
                    for j in mine:
                        yield _emit(stats, RawAlert(_name(base, index + j, always_index, total), None,
                                                    f"corrupt avro: {codec} block at byte {block_start}: {e}"))
                    data = None
            if data is not None and count * schema.min_size > len(data):
                for j in mine:
                    yield _emit(stats, RawAlert(_name(base, index + j, always_index, total), None,
                                                f"corrupt avro: {codec} block at byte {block_start} declares {count} "
                                                f"records of at least {schema.min_size} bytes in {len(data)} bytes"))
                data = None
            if data is not None:
                yield from _decode_block(data, schema, count, mine, base, index, always_index, total, stats)
        index += count
        pos = end
        if n - pos < 16 and sync.startswith(buf[pos:n]):
            return  # file cut inside its last sync marker: every record of it was complete
        if buf[pos:pos + 16] != sync:
            # Lost framing: resynchronise on the next sync marker (what the format's markers are for).
            nxt = buf.find(sync, pos)
            for _ in ords.take(1):
                yield _emit(stats, RawAlert(_name(base, index, always_index, 2), None,
                                            f"corrupt avro: sync marker missing after byte {pos}; "
                                            + ("skipped to the next block" if nxt >= 0 else "rest of the file lost")))
            index += 1
            if nxt < 0:
                return
            pos = nxt
        pos += 16


def _decode_block(data: bytes, decode, count: int, mine: list[int], base: str, index: int, always_index: bool,
                  total: int, stats: ReadStats, truncated_reason: str | None = None) -> Iterator[RawAlert]:
    """Decode the records of one block; only those at positions `mine` are yielded (the rest belong to others)."""
    wanted = set(mine) if len(mine) != count else None
    p = 0
    n = len(data)
    for j in range(count):
        src = _name(base, index + j, always_index, total)
        try:
            rec, p = decode(data, p)
            if p > n:
                raise EOFError("record runs past the end of its block")
        except Exception as e:
            reason = truncated_reason or f"corrupt avro record: {type(e).__name__}: {e}"
            for jj in range(j, count):
                if wanted is None or jj in wanted:
                    yield _emit(stats, RawAlert(_name(base, index + jj, always_index, total), None,
                                                reason if jj == j else f"{reason} (in an earlier record of its block)"))
            return
        if wanted is None or j in wanted:
            # In a truncated block, a record that reaches the cut may have been read short: not trusted.
            if truncated_reason is not None and p >= n:
                yield _emit(stats, RawAlert(src, None, truncated_reason))
            else:
                yield _emit(stats, RawAlert(src, rec))
        if wanted is not None and j >= mine[-1]:
            return


def _inflate_block(codec: str, data: bytes, limit: int = MAX_BLOCK_BYTES) -> bytes:
    """A compressed container block -> its bytes, refusing (before allocating) more than `limit` of output."""
    if codec == "deflate":
        d = zlib.decompressobj(-15)
        out = d.decompress(data, limit + 1)
        done = d.eof
    elif codec == "bzip2":
        d = bz2.BZ2Decompressor()
        out = d.decompress(data, limit + 1)
        done = d.eof
    else:  # xz (fastavro writes lzma's default .xz container)
        d = lzma.LZMADecompressor()
        out = d.decompress(data, limit + 1)
        done = d.eof
    if len(out) > limit:
        raise _Corrupt(f"block inflates to more than {limit} bytes")
    if not done:
        raise _Corrupt("truncated compressed block")
    return out


def decode_avro_bytes(data: bytes, source: str, *, projection: dict | None = None,
                      max_records: int = MAX_MESSAGE_RECORDS) -> list[RawAlert]:
    """One avro container (a Kafka message, or a file's bytes) -> its records (at most `max_records`, then one
    error row for the rest: a message's declared record count is the sender's, not a promise).

    The source is used as is for a single-record container, "<source>#<i>" when it holds several.
    `projection=SCORING_PROJECTION` decodes only what scoring needs (faster).
    """
    ords = _Ordinals(1, 0, ReadStats(), projection)
    out = []
    for a in _decode_container(bytes(data), source, ords, always_index=False):
        if len(out) == max_records:  # a message is one alert in ZTF: far more is an attack, not a stream
            out.append(RawAlert(f"{source}#{max_records}+", None,
                                f"corrupt avro: message holds more than {max_records} records; the rest is not read"))
            break
        out.append(a)
    return out


# ------------------------------------------------------------------------------------------------- parquet
def _iter_parquet(path: Path, ords: _Ordinals, fobj=None, base: str | None = None, explicit: bool = False
                  ) -> Iterator[RawAlert]:
    import pyarrow.parquet as pq

    stats = ords.stats
    base = base or str(path)
    try:
        pf = pq.ParquetFile(fobj if fobj is not None else path)
        total = pf.metadata.num_rows
        names = set(pf.schema_arrow.names)
        columns = [c for c in ZTF_TOP_LEVEL if c in names]
        missing = {"candid", "candidate"} - names
        if missing:
            raise ValueError(f"no column(s) {sorted(missing)}: not a ZTF alert table")
    except Exception as e:
        if explicit:
            raise AlertReadError(path, f"not a readable parquet file: {type(e).__name__}: {e}") from None
        for _ in ords.take(1):
            yield _emit(stats, RawAlert(f"{base}#0", None, f"unreadable parquet file: {type(e).__name__}: {e}"))
        return
    stats.files += 1
    try:
        stats.bytes_read += os.path.getsize(path) if fobj is None else 0
    except OSError:
        pass
    row = 0
    batches = pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as e:  # the file is broken from here on: account for every row it said it had
            for j in ords.take(max(total - row, 1)):
                yield _emit(stats, RawAlert(f"{base}#{row + j}", None,
                                            f"unreadable parquet rows from {row}: {type(e).__name__}: {e}"))
            return
        mine = ords.take(batch.num_rows)
        if mine:
            try:
                recs = (batch if len(mine) == batch.num_rows else batch.take(mine)).to_pylist()
            except Exception as e:
                recs = None
                reason = f"unreadable parquet rows {row}-{row + batch.num_rows - 1}: {type(e).__name__}: {e}"
            for i, j in enumerate(mine):
                if recs is None:
                    yield _emit(stats, RawAlert(f"{base}#{row + j}", None, reason))
                else:
                    yield _emit(stats, RawAlert(f"{base}#{row + j}", project(recs[i], ords.projection)))
        row += batch.num_rows


# ----------------------------------------------------------------------------------------------------- tar
def _is_alert_member(name: str) -> bool:
    return name.lower().endswith(AVRO_SUFFIXES)


def _iter_tar(path: Path, ords: _Ordinals, explicit: bool, fobj=None) -> Iterator[RawAlert]:
    stats = ords.stats
    try:  # streaming: members are read in order, never all at once
        tf = tarfile.open(path, mode="r|*") if fobj is None else tarfile.open(fileobj=fobj, mode="r|*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        if explicit:
            raise AlertReadError(path, f"not a readable tarball: {e}") from None
        for _ in ords.take(1):
            yield _emit(stats, RawAlert(f"{path}#0", None, f"unreadable tarball: {e}"))
        return
    last = None
    k = 0
    try:
        with tf:
            for member in tf:
                if not member.isfile():
                    continue
                base = f"{path}:{member.name}"
                low = member.name.lower()
                if _is_alert_member(member.name):
                    f = tf.extractfile(member)
                    data = f.read() if f is not None else b""
                    yield from _decode_container(data, base, ords)
                elif low.endswith(PARQUET_SUFFIXES):
                    f = tf.extractfile(member)
                    yield from _iter_parquet(path, ords, fobj=io.BytesIO(f.read()), base=base)
                else:
                    stats.skip(base)
                last = member.name
                k += 1
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        if explicit and k == 0:
            raise AlertReadError(path, f"not a readable tarball: {type(e).__name__}: {e}") from None
        where = f"after member {last!r}" if last else "at the start"
        for _ in ords.take(1):
            yield _emit(stats, RawAlert(f"{path}:<member {k}>#0", None,
                                        f"tarball unreadable {where}: {type(e).__name__}: {e}; "
                                        "the rest of the archive is lost"))


# ------------------------------------------------------------------------------------------------- dispatch
def _kind(path: Path) -> str | None:
    low = path.name.lower()
    if low.endswith(AVRO_SUFFIXES):
        return "avro"
    if low.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if low.endswith(TAR_SUFFIXES):
        return "tar"
    return None


def _sniff(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(4)
    if head == AVRO_MAGIC:
        return "avro"
    if head == PARQUET_MAGIC:
        return "parquet"
    if tarfile.is_tarfile(path):
        return "tar"
    return None


def _iter_file(path: Path, kind: str, ords: _Ordinals, explicit: bool) -> Iterator[RawAlert]:
    if kind == "avro":
        try:
            data = path.read_bytes()
        except OSError as e:
            if explicit:
                raise AlertReadError(path, f"cannot read: {e.strerror or e}") from None
            for _ in ords.take(1):
                yield _emit(ords.stats, RawAlert(f"{path}#0", None, f"cannot read file: {e}"))
            return
        if explicit:  # a named file that cannot be opened as avro is an unreadable path, like a tarball or parquet
            if not data:
                raise AlertReadError(path, "not a readable avro file: empty file (0 bytes)")
            try:
                _parse_container_header(data)
            except (_Corrupt, IndexError) as e:
                raise AlertReadError(path, f"not a readable avro file: {e}") from None
        yield from _decode_container(data, str(path), ords)
    elif kind == "parquet":
        yield from _iter_parquet(path, ords, explicit=explicit)
    else:
        yield from _iter_tar(path, ords, explicit)


def _iter_dir(path: Path, ords: _Ordinals) -> Iterator[RawAlert]:
    """Depth-first in sorted name order (files and folders interleaved, like a sorted `find`)."""
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as e:
        for _ in ords.take(1):
            yield _emit(ords.stats, RawAlert(f"{path}#0", None, f"cannot read folder: {e.strerror or e}"))
        return
    for entry in entries:
        p = Path(entry.path)
        if entry.is_dir():
            yield from _iter_dir(p, ords)
            continue
        kind = _kind(p)
        if kind is None or entry.name.startswith(".") or not entry.is_file():
            ords.stats.skip(str(p))
            continue
        yield from _iter_file(p, kind, ords, explicit=False)


def _iter_path(path: Path, ords: _Ordinals) -> Iterator[RawAlert]:
    stats = ords.stats
    stats.paths += 1
    if not os.path.exists(path):
        raise AlertReadError(path, "no such file or directory")
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            raise AlertReadError(path, "permission denied")
        yield from _iter_dir(path, ords)
        return
    if not os.access(path, os.R_OK):
        raise AlertReadError(path, "permission denied")
    kind = _kind(path)
    if kind is None:
        try:
            kind = _sniff(path)
        except OSError as e:
            raise AlertReadError(path, f"cannot read: {e.strerror or e}") from None
        if kind is None:
            raise AlertReadError(path, "not an avro, parquet or tar file (by name or content)")
    yield from _iter_file(path, kind, ords, explicit=True)


def iter_file_bytes(data: bytes, name: str, *, projection: dict | None = None, stats: ReadStats | None = None
                    ) -> Iterator[RawAlert]:
    """The records of one file given as bytes (Spark's binaryFile source, an object store), named as `iter_alerts`
    names a file found in a folder ("<name>#<i>", "<name>:<member>#<i>"). The kind comes from the name, else
    from the content; nothing raises: a file that cannot be read yields one RawAlert with the reason."""
    stats = stats if stats is not None else ReadStats()
    ords = _Ordinals(1, 0, stats, projection)
    kind = _kind(Path(name))
    if kind is None:
        head = bytes(data[:4])
        kind = ("avro" if head == AVRO_MAGIC else "parquet" if head == PARQUET_MAGIC
                else "tar" if head[:2] in (b"\x1f\x8b", b"BZ", b"\xfd7") or bytes(data[257:262]) == b"ustar" else None)
    if kind == "avro":
        yield from _decode_container(bytes(data), name, ords)
    elif kind == "parquet":
        yield from _iter_parquet(name, ords, fobj=io.BytesIO(data), base=name)
    elif kind == "tar":
        yield from _iter_tar(name, ords, explicit=False, fobj=io.BytesIO(data))
    else:
        for _ in ords.take(1):
            yield _emit(stats, RawAlert(f"{name}#0", None, "not an avro, parquet or tar file (by name or content)"))


def _as_paths(paths) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def iter_alerts(paths: str | os.PathLike | Iterable[str | os.PathLike], *, num_shards: int = 1, shard_index: int = 0,
                stats: ReadStats | None = None, errors: str = "raise", projection: dict | None = None
                ) -> Iterator[RawAlert]:
    """Stream the records of avro files, folders (recursive), .tar/.tar.gz and parquet files.

    Unreadable records come out as `RawAlert(error=...)`. A path that cannot be read at all (missing, or a file
    named here that cannot be opened as its kind: junk avro/parquet/tar, an empty file) raises
    `AlertReadError`, or with `errors="collect"` is recorded in `stats.unreadable_paths` and skipped.
    `projection=SCORING_PROJECTION` yields only what scoring needs, decoded ~3x faster.
    """
    if errors not in ("raise", "collect"):
        raise ValueError(f"errors must be 'raise' or 'collect', got {errors!r}")
    stats = stats if stats is not None else ReadStats()
    ords = _Ordinals(num_shards, shard_index, stats, projection)
    for p in _as_paths(paths):
        try:
            yield from _iter_path(p, ords)
        except AlertReadError as e:
            if errors == "raise":
                raise
            stats.unreadable_paths.append((e.path, e.reason))


__all__ = ["AlertReadError", "RawAlert", "ReadStats", "SCORING_PROJECTION", "PRV_SCORING_FIELDS", "decode_avro_bytes",
           "iter_alerts", "iter_file_bytes", "project"]
