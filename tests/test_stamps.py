"""The fast stamp reader equals astropy bit for bit (NaNs included) on every real stamp, and falls back to astropy
for anything unusual."""

import gzip
import zlib

import fastavro
import numpy as np
import pytest
from alert_corpus import blob, fits_bytes, stamp_bytes
from conftest import ZTF_ALERTS, ZTF_ALERTS_FINK, require

from btsbot_jax.ingest import stamps
from btsbot_jax.ingest.stamps import StampError, gunzip, parse_header, read_fits, read_stamp, read_stamp_astropy

CUTOUTS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _real_stamps():
    """(label, stampData) of every cutout in ../shared/data: 36 kowalski + 611 fink avro + 2 fink parquet."""
    import pyarrow.parquet as pq

    out = []
    for path in sorted(ZTF_ALERTS.rglob("*.avro")) + sorted(ZTF_ALERTS_FINK.rglob("*.avro")):
        with open(path, "rb") as f:
            for rec in fastavro.reader(f):
                out += [(f"{path.name}:{c}", rec[c]["stampData"]) for c in CUTOUTS]
    for path in sorted(ZTF_ALERTS_FINK.rglob("*.parquet")):
        t = pq.read_table(path, columns=list(CUTOUTS))
        for c in CUTOUTS:
            out += [(f"{path.name}#{i}:{c}", s["stampData"]) for i, s in enumerate(t.column(c).to_pylist())]
    return out


def test_fast_reader_equals_astropy_on_every_real_stamp():
    require(ZTF_ALERTS)
    require(ZTF_ALERTS_FINK)
    all_stamps = _real_stamps()
    assert len(all_stamps) == 3 * (36 + 611 + 124)
    shapes = {}
    nan_stamps = 0
    for label, data in all_stamps:
        raw = gunzip(data)
        assert parse_header(raw) is not None, f"{label}: fast path not taken"  # the test covers the fast path
        fast = read_stamp(data)
        ref = read_stamp_astropy(data)
        assert fast.shape == ref.shape, label  # (NAXIS2, NAXIS1), astropy's order
        assert fast.dtype == np.float32
        np.testing.assert_array_equal(_bits(fast), _bits(ref), err_msg=label)  # bitwise: NaN positions too
        shapes[fast.shape] = shapes.get(fast.shape, 0) + 1
        nan_stamps += bool(np.isnan(fast).any())
    # the real oddities are in there: edge-of-CCD stamps of both orientations and NaN pixels
    assert shapes[(63, 63)] == len(all_stamps) - 3 * 6  # 6 alerts with edge-of-CCD stamps (SOURCE.md)
    assert {(63, 47), (57, 63), (63, 48), (53, 63), (63, 62)} <= set(shapes)
    assert nan_stamps >= 4 * 2 + 75 + 17 * 3


def test_isal_and_zlib_inflate_identically(monkeypatch):
    data = stamp_bytes(blob(np.random.default_rng(0)))
    fast = gunzip(data)
    monkeypatch.setattr(stamps, "_isal_zlib", None)
    assert gunzip(data) == fast == zlib.decompress(data, 31)


@pytest.mark.parametrize("image,header", [
    (np.arange(63 * 63, dtype=np.int16).reshape(63, 63), {"BSCALE": 0.5, "BZERO": 10.0}),   # scaled integers
    (np.linspace(-1, 1, 63 * 50).reshape(50, 63), {}),                                       # BITPIX -64
    (np.ones((2, 63, 63), np.float32), {}),                                                  # NAXIS 3
    (np.full((63, 63), 3.0, np.float32), {"BLANK": -1}),                                     # odd keyword
])
def test_unusual_stamps_fall_back_to_astropy(image, header):
    raw = fits_bytes(image, **header)
    assert parse_header(raw) is None
    data = gzip.compress(raw)
    got = read_stamp(data)
    ref = read_stamp_astropy(data)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


def test_plain_float32_stamp_takes_fast_path_with_nan():
    img = blob(np.random.default_rng(2), shape=(40, 63))
    img[3, :7] = np.nan
    raw = fits_bytes(img)
    assert parse_header(raw)[:2] == (40, 63)
    got = read_fits(raw)
    np.testing.assert_array_equal(_bits(got), _bits(img))
    # an uncompressed FITS stamp is accepted as is; several gzip members are joined
    np.testing.assert_array_equal(_bits(read_stamp(raw)), _bits(img))
    two = gzip.compress(raw[:2880]) + gzip.compress(raw[2880:])
    np.testing.assert_array_equal(_bits(read_stamp(two)), _bits(img))


def test_short_data_unit_is_not_guessed():
    raw = fits_bytes(blob(np.random.default_rng(3)))
    cut = raw[: 2880 + 1000]  # header complete, pixels missing
    assert parse_header(cut) is None  # left to astropy, which refuses it
    with pytest.raises(StampError, match="not a readable FITS image"):
        read_fits(cut)


@pytest.mark.parametrize("data,fragment", [
    (b"", "empty"),
    (b"\x1f\x8b\x08\x00garbage-garbage", "corrupt gzip"),
    (b"PK\x03\x04 a zip file", "not gzip"),
    (gzip.compress(b"plain text, not FITS" * 100), "not a readable FITS image"),
])
def test_bad_stamps_raise_stamp_error(data, fragment):
    with pytest.raises(StampError, match=fragment):
        read_stamp(data)


def test_truncated_gzip_is_corrupt():
    data = stamp_bytes(blob(np.random.default_rng(4)))
    with pytest.raises(StampError, match="corrupt gzip"):
        read_stamp(data[: len(data) - 30])
