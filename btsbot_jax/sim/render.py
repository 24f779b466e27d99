"""Cutout renderer: 63x63 science / reference / difference stamps in detector counts, and their FITS bytes.

The scene of a source (host galaxy, PS1-like neighbours, faint background objects) is a list of components that
are all Gaussian mixtures, so convolving them with a Gaussian PSF is exact and cheap (variances add): a galaxy is
a multi-Gaussian approximation of an exponential or de Vaucouleurs profile (amplitudes and variances fitted to
the Sersic profiles, in units of r_e^2), a star a double-Gaussian PSF (core + wings). Pixel integration adds
1/12 px^2 to each variance (the box of a pixel) for extended components and uses erf-integrated profiles for
point sources, so sub-pixel positions render correctly.

The reference (template) stamp of a source is rendered once, with the reference seeing and a deep, correlated
noise (ZTF references are co-adds of 15-40 resampled frames: noise ~4x lower than a science frame, lag-1
autocorrelation ~0.3, as measured on the real cutouts in ../shared/data). Every alert then re-scales it to the
science zero point and background, as the ZTF stamps are. The difference is built the way an image subtraction
makes it, `science - matched reference`, so its noise is the science noise minus the reference noise (sci/diff
noise correlate, ref/diff anti-correlate, as in the real stamps), plus subtraction residuals of the static
scene: a flux-scaling error (eps * S), a registration error (-delta . grad S) and a PSF-width mismatch
(kappa * laplacian S), which leave the familiar dipoles and rings at bright stars and galaxy cores.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np
from scipy.special import erf

try:
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - isal is a dependency; zlib keeps the simulator working without it
    _isal_zlib = None

PIXEL_SCALE = 1.01  # arcsec per ZTF pixel
STAMP = 63
CENTER = 31  # index of the central pixel of a full stamp
# Pixel noise of a science stamp: sigma^2 = NOISE_FLOOR^2 + counts / EFFECTIVE_GAIN, fitted on the real stamps
# (MAD noise vs background level over the kowalski/fink cutouts: sky 86 -> 5.1 DN, 224 -> 6.2, 385 -> 7.5).
EFFECTIVE_GAIN = 9.7
NOISE_FLOOR = 4.1
SATURATION = 38000.0  # DN above sky where ZTF masks pixels (NaN in the stamps)

# Multi-Gaussian approximations of Sersic profiles (amplitude fractions, variances in r_e^2), least-squares fits of
# the n=1 (exponential, 4 terms, 0.7% rms) and n=4 (de Vaucouleurs, 6 terms, 3.5% rms) profiles.
MOG = {
    "exp": (np.array([0.00821, 0.09512, 0.42146, 0.47522]), np.array([0.01456, 0.10713, 0.46981, 1.6407])),
    "dev": (np.array([0.00119, 0.00877, 0.04003, 0.12991, 0.30998, 0.51011]),
            np.array([1.38136e-05, 2.25802e-04, 2.24194e-03, 1.88118e-02, 1.59039e-01, 1.77095e+00])),
}
PSF_WING_FRACTION = 0.12
PSF_WING_SCALE = 2.3  # wing sigma / core sigma

_GRID = np.arange(STAMP, dtype=np.float64)
_EDGES = np.arange(STAMP + 1, dtype=np.float64) - 0.5
_SQRT2 = np.sqrt(2.0)


def psf_sigmas(fwhm_px: float) -> tuple[float, float]:
    """Core and wing sigma (px) of the double-Gaussian PSF whose overall FWHM is about `fwhm_px`."""
    core = fwhm_px / 2.3548 * 0.95
    return core, core * PSF_WING_SCALE


def _profile_1d(x0: float, sigma: float) -> np.ndarray:
    """Pixel-integrated 1-D Gaussian (unit area) centred at x0 on the 63-pixel grid."""
    c = erf((_EDGES - x0) / (sigma * _SQRT2))
    return 0.5 * np.diff(c)


def add_point(img: np.ndarray, x: float, y: float, flux: float, fwhm_px: float) -> None:
    """Add a point source (double-Gaussian PSF) of total `flux` counts at pixel position (x, y)."""
    if flux == 0.0:
        return
    s1, s2 = psf_sigmas(fwhm_px)
    w = PSF_WING_FRACTION
    # the four 1-D profiles (y/x for core/wing) from one erf call
    z = (_EDGES[None, :] - np.array([[y], [x], [y], [x]])) / (np.array([[s1], [s1], [s2], [s2]]) * _SQRT2)
    p = 0.5 * np.diff(erf(z), axis=1)
    img += np.outer(p[0] * (flux * (1 - w)), p[1])
    img += np.outer(p[2] * (flux * w), p[3])


def add_sharp(img: np.ndarray, x: float, y: float, flux: float, sigma: float) -> None:
    """A profile much sharper than the PSF (cosmic ray, hot pixel): one Gaussian, no wings."""
    img += flux * np.outer(_profile_1d(y, sigma), _profile_1d(x, sigma))


def add_galaxy(img: np.ndarray, x: float, y: float, flux: float, re_px: float, q: float, pa: float,
               profile: str, psf_sigma: float) -> None:
    """Add an elliptical Sersic-like galaxy (exp/dev mixture) convolved with a Gaussian PSF of `psf_sigma`.

    Each Gaussian term is evaluated only within 4.5 sigma of the centre (small background galaxies touch a few
    hundred pixels, not the whole stamp)."""
    if flux == 0.0:
        return
    amps, variances = MOG[profile]
    c, s = np.cos(pa), np.sin(pa)
    extra = psf_sigma * psf_sigma + 1.0 / 12.0
    re2 = re_px * re_px
    n = img.shape[0]
    for a, var in zip(amps, variances):
        va = var * re2 + extra
        vb = var * re2 * q * q + extra
        h = 4.5 * np.sqrt(va)
        x0, x1 = max(int(x - h), 0), min(int(x + h) + 2, n)
        y0, y1 = max(int(y - h), 0), min(int(y + h) + 2, n)
        if x0 >= x1 or y0 >= y1:
            continue
        dx = _GRID[None, x0:x1] - x
        dy = _GRID[y0:y1, None] - y
        u = c * dx + s * dy  # rotate into the galaxy frame: the PSF is round, so the covariance stays diagonal
        v = -s * dx + c * dy
        norm = flux * a / (2 * np.pi * np.sqrt(va * vb))
        img[y0:y1, x0:x1] += norm * np.exp((-0.5 / va) * u * u - (0.5 / vb) * v * v)


def add_points(img: np.ndarray, xs: np.ndarray, ys: np.ndarray, fluxes: np.ndarray, fwhm_px: float) -> None:
    """Many point sources at once: pixel-integrated profiles for all of them, summed by two matrix products."""
    if len(xs) == 0:
        return
    for sigma, w in zip(psf_sigmas(fwhm_px), (1 - PSF_WING_FRACTION, PSF_WING_FRACTION)):
        px = 0.5 * np.diff(erf((_EDGES[None, :] - xs[:, None]) / (sigma * _SQRT2)), axis=1)
        py = 0.5 * np.diff(erf((_EDGES[None, :] - ys[:, None]) / (sigma * _SQRT2)), axis=1)
        img += (py * (fluxes * w)[:, None]).T @ px


def render_scene(components: list[tuple], band: int, zp: float, fwhm_px: float, center: tuple[float, float]
                 ) -> np.ndarray:
    """Noise-free image (counts) of the static scene for one band/zero point/seeing.

    Each component: ("point", dx_px, dy_px, mags) or ("galaxy", dx_px, dy_px, mags, re_px, q, pa, profile), with
    offsets relative to the stamp position `center` (x, y) and `mags` indexed by fid (1=g, 2=r, 3=i)."""
    return np.tensordot(component_fluxes(components, band, zp), unit_stack(components, fwhm_px, center), 1)


def component_fluxes(components: list[tuple], band: int, zp: float) -> np.ndarray:
    return np.array([10.0 ** (-0.4 * (c[3][band] - zp)) for c in components])


def unit_stack(components: list[tuple], fwhm_px: float, center: tuple[float, float],
               sigma: float | None = None) -> np.ndarray:
    """(K, 63, 63): each component rendered with unit flux, with the double-Gaussian PSF of `fwhm_px` or, when
    `sigma` is given, a single Gaussian of that sigma (the sharp base image of `psf_blur`)."""
    out = np.zeros((len(components), STAMP, STAMP))
    if sigma is None:
        s1, s2 = psf_sigmas(fwhm_px)
        terms = ((s1, 1 - PSF_WING_FRACTION), (s2, PSF_WING_FRACTION))
    else:
        s1 = sigma
        terms = ((sigma, 1.0),)
    cx, cy = center
    pts = [k for k, c in enumerate(components) if c[0] == "point"]
    if pts:
        xs = np.array([cx + components[k][1] for k in pts])
        ys = np.array([cy + components[k][2] for k in pts])
        acc = 0.0
        for sig, w in terms:
            px = 0.5 * np.diff(erf((_EDGES[None, :] - xs[:, None]) / (sig * _SQRT2)), axis=1)
            py = 0.5 * np.diff(erf((_EDGES[None, :] - ys[:, None]) / (sig * _SQRT2)), axis=1)
            acc = acc + w * (py[:, :, None] * px[:, None, :])
        out[pts] = acc
    for k, comp in enumerate(components):
        if comp[0] == "point":
            continue
        _, dx, dy, _, re_px, q, pa, profile = comp
        add_galaxy(out[k], cx + dx, cy + dy, 1.0, re_px, q, pa, profile, s1)
    return out


BASE_SIGMA = 0.2  # px: PSF of the sharp base render of the galaxies, degraded to each exposure's seeing


@functools.lru_cache(maxsize=8192)
def _kernel(variance: float) -> np.ndarray:
    """Normalised sampled Gaussian whose *discrete* variance is `variance` (px^2). Discrete convolutions add
    variances exactly, so this is what makes a blurred base image have the target PSF width even for kernels
    narrower than a pixel (where a pixel-integrated Gaussian's variance is not sigma^2 + 1/12)."""
    def disc_var(s):
        h = int(np.ceil(5 * s)) + 1
        d = np.arange(-h, h + 1)
        w = np.exp(-0.5 * (d / s) ** 2)
        return float((w * d * d).sum() / w.sum())
    lo, hi = 0.05, max(np.sqrt(variance) * 1.5, 0.2)
    for _ in range(32):
        mid = 0.5 * (lo + hi)
        if disc_var(mid) < variance:
            lo = mid
        else:
            hi = mid
    s = 0.5 * (lo + hi)
    h = int(np.ceil(5 * s)) + 1
    d = np.arange(-h, h + 1)
    w = np.exp(-0.5 * (d / s) ** 2)
    return w / w.sum()


@functools.lru_cache(maxsize=8192)
def blur_matrix(variance: float) -> np.ndarray:
    """(63, 63) Toeplitz matrix M: (M @ img) convolves img along axis 0 with `_kernel(variance)`; light leaving
    the stamp is lost, as it would be."""
    k = _kernel(variance)
    h = len(k) // 2
    m = np.zeros((STAMP, STAMP))
    for off, w in zip(range(-h, h + 1), k):
        idx = np.arange(max(0, -off), min(STAMP, STAMP - off))
        m[idx + off, idx] = w
    m.setflags(write=False)
    return m


def psf_blur(base: np.ndarray, fwhm_px: float, sigma0: float = BASE_SIGMA) -> np.ndarray:
    """A base image rendered with a Gaussian PSF of sigma0, seen through the double-Gaussian PSF of `fwhm_px`.

    Gaussians convolve into Gaussians (variances add): each PSF term blurs the base by the missing variance
    sigma^2 - sigma0^2, as two 63x63 matrix products (separable)."""
    out = None
    for sig, w in zip(psf_sigmas(fwhm_px), (1 - PSF_WING_FRACTION, PSF_WING_FRACTION)):
        b = blur_matrix(round(float(max(sig * sig - sigma0 * sigma0, 1e-3)), 4))
        term = w * (b @ base @ b.T)
        out = term if out is None else out + term
    return out


def correlated_noise(rng: np.random.Generator, sigma: float, shape=(STAMP, STAMP), rho: float = 0.3) -> np.ndarray:
    """Gaussian noise of rms `sigma` with lag-1 autocorrelation ~rho (a 3-tap smoothing along both axes)."""
    # taps (a, 1, a): lag-1 correlation 2a / (1 + 2a^2) per axis -> a from rho
    a = (1 - np.sqrt(max(1 - 2 * rho * rho, 0.0))) / (2 * rho) if rho > 0 else 0.0
    n = rng.standard_normal((shape[0] + 2, shape[1] + 2))
    n = n[:, 1:-1] + a * (n[:, :-2] + n[:, 2:])
    n = n[1:-1, :] + a * (n[:-2, :] + n[2:, :])
    return n * (sigma / (1 + 2 * a * a))


def subtraction_residual(scene: np.ndarray, eps: float, shift: tuple[float, float], kappa: float) -> np.ndarray:
    """First-order residual of a subtraction of `scene` from itself: flux scale error eps, registration error
    shift = (dx, dy) px, PSF-width mismatch kappa (px^2; > 0: reference sharper than the matched science)."""
    gy, gx = np.gradient(scene)
    res = eps * scene - shift[0] * gx - shift[1] * gy
    if kappa != 0.0:
        lap = np.gradient(gx, axis=1) + np.gradient(gy, axis=0)
        res += kappa * lap
    return res


def crop(img: np.ndarray, crop_box: tuple[int, int, int, int] | None) -> np.ndarray:
    """Cut a stamp at a CCD edge: crop_box = (y0, y1, x0, x1) of the part of the 63x63 stamp on the detector."""
    if crop_box is None:
        return img
    y0, y1, x0, x1 = crop_box
    return img[y0:y1, x0:x1]


@functools.lru_cache(maxsize=256)
def _header(ny: int, nx: int) -> bytes:
    header = b"".join([_card("SIMPLE", True), _card("BITPIX", -32), _card("NAXIS", 2), _card("NAXIS1", nx),
                       _card("NAXIS2", ny), b"END".ljust(80)])
    return header.ljust(2880, b" ")


@functools.lru_cache(maxsize=64)
def derivative_matrix(n: int = STAMP) -> np.ndarray:
    """(n, n) D with D @ f == np.gradient(f, axis=0) (central differences, one-sided at the edges)."""
    d = np.zeros((n, n))
    i = np.arange(1, n - 1)
    d[i, i + 1] = 0.5
    d[i, i - 1] = -0.5
    d[0, 0], d[0, 1] = -1.0, 1.0
    d[n - 1, n - 2], d[n - 1, n - 1] = -1.0, 1.0
    d.setflags(write=False)
    return d


def _card(key: str, value) -> bytes:
    if isinstance(value, bool):
        v = "T" if value else "F"
    else:
        v = str(value)
    return f"{key:<8}= {v:>20}".ljust(80).encode("ascii")


def fits_bytes(img: np.ndarray) -> bytes:
    """Minimal FITS file of a 2-D image: primary HDU, BITPIX=-32, big-endian float32, padded to 2880 bytes.

    The header is what astropy needs and nothing that changes between runs (no DATE card), so the same pixels
    always give the same bytes."""
    ny, nx = img.shape
    header = _header(ny, nx)
    data = np.ascontiguousarray(img, dtype=">f4").tobytes()
    return header + data + b"\0" * (-len(data) % 2880)


def gzip_bytes(data: bytes, level: int = 1) -> bytes:
    """gzip member with a fixed header (mtime 0): deterministic for the same input and compressor.

    ISA-L (`isal`, a dependency) deflates these noisy float32 stamps ~9x faster than zlib (0.15 vs 1.3 ms a
    stamp), which is what makes 100,000 alerts in two minutes possible; zlib is the fallback where isal is
    missing (same pixels, different compressed bytes)."""
    if _isal_zlib is not None:
        return _isal_zlib.compress(data, min(level, 3), wbits=31)
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def stamp_bytes(img: np.ndarray, level: int = 1) -> bytes:
    """`stampData` of a ZTF cutout: gzip-compressed FITS."""
    return gzip_bytes(fits_bytes(img), level)
