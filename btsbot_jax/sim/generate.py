"""One source -> its alert packets: observe it through the survey, decide which epochs make alerts, fill the
candidate fields consistently, build prv_candidates and render the three cutouts.

Measurement model, calibrated on the real packets (kowalski + fink sets in ../shared/data):
- measured difference flux F = F_true + N(0, sqrt(sigma_F^2 + (0.02 F)^2));
- `scorr` (ZOGY's matched-filter S/N, the candidate trigger at |scorr| >= 5) and the PSF fit's S/N (`sigmapsf` =
  1.0857 / S/N) are functions of s = |F| / sigma_F (the S/N the image's 5-sigma `diffmaglim` implies) and of the
  nearest reference source (`magnr`, `distnr`): its light adds noise at the position (h = its flux in units of
  sigma_F, tapered with distance), so both fall below s on bright hosts and stars, as in the real packets
  (`SCORR_FIT`, `PSF_FIT`; fitted to the alerts and prv_candidates detections of ../shared/data by
  experiments/fit_measurement_model.py, a log-normal scatter that grows with s as the fit's residuals do);
- a candidate is an alert only if its PSF fit's S/N >= 5 (`sigmapsf` <= 0.217): none of the 768 real packets is
  above it, they are as dense right below it as anywhere in 0.15-0.2, and 11% of the real prv_candidates
  detections (candidates that made no alert) are above it (Masci et al. 2019: candidates are "lightly filtered"
  before they become alerts). The other candidates show in later alerts' prv_candidates;
- `chipsf` ~ 1 + (S/N / 11)^2 (PSF mismatch grows with brightness; 13 before the S/N model of section 9 lowered
  the PSF S/N of bright sources), higher for artefacts;
- `drb` is read off the rendered difference stamp, as ZTF's real-bogus CNN reads the real one: its logit is
  `image_stats.drb_logit` of the stamp (PSF correlation up, a too-sharp peak or a negative lobe down) plus a
  little noise, so a dipole, a cosmic ray or a clean point source get the score their image deserves whatever
  the source's subtype (without cutouts, `render_cutouts=False`, it falls back to the source's mean realness);
- `ndethist`/`ncovhist`/`jdstarthist` count raw detections (S/N >= 3) and coverage since survey start.
"""

from __future__ import annotations

import numpy as np

from btsbot_jax.sim import image_stats, lightcurves, render
from btsbot_jax.sim.packets import PUBLISHER, SCHEMA_VERSION
from btsbot_jax.sim.population import BOGUS_TYPES, CCD_NX, CCD_NY, Source, object_id
from btsbot_jax.sim.survey import NID_OFFSET, ZP0, Nights, conditions, schedule

SEEING_GRID0 = 0.8  # px: FWHM grid for the cached scene renders
SEEING_GRID_STEP = 1.1
PRV_WINDOW = 30.0  # days of history in prv_candidates, as ZTF
ALERT_SCORR = 5.0
ALERT_SNR_PSF = 5.0  # sigmapsf <= 1.0857 / 5
# s / S/N = sqrt(1/c^2 + h/h1 + (h/h2)^2 + (s/s1)^q) for scorr and sqrt(1/c^2 + h/h1 + s/s1 + (g s)^2) for the PSF
# fit, h = 5 * 10^(0.4 (diffmaglim - magnr)) * exp(-distnr^2 / (2 d^2)) (distnr in pixels); ln-scatter
# sd0 + sd1 * log10(max(s, 10) / 10), read off the fit's residuals by s. Fitted by
# experiments/fit_measurement_model.py (docs/sim_to_real.md, section 9).
SCORR_FIT = dict(c=1.67, h1=87.0, h2=78.4, s1=36.6, q=1.39, d=3.77, sd0=0.15, sd1=0.30)
PSF_FIT = dict(c=1.26, h1=57.4, s1=17.6, g=0.0376, d=9.16, sd0=0.15, sd1=0.24)


def reference_light(diffmaglim, magnr):
    """The nearest reference source's flux in units of the image's 1-sigma PSF-flux error (`diffmaglim` is 5 sigma)."""
    return 5 * 10 ** (0.4 * (np.asarray(diffmaglim, float) - np.asarray(magnr, float)))


def scorr_deficit(s, h_ref, distnr, c, h1, h2, s1, q, d, **_):
    """s / scorr without scatter: SCORR_FIT's form, shared with the fit (experiments/fit_measurement_model.py)."""
    h = h_ref * np.exp(-0.5 * (distnr / d) ** 2)
    return np.sqrt(1 / c ** 2 + h / h1 + (h / h2) ** 2 + (s / s1) ** q)


def psf_deficit(s, h_ref, distnr, c, h1, s1, g, d, **_):
    """s / (PSF fit's S/N) without scatter: PSF_FIT's form, shared with the fit."""
    h = h_ref * np.exp(-0.5 * (distnr / d) ** 2)
    return np.sqrt(1 / c ** 2 + h / h1 + s / s1 + (g * s) ** 2)


def measured_snr(f_meas, sigma_f, diffmaglim, magnr, distnr, z_scorr, z_psf):
    """(scorr with the sign of F, PSF-fit S/N >= 0) of difference fluxes F measured with error sigma_F.

    z_*: standard normal draws for the log-normal scatter."""
    f_meas = np.asarray(f_meas, float)
    s = np.abs(f_meas) / sigma_f
    h_ref = reference_light(diffmaglim, magnr)
    distnr = np.asarray(distnr, float)
    k, p = SCORR_FIT, PSF_FIT
    lg = np.log10(np.maximum(s, 10.0) / 10.0)
    scorr = np.sign(f_meas) * s / scorr_deficit(s, h_ref, distnr, **k) * np.exp((k["sd0"] + k["sd1"] * lg) * z_scorr)
    snr_psf = s / psf_deficit(s, h_ref, distnr, **p) * np.exp((p["sd0"] + p["sd1"] * lg) * z_psf)
    return scorr, snr_psf


RAW_DET_SNR = 3.0
DRB_NOISE = 1.0  # logit scatter of the simulated drb around what the difference stamp shows
PROGRAM_PI = {1: "Kulkarni", 2: "Kulkarni", 3: "TESS"}
FILTER_CODE = {1: "zg", 2: "zr", 3: "zi"}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _f(x) -> float:
    return float(x)


def _artefact_flux(src: Source, rng: np.random.Generator, vis, F_point: np.ndarray) -> tuple[np.ndarray, dict]:
    """True difference flux of a bogus source per visit, and per-visit rendering parameters."""
    a = src.artefact
    kind = a["kind"]
    n = len(vis)
    zp = vis.zp
    psf_sigma = vis.fwhm_px / 2.3548
    params: dict = {}
    if kind == "dipole":
        good = rng.random(n) < a["rate"]
        scale = np.where(good, 1.0, 0.2)
        shift = rng.normal(0, a["shift"], (n, 2)) * scale[:, None]
        eps = rng.normal(0, a["eps"], n) * scale
        f_star = 10 ** (-0.4 * (np.array([a["star_mags"][f] for f in vis.fid]) - zp))
        lobe = f_star * (0.45 * np.hypot(shift[:, 0], shift[:, 1]) / psf_sigma + np.abs(eps))
        sign = np.where(rng.random(n) < 0.6, 1.0, -1.0)
        params.update(shift=shift, eps=eps)
        return sign * lobe, params
    if kind == "galaxy residual":
        good = rng.random(n) < a["rate"]
        kappa = rng.normal(0, a["kappa"], n) * np.where(good, 1.0, 0.15)
        shift = rng.normal(0, a["shift"], (n, 2)) * np.where(good, 1.0, 0.3)[:, None]
        f_core = 10 ** (-0.4 * (a["core_mag"] - zp))
        flux = f_core * (np.abs(kappa) / (2 * psf_sigma ** 2) * 0.6 + 0.3 * np.hypot(shift[:, 0], shift[:, 1])
                         / psf_sigma)
        params.update(shift=shift, kappa=kappa)
        return np.where(kappa > 0, 1.0, -1.0) * flux, params
    if kind == "asteroid":
        # A moving object stays on the candidate's position for one exposure: the first one after t_event (the
        # next exposure of the night finds it arcseconds away, under another objectId), so an asteroid has exactly
        # one alert. Its Flare light curve (30-min decay) alone was missed by every visit, so no asteroid reached
        # the training set (docs/sim_to_real.md, section 8).
        flux = np.zeros(n)
        if n:
            t = a["t_events"][0]
            k = _first_visit_after(vis.jd, t)
            flux[k] = 10 ** (-0.4 * (src.lc.mag(np.array([t]), vis.fid[k:k + 1])[0] - zp[k]))  # its peak, this band
        return flux, params
    # instantaneous artefacts: the first visit after each event time (hot pixels recur a few times)
    flux = np.zeros(n)
    amp = 10 ** (-0.4 * (a["mag"] - zp))
    for te in a["t_events"]:
        k = int(np.searchsorted(vis.jd, te))
        if k < n:
            flux[k] = amp[k] * np.exp(rng.normal(0, 0.3))
        if kind == "hot pixel":
            again = (np.abs(vis.jd - te) < 4) & (rng.random(n) < 0.5)
            flux[again] = amp[again] * 0.7
    return flux, params


def _ps1_fields(src: Source) -> dict:
    out = {}
    for k in range(3):
        j = k + 1
        if k < len(src.ps1):
            d, sg, mags, oid = src.ps1[k]
            out.update({f"sgmag{j}": _f(mags[1] + 0.02), f"srmag{j}": _f(mags[2]), f"simag{j}": _f(mags[3]),
                        f"szmag{j}": _f(mags[4]), f"sgscore{j}": _f(round(sg, 6)), f"distpsnr{j}": _f(d),
                        f"objectidps{j}": int(oid)})
        else:
            out.update({f"sgmag{j}": -999.0, f"srmag{j}": -999.0, f"simag{j}": -999.0, f"szmag{j}": -999.0,
                        f"sgscore{j}": -999.0, f"distpsnr{j}": -999.0, f"objectidps{j}": -999})
    out["nmtchps"] = len(src.ps1)
    return out


def _gaia(src: Source) -> dict:
    stars = [(e[0], e[2][2] - 0.2) for e in src.ps1 if e[1] > 0.8 and e[2][2] < 20.5]
    bright = [(d, m) for d, m in stars if m < 14.0]
    out = {"neargaia": -999.0, "maggaia": -999.0, "neargaiabright": -999.0, "maggaiabright": -999.0}
    if stars:
        d, m = min(stars)
        out.update(neargaia=_f(d), maggaia=_f(m))
    if bright:
        d, m = min(bright)
        out.update(neargaiabright=_f(d), maggaiabright=_f(m))
    return out


def _first_visit_after(jd: np.ndarray, t: float) -> int:
    """Index of the first exposure at or after t (the last one when the season ends before t)."""
    return min(int(np.searchsorted(jd, t)), len(jd) - 1)


def _flare_at_a_visit(src: Source, jd: np.ndarray, seed: int):
    """The stellar flare with its peak moved to just before the first exposure after its drawn time.

    A flare lasts 0.02-0.3 d and the position is observed every few nights, so at its drawn time almost every flare
    fell between visits and the source had no alert (24 of 28 in a 1,500-source survey): the BTS rejects are sources
    ZTF did see. Caught within one decay time of its peak; own random stream, so every other draw is unchanged."""
    rng = np.random.default_rng([seed, 0xF1A, src.index] + ([src.draw] if src.draw else []))
    events = []
    for tp, pk, decay in src.lc.events:
        events.append((float(jd[_first_visit_after(jd, tp)] - rng.uniform(0, decay)), pk, decay))
    return lightcurves.Flare(src.lc.quiescent, events, src.lc.color)


def simulate_source(src: Source, nights: Nights, seed: int, render_cutouts: bool = True,
                    level: int = 1, seen_limit: float | None = None) -> tuple[list[dict], dict]:
    """Alert packets (ZTF layout, time order) of one source and its truth-table row.

    With `seen_limit`, a true whose brightest g/r alert is fainter than that (or that has none) gets no packets and
    `truth["seen"] = False`, before any stamp is rendered: the caller draws it again (population.TRUE_SEEN_LIMIT).
    """
    rng = np.random.default_rng([seed, 0x0B5, src.index] + ([src.draw] if src.draw else []))
    jd, fid = schedule(rng, nights, src.t_lo, src.t_hi, src.ra, src.p_visit)
    vis = conditions(rng, nights, jd, fid)
    n = len(vis)
    zp = vis.zp
    lc = src.lc
    if src.subtype == "stellar flare" and n:
        lc = _flare_at_a_visit(src, vis.jd, seed)
    # flux of the point source at the candidate position in the science (total) and reference
    if lc is not None and n:
        m_now = lc.mag(vis.jd, vis.fid)
        m_ref = np.array([lc.ref_mag(int(f)) for f in vis.fid])
        f_now = np.where(np.isfinite(m_now), 10 ** (-0.4 * (np.minimum(m_now, 99) - zp)), 0.0)
        f_ref = np.where(np.isfinite(m_ref), 10 ** (-0.4 * (np.minimum(m_ref, 99) - zp)), 0.0)
    else:
        f_now = np.zeros(n)
        f_ref = np.zeros(n)
    f_true = f_now - f_ref
    art_params: dict = {}
    if src.artefact is not None and n:
        f_true, art_params = _artefact_flux(src, rng, vis, f_true)
    sig = vis.sigma_flux
    f_meas = f_true + rng.normal(0, 1, n) * np.sqrt(sig ** 2 + (0.02 * f_true) ** 2)
    near = src.ref_nearest
    magnr = np.array([near["magnr"][int(f)] for f in vis.fid]) if n else np.zeros(0)
    scorr, snr_psf = measured_snr(f_meas, sig, vis.diffmaglim, magnr, near["distnr"], rng.normal(0, 1, n),
                                  rng.normal(0, 1, n))
    cand = np.abs(scorr) >= ALERT_SCORR
    alert = cand & (snr_psf >= ALERT_SNR_PSF)
    raw_det = cand | (np.abs(f_meas / sig) >= RAW_DET_SNR)

    truth = {"objectId": None, "source_index": src.index, "source_set": src.set, "label": src.label,
             "subtype": src.subtype, "ra": src.ra, "dec": src.dec, "n_visits": n, "n_alerts": int(alert.sum())}
    truth.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in src.truth.items()})
    pos = alert & (f_meas > 0) & (vis.fid <= 2)
    truth["peak_obs"] = float(np.min(zp[pos] - 2.5 * np.log10(f_meas[pos]))) if pos.any() else np.nan

    det_idx = np.flatnonzero(raw_det)
    first_jd = src.jd_first_prior if src.ndet_prior > 0 else (float(vis.jd[det_idx[0]]) if len(det_idx) else
                                                               float(src.t_lo))
    oid = object_id(src.index, seed, first_jd)
    truth["objectId"] = oid
    if seen_limit is not None and src.set == "trues" and not truth["peak_obs"] <= seen_limit:
        truth["seen"] = False
        return [], truth
    if not alert.any():
        return [], truth

    # per-exposure identifiers (ZTF layout: pid = nid | UT fraction of day | rcid | 15; candid = pid | 015 | tblid)
    nid = np.floor(vis.jd - NID_OFFSET).astype(np.int64)
    ut5 = np.floor(np.mod(vis.jd + 0.5, 1.0) * 1e5).astype(np.int64)
    pid = nid * 10 ** 9 + ut5 * 10 ** 4 + src.rcid * 100 + 15
    candid = pid * 10 ** 6 + 15000 + src.tblid
    programid = np.where(vis.fid == 3, 2, np.where(rng.random(n) < 0.55, 1, 2))
    ncov = src.ncov_prior + np.arange(1, n + 1)
    ndet = src.ndet_prior + np.cumsum(raw_det)
    jdstart = np.full(n, np.nan)
    jdend = np.full(n, np.nan)
    last = src.jd_first_prior if src.ndet_prior > 0 else np.nan
    for i in range(n):
        if raw_det[i]:
            last = vis.jd[i]
        jdend[i] = last
    jdstart[:] = first_jd
    dates = [_date(j) for j in vis.jd]

    # measurement fields of every raw detection (alerts use them; prv detections too)
    is_bogus = src.subtype in BOGUS_TYPES
    logit = src.realness + rng.normal(0, 1.3, n) - 3.0 * np.exp(-(np.abs(scorr) - 5) / 3.0) * (not is_bogus)
    drb = _sigmoid(logit)
    rb = np.clip(_sigmoid(0.35 * logit + rng.normal(0.4, 0.5, n)) * 0.98, 0.01, 0.99)
    magpsf = zp - 2.5 * np.log10(np.maximum(np.abs(f_meas), 1e-3))
    sigmapsf = 1.0857 / np.maximum(snr_psf, 1e-3)
    chipsf = np.exp(rng.normal(0, 0.3, n)) * (1 + (snr_psf / 11.0) ** 2.0) * (3.0 if is_bogus else 1.0)
    fwhm = vis.fwhm_px * np.exp(rng.normal(0.02, 0.12, n))
    if src.artefact is not None and src.artefact["kind"] in ("cosmic ray", "hot pixel"):
        fwhm = rng.uniform(0.6, 1.3, n)
    elif is_bogus:
        fwhm = fwhm * rng.uniform(1.0, 2.0, n)
    elong = 1 + np.abs(rng.normal(0, 0.1, n))
    if src.artefact is not None and src.artefact["kind"] in ("bad column", "dipole"):
        elong = elong + rng.uniform(0.5, 3, n)
    magdiff = rng.normal(0.03, 0.12, n)
    host_light = near["distnr"] < 3 and near.get("extended", False)
    if host_light:
        magdiff = magdiff - rng.uniform(0, 0.4, n)
    mindtoedge = min(src.xpos, src.ypos, CCD_NX - src.xpos, CCD_NY - src.ypos)
    astrom = 0.35 / np.maximum(np.abs(scorr), 1) + 0.06
    ra_m = src.ra + rng.normal(0, 1, n) * astrom / 3600.0 / max(np.cos(np.radians(src.dec)), 0.05)
    dec_m = src.dec + rng.normal(0, 1, n) * astrom / 3600.0
    xpos = src.xpos + rng.normal(0, 1.5, n)
    ypos = src.ypos + rng.normal(0, 1.5, n)
    sky_local = 0.45 * rng.standard_t(3, n)
    magzpsciunc = np.abs(rng.normal(3e-5, 2e-5, n))
    magzpscirms = np.abs(rng.normal(0.03, 0.01, n))
    clrcoeff = np.where(vis.fid == 1, rng.normal(-0.06, 0.02, n), rng.normal(0.09, 0.02, n))
    ss = {"ssdistnr": -999.0, "ssmagnr": -999.0, "ssnamenr": None}
    ps1 = _ps1_fields(src)
    gaia = _gaia(src)
    ranr = src.ra + near["distnr"] * render.PIXEL_SCALE / 3600.0 * 0.7
    decnr = src.dec + near["distnr"] * render.PIXEL_SCALE / 3600.0 * 0.7
    rfid = int(src.field * 10 ** 6 + src.rcid * 10 ** 2 + 20)
    jdstartref = 2458200.0 + (src.index % 97) * 1.3
    nframesref = 15 + src.index % 26

    def exposure_fields(i: int) -> dict:
        f = int(vis.fid[i])
        return {
            "jd": float(vis.jd[i]), "fid": f, "pid": int(pid[i]), "diffmaglim": _f(vis.diffmaglim[i]),
            "pdiffimfilename": f"ztf_{dates[i]}{ut5[i]:06d}_{src.field:06d}_{FILTER_CODE[f]}_c{src.rcid // 4 + 1:02d}"
                               f"_o_q{src.rcid % 4 + 1}_scimrefdiffimg.fits",
            "programpi": PROGRAM_PI[int(programid[i])], "programid": int(programid[i]), "nid": int(nid[i]),
            "rcid": src.rcid, "field": src.field, "magzpsci": _f(zp[i]), "magzpsciunc": _f(magzpsciunc[i]),
            "magzpscirms": _f(magzpscirms[i]), "clrcoeff": _f(clrcoeff[i]), "clrcounc": _f(abs(clrcoeff[i]) * 1e-3),
            "rbversion": "t17_f5_c3",
        }

    def measurement_fields(i: int) -> dict:
        f = int(vis.fid[i])
        magnr = near["magnr"][f]
        a_img = 0.3 * fwhm[i] * np.sqrt(elong[i])
        out = {
            "candid": int(candid[i]), "isdiffpos": "t" if f_meas[i] > 0 else "f", "tblid": src.tblid,
            "xpos": _f(xpos[i]), "ypos": _f(ypos[i]), "ra": float(ra_m[i]), "dec": float(dec_m[i]),
            "magpsf": _f(magpsf[i]), "sigmapsf": _f(sigmapsf[i]), "chipsf": _f(chipsf[i]),
            "magap": _f(magpsf[i] + magdiff[i]), "sigmagap": _f(sigmapsf[i] * 1.15 + 0.01),
            "distnr": _f(abs(near["distnr"] + rng.normal(0, 0.04))), "magnr": _f(magnr),
            "sigmagnr": _f(0.008 + 0.25 * 10 ** (0.4 * (magnr - 23.0))), "chinr": _f(near["chinr"]),
            "sharpnr": _f(near["sharpnr"]), "sky": _f(sky_local[i]), "magdiff": _f(magdiff[i]), "fwhm": _f(fwhm[i]),
            "classtar": _f(np.clip(rng.beta(12, 0.6) if not is_bogus else rng.random(), 0, 1)),
            "mindtoedge": _f(max(mindtoedge + rng.normal(0, 1.0), 0.5)),
            "magfromlim": _f(vis.diffmaglim[i] - (magpsf[i] + magdiff[i])),
            "seeratio": _f(np.clip(np.exp(rng.normal(0.12, 0.22)), 0.3, 2.0)),
            "aimage": _f(a_img), "bimage": _f(a_img / elong[i]), "aimagerat": _f(a_img / fwhm[i]),
            "bimagerat": _f(a_img / elong[i] / fwhm[i]), "elong": _f(elong[i]),
            "rb": _f(rb[i]), **ss, "magapbig": _f(magpsf[i] + magdiff[i] - abs(rng.normal(0, 0.03))),
            "sigmagapbig": _f(sigmapsf[i] * 1.3 + 0.01), "ranr": float(ranr), "decnr": float(decnr),
            "scorr": float(abs(scorr[i])),
        }
        return out

    # prv_candidates entries: detections (candidates) in full, other exposures as upper limits
    prv_cache: dict[int, dict] = {}
    stamp_cache: dict = {}
    cand_cache: dict[int, dict] = {}

    def prv_entry(i: int) -> dict:
        e = prv_cache.get(i)
        if e is None:
            e = exposure_fields(i)
            if cand[i]:
                m = cand_cache[i]
                e.update({k: m[k] for k in PRV_MEAS})
            else:
                e.update(PRV_NULLS)
            prv_cache[i] = e
        return e

    records = []
    alert_idx = np.flatnonzero(alert)
    for i in alert_idx:
        meas = measurement_fields(i)
        cand_cache[i] = meas
    for i in np.flatnonzero(cand & ~alert):  # after the alerts' draws, so that those stay as they were
        cand_cache[i] = measurement_fields(i)
        # no stamp is rendered for a candidate that made no alert: its 5x5 statistics are left null, and its rb is the
        # source's realness draw (as without cutouts)
        cand_cache[i].update(nneg=None, nbad=None, sumrat=None)
    if src.subtype == "asteroid":
        for i in np.flatnonzero(cand):
            cand_cache[i].update(ssdistnr=_f(rng.uniform(0, 4)), ssmagnr=_f(magpsf[i] + rng.normal(0, 0.3)),
                                 ssnamenr=str(10000 + src.index % 500000))
    renderer = _Renderer(src, vis, seed, stamp_cache, art_params, level) if render_cutouts else None
    drb_rng = np.random.default_rng([seed, 0xD4B, src.index])  # its own stream: the rest stays as it was
    for i in alert_idx:
        meas = cand_cache[i]
        stamps, raw = {}, {}
        if renderer is not None:
            sci, ref, diff = renderer.stamps(i, f_meas[i], f_now[i], f_ref[i])
            if f_meas[i] < 0:
                # ZTF detects negative candidates on the inverted difference and cuts the stamp from it: in
                # every real isdiffpos='f' packet of ../shared/data the candidate is a positive blob
                diff = -diff
            # 5x5 statistics of the difference around the candidate, as ZTF's nneg/nbad/sumrat
            box = diff[render.CENTER - 2:render.CENTER + 3, render.CENTER - 2:render.CENTER + 3]
            finite = box[np.isfinite(box)]
            meas["nneg"] = int((finite < 0).sum())
            meas["nbad"] = int((~np.isfinite(box)).sum())
            meas["sumrat"] = _f(finite.sum() / max(np.abs(finite).sum(), 1e-9)) if len(finite) else 0.0
            # the real-bogus score of what the stamp shows
            st = image_stats.difference_stats(diff, float(vis.fwhm_px[i]), snr=False)
            z = image_stats.drb_logit(st) + drb_rng.normal(0, DRB_NOISE)
            drb[i] = _sigmoid(z)
            rb[i] = np.clip(_sigmoid(0.35 * z + drb_rng.normal(0.4, 0.5)) * 0.98, 0.01, 0.99)
            meas["rb"] = _f(rb[i])
            base = f"candid{int(candid[i])}_pid{int(pid[i])}_targ"
            for key, img, tag in (("cutoutScience", sci, "sci"), ("cutoutTemplate", ref, "ref"),
                                  ("cutoutDifference", diff, "diff")):
                img = render.crop(img, src.crop_box)
                fits = render.fits_bytes(img)
                stamps[key] = {"fileName": f"{base}_{tag}.fits.gz", "stampData": render.gzip_bytes(fits, level)}
                raw[key] = fits
        else:
            meas["nneg"], meas["nbad"], meas["sumrat"] = 0, 0, 1.0
            stamps = {"cutoutScience": None, "cutoutTemplate": None, "cutoutDifference": None}
        c = exposure_fields(i)
        c.update(meas)
        c.update(ps1)
        c.update(gaia)
        c.update({
            "ndethist": int(ndet[i]), "ncovhist": int(ncov[i]), "jdstarthist": float(jdstart[i]),
            "jdendhist": float(jdend[i]), "tooflag": 0, "rfid": rfid, "jdstartref": jdstartref,
            "jdendref": jdstartref + 60.0 + src.index % 80, "nframesref": nframesref,
            "dsnrms": _f(vis.sigma_pix[i] * 1.4), "ssnrms": _f(vis.sigma_pix[i] * 3.5),
            "dsdiff": _f(-vis.sigma_pix[i] * 2.1), "nmatches": int(200 + src.index % 900),
            "zpclrcov": -5e-5, "zpmed": _f(zp[i] - 0.05), "clrmed": 0.7 if vis.fid[i] == 1 else 0.5, "clrrms": 0.25,
            "exptime": 30.0, "drb": _f(drb[i]), "drbversion": "d6_m7",
        })
        lo = np.searchsorted(vis.jd, vis.jd[i] - PRV_WINDOW)
        prv = [prv_entry(j) for j in range(lo, i)]
        rec = {"schemavsn": SCHEMA_VERSION, "publisher": PUBLISHER, "objectId": oid, "candid": int(candid[i]),
               "candidate": c, "prv_candidates": prv or None, **stamps}
        if raw:
            rec["_fits"] = raw  # the uncompressed FITS of each cutout (not written; see AlertEncoder.encode_source)
        records.append(rec)
    return records, truth


PRV_MEAS = ("candid", "isdiffpos", "tblid", "xpos", "ypos", "ra", "dec", "magpsf", "sigmapsf", "chipsf", "magap",
            "sigmagap", "distnr", "magnr", "sigmagnr", "chinr", "sharpnr", "sky", "magdiff", "fwhm", "classtar",
            "mindtoedge", "magfromlim", "seeratio", "aimage", "bimage", "aimagerat", "bimagerat", "elong", "rb",
            "ssdistnr", "ssmagnr", "ssnamenr", "magapbig", "sigmagapbig", "ranr", "decnr", "scorr")
PRV_MEAS = PRV_MEAS + ("nneg", "nbad", "sumrat")
PRV_NULLS = {k: None for k in PRV_MEAS}


def _date(jd: float) -> str:
    """YYYYMMDD of a JD (UT), for ZTF-like file names."""
    z = int(jd + 0.5)
    a = int((z - 1867216.25) / 36524.25)
    a = z + 1 + a - a // 4
    b = a + 1524
    c = int((b - 122.1) / 365.25)
    d = int(365.25 * c)
    e = int((b - d) / 30.6001)
    day = b - d - int(30.6001 * e)
    month = e - 1 if e < 14 else e - 13
    year = c - 4716 if month > 2 else c - 4715
    return f"{year:04d}{month:02d}{day:02d}"


class _Renderer:
    """Stamps of one source: the reference is rendered once per band; science and difference per alert."""

    def __init__(self, src: Source, vis, seed: int, cache: dict, art_params: dict, level: int):
        self.src = src
        self.vis = vis
        self.rng = np.random.default_rng([seed, 0x57A, src.index])
        self.cache = cache
        self.art = art_params
        self.level = level
        self.center = (render.CENTER + src.subpix[0], render.CENTER + src.subpix[1])
        # the static scene: host, neighbours, and a variable's reference-level light at the candidate position
        self.components = list(src.scene)
        if src.lc is not None:
            ref = {b: src.lc.ref_mag(b) for b in (1, 2, 3)}
            if all(np.isfinite(v) for v in ref.values()):
                self.components.append(("point", 0.0, 0.0, ref))
        self.points = [c for c in self.components if c[0] == "point"]
        self.galaxies = [c for c in self.components if c[0] != "point"]
        self._px = np.array([self.center[0] + c[1] for c in self.points])
        self._py = np.array([self.center[1] + c[2] for c in self.points])

    def _base(self, band: int) -> np.ndarray:
        """The galaxies of the static scene in this band at zero point ZP0[band], rendered once per source with
        the sharp BASE_SIGMA PSF; each exposure's galaxies are a blur of it (render.psf_blur)."""
        key = ("base", band)
        if key not in self.cache:
            if "stack" not in self.cache:
                self.cache["stack"] = render.unit_stack(self.galaxies, 0.0, self.center, sigma=render.BASE_SIGMA)
            self.cache[key] = np.tensordot(render.component_fluxes(self.galaxies, band, ZP0[band]),
                                           self.cache["stack"], 1)
        return self.cache[key]

    def _static(self, band: int, fwhm: float) -> np.ndarray:
        """Static scene at zero point ZP0[band] and this seeing: blurred galaxies + exactly rendered points."""
        img = render.psf_blur(self._base(band), fwhm) if self.galaxies else np.zeros((render.STAMP, render.STAMP))
        if self.points:
            render.add_points(img, self._px, self._py, render.component_fluxes(self.points, band, ZP0[band]), fwhm)
        return img

    def _reference(self, band: int) -> tuple[np.ndarray, np.ndarray]:
        """(noise-free scene, noise) of the reference at zero point ZP0[band] (scaled per alert)."""
        key = ("ref", band)
        if key not in self.cache:
            scene = self._static(band, self.src.ref_seeing / render.PIXEL_SCALE)
            sky = {1: 95.0, 2: 175.0, 3: 290.0}[band]
            sigma = np.sqrt(sky / render.EFFECTIVE_GAIN + render.NOISE_FLOOR ** 2) * self.rng.uniform(0.2, 0.33)
            noise = render.correlated_noise(self.rng, sigma, rho=0.3)
            self.cache[key] = (scene, noise)
        return self.cache[key]

    def _scene(self, band: int, fwhm: float) -> tuple[np.ndarray, np.ndarray]:
        """(static scene at this seeing, at zero point ZP0[band]; [scene, d/dx, d/dy, laplacian] of the nearest
        grid seeing). Scenes are cached per source and band on a 10% grid of FWHM and interpolated linearly; the
        derivatives only feed the small subtraction residuals, for which the nearest grid point is plenty."""
        g = np.log(fwhm / SEEING_GRID0) / np.log(SEEING_GRID_STEP)
        k = int(np.floor(g))
        w = g - k
        stacks = []
        for kk in (k, k + 1):
            key = ("sci", band, kk)
            if key not in self.cache:
                sc = self._static(band, SEEING_GRID0 * SEEING_GRID_STEP ** kk)
                d = render.derivative_matrix()
                gy, gx = d @ sc, sc @ d.T  # == np.gradient(sc), as matrix products
                self.cache[key] = np.stack([sc, gx, gy, gx @ d.T + d @ gy])
            stacks.append(self.cache[key])
        scene = stacks[0][0] * (1 - w) + stacks[1][0] * w
        return scene, stacks[0] if w < 0.5 else stacks[1]

    def stamps(self, i: int, f_meas: float, f_now: float, f_ref: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src, vis, rng = self.src, self.vis, self.rng
        band = int(vis.fid[i])
        zp = float(vis.zp[i])
        fwhm = float(vis.fwhm_px[i])
        sky = float(vis.sky[i])
        scale = 10 ** (0.4 * (zp - ZP0[band]))
        scene, derivs = self._scene(band, fwhm)
        scene *= scale
        point = np.zeros_like(scene)
        art = src.artefact["kind"] if src.artefact is not None else None
        if art not in BOGUS_TYPES:
            render.add_point(point, *self.center, f_meas, fwhm)
        elif art == "cosmic ray":
            render.add_sharp(point, *self.center, f_meas, src.artefact["sigma"])
        elif art == "hot pixel":
            point[render.CENTER, render.CENTER] += f_meas
        elif art == "bad column":
            prof = f_meas / 6.0 * (1 + 0.2 * rng.standard_normal(render.STAMP))
            if src.artefact["vertical"]:
                point[:, render.CENTER] += prof
            else:
                point[render.CENTER, :] += prof
        elif art == "ghost":
            yy, xx = np.mgrid[0:render.STAMP, 0:render.STAMP]
            rr = np.hypot(xx - self.center[0] - 3, yy - self.center[1] - 2)
            ring = np.exp(-0.5 * ((rr - src.artefact["radius"]) / 1.8) ** 2) + 0.4 * np.exp(-0.5 * (rr / 3.0) ** 2)
            point += f_meas * ring / ring.sum() * 3.0
        # science: sky + scene + new light + noise (sky, read-out, and the sources' own photon noise)
        total = scene + point
        sig_pix = float(vis.sigma_pix[i])
        noise_var = sig_pix ** 2 + np.maximum(total, 0) / render.EFFECTIVE_GAIN
        n_sci = rng.standard_normal(scene.shape) * np.sqrt(noise_var)
        sci = sky + total + n_sci
        # reference: the per-band co-add, scaled to this exposure's zero point and background
        ref_scene, ref_noise = self._reference(band)
        ref = sky + (ref_scene + ref_noise) * scale
        # difference = science - matched reference: new light, both noises, residuals of the static scene
        eps = rng.normal(0, 0.004)
        shift = rng.normal(0, 0.02, 2)
        kappa = rng.normal(0, 0.03)
        if art == "dipole":
            eps += self.art["eps"][i]
            shift = shift + self.art["shift"][i]
        elif art == "galaxy residual":
            kappa += self.art["kappa"][i]
            shift = shift + self.art["shift"][i]
        diff = np.tensordot(np.array([eps, -shift[0], -shift[1], kappa]) * scale, derivs, 1)
        if art not in ("dipole", "galaxy residual"):
            diff += point
        diff += n_sci - ref_noise * scale
        # masked pixels: saturated cores, and now and then a masked band along one side
        sat = total > render.SATURATION
        if sat.any():
            sci[sat] = np.nan
            diff[sat] = np.nan
            ref[(ref_scene * scale) > render.SATURATION] = np.nan
        if rng.random() < 0.05:
            w = int(rng.integers(2, 26))
            side = int(rng.integers(4))
            sl = [(slice(0, w), slice(None)), (slice(-w, None), slice(None)), (slice(None), slice(0, w)),
                  (slice(None), slice(-w, None))][side]
            sci[sl] = np.nan
            diff[sl] = np.nan
            if rng.random() < 0.6:
                ref[sl] = np.nan
        return sci.astype(np.float32), ref.astype(np.float32), diff.astype(np.float32)
