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

Nothing in a stamp is trusted (docs/security.md): inflation stops at `MAX_STAMP_BYTES` of output (a gzip bomb is
refused after that much work, never allocated whole), and before astropy sees a file `screen_fits` walks its
headers and refuses declared data sizes beyond `MAX_STAMP_BYTES`, image sides beyond `MAX_STAMP_SIDE` and more than
`MAX_HDUS` HDUs, so no FITS reader allocates what a header claims. The fast path only reads what the bytes hold.
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


MAX_STAMP_BYTES = 1 << 20   # an inflated stamp, and any FITS data unit in it (a ZTF stamp: ~20 kB)
MAX_STAMP_SIDE = 4096       # any NAXISn / ZNAXISn of a stamp (a ZTF cutout: 63)
MAX_HDUS = 16               # HDUs in one stamp file (ZTF: 1)
_BITPIX = {8: 1, 16: 2, 32: 4, 64: 8, -32: 4, -64: 8}


class StampError(ValueError):
    """A cutout whose bytes are not a readable (gzip-compressed) FITS image."""


def gunzip(data: bytes, limit: int = MAX_STAMP_BYTES) -> bytes:
    """Inflate a gzip stamp, refusing more than `limit` bytes of output (checked as it inflates, before the rest
    is produced). Bytes that are already a FITS file (`SIMPLE` first) pass through unchanged. Several gzip members
    (legal, never seen in ZTF) are joined, within the same limit."""
    if data[:2] != _GZIP_MAGIC:
        if data[:6] == b"SIMPLE":
            if len(data) > limit:
                raise StampError(f"stamp of {len(data)} bytes (limit {limit})")
            return bytes(data)
        raise StampError(f"not gzip data (starts with {bytes(data[:8])!r})")
    parts = []
    total = 0
    rest = data
    try:
        while True:
            d = (_isal_zlib or zlib).decompressobj(31)
            out = d.decompress(rest, limit - total + 1)
            total += len(out)
            if total > limit:
                raise StampError(f"gzip stamp inflates to more than {limit} bytes (a ZTF stamp: ~20 kB)")
            if not d.eof:
                raise StampError("corrupt gzip: truncated stream")
            parts.append(out)
            rest = d.unused_data
            if not rest.strip(b"\0"):  # the end (trailing zero padding is allowed, as the gzip module does)
                break
            if rest[:2] != _GZIP_MAGIC:
                raise StampError(f"corrupt gzip: {len(rest)} bytes of trailing garbage")
    except StampError:
        raise
    except Exception as e:  # zlib.error, isal error, EOFError
        raise StampError(f"corrupt gzip: {e}") from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _header_ints(raw: bytes, start: int, end: int) -> dict[bytes, int | None]:
    """Structural keywords of one FITS header (cards start..end) -> integer value, None if not an integer."""
    out: dict[bytes, int | None] = {}
    for i in range(start, end, _CARD):
        key = raw[i:i + 8].rstrip()
        if key in (b"BITPIX", b"NAXIS", b"PCOUNT", b"GCOUNT", b"ZBITPIX", b"ZNAXIS") or (
                key[:5] in (b"NAXIS", b"ZTILE") or key[:6] == b"ZNAXIS"):
            v = _card_value(raw[i:i + _CARD])
            try:
                out[key] = int(v) if v is not None else None
            except ValueError:
                out[key] = None
    return out


def screen_fits(raw: bytes) -> None:
    """Refuse a FITS file whose headers declare more than a stamp can hold, before a FITS reader allocates it.

    Walks every header: BITPIX, NAXIS, NAXISn, PCOUNT, GCOUNT (and ZNAXISn/ZTILEn of tile compression) must be
    integers, each side at most MAX_STAMP_SIDE, each declared (or decompressed) data unit at most MAX_STAMP_BYTES,
    at most MAX_HDUS HDUs. A header without END is left to the reader (which refuses it; the bytes are bounded)."""
    pos = 0
    n = len(raw)
    for hdu in range(MAX_HDUS + 1):
        if pos >= n:
            return
        if hdu == MAX_HDUS:
            raise StampError(f"FITS file with more than {MAX_HDUS} HDUs")
        end = pos
        while end + _CARD <= n and raw[end:end + _CARD] != _END_CARD:
            end += _CARD
        if end + _CARD > n:
            return  # no END card: the reader refuses it
        cards = _header_ints(raw, pos, end)
        for key, v in cards.items():
            if v is None:
                raise StampError(f"FITS header {key.decode('ascii', 'replace')} is not an integer")
        bitpix = cards.get(b"BITPIX", -32)
        if bitpix not in _BITPIX:
            raise StampError(f"FITS BITPIX = {bitpix} is not a valid value")
        size = _data_size(cards, b"NAXIS", _BITPIX[bitpix], pcount=cards.get(b"PCOUNT", 0),
                          gcount=cards.get(b"GCOUNT", 1))
        if b"ZNAXIS" in cards:  # tile-compressed image: what it decompresses to, and its tiles
            zbitpix = cards.get(b"ZBITPIX", -32)
            if zbitpix not in _BITPIX:
                raise StampError(f"FITS ZBITPIX = {zbitpix} is not a valid value")
            _data_size(cards, b"ZNAXIS", _BITPIX[zbitpix])
            _data_size(cards, b"ZTILE", _BITPIX[zbitpix], naxis=cards[b"ZNAXIS"])
        pos = -(-(end + _CARD) // _BLOCK) * _BLOCK + -(-size // _BLOCK) * _BLOCK


def _data_size(cards: dict, stem: bytes, itemsize: int, pcount: int = 0, gcount: int = 1,
               naxis: int | None = None) -> int:
    naxis = cards.get(stem, 0) if naxis is None else naxis
    if not 0 <= naxis <= 999:
        raise StampError(f"FITS {stem.decode()} = {naxis} is out of range")
    size = 1
    for k in range(1, naxis + 1):
        side = cards.get(stem + str(k).encode(), 1 if stem == b"ZTILE" else 0)
        if not 0 <= side <= MAX_STAMP_SIDE:
            raise StampError(f"FITS {stem.decode()}{k} = {side} (a stamp side is at most {MAX_STAMP_SIDE})")
        if side or stem != b"NAXIS" or k != 1:  # NAXIS1 = 0 in random groups
            size *= side
        if size * itemsize > MAX_STAMP_BYTES:
            break
    if naxis == 0:
        size = 0
    if not (0 <= pcount <= MAX_STAMP_BYTES and 0 <= gcount <= MAX_STAMP_BYTES):
        raise StampError(f"FITS PCOUNT/GCOUNT = {pcount}/{gcount} out of range")
    total = itemsize * gcount * (pcount + size)
    if total > MAX_STAMP_BYTES:
        raise StampError(f"FITS data unit of {total} bytes declared (limit {MAX_STAMP_BYTES})")
    return total


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
    if len(raw) > MAX_STAMP_BYTES:
        raise StampError(f"FITS file of {len(raw)} bytes (limit {MAX_STAMP_BYTES})")
    screen_fits(raw)  # before astropy allocates what a header declares
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


__all__ = ["MAX_HDUS", "MAX_STAMP_BYTES", "MAX_STAMP_SIDE", "StampError", "gunzip", "parse_header", "read_fits",
           "read_fits_astropy", "read_stamp", "read_stamp_astropy", "screen_fits"]
