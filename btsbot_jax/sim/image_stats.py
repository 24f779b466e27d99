"""Statistics of a difference cutout around the candidate: what a real-bogus classifier sees in the image.

ZTF's deep real-bogus score (`drb`, Duev et al. 2019) is a CNN over the triplet; on real packets it tracks a few
simple properties of the difference stamp: a clean point source is a positive blob with the PSF's width, a
subtraction dipole carries as much negative as positive flux, a cosmic ray or hot pixel is far sharper than the
PSF, a bad column is a line. These functions measure those properties on any 2-D stamp (NaN-masked pixels
ignored), so that the simulator can derive `drb` from what it rendered and `compare.py` can hold simulated
against real stamps with one yardstick.

All statistics work on the stamp centre (the candidate position) and the pixel noise from the stamp's outer
ring (median absolute deviation), so they do not depend on the flux scale of the image.
"""

from __future__ import annotations

import numpy as np

CORE = 2  # half-size of the central box (5x5) where the candidate's peak is searched
WINDOW = 7  # half-size of the analysis window (15x15)


def _center(img: np.ndarray) -> tuple[int, int]:
    return img.shape[0] // 2, img.shape[1] // 2


def noise_sigma(img: np.ndarray) -> float:
    """Robust pixel noise of a stamp: 1.4826 x MAD of the pixels outside the central 21x21 box."""
    a = np.asarray(img, np.float64)
    cy, cx = _center(a)
    mask = np.ones(a.shape, bool)
    mask[max(cy - 10, 0):cy + 11, max(cx - 10, 0):cx + 11] = False
    v = a[mask & np.isfinite(a)]
    if v.size < 20:
        v = a[np.isfinite(a)]
    if v.size == 0:
        return float("nan")
    s = 1.4826 * float(np.median(np.abs(v - np.median(v))))
    return s if s > 0 else float(np.std(v)) or 1e-9


def _window(img: np.ndarray, half: int = WINDOW) -> np.ndarray:
    a = np.asarray(img, np.float64)
    cy, cx = _center(a)
    w = np.full((2 * half + 1, 2 * half + 1), np.nan)
    y0, y1 = max(cy - half, 0), min(cy + half + 1, a.shape[0])
    x0, x1 = max(cx - half, 0), min(cx + half + 1, a.shape[1])
    w[y0 - (cy - half):y1 - (cy - half), x0 - (cx - half):x1 - (cx - half)] = a[y0:y1, x0:x1]
    return w


def _peak(w: np.ndarray) -> tuple[int, int]:
    """Position of the brightest finite pixel in the central 5x5 of a window (its centre if none)."""
    h = w.shape[0] // 2
    core = w[h - CORE:h + CORE + 1, h - CORE:h + CORE + 1]
    if not np.isfinite(core).any():
        return h, h
    k = int(np.nanargmax(core))
    return h - CORE + k // core.shape[1], h - CORE + k % core.shape[1]


def negative_fraction(img: np.ndarray, radius: float = 5.0) -> float:
    """Share of the absolute flux within `radius` px of the centre that is negative: ~0 for a clean positive
    source, ~0.5 for a subtraction dipole (and for pure noise)."""
    w = _window(img)
    h = w.shape[0] // 2
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1]
    v = w[(np.hypot(yy, xx) <= radius) & np.isfinite(w)]
    tot = np.abs(v).sum()
    return float(-v[v < 0].sum() / tot) if tot > 0 else 0.5


def peak_to_sum(img: np.ndarray) -> float:
    """Brightest central pixel over the positive flux of the 5x5 box around it: ~0.1-0.2 for a PSF of 2-3 px
    FWHM, -> 1 for a single hot pixel or a sharp cosmic ray."""
    w = _window(img)
    py, px = _peak(w)
    box = w[py - CORE:py + CORE + 1, px - CORE:px + CORE + 1]
    pos = np.nansum(np.clip(box, 0, None))
    return float(w[py, px] / pos) if pos > 0 and np.isfinite(w[py, px]) else 0.0


def sharpness(img: np.ndarray) -> float:
    """Peak over the mean of its 8 neighbours, minus 1 (a discrete Laplacian, normalised): ~0.3-1 for a PSF of
    2-3 px FWHM, >> 1 for a cosmic ray or a hot pixel, ~0 or negative on noise."""
    w = _window(img)
    py, px = _peak(w)
    nb = w[py - 1:py + 2, px - 1:px + 2].copy()
    centre = nb[1, 1]
    nb[1, 1] = np.nan
    m = np.nanmean(nb) if np.isfinite(nb).any() else np.nan
    if not np.isfinite(centre) or not np.isfinite(m) or m <= 0:
        return 10.0 if np.isfinite(centre) and centre > 0 else 0.0
    return float(centre / m - 1.0)


def psf_correlation(img: np.ndarray, fwhm_px: float = 2.2) -> float:
    """Pearson correlation of the central 15x15 pixels with a round Gaussian PSF of `fwhm_px` centred on the
    peak: ~1 for a clean bright point source, lower for a faint one (noise), a dipole, a line or a cosmic ray."""
    w = _window(img)
    py, px = _peak(w)
    h = w.shape[0] // 2
    yy, xx = np.mgrid[0:w.shape[0], 0:w.shape[1]]
    s = max(fwhm_px, 0.8) / 2.3548
    g = np.exp(-0.5 * ((yy - py) ** 2 + (xx - px) ** 2) / s ** 2)
    keep = np.isfinite(w) & (np.hypot(yy - h, xx - h) <= h)
    if keep.sum() < 10:
        return 0.0
    a, b = w[keep], g[keep]
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def peak_snr(img: np.ndarray) -> float:
    """Flux in the 3x3 box at the peak over its noise (3 x the pixel noise): the image's own S/N of the blob."""
    w = _window(img)
    py, px = _peak(w)
    s = noise_sigma(img)
    box = w[py - 1:py + 2, px - 1:px + 2]
    return float(np.nansum(box) / (3.0 * s)) if np.isfinite(s) and s > 0 else 0.0


STAT_NAMES = ("negative_fraction", "peak_to_sum", "sharpness", "psf_correlation", "peak_snr")


def difference_stats(img: np.ndarray, fwhm_px: float = 2.2, snr: bool = True) -> dict[str, float]:
    """All the statistics of one difference stamp (the candidate at its centre); `snr=False` skips the S/N (the
    one statistic that needs the noise of the whole stamp, and that `drb_logit` does not use)."""
    out = {"negative_fraction": negative_fraction(img), "peak_to_sum": peak_to_sum(img),
           "sharpness": sharpness(img), "psf_correlation": psf_correlation(img, fwhm_px)}
    if snr:
        out["peak_snr"] = peak_snr(img)
    return out


# The simulated real-bogus score as a function of the rendered difference stamp (generate.py): the logit rises
# with the PSF correlation and drops for a peak far sharper than the PSF (a large peak/sum ratio or sharpness)
# and for a negative lobe. Slopes and pivots were chosen on the g/r real packets of ../shared/data, where the
# alerts with drb < 0.5 are the sharp-peaked, lobed ones (medians: peak/sum 0.25 vs 0.17, sharpness 9 vs 1.6,
# negative fraction 0.31 vs 0.19), as the value of the statistic that best ranks them below the rest.
DRB_INTERCEPT = 7.0
DRB_PSF_SLOPE = 4.0
DRB_PSF_PIVOT = 0.55
DRB_SHARP_SLOPE = 2.0
DRB_SHARP_PIVOT = 2.5
DRB_NEG_SLOPE = 30.0
DRB_NEG_PIVOT = 0.25
DRB_P2S_SLOPE = 40.0
DRB_P2S_PIVOT = 0.2


def drb_logit(stats: dict[str, float]) -> float:
    """Logit of a deep real-bogus score from `difference_stats` of the candidate's difference stamp."""
    z = DRB_INTERCEPT + DRB_PSF_SLOPE * (stats["psf_correlation"] - DRB_PSF_PIVOT)
    z -= DRB_SHARP_SLOPE * np.log1p(max(stats["sharpness"] - DRB_SHARP_PIVOT, 0.0))
    z -= DRB_NEG_SLOPE * max(stats["negative_fraction"] - DRB_NEG_PIVOT, 0.0)
    z -= DRB_P2S_SLOPE * max(stats["peak_to_sum"] - DRB_P2S_PIVOT, 0.0)
    return float(z)


def realness_statistic(img: np.ndarray, fwhm_px: float = 2.2) -> float:
    """One number for how much the difference stamp looks like a clean point source: `drb_logit` of its
    statistics (PSF-like, not too sharp, no negative lobe score high). The yardstick both the simulated drb is
    built from and the real drb is checked against."""
    return drb_logit(difference_stats(img, fwhm_px, snr=False))
