"""Avro layout of the simulated packets: the ZTF alert schema's field names and types (a subset of schema 4.02:
everything the BTSbot features, the evaluation and a human scanner use), and a deterministic container writer.

Readers written for real ZTF packets (fastavro, Kowalski-style code, `btsbot_jax.ingest.readers`) read these unchanged:
top level schemavsn/publisher/objectId/candid/candidate/prv_candidates/cutoutScience/cutoutTemplate/
cutoutDifference; cutouts are {fileName, stampData = gzip-compressed FITS, big-endian float32}.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct

import fastavro
import numpy as np

SCHEMA_VERSION = "4.02"
PUBLISHER = "btsbot-jax simulated ZTF survey"

_N = "null"
# (name, avro type, nullable) of `candidate`, in ZTF order
CANDIDATE_FIELDS = [
    ("jd", "double", False), ("fid", "int", False), ("pid", "long", False), ("diffmaglim", "float", True),
    ("pdiffimfilename", "string", True), ("programpi", "string", True), ("programid", "int", False),
    ("candid", "long", False), ("isdiffpos", "string", False), ("tblid", "long", True), ("nid", "int", True),
    ("rcid", "int", True), ("field", "int", True), ("xpos", "float", True), ("ypos", "float", True),
    ("ra", "double", False), ("dec", "double", False), ("magpsf", "float", False), ("sigmapsf", "float", False),
    ("chipsf", "float", True), ("magap", "float", True), ("sigmagap", "float", True), ("distnr", "float", True),
    ("magnr", "float", True), ("sigmagnr", "float", True), ("chinr", "float", True), ("sharpnr", "float", True),
    ("sky", "float", True), ("magdiff", "float", True), ("fwhm", "float", True), ("classtar", "float", True),
    ("mindtoedge", "float", True), ("magfromlim", "float", True), ("seeratio", "float", True),
    ("aimage", "float", True), ("bimage", "float", True), ("aimagerat", "float", True), ("bimagerat", "float", True),
    ("elong", "float", True), ("nneg", "int", True), ("nbad", "int", True), ("rb", "float", True),
    ("ssdistnr", "float", True), ("ssmagnr", "float", True), ("ssnamenr", "string", True), ("sumrat", "float", True),
    ("magapbig", "float", True), ("sigmagapbig", "float", True), ("ranr", "double", False),
    ("decnr", "double", False), ("sgmag1", "float", True), ("srmag1", "float", True), ("simag1", "float", True),
    ("szmag1", "float", True), ("sgscore1", "float", True), ("distpsnr1", "float", True),
    ("ndethist", "int", False), ("ncovhist", "int", False), ("jdstarthist", "double", True),
    ("jdendhist", "double", True), ("scorr", "double", True), ("tooflag", "int", True),
    ("objectidps1", "long", True), ("objectidps2", "long", True), ("sgmag2", "float", True),
    ("srmag2", "float", True), ("simag2", "float", True), ("szmag2", "float", True), ("sgscore2", "float", True),
    ("distpsnr2", "float", True), ("objectidps3", "long", True), ("sgmag3", "float", True),
    ("srmag3", "float", True), ("simag3", "float", True), ("szmag3", "float", True), ("sgscore3", "float", True),
    ("distpsnr3", "float", True), ("nmtchps", "int", False), ("rfid", "long", False),
    ("jdstartref", "double", False), ("jdendref", "double", False), ("nframesref", "int", False),
    ("rbversion", "string", False), ("dsnrms", "float", True), ("ssnrms", "float", True), ("dsdiff", "float", True),
    ("magzpsci", "float", True), ("magzpsciunc", "float", True), ("magzpscirms", "float", True),
    ("nmatches", "int", False), ("clrcoeff", "float", True), ("clrcounc", "float", True),
    ("zpclrcov", "float", True), ("zpmed", "float", True), ("clrmed", "float", True), ("clrrms", "float", True),
    ("neargaia", "float", True), ("neargaiabright", "float", True), ("maggaia", "float", True),
    ("maggaiabright", "float", True), ("exptime", "float", True), ("drb", "float", True),
    ("drbversion", "string", False),
]
# prv_candidates: detections carry the measurement fields; upper limits only the exposure's fields
PRV_FIELDS = [
    ("jd", "double", False), ("fid", "int", False), ("pid", "long", False), ("diffmaglim", "float", True),
    ("pdiffimfilename", "string", True), ("programpi", "string", True), ("programid", "int", False),
    ("candid", "long", True), ("isdiffpos", "string", True), ("tblid", "long", True), ("nid", "int", True),
    ("rcid", "int", True), ("field", "int", True), ("xpos", "float", True), ("ypos", "float", True),
    ("ra", "double", True), ("dec", "double", True), ("magpsf", "float", True), ("sigmapsf", "float", True),
    ("chipsf", "float", True), ("magap", "float", True), ("sigmagap", "float", True), ("distnr", "float", True),
    ("magnr", "float", True), ("sigmagnr", "float", True), ("chinr", "float", True), ("sharpnr", "float", True),
    ("sky", "float", True), ("magdiff", "float", True), ("fwhm", "float", True), ("classtar", "float", True),
    ("mindtoedge", "float", True), ("magfromlim", "float", True), ("seeratio", "float", True),
    ("aimage", "float", True), ("bimage", "float", True), ("aimagerat", "float", True), ("bimagerat", "float", True),
    ("elong", "float", True), ("nneg", "int", True), ("nbad", "int", True), ("rb", "float", True),
    ("ssdistnr", "float", True), ("ssmagnr", "float", True), ("ssnamenr", "string", True), ("sumrat", "float", True),
    ("magapbig", "float", True), ("sigmagapbig", "float", True), ("ranr", "double", True), ("decnr", "double", True),
    ("scorr", "double", True), ("magzpsci", "float", True), ("magzpsciunc", "float", True),
    ("magzpscirms", "float", True), ("clrcoeff", "float", True), ("clrcounc", "float", True),
    ("rbversion", "string", False),
]
CANDIDATE_NAMES = [f[0] for f in CANDIDATE_FIELDS]
PRV_NAMES = [f[0] for f in PRV_FIELDS]


def _fields(spec):
    out = []
    for name, typ, nullable in spec:
        if nullable:
            out.append({"name": name, "type": [_N, typ], "default": None})
        else:
            out.append({"name": name, "type": typ})
    return out


def alert_schema() -> dict:
    cutout = {"type": "record", "name": "ztf.alert.cutout",
              "fields": [{"name": "fileName", "type": "string"},
                         {"name": "stampData", "type": "bytes", "doc": "fits.gz"}]}
    return {
        "type": "record", "name": "ztf.alert", "version": SCHEMA_VERSION,
        "doc": "simulated ZTF alert (btsbot-jax); field names and types of the ZTF avro alert schema",
        "fields": [
            {"name": "schemavsn", "type": "string"},
            {"name": "publisher", "type": "string"},
            {"name": "objectId", "type": "string"},
            {"name": "candid", "type": "long"},
            {"name": "candidate", "type": {"type": "record", "name": "ztf.alert.candidate",
                                           "fields": _fields(CANDIDATE_FIELDS)}},
            {"name": "prv_candidates", "type": [_N, {"type": "array", "items": {
                "type": "record", "name": "ztf.alert.prv_candidate", "fields": _fields(PRV_FIELDS)}}],
             "default": None},
            {"name": "cutoutScience", "type": [_N, cutout], "default": None},
            {"name": "cutoutTemplate", "type": [_N, "ztf.alert.cutout"], "default": None},
            {"name": "cutoutDifference", "type": [_N, "ztf.alert.cutout"], "default": None},
        ],
    }


_PARSED = None
_F32 = struct.Struct("<f")


def parsed_schema():
    global _PARSED
    if _PARSED is None:
        _PARSED = fastavro.parse_schema(alert_schema())
    return _PARSED


def sync_marker(*key) -> bytes:
    """16-byte avro sync marker derived from the run seed and the file's name: same inputs -> same bytes."""
    return hashlib.blake2b(repr(key).encode(), digest_size=16).digest()


def _long(n: int) -> bytes:
    """Avro zig-zag varint."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return _long(len(b)) + b


_D = struct.Struct("<d").pack
_FP = struct.Struct("<f").pack


def _encode_flat(spec, rec: dict) -> bytes:
    """Avro binary of a flat record of primitive (optionally nullable) fields: ~2x faster than fastavro's
    schemaless_writer on these 60-100 field records, byte-identical (checked in tests/test_simulate.py)."""
    out = []
    ap = out.append
    for name, typ, nullable in spec:
        v = rec.get(name)
        if nullable:
            if v is None:
                ap(b"\x00")
                continue
            ap(b"\x02")
        if typ == "float":
            ap(_FP(v))
        elif typ == "double":
            ap(_D(v))
        elif typ == "int" or typ == "long":
            ap(_long(v))
        else:
            ap(_str(v))
    return b"".join(out)


class AlertEncoder:
    """Avro binary encoding of alert records, with the prv_candidates items encoded once per exposure.

    Consecutive alerts of a source share most of their 30-day history, so `encode_prv` results are meant to be
    cached by the caller and spliced (avro arrays are a count followed by the concatenated items); the candidate
    record goes through fastavro's schemaless writer, the top level (strings, long, unions) is written here.
    tests/test_simulate.py checks that fastavro.reader gives back exactly the records."""

    def __init__(self):
        schema = alert_schema()
        fields = {f["name"]: f for f in schema["fields"]}
        self._cand = fastavro.parse_schema(fields["candidate"]["type"])
        self._prv = fastavro.parse_schema(fields["prv_candidates"]["type"][1]["items"])
        self._cand_fields = [(n, t == "float") for n, t, _ in CANDIDATE_FIELDS]
        self._prv_fields = [(n, t == "float") for n, t, _ in PRV_FIELDS]

    @staticmethod
    def _view(rec: dict, fields) -> dict:
        """The record as an avro reader returns it: every schema field present (missing -> null), `float` fields
        rounded to float32 (read back as Python floats). Equivalent to decoding the encoded bytes, and ~10x
        cheaper; tests/test_simulate.py checks the equality against fastavro.reader."""
        out = {name: rec.get(name) for name, _ in fields}
        names = [name for name, is_float in fields if is_float and out[name] is not None]
        if names:
            vals = np.array([out[n] for n in names], np.float32).astype(np.float64).tolist()
            out.update(zip(names, vals))
        return out

    def _encode(self, schema, rec: dict) -> bytes:
        if schema is self._cand:
            return _encode_flat(CANDIDATE_FIELDS, rec)
        if schema is self._prv:
            return _encode_flat(PRV_FIELDS, rec)
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, rec)
        return buf.getvalue()

    def encode_prv(self, entry: dict) -> bytes:
        return self._encode(self._prv, entry)

    def _decode(self, schema, data: bytes) -> dict:
        return fastavro.schemaless_reader(io.BytesIO(data), schema, None)

    def encode_source(self, records: list[dict]) -> tuple[list[bytes], list[dict]]:
        """Encode alerts; also return each record as a reader of the bytes sees it (floats rounded to float32
        etc.), built from the encoded pieces, so features computed on them are exactly those of the written
        packets without decoding every alert's whole history again. Cutouts in that view carry the uncompressed
        FITS (`rec["_fits"]`, when the generator provides it), i.e. gunzip(stampData)."""
        prv_cache: dict[int, tuple[bytes, dict]] = {}
        encoded, decoded = [], []
        for rec in records:
            items = dec_items = None
            if rec.get("prv_candidates"):
                items, dec_items = [], []
                for e in rec["prv_candidates"]:
                    hit = prv_cache.get(id(e))
                    if hit is None:
                        b = self.encode_prv(e)
                        hit = prv_cache[id(e)] = (b, self._view(e, self._prv_fields))
                    items.append(hit[0])
                    dec_items.append(hit[1])
            cand_bytes = self._encode(self._cand, rec["candidate"])
            encoded.append(self.encode(rec, items, cand_bytes))
            d = {k: rec[k] for k in ("schemavsn", "publisher", "objectId", "candid")}
            d["candidate"] = self._view(rec["candidate"], self._cand_fields)
            d["prv_candidates"] = dec_items
            raw = rec.get("_fits") or {}
            for key in ("cutoutScience", "cutoutTemplate", "cutoutDifference"):
                c = rec.get(key)
                if c is not None and key in raw:
                    # the stamp as gunzip gives it back: the ingestion reader takes FITS bytes unchanged, so
                    # features need not inflate what was just deflated
                    c = {"fileName": c["fileName"], "stampData": raw[key]}
                d[key] = c
            decoded.append(d)
        return encoded, decoded

    def encode(self, rec: dict, prv_items: list[bytes] | None, cand_bytes: bytes | None = None) -> bytes:
        if cand_bytes is None:
            cand_bytes = self._encode(self._cand, rec["candidate"])
        parts = [_str(rec["schemavsn"]), _str(rec["publisher"]), _str(rec["objectId"]), _long(rec["candid"]),
                 cand_bytes]
        if prv_items is None:
            parts.append(b"\x00")
        else:
            parts.append(b"\x02" + _long(len(prv_items)) + b"".join(prv_items) + b"\x00")
        for key in ("cutoutScience", "cutoutTemplate", "cutoutDifference"):
            c = rec.get(key)
            if c is None:
                parts.append(b"\x00")
            else:
                parts.append(b"\x02" + _str(c["fileName"]) + _str(c["stampData"]))
        return b"".join(parts)


def container_parts(encoded: list[bytes], marker: bytes, block_records: int = 256) -> list[bytes]:
    """The pieces of an avro Object Container File (null codec) holding records encoded by `AlertEncoder`, to be
    written in order (file.writelines) without joining ~50 kB per alert into one buffer first."""
    meta = {"avro.schema": json.dumps(alert_schema(), separators=(",", ":")), "avro.codec": "null"}
    head = [b"Obj\x01", _long(len(meta))]
    for k, v in meta.items():
        head += [_str(k), _str(v)]
    head += [b"\x00", marker]
    out = [b"".join(head)]
    for i in range(0, len(encoded), block_records):
        block = encoded[i:i + block_records]
        out += [_long(len(block)), _long(sum(len(b) for b in block))]
        out += block
        out.append(marker)
    return out


def container_bytes(encoded: list[bytes], marker: bytes, block_records: int = 256) -> bytes:
    """An avro Object Container File (null codec) from records already encoded by `AlertEncoder`."""
    return b"".join(container_parts(encoded, marker, block_records))


def write_container(path_or_buffer, records: list[dict], marker: bytes) -> None:
    """One avro Object Container File (null codec, as ZTF's) holding `records`, written by fastavro (reference
    path, used in tests; the generator uses `AlertEncoder` + `container_bytes`)."""
    if isinstance(path_or_buffer, io.IOBase):
        fastavro.writer(path_or_buffer, parsed_schema(), records, codec="null", sync_marker=marker,
                        sync_interval=1 << 20)
        return
    with open(path_or_buffer, "wb") as fo:
        fastavro.writer(fo, parsed_schema(), records, codec="null", sync_marker=marker, sync_interval=1 << 20)
