"""Source population: which sources exist, of which BTS set, with which light curve, host and neighbours.

The four sets of the BTS training set (Rehemtulla et al. 2024) and their sub-types:

- trues (label 1): extragalactic transients whose light curve peaks at <= 18.5 mag in g or r, as ZTF saw it (the
  pipeline draws a true again if its brightest alert is fainter than TRUE_SEEN_LIMIT): SN Ia, II (P),
  Ibc, IIn/SLSN, TDE (nuclear); in a host galaxy at an offset drawn from the host's light, some nuclear, some
  hostless (host below the PS1 limit), hosts of varied size and brightness.
- dims (label 0): the same physics peaking fainter than 18.5 (number counts rise to the faint end, so many are
  just fainter: 18.5-19).
- vars (label 0): AGN (variable nucleus of a galaxy), QSOs (point sources), CVs (dwarf-nova outbursts on a
  faint star), periodic variable stars (RR Lyrae, eclipsing binaries, long-period variables; stellar sgscore,
  tiny distpsnr), with years of detection history.
- rejects (label 0): bogus detections (subtraction dipoles at bright stars, galaxy-core residuals, cosmic rays,
  hot pixels, bad columns, ghosts) and real sources scanners would not save (asteroids, stellar flares,
  flickering galaxy nuclei, and a few real SNe that were not followed up).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from btsbot_jax.sim import lightcurves as lcs
from btsbot_jax.sim.render import CENTER, PIXEL_SCALE, STAMP
from btsbot_jax.sim.survey import JD_FIRST_EVENT, JD_LAST_EVENT, JD_SURVEY_END, JD_SURVEY_START

SETS = ("trues", "vars", "dims", "rejects")
LABELS = {"trues": 1, "vars": 0, "dims": 0, "rejects": 0}
# Table 1 of the paper, after the cleaning cuts: (sources, alerts) of each set
TABLE1_CLEANED = {"trues": (5206, 264317), "vars": (1126, 109934), "dims": (8824, 223934), "rejects": (4402, 241478)}
# the source mix of TABLE1_CLEANED, to three decimals (assign_sets draws exactly these)
SET_FRACTIONS = {"trues": 0.266, "vars": 0.058, "dims": 0.451, "rejects": 0.225}
BRIGHT_LIMIT = 18.5
# A true is a transient BTS saw peak at <= 18.5 mag: its label comes from ZTF's own light curve (Fremling et al. 2020;
# Perley et al. 2020), so a bright SN whose peak fell in a gap of the survey (its alerts all fainter) would not be
# one. The pipeline draws such a source again unless its brightest g/r alert is at most this (0.3 mag of slack for
# the photometry BTS measures its peak with: forced photometry, a fit through the peak).
TRUE_SEEN_LIMIT = BRIGHT_LIMIT + 0.3
MAX_DRAWS = 50

TRANSIENT_TYPES = (("SN Ia", 0.62), ("SN II", 0.22), ("SN Ibc", 0.08), ("SN IIn/SLSN", 0.04), ("TDE", 0.04))
# The trues' mix is that of the catalogue BTS selected (about two thirds SNe Ia: 512 SN Ia host galaxies among the 761
# SNe of its first nine months, Fremling et al. 2020), the rest in TRANSIENT_TYPES' proportions. It is the mix *after*
# the TRUE_SEEN_LIMIT selection, so a true keeps its sub-type when it is drawn again (else the redraws, which long-lived
# types rarely need, would leave 57% SNe Ia: docs/sim_to_real.md, section 7).
TRUE_TYPES = (("SN Ia", 0.67), ("SN II", 0.191), ("SN Ibc", 0.069), ("SN IIn/SLSN", 0.035), ("TDE", 0.035))
_TRUE_TYPE_STREAM = 0x5B7  # the sub-type's own random stream, the same for every draw of a true (draws < MAX_DRAWS)
VAR_TYPES = (("AGN", 0.30), ("QSO", 0.15), ("CV", 0.20), ("RR Lyr", 0.12), ("EB", 0.12), ("LPV", 0.11))
REJECT_TYPES = (("dipole", 0.34), ("galaxy residual", 0.10), ("cosmic ray", 0.08), ("hot pixel", 0.04),
                ("bad column", 0.06), ("ghost", 0.06), ("asteroid", 0.08), ("stellar flare", 0.08),
                ("nuclear flicker", 0.09), ("unsaved SN", 0.07))
# share of the unsaved SNe (rejects) that peak brighter than 18.5: the ones missed at the end of a season
UNSAVED_BRIGHT_SHARE = 0.15
RECURRENT_SPAN = 4.0  # docs/sim_to_real.md, section 9
VAR_SPAN = 1.6
BOGUS_TYPES = {"dipole", "galaxy residual", "cosmic ray", "hot pixel", "bad column", "ghost"}

CCD_NX, CCD_NY = 3072, 3080
PS1_RADIUS = 30.0  # arcsec, the radius of ZTF's PS1 cross-match
PS1_LIMIT = 22.5
REF_LIMIT = 23.0
_ALPHABET = "abcdefghijklmnopqrstuvwxyz"


@dataclasses.dataclass
class Source:
    index: int
    object_id: str
    set: str
    label: int
    subtype: str
    ra: float
    dec: float
    field: int
    rcid: int
    tblid: int
    xpos: float
    ypos: float
    t_lo: float
    t_hi: float
    p_visit: float
    lc: object | None  # light-curve model of the point source at the candidate position (lightcurves.py)
    scene: list  # static components for rendering, offsets in px from the candidate
    ps1: list  # (dist_arcsec, sgscore, {1,2,3,4: g,r,i,z mag}, objid) sorted by distance, within 30"
    ref_nearest: dict  # distnr_px, magnr per band, sigmagnr, chinr, sharpnr
    ncov_prior: int
    ndet_prior: int
    jd_first_prior: float | None
    realness: float  # mean logit of the deep real-bogus score of this source's detections
    ref_seeing: float
    subpix: tuple[float, float]
    artefact: dict | None
    truth: dict  # peak magnitude, host properties... written to the truth table
    draw: int = 0  # 0, or which redraw of this source (a true that ZTF did not see bright: TRUE_SEEN_LIMIT)

    @property
    def crop_box(self) -> tuple[int, int, int, int] | None:
        """Part of the 63x63 stamp that lies on the detector, or None if the whole stamp does."""
        x0 = max(0, CENTER - int(round(self.xpos)))
        x1 = min(STAMP, CENTER + (CCD_NX - int(round(self.xpos))))
        y0 = max(0, CENTER - int(round(self.ypos)))
        y1 = min(STAMP, CENTER + (CCD_NY - int(round(self.ypos))))
        if (x0, x1, y0, y1) == (0, STAMP, 0, STAMP):
            return None
        return y0, y1, x0, x1


def assign_sets(num_sources: int, seed: int, fractions: dict[str, float] = SET_FRACTIONS) -> list[str]:
    """Exact mix: round(fraction * N) sources of each set (largest remainders), in a seeded random order."""
    names = list(fractions)
    f = np.array([fractions[k] for k in names], float)
    f = f / f.sum()
    raw = f * num_sources
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: num_sources - counts.sum()]:
        counts[i] += 1
    sets = np.repeat(np.array(names), counts)
    np.random.default_rng([seed, 0x5E75]).shuffle(sets)
    return sets.tolist()


def object_id(index: int, seed: int, jd_first: float) -> str:
    """'ZTF' + 2-digit year of the first detection + 7 letters; unique for index < 26^6 within a run."""
    year = 2018 + int((jd_first - 2458119.5) // 365.25)
    n = (index * 7919 + seed * 104729 + 12345) % 26 ** 6  # a bijection of the index (7919 is coprime to 26)
    letters = []
    for _ in range(6):
        n, r = divmod(n, 26)
        letters.append(_ALPHABET[r])
    return f"ZTF{year % 100:02d}a{''.join(reversed(letters))}"


def _pick(rng: np.random.Generator, table) -> str:
    names = [t[0] for t in table]
    p = np.array([t[1] for t in table], float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _powerlaw_mag(rng: np.random.Generator, lo: float, hi: float, slope: float) -> float:
    """Magnitude with dN/dm ~ 10^(slope m) on [lo, hi] (Euclidean counts: slope 0.6)."""
    a, b = 10 ** (slope * lo), 10 ** (slope * hi)
    return float(np.log10(a + rng.random() * (b - a)) / slope)


def _galactic_latitude(ra: float, dec: float) -> float:
    r, d = np.radians(ra), np.radians(dec)
    # J2000 north galactic pole: ra 192.85948, dec 27.12825
    rp, dp = np.radians(192.85948), np.radians(27.12825)
    sb = np.sin(d) * np.sin(dp) + np.cos(d) * np.cos(dp) * np.cos(r - rp)
    return float(np.degrees(np.arcsin(np.clip(sb, -1, 1))))


def _mags(r: float, gr: float, ri: float = 0.25, iz: float = 0.15) -> dict[int, float]:
    """Magnitudes by ZTF fid (1=g, 2=r, 3=i) and 4 = z (PS1 only)."""
    return {1: r + gr, 2: r, 3: r - ri, 4: r - ri - iz}


def _ps1_objid(ra: float, dec: float, k: int) -> int:
    """PS1-like objID: declination zone (1/120 deg) * 1e13 + RA in 1e-6 of a turn * 1e4 + a running digit."""
    zone = int((dec + 90.0) * 120.0)
    return zone * 10 ** 13 + int(ra / 360.0 * 1e6) * 10 ** 4 + k


@dataclasses.dataclass
class _Neighbour:
    dx: float  # arcsec offsets from the candidate
    dy: float
    mags: dict[int, float]
    kind: str  # "star" or "galaxy"
    re: float = 0.0
    q: float = 1.0
    pa: float = 0.0
    sgscore: float = 1.0
    in_ps1: bool = True

    @property
    def dist(self) -> float:
        return float(np.hypot(self.dx, self.dy))


def _background(rng: np.random.Generator, b: float) -> list[_Neighbour]:
    """PS1-detected field objects within 30" (density from galactic latitude) and fainter ones in the stamp."""
    out = []
    lam = 3.0 + 50.0 * np.exp(-abs(b) / 12.0)
    lam *= np.exp(rng.normal(0, 0.5))
    f_star = 0.45 + 0.45 * np.exp(-abs(b) / 15.0)
    for _ in range(rng.poisson(lam)):
        r = PS1_RADIUS * np.sqrt(rng.random())
        th = rng.uniform(0, 2 * np.pi)
        mag = _powerlaw_mag(rng, 13.0, PS1_LIMIT, 0.28)
        if rng.random() < f_star:
            sg = 0.5 if rng.random() < 0.1 else float(1 - rng.beta(0.6, 12))
            out.append(_Neighbour(r * np.cos(th), r * np.sin(th), _mags(mag, rng.uniform(0.3, 1.4)), "star",
                                  sgscore=sg))
        else:
            sg = 0.5 if rng.random() < 0.12 else float(rng.beta(0.7, 5))
            re = float(np.clip(10 ** rng.normal(0.25 - 0.12 * (mag - 19), 0.15), 0.4, 8))
            out.append(_Neighbour(r * np.cos(th), r * np.sin(th), _mags(mag, rng.uniform(0.5, 1.1)), "galaxy",
                                  re=re, q=rng.uniform(0.3, 1), pa=rng.uniform(0, np.pi), sgscore=sg))
    # objects below the PS1 limit, rendered in the stamps and seen by the deeper ZTF reference catalog
    half = STAMP / 2 * PIXEL_SCALE
    for _ in range(rng.poisson(7.0)):
        mag = rng.uniform(PS1_LIMIT, 24.0)
        dx, dy = rng.uniform(-half, half, 2)
        if rng.random() < 0.5:
            out.append(_Neighbour(dx, dy, _mags(mag, rng.uniform(0.3, 1.2)), "star", in_ps1=False))
        else:
            out.append(_Neighbour(dx, dy, _mags(mag, rng.uniform(0.4, 1.0)), "galaxy", re=rng.uniform(0.4, 1.5),
                                  q=rng.uniform(0.4, 1), pa=rng.uniform(0, np.pi), in_ps1=False))
    return out


def _host(rng: np.random.Generator, mag_r: float, compact: bool = False) -> _Neighbour:
    """A host galaxy centred at the origin (offsets of the transient are applied by the caller)."""
    re = 10 ** rng.normal(0.42 - 0.17 * (mag_r - 17.0), 0.17)
    if compact:
        re *= 0.4
    re = float(np.clip(re, 0.5, 25.0))
    profile_dev = rng.random() < 0.3
    q = rng.uniform(0.25, 1.0) if not profile_dev else rng.uniform(0.55, 1.0)
    sg = float(rng.beta(0.8, 7)) if re > 1.5 else float(rng.uniform(0.03, 0.6))
    if rng.random() < 0.08:
        sg = 0.5
    h = _Neighbour(0.0, 0.0, _mags(mag_r, rng.uniform(0.45, 0.95), 0.35, 0.2), "galaxy", re=re, q=q,
                   pa=rng.uniform(0, np.pi), sgscore=sg, in_ps1=mag_r < PS1_LIMIT)
    h.profile = "dev" if profile_dev else "exp"  # type: ignore[attr-defined]
    return h


def _offset_in_host(rng: np.random.Generator, host: _Neighbour) -> tuple[float, float]:
    """Position drawn from the light of an exponential disc (radius ~ Gamma(2) in scale lengths), projected."""
    r = rng.gamma(2.0) / 1.678 * host.re
    th = rng.uniform(0, 2 * np.pi)
    u, v = r * np.cos(th), r * np.sin(th) * host.q
    c, s = np.cos(host.pa), np.sin(host.pa)
    return float(c * u - s * v), float(s * u + c * v)


def _ps1_and_scene(rng: np.random.Generator, objects: list[_Neighbour], ra: float, dec: float,
                   cand_offset: tuple[float, float]) -> tuple[list, list, dict]:
    """PS1 cross-match list (up to 30"), rendering components and the nearest reference-catalog source.

    Object offsets are relative to the source's nominal position; `cand_offset` is where the candidate sits
    relative to it (e.g. the transient's offset in its host), so that all distances are from the candidate."""
    cx, cy = cand_offset
    ps1 = []
    scene = []
    best = None
    half = STAMP / 2 * PIXEL_SCALE + 5
    for k, o in enumerate(objects):
        dx, dy = o.dx - cx, o.dy - cy
        d = float(np.hypot(dx, dy))
        if o.in_ps1 and d <= PS1_RADIUS:
            # PS1 centroids scatter by ~0.05-0.2"
            dd = abs(d + rng.normal(0, 0.08 if o.kind == "star" else 0.15)) if d > 0.02 else abs(rng.normal(0, 0.05))
            ps1.append((dd, o.sgscore, o.mags, _ps1_objid(ra + dx / 3600.0, dec + dy / 3600.0, k % 10)))
        if abs(dx) < half and abs(dy) < half:
            if o.kind == "star":
                scene.append(("point", dx / PIXEL_SCALE, dy / PIXEL_SCALE, o.mags))
            else:
                scene.append(("galaxy", dx / PIXEL_SCALE, dy / PIXEL_SCALE, o.mags, o.re / PIXEL_SCALE, o.q, o.pa,
                              getattr(o, "profile", "exp")))
        if o.mags[2] < REF_LIMIT and (best is None or d < best[0]):
            best = (d, o)
    ps1.sort(key=lambda e: e[0])
    if best is None or best[0] > 30 * PIXEL_SCALE:
        # nothing within the 30 px search: the catalogue's nearest is some faint smudge
        d = rng.uniform(12, 30)
        m = rng.uniform(21.8, 23.3)
        ref = {"distnr": d, "magnr": {1: m + 0.5, 2: m, 3: m - 0.3}, "chinr": rng.uniform(0.4, 1.4),
               "sharpnr": rng.normal(0, 0.25)}
    else:
        d, o = best
        d_px = abs(d / PIXEL_SCALE + rng.normal(0, 0.05))
        if o.kind == "star":
            ref = {"distnr": d_px, "magnr": {b: o.mags[b] + rng.normal(0, 0.02) for b in (1, 2, 3)},
                   "chinr": float(np.exp(rng.normal(np.log(0.7), 0.35))), "sharpnr": rng.normal(0.0, 0.06)}
            if o.mags[2] > 21.5:
                ref["sharpnr"] = rng.normal(0, 0.25)
        else:
            # PSF-fit magnitude of an extended source: misses the light outside the core. chi and sharp of that
            # fit follow the real packets whose nearest reference source is a transient's host (v1.0.1-positive
            # alerts: chinr median ~0.9, IQR ~0.65-1.9, a tail to ~6; sharpnr median ~0, IQR ~-0.25-0.15): a
            # galaxy's fit is only a little worse than a star's, not the clean "chinr > 1.5" cue drawn before
            # (docs/sim_to_real.md, section 5)
            pen = 0.5 + 1.2 * np.log10(1 + o.re)
            ref = {"distnr": d_px, "magnr": {b: o.mags[b] + pen for b in (1, 2, 3)},
                   "chinr": float(min(0.4 + 0.1 * o.re + np.exp(rng.normal(np.log(0.45), 1.2)), 40.0)),
                   "sharpnr": float(np.clip(0.02 * o.re - 0.06 + rng.normal(0, 0.25), -1.0, 1.2)), "extended": True}
    return ps1, scene, ref


def _history(rng: np.random.Generator, t_lo: float, p_visit: float, duty: float) -> tuple[int, int, float | None]:
    """Coverage and raw detections of the position before the simulated window."""
    span = max(t_lo - JD_SURVEY_START, 0.0)
    # ~1.75 exposures per visited night, ~77% clear, ~70% of the year observable, and most positions lie in
    # two overlapping fields (primary + secondary grid): real ncovhist is ~600-4000 after a few years
    ncov = int(rng.poisson(p_visit * 1.75 * 0.77 * 0.7 * span * rng.uniform(1.2, 3.0)))
    ndet = int(rng.binomial(ncov, duty)) if duty > 0 and ncov > 0 else 0
    first = None
    if ndet > 0:
        first = float(JD_SURVEY_START + rng.uniform(0.5, min(span, 400 if duty > 0.1 else span)))
    return ncov, ndet, first


def _transient(rng: np.random.Generator, subtype: str, peak: float, t_peak: float) -> tuple[object, float]:
    """Light curve of an extragalactic transient with its brightest g/r peak at `peak`; returns (model, duration)."""
    if subtype == "SN Ia":
        tr, tfr = rng.uniform(2.0, 4.5), rng.uniform(18, 35)
        tfg, color, plateau = tfr * rng.uniform(0.55, 0.75), rng.normal(-0.03, 0.12), None
    elif subtype == "SN II":
        tr, tfr = rng.uniform(1.2, 4.0), rng.uniform(70, 160)
        tfg, color = tfr * rng.uniform(0.25, 0.45), rng.normal(-0.05, 0.15)
        plateau = t_peak + rng.uniform(70, 110) if rng.random() < 0.6 else None
    elif subtype == "SN Ibc":
        tr, tfr = rng.uniform(2.0, 5.0), rng.uniform(10, 22)
        tfg, color, plateau = tfr * rng.uniform(0.55, 0.8), rng.normal(0.2, 0.15), None
    elif subtype == "SN IIn/SLSN":
        tr, tfr = rng.uniform(8.0, 30.0), rng.uniform(40, 140)
        tfg, color, plateau = tfr * rng.uniform(0.7, 0.95), rng.normal(-0.1, 0.15), None
    else:  # TDE: blue, slow, no colour evolution
        tr, tfr = rng.uniform(6.0, 20.0), rng.uniform(30, 80)
        tfg, color, plateau = tfr * rng.uniform(0.9, 1.05), rng.normal(-0.35, 0.1), None
    pk = {1: peak + max(color, 0.0), 2: peak + max(-color, 0.0)}
    pk[3] = pk[2] + 0.15 - 0.5 * color
    model = lcs.Bazin(t_peak, pk, tr, {1: tfg, 2: tfr, 3: tfr * 1.15}, plateau)
    # until it fades well below the survey limit in r, at most ~300 days
    fade = (21.8 - pk[2]) * tfr / 1.0857 + 15
    if plateau is not None:
        fade = min(fade, plateau - t_peak + 40)
    return model, float(min(max(fade, 30.0), 300.0))


def _drw(rng, mean_r: float, color: float, sf: float) -> lcs.DampedRandomWalk:
    return lcs.DampedRandomWalk(rng, _mags(mean_r, color), rng.uniform(40, 400), sf, {1: 1.3, 2: 1.0, 3: 0.85})


def draw_source(index: int, set_name: str, seed: int, draw: int = 0) -> Source:
    """All properties of source `index`, from its own random stream (independent of every other source); `draw` > 0
    draws it again from another stream."""
    rng = np.random.default_rng([seed, 0x50C, index] + ([draw] if draw else []))
    while True:  # the sky north of -30 deg; extragalactic searches avoid the Galactic plane (|b| < 7 deg)
        ra = float(rng.uniform(0, 360))
        dec = float(np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-30)), 1.0))))
        b = _galactic_latitude(ra, dec)
        if abs(b) >= 7 or set_name == "vars" or rng.random() < 0.15:
            break
    objects = _background(rng, b)
    p_visit = float(rng.uniform(0.3, 0.7))
    realness = float(rng.normal(7.5, 1.5))
    ref_seeing = float(rng.uniform(1.7, 2.4))
    cand_offset = (0.0, 0.0)
    artefact = None
    truth: dict = {}
    duty = 0.0
    t_event = float(rng.uniform(JD_FIRST_EVENT, JD_LAST_EVENT))
    host = None

    if set_name in ("trues", "dims"):
        if set_name == "trues":
            subtype = _pick(np.random.default_rng([seed, 0x50C, index, _TRUE_TYPE_STREAM]), TRUE_TYPES)
            peak = _powerlaw_mag(rng, 13.3, BRIGHT_LIMIT, 0.6)
        else:
            subtype = _pick(rng, TRANSIENT_TYPES)
            peak = _powerlaw_mag(rng, BRIGHT_LIMIT + 0.02, 20.2, 0.45)
        lc, duration = _transient(rng, subtype, peak, t_event)
        t_lo = t_event - lc.tau_rise * 4 - rng.uniform(25, 45)
        t_hi = t_event + duration
        # host: brighter hosts for brighter (closer) transients; some hostless, TDEs nuclear
        u = rng.random()
        hostless = u < 0.05 and subtype != "TDE"
        host_mag = float(np.clip(rng.normal(peak - 0.4 + (0.8 if subtype == "SN IIn/SLSN" else 0.0), 1.3), 12.5,
                                 23.5))
        if hostless:
            host_mag = float(rng.uniform(23.5, 25))
        host = _host(rng, host_mag, compact=subtype == "SN IIn/SLSN")
        if subtype == "TDE" or rng.random() < 0.05:
            r = abs(rng.normal(0, 0.15))
            th = rng.uniform(0, 2 * np.pi)
            cand_offset = (r * np.cos(th), r * np.sin(th))
        else:
            cand_offset = _offset_in_host(rng, host)
        if not hostless:
            objects.append(host)
            if host.re > 4 and rng.random() < 0.3:  # PS1 shreds of a large galaxy (HII regions)
                for _ in range(rng.integers(1, 3)):
                    ox, oy = _offset_in_host(rng, host)
                    objects.append(_Neighbour(ox, oy, _mags(rng.uniform(20.5, 22.3), 0.3), "star",
                                              sgscore=float(rng.uniform(0.2, 0.9))))
        truth.update(peak_mag=peak, host_mag=host_mag if not hostless else np.nan, host_re=host.re,
                     host_offset=float(np.hypot(*cand_offset)), t_peak=t_event)
        if rng.random() < 0.06:  # an old spurious detection at this position: jdstarthist years earlier
            duty = 0.003
        if set_name == "dims" and peak < 19.3:
            realness -= 0.5
    elif set_name == "vars":
        subtype = _pick(rng, VAR_TYPES)
        t_lo = t_event - rng.uniform(0, 120)
        # years of history: the paper's vars carry 97.6 alerts per source after its cleaning cuts (Table 1: 109,934
        # alerts of 1,126 sources; training keeps their latest N_max), twice what a 150-420 d window gave
        t_hi = t_lo + rng.uniform(300, 840)
        # section 9's S/N model puts a star's or nucleus' own light in the noise, so fewer of their visits alert
        # (as in the real packets): a longer history, started earlier, keeps Table 1's count
        t_lo = max(t_hi - (t_hi - t_lo) * VAR_SPAN, JD_SURVEY_START + 1.0)
        if subtype == "AGN":
            host_mag = float(rng.uniform(14.5, 19.5))
            host = _host(rng, host_mag)
            nuc = float(np.clip(host_mag + rng.uniform(-0.5, 2.5), 15.5, 20.5))
            lc = _drw(rng, nuc, rng.uniform(0.1, 0.5), rng.uniform(0.15, 0.5))
            r = abs(rng.normal(0, 0.12))
            cand_offset = (r, 0.0)
            objects.append(host)
            duty = rng.uniform(0.05, 0.5)
            truth.update(host_mag=host_mag, mean_mag=nuc)
        elif subtype == "QSO":
            m = float(rng.uniform(16.0, 19.8))
            lc = _drw(rng, m, rng.uniform(-0.1, 0.4), rng.uniform(0.2, 0.55))
            objects.append(_Neighbour(0, 0, _mags(m, 0.2), "star", sgscore=float(rng.uniform(0.55, 1.0))))
            duty = rng.uniform(0.05, 0.5)
            truth.update(mean_mag=m)
        elif subtype == "CV":
            q = float(rng.uniform(18.5, 23.0))
            gap = rng.uniform(25, 250)
            ts = t_lo - rng.uniform(0, gap)
            bursts = []
            while ts < t_hi:
                bursts.append((ts, float(q - rng.uniform(2.5, 5.5)), float(rng.uniform(1, 9)),
                               float(rng.uniform(0.25, 1.0))))
                ts += gap * rng.uniform(0.7, 1.3)
            lc = lcs.DwarfNova(_mags(q, 0.4), bursts, float(rng.uniform(-0.2, 0.1)))
            if q < PS1_LIMIT:
                objects.append(_Neighbour(0, 0, _mags(q, 0.4), "star", sgscore=float(rng.uniform(0.6, 1.0))))
            duty = rng.uniform(0.02, 0.15)
            truth.update(mean_mag=q, peak_mag=min(bu[1] for bu in bursts) if bursts else np.nan)
        else:
            kind = {"RR Lyr": "rrlyr", "EB": "eb", "LPV": "lpv"}[subtype]
            m = float(_powerlaw_mag(rng, 12.0, 19.0, 0.3))
            if kind == "rrlyr":
                period, amp, color = rng.uniform(0.35, 0.8), rng.uniform(0.5, 1.1), 0.25
            elif kind == "eb":
                period, amp, color = 10 ** rng.uniform(-0.5, 0.8), rng.uniform(0.3, 1.2), rng.uniform(0.3, 1.0)
            else:
                period, amp, color = rng.uniform(120, 450), rng.uniform(1.0, 4.0), rng.uniform(1.2, 1.8)
            lc = lcs.Periodic(kind, _mags(m, color), period, {1: amp * 1.25, 2: amp, 3: amp * 0.8},
                              rng.random())
            objects.append(_Neighbour(0, 0, _mags(m, color), "star", sgscore=float(1 - rng.beta(0.5, 25))))
            duty = rng.uniform(0.2, 0.9)
            truth.update(mean_mag=m, period=period, amplitude=amp)
            if m < 13.5:
                realness -= 3.0  # saturated, badly subtracted stars
    else:
        subtype = _pick(rng, REJECT_TYPES)
        lc = None
        t_lo = t_event - rng.uniform(20, 60)
        # the recurrent ones (a dipole at a bright star, a galaxy-core residual, a flickering nucleus) keep alerting
        # for months: Table 1's rejects carry 54.9 alerts per source after cleaning, where +40-250 d gave 35
        t_hi = t_event + rng.uniform(60, 450)
        if subtype in ("dipole", "galaxy residual"):
            # their scorr falls far below F / sigma_F on the bright star or core (generate.SCORR_FIT, fitted to the
            # real packets), so fewer visits make alerts: they recur over a longer span to keep Table 1's count
            t_hi = min(t_event + (t_hi - t_event) * RECURRENT_SPAN, JD_SURVEY_END - 20.0)
            t_lo = max(t_event - (t_event - t_lo) * RECURRENT_SPAN, JD_SURVEY_START + 1.0)
        realness = float(rng.normal(-2.0, 2.2))
        if subtype == "dipole":
            m = float(rng.uniform(10.5, 16.0))
            star = _Neighbour(rng.normal(0, 0.5), rng.normal(0, 0.5), _mags(m, rng.uniform(0.3, 1.3)), "star",
                              sgscore=float(1 - rng.beta(0.5, 30)))
            objects.append(star)
            artefact = {"kind": subtype, "shift": float(rng.uniform(0.04, 0.25)),
                        "eps": float(rng.uniform(0.005, 0.04)), "star_mags": star.mags,
                        "rate": float(rng.uniform(0.2, 0.9))}
            duty = rng.uniform(0.05, 0.4)
        elif subtype == "galaxy residual":
            host_mag = float(rng.uniform(13.0, 16.5))
            host = _host(rng, host_mag, compact=rng.random() < 0.5)
            objects.append(host)
            r = abs(rng.normal(0, 0.25))
            cand_offset = (r, 0.0)
            lc = None
            artefact = {"kind": subtype, "kappa": float(rng.uniform(0.05, 0.4)),
                        "shift": float(rng.uniform(0.03, 0.15)), "rate": float(rng.uniform(0.2, 0.8)),
                        "core_mag": host_mag + 1.0 + 1.2 * np.log10(1 + host.re)}
            realness = float(rng.normal(-2.0, 2.0))
            duty = rng.uniform(0.05, 0.3)
        elif subtype in ("cosmic ray", "hot pixel", "bad column", "ghost"):
            t_lo = t_event - rng.uniform(40, 120)
            t_hi = t_event + rng.uniform(20, 80)
            n_events = 1 if subtype == "cosmic ray" else int(rng.integers(1, 5))
            artefact = {"kind": subtype, "mag": float(rng.uniform(16.5, 20.0)),
                        "t_events": sorted(rng.uniform(t_event - 5, t_event + 15, n_events).tolist()),
                        "sigma": float(rng.uniform(0.25, 0.6)), "vertical": bool(rng.random() < 0.5),
                        "radius": float(rng.uniform(4, 14))}
            duty = 0.0 if subtype == "cosmic ray" else rng.uniform(0.0, 0.05)
        elif subtype == "asteroid":
            t_lo = t_event - rng.uniform(40, 120)
            t_hi = t_event + rng.uniform(20, 80)
            lc = lcs.Flare(_mags(np.inf, 0.0), [(t_event, float(rng.uniform(16.8, 20.2)), 0.02)], 0.55)
            artefact = {"kind": subtype, "t_events": [t_event], "ssmag": None}
            realness = float(rng.normal(6.0, 2.0))
        elif subtype == "stellar flare":
            q = float(rng.uniform(17.5, 22.0))
            events = [(t_event, float(q - rng.uniform(1.0, 4.0)), float(rng.uniform(0.02, 0.3)))]
            lc = lcs.Flare(_mags(q, 1.4), events, -0.4)
            if q < PS1_LIMIT:
                objects.append(_Neighbour(0, 0, _mags(q, 1.4), "star", sgscore=float(1 - rng.beta(0.5, 20))))
            realness = float(rng.normal(5.5, 2.0))
        elif subtype == "nuclear flicker":
            host_mag = float(rng.uniform(15.5, 19.0))
            host = _host(rng, host_mag)
            objects.append(host)
            lc = _drw(rng, float(host_mag + rng.uniform(1.0, 2.5)), 0.4, rng.uniform(0.08, 0.25))
            cand_offset = (abs(rng.normal(0, 0.15)), 0.0)
            realness = float(rng.normal(4.0, 2.5))
            duty = rng.uniform(0.01, 0.1)
        else:  # unsaved SN: a real transient the scanners did not save (honest label noise)
            # BTS sets out to classify every extragalactic transient peaking brighter than 18.5 mag (Fremling et
            # al. 2020; Perley et al. 2020), and trues are exactly those (Rehemtulla et al. 2024, Table 1): a SN
            # watched for weeks at <= 18.5 is saved. So the SNe left in the rejects mostly peak fainter (the
            # scanners judged they would not make 18.5); the few bright ones were missed because the field set
            # soon after the peak (the end of its season), so few alerts carry the label noise.
            ts = _pick(rng, TRANSIENT_TYPES[:3])
            missed_bright = rng.random() < UNSAVED_BRIGHT_SHARE
            peak = float(rng.uniform(17.6, BRIGHT_LIMIT) if missed_bright else rng.uniform(BRIGHT_LIMIT + 0.02, 19.5))
            lc, duration = _transient(rng, ts, peak, t_event)
            t_lo = t_event - lc.tau_rise * 4 - rng.uniform(25, 45)
            t_hi = t_event + (rng.uniform(0, 10) if missed_bright else min(duration, 120))
            host = _host(rng, float(np.clip(rng.normal(peak, 1.3), 13, 23)))
            cand_offset = _offset_in_host(rng, host)
            objects.append(host)
            realness = float(rng.normal(6.5, 2.0))
            truth.update(peak_mag=peak)
    if host is not None and "host_mag" not in truth:
        truth.update(host_mag=host.mags[2], host_re=host.re)

    ps1, scene, ref = _ps1_and_scene(rng, objects, ra, dec, cand_offset)
    ncov_prior, ndet_prior, jd_first = _history(rng, t_lo, p_visit, duty)
    idx_field = int(rng.integers(245, 880))
    xpos = float(rng.uniform(0, CCD_NX))
    ypos = float(rng.uniform(0, CCD_NY))
    if rng.random() < 0.03:  # on purpose near an edge: a cut stamp
        if rng.random() < 0.5:
            xpos = float(rng.choice([rng.uniform(1, 30), CCD_NX - rng.uniform(1, 30)]))
        else:
            ypos = float(rng.choice([rng.uniform(1, 30), CCD_NY - rng.uniform(1, 30)]))
    first_guess = jd_first if jd_first is not None else t_lo
    return Source(
        index=index, object_id=object_id(index, seed, first_guess), set=set_name, label=LABELS[set_name],
        subtype=subtype, ra=ra, dec=dec, field=idx_field, rcid=index % 64, tblid=(index // 64) % 1000,
        xpos=xpos, ypos=ypos, t_lo=float(t_lo), t_hi=float(t_hi), p_visit=p_visit, lc=lc, scene=scene, ps1=ps1,
        ref_nearest=ref, ncov_prior=ncov_prior, ndet_prior=ndet_prior, jd_first_prior=jd_first,
        realness=realness, ref_seeing=ref_seeing, subpix=(float(rng.uniform(-0.5, 0.5)),
                                                          float(rng.uniform(-0.5, 0.5))),
        artefact=artefact, truth=truth, draw=draw,
    )
