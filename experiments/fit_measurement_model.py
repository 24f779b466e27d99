"""Fit the simulator's S/N measurement model (btsbot_jax.sim.generate.SCORR_FIT / PSF_FIT) to the real packets.

    python experiments/fit_measurement_model.py --packets=../shared/data/ztf_alerts,../shared/data/ztf_alerts_fink \
        [--simulated=demo_out/sim/alerts]

Every detection (alert candidates and prv_candidates detections, once per candid) gives s (the S/N that the image's
5-sigma `diffmaglim` implies for `magpsf`), the nearest reference source's flux h_ref in the same units, `scorr`
and the PSF fit's S/N; least squares on the log of each S/N fits the forms documented in generate.py. Prints the
parameters, the residual scatter by s, and the binned medians (compare.snr_relation) of the real packets, of the
fitted model and, with --simulated, of a simulated survey (docs/sim_to_real.md, section 9).
"""

from __future__ import annotations

import json

import numpy as np
from absl import app, flags
from scipy.optimize import least_squares

from btsbot_jax.ingest.readers import iter_alerts
from btsbot_jax.sim import compare, generate

flags.DEFINE_list("packets", ["../shared/data/ztf_alerts", "../shared/data/ztf_alerts_fink"], "Real packet folders.")
flags.DEFINE_string("simulated", None, "A simulated survey's alerts folder, to compare with.")
FLAGS = flags.FLAGS


SCORR_PARAMS = ("c", "h1", "h2", "s1", "q", "d")
PSF_PARAMS = ("c", "h1", "s1", "g", "d")


def scorr_model(p, pts):
    return pts["s"] / generate.scorr_deficit(pts["s"], pts["h_ref"], pts["distnr"], **dict(zip(SCORR_PARAMS, p)))


def psf_model(p, pts):
    return pts["s"] / generate.psf_deficit(pts["s"], pts["h_ref"], pts["distnr"], **dict(zip(PSF_PARAMS, p)))


def fit(pts):
    """Least-squares fits of both forms; returns ({name: params}, {name: log residuals})."""
    sc = least_squares(lambda p: np.log(scorr_model(p, pts) / pts["scorr"]), [1.3, 60, 300, 30, 2, 1.5],
                       bounds=([0.3, 1, 1, 1, 0.5, 0.3], [3, 1e5, 1e6, 1e4, 4, 10]))
    ps = least_squares(lambda p: np.log(psf_model(p, pts) / pts["snr_psf"]), [1.0, 100, 10, 0.03, 1.5],
                       bounds=([0.3, 1, 0.5, 0, 0.3], [3, 1e5, 1e4, 0.5, 10]))
    params = {"scorr": dict(zip(SCORR_PARAMS, np.round(sc.x, 4).tolist())),
              "psf": dict(zip(PSF_PARAMS, np.round(ps.x, 4).tolist()))}
    return params, {"scorr": sc.fun, "psf": ps.fun}


def main(argv):
    del argv
    real = compare.measurement_points(a.record for a in iter_alerts(FLAGS.packets)).drop_duplicates("candid")
    params, resid = fit(real)
    print(f"{len(real)} real detections ({(real['kind'] == 'alert').sum()} alerts)")
    print(json.dumps(params))
    for lo, hi in zip(compare.SNR_BINS[:-1], compare.SNR_BINS[1:]):
        m = ((real["s"] > lo) & (real["s"] <= hi)).to_numpy()
        print(f"s in ({lo}, {hi}]: {m.sum()} detections, log-residual sd scorr {np.std(resid['scorr'][m]):.3f}, "
              f"psf {np.std(resid['psf'][m]):.3f}")
    # the forms before section 9 (no reference light; beta 0.024, gamma 0.04, without their scatter)
    old_sc = real["s"] / np.sqrt((1 / 1.3) ** 2 + (0.024 * real["s"]) ** 2)
    old_ps = real["s"] / np.sqrt((1 / 1.25) ** 2 + (0.04 * real["s"]) ** 2)
    for name, model, col in (("scorr", old_sc, "scorr"), ("psf", old_ps, "snr_psf")):
        r = np.log(model / real[col])
        print(f"before section 9, {name}: log-residual mean {r.mean():.3f}, sd {r.std():.3f}; fitted: mean "
              f"{resid[name].mean():.3f}, sd {resid[name].std():.3f}")
    fitted = real.assign(scorr=scorr_model(list(params["scorr"].values()), real),
                         snr_psf=psf_model(list(params["psf"].values()), real))
    table = compare.snr_relation(real).merge(compare.snr_relation(fitted), left_index=True, right_index=True,
                                             suffixes=("", "_fit"))
    if FLAGS.simulated:
        sim = compare.measurement_points(a.record for a in iter_alerts([FLAGS.simulated]))
        table = table.merge(compare.snr_relation(sim.drop_duplicates("candid")), left_index=True, right_index=True,
                            suffixes=("", "_sim"))
        for name, d in (("real", real), ("simulated", sim)):
            prv = d[d["kind"] == "prv"]  # every history detection, whether or not it was an alert too
            alerts = d[d["kind"] == "alert"]
            depth = np.percentile(alerts["magpsf"] - alerts["diffmaglim"], [5, 50, 95]).round(2)
            print(f"{name}: alerts with sigmapsf > 0.2172: {(alerts['sigmapsf'] > 0.2172).mean():.3f}; prv detections: "
                  f"{(prv['sigmapsf'] > 0.2172).mean():.3f} of {len(prv)}; alerts' magpsf - diffmaglim 5/50/95%: "
                  f"{depth}")
    print(table.round(2).to_string())


if __name__ == "__main__":
    app.run(main)
