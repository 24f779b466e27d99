"""The observing process: nightly weather and seeing shared by every source, per-field cadence, per-exposure zero
point, sky, noise and limiting magnitude.

Numbers are calibrated on the real packets in ../shared/data (kowalski + fink sets): science stamps sit on a sky
of ~80-150 DN in g and ~150-280 DN in r with a per-pixel noise of 5-8 DN; zero points 26.1-26.45
on clear nights; the 5-sigma limit of the difference image (`diffmaglim`) is ~20.0-20.8 in normal conditions,
which is about 2.2x the flux noise a PSF fit on white pixel noise would give (ZTF's global noise estimate
includes the correlated noise of resampling and PSF matching), so that factor is applied. Seeing is lognormal
around 2.1" (1.01"/px).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from btsbot_jax.sim.render import EFFECTIVE_GAIN, NOISE_FLOOR, PIXEL_SCALE

JD_SURVEY_START = 2458194.5  # 2018-03-17, start of ZTF survey operations
JD_FIRST_EVENT = 2458400.5  # events are placed between these dates (2018-10 .. 2024-12)
JD_LAST_EVENT = 2460650.5
JD_SURVEY_END = JD_LAST_EVENT + 800.0  # make_nights' last night: the windows after the last events fit inside
NID_OFFSET = 2457754.5  # ZTF night id = floor(jd - NID_OFFSET) (nid 2475 on 2023-10-12)
NOISE_CORRELATION = 2.2  # global-noise PSF flux error / white-noise PSF flux error
ZP0 = {1: 26.33, 2: 26.22, 3: 25.80}
SKY0 = {1: 95.0, 2: 175.0, 3: 290.0}  # dark-sky background per 30 s exposure [DN]
SYNODIC = 29.530589
NEW_MOON_JD = 2458206.5  # a new moon (2018-03-17)


@dataclasses.dataclass
class Nights:
    """Per-night conditions over the whole survey, drawn once from the run's seed (shared by every source)."""

    first_night: int  # int JD of night 0 (night n covers JD first_night + n + [0.6, 1.0))
    clear: np.ndarray  # bool: the dome opened
    seeing: np.ndarray  # median seeing of the night, arcsec
    cloud: np.ndarray  # typical extinction from cloud, mag
    moon: np.ndarray  # illuminated fraction of the moon

    def index(self, jd: np.ndarray | float) -> np.ndarray:
        return (np.floor(np.asarray(jd) - 0.5).astype(np.int64) - self.first_night)


def make_nights(seed: int) -> Nights:
    rng = np.random.default_rng([seed, 0x5EA5])
    first = int(np.floor(JD_SURVEY_START - 0.5)) - 400
    n = int(JD_SURVEY_END - first)
    # two-state weather chain: P(bad -> bad) 0.4, P(good -> bad) 0.2: about 1 night in 4 lost, in runs of 1.7
    # nights on average. With the scheduler's cadence this gives the in-season gaps of the real packets' 30-day
    # histories (99th percentile 7-9 nights, 0-0.2% of 10 nights or more); the 0.62 / 0.12 chain before
    # docs/sim_to_real.md section 8 gave weeks-long runs (99th percentile 11 nights)
    clear = np.empty(n, bool)
    state = True
    u = rng.random(n)
    for i in range(n):
        state = (u[i] > 0.2) if state else (u[i] > 0.4)
        clear[i] = state
    seeing = np.exp(rng.normal(np.log(2.1), 0.2, n))
    cloud = np.where(rng.random(n) < 0.15, rng.exponential(0.45, n), rng.exponential(0.04, n))
    phase = np.mod((first + np.arange(n) + 0.5 - NEW_MOON_JD) / SYNODIC, 1.0)
    moon = 0.5 * (1 - np.cos(2 * np.pi * phase))
    return Nights(first, clear, seeing, cloud, moon)


@dataclasses.dataclass
class Visits:
    """Exposures covering one source, in time order (arrays of the same length)."""

    jd: np.ndarray
    fid: np.ndarray
    seeing: np.ndarray  # arcsec
    zp: np.ndarray
    sky: np.ndarray  # DN per pixel
    sigma_pix: np.ndarray  # science noise per pixel, DN
    sigma_flux: np.ndarray  # 1-sigma PSF-flux error of the difference image (global estimate), DN
    diffmaglim: np.ndarray

    def __len__(self) -> int:
        return len(self.jd)

    @property
    def fwhm_px(self) -> np.ndarray:
        return self.seeing / PIXEL_SCALE


# filter sequences of one night's visits of a field and their probabilities (ZTF: g and r pairs, some singles,
# a few i-band exposures of the partnership survey)
_SEQUENCES = ((2, 1), (1, 2), (2,), (1,), (2, 1, 2), (1, 2, 1), (2, 1, 3), (2, 3))
_SEQ_P = np.array([0.34, 0.24, 0.12, 0.07, 0.10, 0.05, 0.05, 0.03])


def schedule(rng: np.random.Generator, nights: Nights, t_lo: float, t_hi: float, ra: float,
             p_visit: float) -> tuple[np.ndarray, np.ndarray]:
    """JDs and filters of the exposures covering a position between t_lo and t_hi.

    ZTF's scheduler revisits a field on a cadence (Bellm et al. 2019: every 2-3 nights in the public survey): the
    field is due again `1 / p_visit` nights (1.4-3.3, p_visit 0.3-0.7) after its last visit, observed on the first
    clear night it is due, and skipped on a due night 1 time in 6 (the scheduler's other priorities). With
    make_nights' weather, 0.1% of the in-season gaps are of 10 nights or more, as in the real packets' 30-day
    histories (0-0.2%); a Bernoulli draw per night (before docs/sim_to_real.md section 8) gave 2.0%. The position
    is unobservable for ~3.5 months a year around conjunction with the Sun (from its RA)."""
    n0 = max(int(np.floor(t_lo - 0.5)), nights.first_night)
    n1 = min(int(np.floor(t_hi - 0.5)), nights.first_night + len(nights.clear) - 1)  # no night past the survey's end
    night = np.arange(n0, n1 + 1)
    idx = night - nights.first_night
    # season: the Sun is at RA ~ ra 0 on March 21 (JD 2458199); opposition half a year later
    days_from_opp = np.mod(night + 0.5 - (2458199.5 + 182.6 + ra / 360.0 * 365.25) + 182.6, 365.25) - 182.6
    up = nights.clear[idx] & (np.abs(days_from_opp) < 128.0)
    cadence = 1.0 / p_visit
    step = np.floor(cadence) + (rng.random(len(night)) < cadence - np.floor(cadence))  # the interval after a visit
    skip = rng.random(len(night)) < 1 / 6
    ok = np.zeros(len(night), bool)
    due = int(rng.integers(0, int(np.ceil(cadence))))  # nights until the field is first due
    for i in range(len(night)):
        if due <= 0 and up[i] and not skip[i]:
            ok[i] = True
            due = int(step[i])
        due -= 1
    night = night[ok]
    seq_idx = rng.choice(len(_SEQUENCES), size=len(night), p=_SEQ_P / _SEQ_P.sum())
    jds, fids = [], []
    starts = night + 0.5 + rng.uniform(0.13, 0.42, len(night))  # UT ~3-10 h: the Palomar night
    for s, k in zip(starts, seq_idx):
        seq = _SEQUENCES[k]
        t = s
        for f in seq:
            jds.append(t)
            fids.append(f)
            t += rng.uniform(0.015, 0.07)
    return np.asarray(jds, np.float64), np.asarray(fids, np.int64)


def conditions(rng: np.random.Generator, nights: Nights, jd: np.ndarray, fid: np.ndarray) -> Visits:
    """Seeing, zero point, sky and noise of each exposure."""
    idx = nights.index(jd)
    n = len(jd)
    seeing = np.clip(nights.seeing[idx] * np.exp(rng.normal(0, 0.08, n)), 1.05, 6.0)
    seeing = np.where(fid == 1, seeing * 1.04, seeing)
    zp0 = np.array([0.0, ZP0[1], ZP0[2], ZP0[3]])[fid]
    cloud = nights.cloud[idx] * np.exp(rng.normal(0, 0.3, n))
    airmass = 1.0 + rng.exponential(0.25, n)
    zp = zp0 - cloud - 0.12 * (airmass - 1.0) + rng.normal(0, 0.03, n)
    moon = nights.moon[idx]
    sky0 = np.array([0.0, SKY0[1], SKY0[2], SKY0[3]])[fid]
    moon_gain = np.array([0.0, 2.2, 1.2, 0.8])[fid]
    sky = sky0 * (1 + moon_gain * moon ** 2 * rng.uniform(0.3, 1.0, n)) * np.exp(rng.normal(0, 0.08, n))
    sky = sky * 10 ** (-0.4 * cloud * 0.5)
    sigma_pix = np.sqrt(sky / EFFECTIVE_GAIN + NOISE_FLOOR ** 2)
    psf_sigma = seeing / PIXEL_SCALE / 2.3548
    # the subtraction adds the (deep) reference noise: ~3% more than the science alone
    sigma_flux = NOISE_CORRELATION * 1.03 * sigma_pix * np.sqrt(4 * np.pi) * psf_sigma
    diffmaglim = zp - 2.5 * np.log10(5 * sigma_flux)
    return Visits(jd, fid, seeing, zp, sky, sigma_pix, sigma_flux, diffmaglim)
