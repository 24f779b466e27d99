"""ZTF cutout stamps: gzip-compressed FITS bytes -> 2-D float32 image, as astropy would read it.

Every ZTF stamp is the same tiny file: one primary HDU, a handful of header cards, a big-endian float32 image.
Going through `astropy.io.fits` costs ~1 ms a stamp (three per alert), which would make parsing, not the model,
the bottleneck of a scorer. So the fast path here reads the header cards itself and takes the pixels with
`np.frombuffer('>f4')`; whenever the header holds anything it does not fully understand (another BITPIX, BSCALE/
BZERO/BLANK, more or fewer axes, extensions, tile compression, a short data unit...) it hands the bytes to astropy
instead, so an unusual stamp is read the library's way rather than guessed. tests/test_stamps.py proves both paths
give bit-identical arrays (NaN positions included) on every stamp of the real data in ../shared/data.

Inflate uses ISA-L (`isal`, 2-3x faster than zlib on these stamps) when it is installed, zlib otherwise; both
produce the same bytes.
"""

from __future__ import annotations

import gzip
import io
import warnings
import zlib

import numpy as np

try:  # optional accelerator; same output as zlib
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - depends on the environment
    _isal_zlib = None

_GZIP_MAGIC = b"\x1f\x8b"
_BLOCK = 2880
_CARD = 80
# Keywords the fast path understands; anything else that changes how pixels are read sends the stamp to astropy.
_FALLBACK_KEYS = {b"BSCALE", b"BZERO", b"BLANK", b"XTENSION", b"GROUPS", b"ZIMAGE", b"ZBITPIX", b"ZCMPTYPE",
                  b"PCOUNT", b"GCOUNT", b"NAXIS3", b"TFIELDS"}


class StampError(ValueError):
    """A cutout whose bytes are not a readable (gzip-compressed) FITS image."""


def gunzip(data: bytes) -> bytes:
    """Inflate a gzip stamp. Bytes that are already a FITS file (`SIMPLE` first) pass through unchanged."""
    if data[:2] != _GZIP_MAGIC:
        if data[:6] == b"SIMPLE":
            return bytes(data)
        raise StampError(f"not gzip data (starts with {bytes(data[:8])!r})")
    try:
        if _isal_zlib is not None:
            d = _isal_zlib.decompressobj(31)
        else:
            d = zlib.decompressobj(31)
        out = d.decompress(data)
        if not d.eof:
            raise StampError("corrupt gzip: truncated stream")
        if d.unused_data:  # several gzip members (legal, never seen in ZTF): let the gzip module join them
            out = gzip.decompress(data)
        return out
    except StampError:
        raise
    except Exception as e:  # zlib.error, isal error, EOFError, BadGzipFile
        raise StampError(f"corrupt gzip: {e}") from None


def _card_value(card: bytes) -> bytes | None:
    if card[8:10] != b"= ":
        return None
    v = card[10:]
    if v.lstrip()[:1] == b"'":
        return v.strip()
    return v.split(b"/", 1)[0].strip()


_END_CARD = b"END" + b" " * 77
_REQUIRED = (b"SIMPLE", b"BITPIX", b"NAXIS", b"NAXIS1", b"NAXIS2")


_HEADERS: dict[bytes, tuple[int, int, int] | None] = {}  # ZTF stamps share a handful of distinct headers


def parse_header(raw: bytes) -> tuple[int, int, int] | None:
    """(NAXIS2, NAXIS1, data offset) of a plain BITPIX=-32 2-D primary image, or None if anything is unusual."""
    if raw[:6] != b"SIMPLE":
        return None
    end = raw.find(_END_CARD)
    while end > 0 and end % _CARD:
        end = raw.find(_END_CARD, end + 1)
    if end < 0:
        return None  # no END card
    key = raw[:end]
    if key in _HEADERS:
        hdr = _HEADERS[key]
    else:
        hdr = _parse_cards(raw, end)
        if len(_HEADERS) > 4096:
            _HEADERS.clear()
        _HEADERS[key] = hdr
    if hdr is None or len(raw) < hdr[2] + hdr[0] * hdr[1] * 4:
        return None  # unusual, or a short data unit: astropy decides what that means
    return hdr


def _parse_cards(raw: bytes, end: int) -> tuple[int, int, int] | None:
    keys = [raw[i:i + 8].rstrip() for i in range(0, end, _CARD)]
    if _FALLBACK_KEYS.intersection(keys) or any(keys.count(k) > 1 for k in _REQUIRED):
        return None  # an unusual keyword, or a repeated structural one: astropy decides
    cards = {k: raw[i * _CARD:(i + 1) * _CARD] for i, k in enumerate(keys)}
    try:
        if (_card_value(cards[b"SIMPLE"]) != b"T" or _card_value(cards[b"BITPIX"]) != b"-32"
                or _card_value(cards[b"NAXIS"]) != b"2"):
            return None
        nx = int(_card_value(cards[b"NAXIS1"]))
        ny = int(_card_value(cards[b"NAXIS2"]))
    except (KeyError, TypeError, ValueError):
        return None
    if nx <= 0 or ny <= 0:
        return None
    return ny, nx, -(-(end + _CARD) // _BLOCK) * _BLOCK


def read_fits_astropy(raw: bytes) -> np.ndarray:
    """Reference reader: astropy's view of the primary HDU (or, if that has no image, the first image HDU)."""
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. ZTF's non-standard 'SIMPLE  =  T' card
            with fits.open(io.BytesIO(raw), ignore_missing_simple=True, memmap=False,
                           lazy_load_hdus=False) as hdul:
                data = None
                for hdu in hdul:
                    if getattr(hdu, "is_image", False) and hdu.data is not None:
                        data = np.array(hdu.data)
                        break
    except Exception as e:  # astropy raises OSError/ValueError/TypeError/... on garbage
        raise StampError(f"not a readable FITS image: {type(e).__name__}: {e}") from None
    if data is None:
        raise StampError("FITS file holds no image data")
    return data


def read_fits(raw: bytes, *, copy: bool = True) -> np.ndarray:
    """FITS bytes -> image array as astropy gives it: shape (NAXIS2, NAXIS1), native float32 on the fast path.

    copy=False returns the fast path's read-only big-endian view of `raw` (no copy; for batch code that converts
    while stacking)."""
    hdr = parse_header(raw)
    if hdr is None:
        return read_fits_astropy(raw)
    ny, nx, offset = hdr
    view = np.frombuffer(raw, dtype=">f4", count=nx * ny, offset=offset).reshape(ny, nx)
    return view.astype(np.float32) if copy else view


def read_stamp(stamp_data: bytes, *, copy: bool = True) -> np.ndarray:
    """One `stampData` (gzip-compressed FITS) -> 2-D image. Raises StampError with the reason."""
    if stamp_data is None:
        raise StampError("stampData is null")
    if len(stamp_data) == 0:
        raise StampError("stampData is empty")
    return read_fits(gunzip(stamp_data), copy=copy)


def read_stamp_astropy(stamp_data: bytes) -> np.ndarray:
    """Reference path (what Kowalski does): gzip module + astropy for every stamp."""
    try:
        raw = gzip.decompress(stamp_data)
    except Exception as e:
        raise StampError(f"corrupt gzip: {e}") from None
    return read_fits_astropy(raw)


__all__ = ["StampError", "gunzip", "parse_header", "read_fits", "read_fits_astropy", "read_stamp",
           "read_stamp_astropy"]
