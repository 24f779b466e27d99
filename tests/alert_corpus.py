"""Test helper: ZTF-like alert packets and a corpus of bad inputs, generated at test time (never committed).

`synthetic_packet()` builds a small but realistic packet (ZTF field names and avro types, real gzip+FITS stamps
written by astropy) so the ingestion tests run where ../shared/data is absent; `real_packet()` takes a real one.
`build_corpus(dir, schema, packet)` writes one file per failure mode the scorer must survive, each with the
kind of rejection and the alert identity the report must carry.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import io
import warnings
from pathlib import Path

import fastavro
import numpy as np

_NF = ["null", "float"]
_ND = ["null", "double"]
_NI = ["null", "int"]
_NS = ["null", "string"]
# candidate fields: (name, avro type). Enough for the 25 features plus the usual identity fields.
CANDIDATE_FIELDS = [
    ("jd", "double"), ("fid", "int"), ("pid", "long"), ("diffmaglim", _NF), ("programid", "int"), ("candid", "long"),
    ("isdiffpos", "string"), ("ra", "double"), ("dec", "double"), ("magpsf", "float"), ("sigmapsf", "float"),
    ("chipsf", _NF), ("chinr", _NF), ("sharpnr", _NF), ("sky", _NF), ("fwhm", _NF), ("rb", _NF),
    ("sgscore1", _NF), ("distpsnr1", _NF), ("ndethist", "int"), ("ncovhist", "int"), ("jdstarthist", _ND),
    ("scorr", _ND), ("sgscore2", _NF), ("distpsnr2", _NF), ("nmtchps", "int"), ("drb", _NF), ("drbversion", _NS),
]
PRV_FIELDS = [
    ("jd", "double"), ("fid", "int"), ("pid", "long"), ("diffmaglim", _NF), ("programid", "int"),
    ("candid", ["null", "long"]), ("isdiffpos", _NS), ("magpsf", _NF), ("sigmapsf", _NF), ("ra", _ND),
    ("dec", _ND), ("rb", _NF), ("scorr", _ND),
]


def _record(name, fields):
    return {"type": "record", "name": name, "fields": [{"name": n, "type": t} for n, t in fields]}


def synthetic_schema() -> dict:
    """A ZTF-alert-like avro schema (namespace ztf.alert, same top-level layout as the real packets)."""
    cutout = {"type": "record", "name": "cutout", "fields": [
        {"name": "fileName", "type": "string"}, {"name": "stampData", "type": "bytes"}]}
    return {
        "type": "record", "name": "alert", "namespace": "ztf", "fields": [
            {"name": "schemavsn", "type": "string"},
            {"name": "publisher", "type": "string"},
            {"name": "objectId", "type": "string"},
            {"name": "candid", "type": "long"},
            {"name": "candidate", "type": _record("candidate", CANDIDATE_FIELDS)},
            {"name": "prv_candidates", "type": ["null", {"type": "array", "items": _record("prv_candidate",
                                                                                         PRV_FIELDS)}]},
            {"name": "cutoutScience", "type": ["null", cutout]},
            {"name": "cutoutTemplate", "type": ["null", "cutout"]},
            {"name": "cutoutDifference", "type": ["null", "cutout"]},
        ]}


def fits_bytes(image: np.ndarray, **header) -> bytes:
    """FITS file of `image` (astropy writes it: big-endian, BITPIX from the dtype)."""
    from astropy.io import fits

    hdu = fits.PrimaryHDU(np.asarray(image))
    for k, v in header.items():
        hdu.header[k] = v
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. astropy noting that BLANK does not apply to float data
        hdu.writeto(buf)
    return buf.getvalue()


def stamp_bytes(image: np.ndarray, **header) -> bytes:
    """A cutout's stampData: gzip-compressed FITS, float32 like ZTF."""
    return gzip.compress(fits_bytes(np.asarray(image, np.float32), **header), mtime=0)


def blob(rng: np.random.Generator, amp: float = 50.0, shape=(63, 63)) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    cy, cx = shape[0] / 2 + rng.normal(), shape[1] / 2 + rng.normal()
    img = amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0) + rng.normal(0, 2.0, shape)
    return img.astype(np.float32)


def synthetic_packet(candid: int = 2000000000015015000, objectId: str = "ZTF24aaaaaaa", seed: int = 0,  # noqa: N803
                     n_prv: int = 6, shape=(63, 63)) -> dict:
    """A valid packet: candidate, prv_candidates with detections and upper limits, three stamps."""
    rng = np.random.default_rng(seed)
    jd = 2460300.5 + float(rng.uniform(0, 1))
    cand = {
        "jd": jd, "fid": 1, "pid": candid // 10000, "diffmaglim": 20.5, "programid": 1, "candid": candid,
        "isdiffpos": "t", "ra": 150.0 + rng.uniform(), "dec": 2.0 + rng.uniform(), "magpsf": 18.0 + rng.uniform(),
        "sigmapsf": 0.05, "chipsf": 1.2, "chinr": 0.8, "sharpnr": 0.01, "sky": -0.3, "fwhm": 2.1, "rb": 0.9,
        "sgscore1": 0.05, "distpsnr1": 1.5, "ndethist": 4, "ncovhist": 30, "jdstarthist": jd - 9.0,
        "scorr": 12.5, "sgscore2": -999.0, "distpsnr2": -999.0, "nmtchps": 3, "drb": 0.97, "drbversion": "d6_m7",
    }
    prv = []
    for i in range(n_prv):
        det = i % 2 == 0
        prv.append({
            "jd": jd - 8.0 + i, "fid": 1 + i % 2, "pid": 1000 + i, "diffmaglim": 20.0, "programid": 1,
            "candid": candid - 100 - i if det else None, "isdiffpos": "t" if det else None,
            "magpsf": float(np.float32(18.5 - 0.1 * i)) if det else None, "sigmapsf": 0.1 if det else None,
            "ra": cand["ra"] if det else None, "dec": cand["dec"] if det else None, "rb": 0.8 if det else None,
            "scorr": 8.0 if det else None,
        })
    sci = blob(rng, 80.0, shape)
    ref = blob(rng, 60.0, shape)
    diff = sci - ref
    return {
        "schemavsn": "4.02", "publisher": "btsbot-jax tests", "objectId": objectId, "candid": candid,
        "candidate": cand, "prv_candidates": prv,
        "cutoutScience": {"fileName": "sci.fits.gz", "stampData": stamp_bytes(sci)},
        "cutoutTemplate": {"fileName": "ref.fits.gz", "stampData": stamp_bytes(ref)},
        "cutoutDifference": {"fileName": "diff.fits.gz", "stampData": stamp_bytes(diff)},
    }


def real_packet(path: Path) -> tuple[dict, dict]:
    """(writer schema, record) of the first alert in a real avro file."""
    with open(path, "rb") as f:
        r = fastavro.reader(f)
        return r.writer_schema, next(r)


def derive_schema(schema: dict, nullable=(), drop=()) -> dict:
    """Copy of an alert schema with some candidate fields made nullable or removed (to write bad packets)."""
    s = copy.deepcopy(schema)
    s = _strip(s)
    for f in s["fields"]:
        if f["name"] == "candidate":
            rec = f["type"]
            rec["fields"] = [c for c in rec["fields"] if c["name"] not in drop]
            for c in rec["fields"]:
                if c["name"] in nullable and not (isinstance(c["type"], list) and "null" in c["type"]):
                    c["type"] = ["null", c["type"]]
                    c.pop("default", None)
    return s


def _strip(s):
    """Drop fastavro's parse markers so a schema can be edited and re-parsed."""
    if isinstance(s, dict):
        return {k: _strip(v) for k, v in s.items() if not k.startswith("__")}
    if isinstance(s, list):
        return [_strip(v) for v in s]
    return s


def avro_bytes(schema: dict, records: list[dict], codec: str = "null", **writer_kwargs) -> bytes:
    """An avro container of `records` (fastavro.writer; e.g. sync_interval=10**8 for a single block)."""
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(_strip(schema)), records, codec=codec, **writer_kwargs)
    return buf.getvalue()


def record_offset(data: bytes) -> int:
    """Byte offset of the first record inside a one-block container (after the block's count and size)."""
    from btsbot_jax.ingest.readers import _parse_container_header, _read_long

    _, _, pos = _parse_container_header(data)
    _, pos = _read_long(data, pos)
    _, pos = _read_long(data, pos)
    return pos


@dataclasses.dataclass
class Case:
    file: str
    kind: str            # expected Rejected.kind
    candid: int | None   # expected in the rejected row (None: undecodable, identified by file + record index)
    reason_has: str      # a fragment the reason must contain


def build_corpus(root: Path, schema: dict, packet: dict) -> dict:
    """Write the corpus under `root`; return what a scorer must report for it.

    Returns {"cases": [Case...], "good": [candids that must be scored], "duplicates": n, "records": n,
    "skipped_files": n}.
    """
    root.mkdir(parents=True, exist_ok=True)
    schema = _strip(schema)
    base = int(packet["candid"])
    n = [0]

    def pk(**cand_changes) -> dict:
        n[0] += 1
        p = copy.deepcopy(packet)
        p["candid"] = base + n[0]
        p["objectId"] = f"ZTF99corp{n[0]:03d}"
        p["candidate"]["candid"] = p["candid"]
        p["candidate"].update(cand_changes)
        return p

    def write(name: str, data: bytes) -> None:
        (root / name).write_bytes(data)

    cases: list[Case] = []
    good = []
    rng = np.random.default_rng(1)

    # good: a two-record container, a deflate one, and a 63x47 edge-of-CCD alert with NaN pixels
    g1, g2 = pk(), pk()
    write("good_pair.avro", avro_bytes(schema, [g1, g2]))
    g3 = pk()
    write("good_deflate.avro", avro_bytes(schema, [g3], codec="deflate"))
    g4 = pk()
    img = blob(rng, 70.0, (63, 47))
    img[:5, :] = np.nan
    for c in ("cutoutScience", "cutoutTemplate", "cutoutDifference"):
        g4[c] = {"fileName": f"{c}.fits.gz", "stampData": stamp_bytes(img)}
    write("good_edge.avro", avro_bytes(schema, [g4]))
    good += [g1["candid"], g2["candid"], g3["candid"], g4["candid"]]
    write("z_duplicate.avro", avro_bytes(schema, [g1]))  # sorted after good_pair: the repeat

    one = avro_bytes(schema, [pk()])
    write("truncated.avro", one[: len(one) // 2])
    cases.append(Case("truncated.avro", "truncated avro", None, "truncated"))

    bad = bytearray(avro_bytes(schema, [pk()]))
    off = record_offset(bytes(bad))
    bad[off:off + 12] = b"\xff" * 12
    write("corrupt_record.avro", bytes(bad))
    cases.append(Case("corrupt_record.avro", "corrupt avro", None, "corrupt avro record"))

    write("corrupt_header.avro", b"Obx\x01" + avro_bytes(schema, [pk()])[4:])
    cases.append(Case("corrupt_header.avro", "corrupt avro", None, "not an avro container"))

    write("empty.avro", b"")
    cases.append(Case("empty.avro", "empty file", None, "empty file"))

    def stamp_case(name, kind, fragment, field="cutoutScience", data=None):
        p = pk()
        p[field] = {"fileName": "x.fits.gz", "stampData": data}
        write(name, avro_bytes(schema, [p]))
        cases.append(Case(name, kind, p["candid"], fragment))

    gz = packet["cutoutScience"]["stampData"]
    stamp_case("corrupt_gzip.avro", "corrupt gzip", "corrupt gzip", data=gz[: len(gz) // 2])
    stamp_case("not_fits.avro", "stamp not FITS", "not a readable FITS image",
               data=gzip.compress(b"this is not a FITS file\n" * 200))
    stamp_case("too_big.avro", "wrong image dimensions", "64x64", data=stamp_bytes(blob(rng, 50.0, (64, 64))))
    stamp_case("cube.avro", "wrong image dimensions", "3 dimensions",
               data=stamp_bytes(np.stack([blob(rng), blob(rng)])))
    stamp_case("all_zero.avro", "all-zero cutout", "cutoutTemplate", field="cutoutTemplate",
               data=stamp_bytes(np.zeros((63, 63), np.float32)))
    stamp_case("all_nan.avro", "all-NaN cutout", "cutoutDifference", field="cutoutDifference",
               data=stamp_bytes(np.full((63, 63), np.nan, np.float32)))
    inf_img = blob(rng)
    inf_img[10, 10] = np.inf
    stamp_case("inf_pixel.avro", "inf pixels", "inf pixel", data=stamp_bytes(inf_img))

    nullable = derive_schema(schema, nullable=("magpsf",))
    p = pk(magpsf=None)
    write("null_magpsf.avro", avro_bytes(nullable, [p]))
    cases.append(Case("null_magpsf.avro", "missing or null field", p["candid"], "null candidate.magpsf"))

    missing = derive_schema(schema, drop=("sgscore2",))
    p = pk()
    p["candidate"].pop("sgscore2")
    write("missing_sgscore2.avro", avro_bytes(missing, [p]))
    cases.append(Case("missing_sgscore2.avro", "missing or null field", p["candid"], "candidate.sgscore2"))

    p = pk(jdstarthist=None)
    write("null_jdstarthist.avro", avro_bytes(schema, [p]))
    cases.append(Case("null_jdstarthist.avro", "null jdstarthist", p["candid"], "jdstarthist"))

    p = pk(sky=float("inf"))
    write("inf_sky.avro", avro_bytes(schema, [p]))
    cases.append(Case("inf_sky.avro", "non-finite value", p["candid"], "candidate.sky"))

    p = pk(scorr=float("nan"))
    write("nan_scorr.avro", avro_bytes(schema, [p]))
    cases.append(Case("nan_scorr.avro", "non-finite value", p["candid"], "candidate.scorr"))

    (root / "README.txt").write_text("not an alert\n")
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "notes.json").write_text("{}\n")
    return {"cases": cases, "good": good, "duplicates": 1, "records": len(good) + 1 + len(cases),
            "skipped_files": 2}


__all__ = ["synthetic_schema", "synthetic_packet", "real_packet", "derive_schema", "avro_bytes", "stamp_bytes",
           "fits_bytes", "blob", "build_corpus", "Case", "record_offset"]
