"""Light curves: magnitude of the variable point source of a simulated source, per epoch and ZTF band.

Every model answers `mag(t, fid)` (arrays of JD and filter id, 1=g 2=r 3=i; +inf where the source is absent) and
`ref_mag(fid)`, the brightness baked into the reference image (+inf for a transient that did not exist then).
The difference-image flux of an epoch is then flux(mag) - flux(ref_mag): a transient is positive, a variable
star or an AGN goes negative (isdiffpos 'f') when it is fainter than in the reference.

Models (parameters are drawn in `population.py`):
- `Bazin`: extragalactic transients (SN Ia/II/Ibc/IIn-SLSN, TDE): F ~ exp(-(t-t0)/tau_fall) / (1 + exp(-(t-t0)/
  tau_rise)), a fall time per band (g fades faster than r -> the colour reddens after peak, as SNe do), optional
  end of a plateau (SN II-P), scaled so that the brightest of the g/r peaks is the drawn peak magnitude.
- `DampedRandomWalk`: AGN and QSOs (Ornstein-Uhlenbeck process in magnitude, larger amplitude in g).
- `DwarfNova`: CV outbursts on a faint quiescent star (fast rise, plateau, linear decline in mag).
- `Periodic`: RR Lyrae (sawtooth), eclipsing binaries (dips) and long-period variables (sinusoid, red).
"""

from __future__ import annotations

import numpy as np

LN10_25 = 2.5 / np.log(10.0)
BANDS = (1, 2, 3)


def _per_band(values: dict[int, float], fid: np.ndarray) -> np.ndarray:
    out = np.empty(len(fid))
    for b in BANDS:
        out[fid == b] = values[b]
    return out


class Bazin:
    def __init__(self, t_peak: float, peak: dict[int, float], tau_rise: float, tau_fall: dict[int, float],
                 plateau_end: float | None = None):
        self.t_peak = t_peak
        self.peak = peak
        self.tau_rise = tau_rise
        self.tau_fall = tau_fall
        self.plateau_end = plateau_end
        # t0 such that the maximum of the r-band curve falls on t_peak; other bands peak within a day of it
        tf = tau_fall[2]
        self.t0 = t_peak - tau_rise * np.log(max(tf / tau_rise - 1.0, 1e-3))
        self._log_peak = {b: self._log_flux(np.array([self._argmax(b)]), b)[0] for b in BANDS}

    def _argmax(self, b: int) -> float:
        tf = self.tau_fall[b]
        return self.t0 + self.tau_rise * np.log(max(tf / self.tau_rise - 1.0, 1e-3))

    def _log_flux(self, t: np.ndarray, b: int) -> np.ndarray:
        x = t - self.t0
        lf = -x / self.tau_fall[b] - np.logaddexp(0.0, -x / self.tau_rise)
        if self.plateau_end is not None:  # drop off the plateau by ~2.5 mag over ~2 weeks (SN II-P)
            lf = lf + np.log(0.1 + 0.9 / (1.0 + np.exp(np.clip((t - self.plateau_end) / 4.0, -50, 50))))
        return lf

    def mag(self, t: np.ndarray, fid: np.ndarray) -> np.ndarray:
        out = np.full(len(t), np.inf)
        for b in BANDS:
            m = fid == b
            if m.any():
                lf = self._log_flux(t[m], b)
                out[m] = self.peak[b] - LN10_25 * (lf - self._log_peak[b])
        return np.where(out > 40, np.inf, out)

    def ref_mag(self, fid: int) -> float:
        return np.inf


class DampedRandomWalk:
    """OU process x(t) with timescale tau and asymptotic rms sf/sqrt(2) (structure function SF_inf = sf), evaluated
    at the requested epochs in time order; mag = mean + amp_b * x. Reference = the mean state."""

    def __init__(self, rng: np.random.Generator, mean: dict[int, float], tau: float, sf: float,
                 amp: dict[int, float]):
        self.rng = rng
        self.mean = mean
        self.tau = tau
        self.sigma = sf / np.sqrt(2.0)
        self.amp = amp
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    def _walk(self, t: np.ndarray) -> np.ndarray:
        order = np.argsort(t, kind="stable")
        ts = t[order]
        x = np.empty(len(ts))
        z = self.rng.standard_normal(len(ts))
        prev_t, prev_x = None, self.sigma * z[0] if len(ts) else 0.0
        for i, ti in enumerate(ts):
            if prev_t is None:
                x[i] = prev_x
            else:
                a = np.exp(-(ti - prev_t) / self.tau)
                x[i] = prev_x * a + self.sigma * np.sqrt(1 - a * a) * z[i]
            prev_t, prev_x = ti, x[i]
        out = np.empty(len(t))
        out[order] = x
        return out

    def mag(self, t: np.ndarray, fid: np.ndarray) -> np.ndarray:
        x = self._walk(t)
        return _per_band(self.mean, fid) + _per_band(self.amp, fid) * x

    def ref_mag(self, fid: int) -> float:
        return self.mean[fid]


class DwarfNova:
    def __init__(self, quiescent: dict[int, float], outbursts: list[tuple[float, float, float, float]],
                 color_outburst: float):
        # outbursts: (t_start, peak_mag_r, plateau_days, decline_mag_per_day)
        self.quiescent = quiescent
        self.outbursts = outbursts
        self.color = color_outburst  # g - r at maximum

    def mag(self, t: np.ndarray, fid: np.ndarray) -> np.ndarray:
        q = _per_band(self.quiescent, fid)
        out = q.copy()
        shift = np.where(fid == 1, self.color, np.where(fid == 3, -0.5 * self.color + 0.05, 0.0))
        for t_start, peak, plateau, decline in self.outbursts:
            dt = t - t_start
            m = np.full(len(t), np.inf)
            rise = (dt >= 0) & (dt < 1.0)
            m[rise] = peak + (1.0 - dt[rise]) * 3.0
            top = (dt >= 1.0) & (dt < 1.0 + plateau)
            m[top] = peak + 0.05 * (dt[top] - 1.0)
            dec = dt >= 1.0 + plateau
            m[dec] = peak + 0.05 * plateau + decline * (dt[dec] - 1.0 - plateau)
            out = np.minimum(out, m + shift)
        return out

    def ref_mag(self, fid: int) -> float:
        return self.quiescent[fid]


class Periodic:
    def __init__(self, kind: str, mean: dict[int, float], period: float, amp: dict[int, float], phase0: float,
                 width: float = 0.08):
        self.kind = kind
        self.mean = mean
        self.period = period
        self.amp = amp
        self.phase0 = phase0
        self.width = width

    def _shape(self, phase: np.ndarray) -> np.ndarray:
        """Profile in [-0.5, 0.5]*amp units (positive = fainter)."""
        if self.kind == "rrlyr":  # fast rise (10% of the cycle), slow linear decline
            return np.where(phase < 0.1, 0.5 - phase / 0.1, -0.5 + (phase - 0.1) / 0.9)
        if self.kind == "eb":  # two eclipses, the secondary shallower
            d1 = np.minimum(phase, 1 - phase)
            d2 = np.abs(phase - 0.5)
            return (np.exp(-0.5 * (d1 / self.width) ** 2) + 0.4 * np.exp(-0.5 * (d2 / self.width) ** 2)) - 0.3
        return 0.5 * np.sin(2 * np.pi * phase)  # long-period variable

    def mag(self, t: np.ndarray, fid: np.ndarray) -> np.ndarray:
        phase = np.mod((t - 2458000.0) / self.period + self.phase0, 1.0)
        return _per_band(self.mean, fid) + _per_band(self.amp, fid) * self._shape(phase)

    def ref_mag(self, fid: int) -> float:
        # a co-add over many phases: the flux-weighted mean is a little brighter than the mean magnitude
        ph = np.linspace(0, 1, 200, endpoint=False)
        m = self.mean[fid] + self.amp[fid] * self._shape(ph)
        return float(-2.5 * np.log10(np.mean(10 ** (-0.4 * m))))


class Constant:
    """A non-varying point source (e.g. the star under a subtraction artefact): absent from the difference."""

    def __init__(self, mag: dict[int, float]):
        self.m = mag

    def mag(self, t: np.ndarray, fid: np.ndarray) -> np.ndarray:
        return _per_band(self.m, fid)

    def ref_mag(self, fid: int) -> float:
        return self.m[fid]


class Flare:
    """Stellar flare or asteroid-like one-off: a point source bright at a few epochs only, quiescent otherwise."""

    def __init__(self, quiescent: dict[int, float], events: list[tuple[float, float, float]], color: float):
        self.quiescent = quiescent
        self.events = events  # (t_peak, peak_mag_r, e-folding decay days)
        self.color = color

    def mag(self, t: np.ndarray, fid: np.ndarray) -> np.ndarray:
        q = _per_band(self.quiescent, fid)
        f = 10 ** (-0.4 * q)
        for tp, pk, decay in self.events:
            dt = t - tp
            amp = 10 ** (-0.4 * (pk + np.where(fid == 1, self.color, 0.0)))
            f = f + np.where(dt >= 0, amp * np.exp(-np.clip(dt, 0, None) / decay), amp * np.exp(np.clip(dt, None, 0)
                                                                                                 / 0.01))
        with np.errstate(divide="ignore"):
            return -2.5 * np.log10(f)

    def ref_mag(self, fid: int) -> float:
        return self.quiescent[fid]
