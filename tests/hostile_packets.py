"""Test helper: hostile avro messages an attacker who can write to a topic (or hand over a file) could send, the
packets they are made from (real ones from ../shared/data, else simulated by btsbot_jax.sim), seeded mutations,
and a meter for the time and memory one case costs. Used by tests/test_fuzz.py and tests/test_stream_hostile.py.
"""

from __future__ import annotations

import functools
import glob
import io
import json
import resource
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable

import fastavro
import numpy as np
from conftest import ZTF_ALERTS, ZTF_ALERTS_FINK

BOMB_INFLATED = 400 << 20  # the gzip bomb's science stamp: 400 MB of zeros


def zigzag(n: int) -> bytes:
    """Avro long (zig-zag varint)."""
    n = (n << 1) ^ (n >> 63) if n >= -(1 << 63) and n < (1 << 63) else (n << 1)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _str(b: bytes | str) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return zigzag(len(b)) + b


def container(schema: dict | str, body: bytes, count: int = 1, codec: str | bytes = "null", sync: bytes = b"S" * 16,
              size: int | None = None) -> bytes:
    """An avro Object Container File written by hand: one block of `count` records whose bytes are `body`
    (`size` overrides the declared block size)."""
    text = schema if isinstance(schema, str) else json.dumps(schema)
    head = b"Obj\x01" + zigzag(2) + _str("avro.schema") + _str(text) + _str("avro.codec") + _str(codec) + b"\x00"
    return head + sync + zigzag(count) + zigzag(len(body) if size is None else size) + body + sync


# ------------------------------------------------------------------------------------------ base packets
def real_packet_files() -> list[str]:
    files = sorted(glob.glob(str(ZTF_ALERTS / "*" / "*.avro")))
    files += sorted(glob.glob(str(ZTF_ALERTS_FINK / "fink-broker" / "**" / "*.avro"), recursive=True))
    return files


@functools.lru_cache(maxsize=1)
def simulated_packets(n: int = 6, seed: int = 3) -> tuple[bytes, ...]:
    """One-record avro containers of simulated alerts (btsbot_jax.sim: the survey's own encoder and schema)."""
    from btsbot_jax.sim.generate import simulate_source
    from btsbot_jax.sim.packets import AlertEncoder, container_bytes, sync_marker
    from btsbot_jax.sim.population import draw_source
    from btsbot_jax.sim.survey import make_nights

    nights = make_nights(seed)
    out: list[bytes] = []
    i = 0
    while len(out) < n and i < 50:
        recs, _ = simulate_source(draw_source(i, ("trues", "vars", "dims", "rejects")[i % 4], seed), nights, seed)
        i += 1
        if not recs:
            continue
        encoded, _ = AlertEncoder().encode_source(recs[:2])
        out += [container_bytes([e], sync_marker("hostile", seed, i, k)) for k, e in enumerate(encoded)]
    return tuple(out[:n])


def base_packet() -> bytes:
    """A real packet if ../shared/data is here, else a simulated one."""
    files = real_packet_files()
    if files:
        with open(files[0], "rb") as f:
            return f.read()
    return simulated_packets()[0]


# --------------------------------------------------------------------------------------------- hostile
@functools.lru_cache(maxsize=1)
def _bomb_stamp() -> bytes:
    """gzip of BOMB_INFLATED zero bytes (~400 kB), made by streaming 1 MiB chunks."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    parts = [c.compress(zeros) for _ in range(BOMB_INFLATED >> 20)]
    parts.append(c.flush())
    return b"".join(parts)


def gzip_bomb(packet: bytes | None = None) -> bytes:
    """The packet with its science stamp replaced by a gzip bomb (400 MB of zeros in ~400 kB)."""
    packet = packet or base_packet()
    reader = fastavro.reader(io.BytesIO(packet))
    schema = reader.writer_schema
    rec = next(reader)
    rec["cutoutScience"]["stampData"] = _bomb_stamp()
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(schema), [rec])
    return buf.getvalue()


def _fits_header(cards: dict) -> bytes:
    text = "".join(f"{k:<8}= {v:>20}".ljust(80) for k, v in cards.items()) + "END".ljust(80)
    return text.encode().ljust(2880, b" ")


def huge_fits_stamp(packet: bytes | None = None) -> bytes:
    """The packet with a science stamp whose FITS header declares a 100000 x 100000 float64 image (80 GB)."""
    packet = packet or base_packet()
    reader = fastavro.reader(io.BytesIO(packet))
    schema = reader.writer_schema
    rec = next(reader)
    raw = _fits_header({"SIMPLE": "T", "BITPIX": -64, "NAXIS": 2, "NAXIS1": 100000, "NAXIS2": 100000,
                        "BSCALE": 1})  # BSCALE: not the fast path, so astropy would be asked
    rec["cutoutScience"]["stampData"] = _gzip(raw)
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(schema), [rec])
    return buf.getvalue()


def _gzip(raw: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(raw) + c.flush()


def null_array_bomb() -> bytes:
    """Schema: an array of nulls; one block declaring 2^40 items (the issue's second case)."""
    return container({"type": "array", "items": "null"}, zigzag(1 << 40) + zigzag(0))


def null_array_many_blocks() -> bytes:
    """An array of nulls in many blocks, each declaring as many items as bytes remain (quadratic if each block is
    only checked on its own)."""
    body = b"".join(zigzag(1 << 20) for _ in range(4000)) + zigzag(0)
    return container({"type": "array", "items": "null"}, body)


def empty_record_map_bomb() -> bytes:
    """A map of empty records declaring 2^50 entries."""
    schema = {"type": "map", "values": {"type": "record", "name": "E", "fields": []}}
    return container(schema, zigzag(1 << 50) + b"\x02k" + zigzag(0))


def negative_skip_block() -> bytes:
    """A skipped array block (negative count) whose byte size is negative: would walk backwards forever.
    (The field is `fp_hists`, which the scoring projection skips without decoding.)"""
    longs = {"type": "array", "items": "long"}
    schema = {"type": "record", "name": "r", "fields": [{"name": "fp_hists", "type": longs},
                                                         {"name": "x", "type": "long"}]}
    return container(schema, zigzag(-3) + zigzag(-4) + b"\x02\x04\x06" + zigzag(0) + b"\x02")


def oversized_string() -> bytes:
    """A record whose string declares 2^50 bytes (and a bytes field declaring 1 GB)."""
    schema = {"type": "record", "name": "r", "fields": [{"name": "s", "type": "string"},
                                                         {"name": "b", "type": "bytes"}]}
    return container(schema, zigzag(1 << 50) + b"abc" + zigzag(1 << 30) + b"xyz")


def deep_schema(depth: int = 200) -> bytes:
    """A schema of `depth` nested arrays (and a matching body)."""
    text = '{"type": "array", "items": ' * depth + '"long"' + "}" * depth
    return container(text, zigzag(1) * depth + zigzag(0) * depth)


def recursive_schema(depth: int = 100_000) -> bytes:
    """A linked list (recursive record) nested `depth` deep in the data."""
    schema = {"type": "record", "name": "L", "fields": [{"name": "next", "type": ["null", "L"]}]}
    return container(schema, b"\x02" * depth + b"\x00")


def exponential_schema(levels: int = 30) -> bytes:
    """Each named record holds two fields of the previous one: 2^levels types once expanded."""
    def t(k: int) -> dict:
        if k == 0:
            return {"type": "record", "name": "T0", "fields": [{"name": "x", "type": "long"}]}
        return {"type": "record", "name": f"T{k}", "fields": [{"name": "a", "type": t(k - 1)},
                                                              {"name": "b", "type": f"T{k - 1}"}]}
    return container(t(levels), b"\x02" * 64)


def deflate_block_bomb(inflated: int = 64 << 20) -> bytes:
    """A deflate-coded container whose one block inflates to `inflated` zero bytes."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 20)
    body = b"".join(c.compress(zeros) for _ in range(inflated >> 20)) + c.flush()
    return container({"type": "bytes"}, body, codec="deflate")


def huge_block_size() -> bytes:
    """A block header declaring a 2^60-byte block."""
    return container({"type": "long"}, b"\x02", size=1 << 60)


def lsst_framed(packet: bytes | None = None) -> bytes:
    """Confluent wire format (what LSST's brokers send): magic byte 0, a 4-byte schema id, then bare avro."""
    packet = packet or base_packet()
    reader = fastavro.reader(io.BytesIO(packet))
    rec = next(reader)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(reader.writer_schema), rec)
    return b"\x00" + struct.pack(">I", 701) + buf.getvalue()


def not_avro() -> bytes:
    return b'{"objectId": "ZTF24aaaaaaa", "candid": 1}'


HOSTILE: dict[str, Callable[[], bytes]] = {
    "gzip_bomb_stamp": gzip_bomb,
    "huge_fits_header": huge_fits_stamp,
    "null_array_2^40_items": null_array_bomb,
    "null_array_many_blocks": null_array_many_blocks,
    "empty_record_map_2^50": empty_record_map_bomb,
    "negative_skip_block_size": negative_skip_block,
    "oversized_string_2^50": oversized_string,
    "deep_schema_200": deep_schema,
    "deep_schema_5000": functools.partial(deep_schema, 5000),
    "recursive_schema_100k_deep": recursive_schema,
    "exponential_schema_2^30": exponential_schema,
    "deflate_block_bomb_64MiB": deflate_block_bomb,
    "block_size_2^60": huge_block_size,
    "lsst_confluent_framed": lsst_framed,
    "not_avro": not_avro,
}


# ----------------------------------------------------------------------------------------------- mutants
def mutate(data: bytes, rng: np.random.Generator, donors: list[bytes]) -> tuple[str, bytes]:
    """One seeded mutation of a packet: (kind, mutated bytes)."""
    b = bytearray(data)
    n = len(b)
    kinds = ("bitflip", "byterun", "truncate", "splice", "duplicate", "varint", "header_bitflip", "record_bitflip")
    kind = kinds[rng.integers(len(kinds))]
    if kind == "record_bitflip":  # the record's first bytes: ids, candidate fields, light curve (not the stamps)
        start = _record_start(data)
        for _ in range(int(rng.integers(1, 4))):
            i = min(n - 1, start + int(rng.integers(3000)))
            b[i] ^= 1 << int(rng.integers(8))
    elif kind == "bitflip":
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(n))
            b[i] ^= 1 << int(rng.integers(8))
    elif kind == "header_bitflip":  # the container header, the block header and the first record's fields
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(min(n, 40_000)))
            b[i] ^= 1 << int(rng.integers(8))
    elif kind == "byterun":
        i = int(rng.integers(n))
        k = int(rng.integers(1, 512))
        b[i:i + k] = bytes([int(rng.choice([0, 0xFF, 0x80, 0x7F, int(rng.integers(256))]))]) * k
    elif kind == "truncate":
        b = b[:int(rng.integers(n))]
    elif kind == "splice":
        other = donors[int(rng.integers(len(donors)))]
        i, j = int(rng.integers(n)), int(rng.integers(len(other)))
        b = b[:i] + bytearray(other[j:j + int(rng.integers(1, 60_000))]) + b[i + int(rng.integers(0, 2000)):]
    elif kind == "duplicate":
        i = int(rng.integers(n))
        k = int(rng.integers(1, 20_000))
        b = b[:i + k] + b[i:i + k] + b[i + k:]
    else:  # varint: overwrite a byte with a continuation byte, or write a huge/negative varint in place
        i = int(rng.integers(n))
        v = int(rng.choice([1 << 40, -(1 << 40), (1 << 62), -1, 1 << 20, 0x7FFFFFFF]))
        b[i:i + 1] = zigzag(v)
    return kind, bytes(b)


def _record_start(data: bytes) -> int:
    from btsbot_jax.ingest.readers import _parse_container_header, _read_long

    try:
        _, _, pos = _parse_container_header(data)
        _, pos = _read_long(data, pos)
        _, pos = _read_long(data, pos)
        return pos
    except Exception:  # noqa: BLE001 - not a container: anywhere
        return 0


# --------------------------------------------------------------------------------------------------- meter
def measure(fn: Callable[[], object]) -> tuple[object, float, float]:
    """(result, wall seconds, peak Python-heap MB allocated during the call, by tracemalloc)."""
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, dt, peak / 2**20


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
