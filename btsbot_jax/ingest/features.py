"""ZTF alert packet -> the model's inputs: image triplet (63,63,3) and 25 metadata features
(Rehemtulla et al. 2024, as Kowalski computes them).

Triplet: channels science, reference (template), difference; each cutout gunzipped and read from FITS
(`btsbot_jax.ingest.stamps`), NaN -> 0, divided by its own L2 (Frobenius) norm, and, when smaller than 63x63 (edge of a
CCD), padded at the bottom/right with 1e-9 after normalising. The normalisation runs vectorised over all
full-size cutouts of a batch, in float32 with the same BLAS dot as production's `np.linalg.norm`: the triplets are
bit-identical to Kowalski's (tests check every real packet).

Production detail kept on purpose: some ZTF templates mark bad pixels with FLT_MAX (3.4e38) instead of NaN (4 of
the 771 real packets in ../shared/data). Kowalski normalises in float32, where the sum of squares overflows, the
norm is inf and the whole cutout becomes 0. The model has only ever seen that, so this module does the same
(its float32 norm overflows to inf here too); dividing by the exact float64 norm instead would move those alerts'
v1.0.1 scores by up to 0.22.

Metadata: 19 fields straight from `candidate`, 6 from the light curve known at the time of the alert
(`prv_candidates` + the candidate, plus earlier alerts of the same source the caller passes as `history`):
age, days_since_peak, days_to_peak, peakmag_so_far, maxmag_so_far, nnotdet. -999 sentinels go in unchanged.

An alert that cannot be turned into finite model inputs (a null needed field, null jdstarthist, inf/NaN values,
an unreadable/all-zero/all-NaN/oversized cutout...) is never scored and never dropped: `prepare_batch` returns it
in `rejected` with a reason that names the alert.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence, Sized
from typing import Any

import numpy as np
import pandas as pd

from btsbot_jax.constants import CUSTOM_FEATURES, IMAGE_SIZE, METADATA_COLUMNS, NUM_METADATA, PAD_VALUE
from btsbot_jax.ingest.readers import RawAlert
from btsbot_jax.ingest.stamps import StampError, read_stamp

CUTOUT_FIELDS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")  # channel order of the triplet
CANDIDATE_FEATURES = tuple(c for c in METADATA_COLUMNS if c not in CUSTOM_FEATURES)  # the 19 straight ones
INFO_COLUMNS = ("candid", "objectId", "jd", "magpsf", "fid", "source")
_CAND_INDEX = [METADATA_COLUMNS.index(c) for c in CANDIDATE_FEATURES]
_CUSTOM_INDEX = [METADATA_COLUMNS.index(c) for c in CUSTOM_FEATURES]
assert len(CANDIDATE_FEATURES) == 19 and NUM_METADATA == 25


class AlertError(ValueError):
    """An alert that cannot be turned into model inputs; the message is the reason."""


@dataclasses.dataclass
class Rejected:
    """An input alert that was not scored, and why. `kind` is a short category for summaries."""

    source: str
    reason: str
    candid: int | None = None
    objectId: str | None = None  # noqa: N815 - ZTF's spelling
    kind: str = "invalid alert"


@dataclasses.dataclass
class Prepared:
    """Model inputs for the alerts that could be prepared, row-aligned with `info`; the others in `rejected`."""

    triplets: np.ndarray      # (n, 63, 63, 3) float32
    metadata: np.ndarray      # (n, 25) float32, constants.METADATA_COLUMNS order
    info: pd.DataFrame        # n rows: candid, objectId, jd, magpsf, fid, source
    rejected: list[Rejected]

    def __len__(self) -> int:
        return len(self.info)


# ----------------------------------------------------------------------------------------------- metadata
def _finite(name: str, value: Any) -> float:
    if value is None:
        raise AlertError(f"null {name}")
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise AlertError(f"{name} is not a number ({type(value).__name__} {value!r})")
    v = float(value)
    if not math.isfinite(v):
        raise AlertError(f"non-finite {name} = {v}")
    return v


def _candidate(record: Mapping) -> Mapping:
    if not isinstance(record, Mapping):
        raise AlertError(f"record is not a mapping ({type(record).__name__})")
    cand = record.get("candidate")
    if cand is None:
        raise AlertError("missing or null candidate")
    if not isinstance(cand, Mapping):
        raise AlertError(f"candidate is not a record ({type(cand).__name__})")
    return cand


def _field(cand: Mapping, name: str) -> float:
    if name not in cand:
        raise AlertError(f"missing field candidate.{name}")
    return _finite(f"candidate.{name}", cand[name])


def _history_points(entries: Iterable[Mapping] | None, label: str) -> list[tuple[float, float]]:
    """(jd, magpsf) of the detections among light-curve entries (candidate/prv_candidate dicts or whole alerts)."""
    out = []
    if entries is None or (isinstance(entries, Sized) and len(entries) == 0):
        return out
    if isinstance(entries, (str, bytes, bytearray, Mapping)) or not isinstance(entries, Iterable):
        raise AlertError(f"{label} is a {type(entries).__name__}, not a list of records")
    for i, e in enumerate(entries):
        if e is None:
            continue
        if isinstance(e, RawAlert):
            e = e.record
            if e is None:
                continue
        if not isinstance(e, Mapping):
            raise AlertError(f"{label}[{i}] is a {type(e).__name__}, not a record")
        if "candidate" in e and isinstance(e.get("candidate"), Mapping):  # a whole earlier alert
            out += _history_points(e.get("prv_candidates"), f"{label}[{i}].prv_candidates")
            out += _history_points([e["candidate"]], f"{label}[{i}].candidate")
            continue
        mag = e.get("magpsf")
        if mag is None:  # upper limit
            continue
        mag = _finite(f"{label}[{i}].magpsf", mag)
        jd = _finite(f"{label}[{i}].jd", e.get("jd"))
        out.append((jd, mag))
    return out


def custom_features(record: Mapping, history: Sequence[Mapping] | None = None) -> dict[str, float]:
    """The 6 light-curve features of the paper's inputs for one alert.

    `history`: earlier light-curve entries of the same source (candidate / prv_candidate dicts, or whole earlier
    alerts). When given, it is merged with prv_candidates, points later than the alert are ignored (not known at
    the time), repeated (jd, magpsf) points are counted once, and "history order" is chronological.
    """
    cand = _candidate(record)
    jd = _field(cand, "jd")
    mag = _field(cand, "magpsf")
    jdstarthist = _field(cand, "jdstarthist")
    ncovhist = _field(cand, "ncovhist")
    ndethist = _field(cand, "ndethist")
    points = _history_points(record.get("prv_candidates"), "prv_candidates")
    points.append((jd, mag))
    if history:
        extra = [p for p in _history_points(history, "history") if p[0] <= jd]
        seen = set()
        merged = []
        for p in extra + points:
            if p not in seen:
                seen.add(p)
                merged.append(p)
        merged.sort(key=lambda p: p[0])  # stable: ties keep their order
        points = merged
    jds = [p[0] for p in points]
    mags = [p[1] for p in points]
    peak_i = min(range(len(mags)), key=mags.__getitem__)  # first index of the minimum: first on ties
    peak_jd = jds[peak_i]
    first_jd = min(jdstarthist, min(jds))
    return {
        "age": jd - first_jd,
        "days_since_peak": jd - peak_jd,
        "days_to_peak": peak_jd - first_jd,
        "peakmag_so_far": mags[peak_i],
        "maxmag_so_far": max(mags),
        "nnotdet": ncovhist - ndethist,
    }


_PLAIN_NUMBERS = {float, int}
_FAST_FIELDS = CANDIDATE_FEATURES + ("jd", "jdstarthist")
_DRB = CANDIDATE_FEATURES.index("drb")
_I_MAG = CANDIDATE_FEATURES.index("magpsf")
_I_NCOV = CANDIDATE_FEATURES.index("ncovhist")
_I_NDET = CANDIDATE_FEATURES.index("ndethist")
_I_JD = len(CANDIDATE_FEATURES)
_FAST_ORDER = np.argsort(_CAND_INDEX + _CUSTOM_INDEX)  # [candidate values, custom values] -> METADATA_COLUMNS


def _metadata_fast(record: Mapping, use_rb: bool) -> np.ndarray | None:
    """The common case (plain numbers, nothing missing, no caller history) in plain Python arithmetic.

    Returns None for anything else; `metadata_from_record`'s field-by-field path then computes the result or
    the reason, so both paths accept exactly the same alerts (tests check they agree)."""
    cand = record.get("candidate") if isinstance(record, dict) else None
    if not isinstance(cand, dict):
        return None
    vals = [cand.get(k) for k in _FAST_FIELDS]
    if use_rb and vals[_DRB] is None:
        vals[_DRB] = cand.get("rb")
    prv = record.get("prv_candidates") or ()
    if prv:
        try:
            pts = [(e["magpsf"], e["jd"]) for e in prv if e.get("magpsf") is not None]
        except (TypeError, KeyError, AttributeError):  # an entry that is not a dict, or a detection without jd
            return None
        mags, jds = [m for m, _ in pts], [t for _, t in pts]
    else:
        mags, jds = [], []
    jd, jdstart = vals[_I_JD], vals[_I_JD + 1]
    mags.append(vals[_I_MAG])  # history order: prv_candidates, then the candidate
    jds.append(jd)
    if not (set(map(type, vals)) <= _PLAIN_NUMBERS and set(map(type, mags)) <= _PLAIN_NUMBERS
            and set(map(type, jds)) <= _PLAIN_NUMBERS):
        return None
    try:
        if not math.isfinite(sum(vals) + sum(mags) + sum(jds)):  # NaN/inf anywhere (or an overflowing sum):
            return None                                           # the slow path finds which, or decides
    except OverflowError:  # a Python int beyond float range
        return None
    peak_mag = min(mags)
    peak_jd = jds[mags.index(peak_mag)]  # first one on ties
    first_jd = min(jdstart, min(jds))
    # [19 candidate values, 6 custom] in one list, reordered to METADATA_COLUMNS by one take
    vals[_I_JD:] = (jd - first_jd, jd - peak_jd, peak_jd - first_jd, peak_mag, max(mags),
                    vals[_I_NCOV] - vals[_I_NDET])
    with np.errstate(over="ignore"):
        m = np.array(vals, np.float32)[_FAST_ORDER]
    return m if np.isfinite(m).all() else None


def metadata_from_record(record: Mapping, use_rb: bool = False, history: Sequence[Mapping] | None = None
                         ) -> np.ndarray:
    """(25,) float32 in METADATA_COLUMNS order. Raises AlertError with the reason.

    `use_rb`: when `drb` is null or absent (old packets), use `rb` instead; off by default since the model was
    trained on drb.
    """
    if not history:
        fast = _metadata_fast(record, use_rb)
        if fast is not None:
            return fast
    cand = _candidate(record)
    out = np.empty(NUM_METADATA, np.float64)
    for i, name in zip(_CAND_INDEX, CANDIDATE_FEATURES):
        if name == "drb" and use_rb and cand.get("drb") is None:
            out[i] = _field(cand, "rb")
        else:
            out[i] = _field(cand, name)
    custom = custom_features(record, history)
    for i, name in zip(_CUSTOM_INDEX, CUSTOM_FEATURES):
        out[i] = custom[name]
    with np.errstate(over="ignore"):
        m = out.astype(np.float32)
    if not np.isfinite(m).all():  # finite float64 that overflows float32
        j = int(np.flatnonzero(~np.isfinite(m))[0])
        raise AlertError(f"{METADATA_COLUMNS[j]} = {out[j]} does not fit in float32")
    return m


# ----------------------------------------------------------------------------------------------- triplet
def cutout_images(record: Mapping, *, copy: bool = True) -> list[np.ndarray]:
    """The three raw cutouts (science, template, difference) as 2-D arrays, their shapes checked.

    Pixel values (inf, all NaN, all zero) are checked where the cutouts are normalised. copy=False may return
    read-only big-endian views of the decompressed stamps (the batch path converts them while stacking)."""
    if not isinstance(record, Mapping):
        raise AlertError(f"record is not a mapping ({type(record).__name__})")
    images = []
    for name in CUTOUT_FIELDS:
        c = record.get(name)
        if c is None:
            raise AlertError(f"missing or null {name}")
        data = c.get("stampData") if isinstance(c, Mapping) else c
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise AlertError(f"{name}.stampData is {'null' if data is None else type(data).__name__}, not bytes")
        try:
            img = read_stamp(bytes(data), copy=copy)
        except StampError as e:
            raise AlertError(f"{name}: {e}") from None
        if img.ndim != 2:
            raise AlertError(f"{name}: image has {img.ndim} dimensions {img.shape}, expected 2")
        h, w = img.shape
        if h == 0 or w == 0 or h > IMAGE_SIZE or w > IMAGE_SIZE:
            raise AlertError(f"{name}: image is {h}x{w}, expected at most {IMAGE_SIZE}x{IMAGE_SIZE}")
        if img.dtype.kind not in "fiu":  # bool, complex, strings, objects
            raise AlertError(f"{name}: image of type {img.dtype} is not real-valued")
        images.append(img)
    return images


def _sumsq(rows: np.ndarray) -> np.ndarray:
    """Float32 sum of squares of each row, exactly as production's `np.linalg.norm(img)` (= sqrt(x.ravel() @
    x.ravel()), a float32 BLAS dot): `np.vecdot` runs the same dot kernel, so the norms are bit-identical."""
    return np.vecdot(rows, rows)


def _normalise_stack(stack: np.ndarray, names: Sequence[str] = CUTOUT_FIELDS, out: np.ndarray | None = None
                     ) -> tuple[np.ndarray, list[str | None]]:
    """(k, c, h, w) float32 raw cutouts -> (normalised (k, h, w, c) float32, reason or None per alert).

    NaN -> 0, divide by the float32 L2 norm as production does (bit-identical; where the float32 sum of squares
    overflows the norm is inf and the cutout becomes 0, as in production). A cutout with inf pixels, all NaN, or
    all zero gives the alert a reason. Common case: one dot per cutout, an in-place divide, and a per-channel copy
    into the channels-last `out` (three strided writes, 3x faster than dividing through a transposed view);
    NaN/inf/zero cutouts (rare) are found from their non-finite or zero sums and fixed one by one.
    `stack` is modified (NaN -> 0, then divided).
    """
    k, nc, h, w = stack.shape
    flat = stack.reshape(k, nc, h * w)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        sumsq = _sumsq(flat)
        odd = ~(np.isfinite(sumsq) & (sumsq > 0))  # NaN, inf, all zero, or a float32 overflow
        why: dict[tuple[int, int], str] = {}
        for j, c in zip(*np.nonzero(odd)):
            img = flat[j, c]
            nan = np.isnan(img)
            n_inf = int(np.isinf(img).sum())
            if n_inf:
                why[j, c] = f"{names[c]}: {n_inf} inf pixel(s)"
            elif nan.all():
                why[j, c] = f"{names[c]}: all {h * w} pixels are NaN"
            img[nan] = 0.0
            sumsq[j, c] = _sumsq(img)
            if (j, c) not in why and not sumsq[j, c] > 0:
                why[j, c] = f"{names[c]}: all pixels are zero (after NaN -> 0), L2 norm 0"
        norm = np.sqrt(np.where(sumsq > 0, sumsq, np.float32(1.0)))  # float32; inf where the sum overflowed
        np.divide(flat, norm[:, :, None], out=flat)
    if out is None:
        out = np.empty((k, h, w, nc), np.float32)
    o = out.reshape(k, h * w, nc)
    for c in range(nc):
        o[:, :, c] = flat[:, c]
    reasons: list[str | None] = [None] * k
    for (j, _c), text in sorted(why.items()):
        reasons[j] = text if reasons[j] is None else f"{reasons[j]}; {text}"
    return out, reasons


def triplet_from_images(images: Sequence[np.ndarray]) -> np.ndarray:
    """Three raw 2-D cutouts -> (63, 63, 3) float32 as the paper and Kowalski define them. Raises AlertError."""
    out = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), PAD_VALUE, np.float32)
    reasons = []
    for c, img in enumerate(images):
        h, w = img.shape
        normed, (reason,) = _normalise_stack(np.array(img, np.float32)[None, None], names=(CUTOUT_FIELDS[c],))
        if reason is not None:
            reasons.append(reason)
        out[:h, :w, c] = normed[0, :, :, 0]
    if reasons:
        raise AlertError("; ".join(reasons))
    return out


def triplet_from_record(record: Mapping) -> np.ndarray:
    """(63, 63, 3) float32 triplet of one alert. Raises AlertError with the reason."""
    return triplet_from_images(cutout_images(record))


# --------------------------------------------------------------------------------------------------- batch
def _ids(record: Any) -> tuple[int | None, str | None]:
    if not isinstance(record, Mapping):
        return None, None
    c = record.get("candid")
    if c is None and isinstance(record.get("candidate"), Mapping):
        c = record["candidate"].get("candid")
    o = record.get("objectId")
    try:
        c = int(c) if c is not None and not isinstance(c, bool) else None
    except (TypeError, ValueError, OverflowError):
        c = None
    if c is not None and not _INT64[0] <= c <= _INT64[1]:  # beyond an avro long: not an id
        c = None
    return c, (o if isinstance(o, str) else None)


_INT64 = (-(1 << 63), (1 << 63) - 1)


def _name(source: str, candid: int | None, oid: str | None) -> str:
    who = " ".join(x for x in (oid, f"candid {candid}" if candid is not None else None) if x)
    return f"{who} ({source})" if who else source


def _kind(reason: str) -> str:
    """Short category of a rejection reason, for the summary's counts."""
    r = reason.lower()
    for key, kind in (("corrupt gzip", "corrupt gzip"), ("not gzip", "corrupt gzip"),
                      ("not a readable fits", "stamp not FITS"), ("no image data", "stamp not FITS"),
                      ("expected at most", "wrong image dimensions"), ("dimensions", "wrong image dimensions"),
                      ("l2 norm 0", "all-zero cutout"), ("are nan", "all-NaN cutout"),
                      ("inf pixel", "inf pixels"), ("non-finite", "non-finite value"),
                      ("does not fit in float32", "non-finite value"), ("jdstarthist", "null jdstarthist"),
                      ("null", "missing or null field"), ("missing", "missing or null field"),
                      ("not a number", "bad field type"), ("not bytes", "bad field type"),
                      ("empty file", "empty file"), ("truncated", "truncated avro"),
                      ("corrupt avro", "corrupt avro"), ("not an avro", "corrupt avro"),
                      ("parquet", "unreadable parquet"), ("tarball", "corrupt tarball"),
                      ("cannot read", "unreadable file")):
        if key in r:
            return kind
    return "invalid alert"


def _history_for(history, record: Mapping) -> Sequence[Mapping] | None:
    if history is None:
        return None
    if isinstance(history, Mapping):  # objectId -> earlier entries of that source
        return history.get(record.get("objectId"))
    return history  # a plain sequence: entries of this very source (single-source batches)


def prepare_batch(alerts: Sequence[RawAlert | Mapping], *, use_rb: bool = False,
                  history: Mapping[str, Sequence[Mapping]] | Sequence[Mapping] | None = None) -> Prepared:
    """Alerts (RawAlert or decoded packet dicts) -> model inputs for the good ones, reasons for the rest.

    `history`: earlier alerts/light-curve entries the caller has, as {objectId: [entries...]} (or one sequence
    when all alerts are of one source); see `custom_features`. Always `len(alerts) == len(info) + len(rejected)`.
    """
    rejected: list[Rejected] = []
    metas: list[np.ndarray] = []
    rows: list[tuple] = []
    # Full-size cutouts are copied into one (n, 3, 63, 63) stack as soon as they are decoded (converting the
    # big-endian FITS pixels on the way), so each inflated stamp buffer is freed at once and the allocator hands
    # the next stamp the same, cache-hot memory: ~15 us a stamp faster than keeping a batch of buffers alive.
    # (rows only for records that could be scored: undecodable ones, however many, cost no pixels)
    n_decoded = sum(1 for a in alerts if not isinstance(a, RawAlert) or (a.error is None and a.record is not None))
    stack = np.empty((n_decoded, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    full_rows: list[int] = []
    partial: dict[int, list[np.ndarray]] = {}  # row -> cutouts of which one or more is smaller than 63x63

    for i, a in enumerate(alerts):
        if isinstance(a, RawAlert):
            source, record, error = a.source, a.record, a.error
        else:
            source, record, error = f"batch#{i}", a, None
        candid, oid = _ids(record)
        if error is not None or record is None:
            reason = error or "no record"
            rejected.append(Rejected(source, f"{_name(source, candid, oid)}: {reason}", candid, oid, _kind(reason)))
            continue
        try:
            if candid is None:
                raise AlertError("missing or null candid")
            if oid is None:
                raise AlertError("missing or null objectId")
            meta = metadata_from_record(record, use_rb=use_rb, history=_history_for(history, record))
            images = cutout_images(record, copy=False)
        except AlertError as e:
            rejected.append(Rejected(source, f"{_name(source, candid, oid)}: {e}", candid, oid, _kind(str(e))))
            continue
        except Exception as e:  # noqa: BLE001 - a packet is not trusted: whatever it does, it is one rejected row
            reason = f"unusable record ({type(e).__name__}: {e})"
            rejected.append(Rejected(source, f"{_name(source, candid, oid)}: {reason}", candid, oid,
                                     "invalid alert"))
            continue
        cand = record["candidate"]
        row = len(rows)
        rows.append((candid, oid, float(cand["jd"]), float(cand["magpsf"]), cand.get("fid"), source))
        metas.append(meta)
        sci, ref, diff = images
        if sci.shape == ref.shape == diff.shape == (IMAGE_SIZE, IMAGE_SIZE):
            s = stack[len(full_rows)]
            s[0], s[1], s[2] = sci, ref, diff
            full_rows.append(row)
        else:
            partial[row] = [np.array(img, np.float32) for img in images]
        del images, sci, ref, diff

    n = len(rows)
    triplets = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)  # every kept row is written below
    keep = np.ones(n, bool)
    if full_rows:
        k = len(full_rows)
        if full_rows[-1] - full_rows[0] == k - 1:  # contiguous rows (the usual case): in place
            _, reasons = _normalise_stack(stack[:k], out=triplets[full_rows[0]:full_rows[-1] + 1])
        else:
            normed, reasons = _normalise_stack(stack[:k])
            triplets[full_rows] = normed
        for j, reason in enumerate(reasons):
            if reason is not None:
                keep[full_rows[j]] = False
                r = rows[full_rows[j]]
                rejected.append(Rejected(r[5], f"{_name(r[5], r[0], r[1])}: {reason}", r[0], r[1], _kind(reason)))
    del stack
    for r, images in partial.items():
        try:
            triplets[r] = triplet_from_images(images)
        except AlertError as e:
            keep[r] = False
            rr = rows[r]
            rejected.append(Rejected(rr[5], f"{_name(rr[5], rr[0], rr[1])}: {e}", rr[0], rr[1], _kind(str(e))))

    cols = list(zip(*rows)) if rows else [()] * len(INFO_COLUMNS)
    info = pd.DataFrame({
        "candid": pd.array(cols[0], dtype="Int64"),  # never through float64: 19-digit candids
        "objectId": pd.Series(cols[1], dtype=object),
        "jd": np.asarray(cols[2], np.float64),
        "magpsf": np.asarray(cols[3], np.float64),
        "fid": pd.array([f if isinstance(f, (int, np.integer)) and _INT64[0] <= f <= _INT64[1] else None
                         for f in cols[4]], dtype="Int64"),
        "source": pd.Series(cols[5], dtype=object),
    })
    metadata = np.stack(metas) if metas else np.zeros((0, NUM_METADATA), np.float32)
    if not keep.all():
        triplets, metadata = triplets[keep], metadata[keep]
        info = info[keep].reset_index(drop=True)
    assert len(info) + len(rejected) == len(alerts)
    return Prepared(triplets, metadata, info, rejected)


__all__ = ["AlertError", "Rejected", "Prepared", "prepare_batch", "triplet_from_record", "metadata_from_record",
           "custom_features", "cutout_images", "triplet_from_images", "CANDIDATE_FEATURES", "CUSTOM_FEATURES",
           "CUTOUT_FIELDS", "INFO_COLUMNS"]
