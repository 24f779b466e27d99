"""Independent reference of the paper's inputs for the tests: the way Kowalski computes BTSbot's inputs (gzip + astropy,
np.nan_to_num, division by np.linalg.norm, np.pad with 1e-9), written plainly without the package's fast paths."""

import numpy as np

from btsbot_jax.constants import METADATA_COLUMNS, PAD_VALUE
from btsbot_jax.ingest.stamps import read_stamp_astropy


def reference_triplet(record) -> np.ndarray:
    """Kowalski's make_triplet: gzip + astropy, nan_to_num, / np.linalg.norm (float32 arithmetic), np.pad."""
    out = []
    for c in ("cutoutScience", "cutoutTemplate", "cutoutDifference"):
        img = np.nan_to_num(read_stamp_astropy(record[c]["stampData"]))
        with np.errstate(over="ignore"):  # FLT_MAX pixels: the float32 norm overflows to inf, as in production
            img = img / np.linalg.norm(img)
        img = np.pad(img, [(0, 63 - img.shape[0]), (0, 63 - img.shape[1])], constant_values=PAD_VALUE)
        out.append(img)
    return np.stack(out, axis=-1).astype(np.float32)


def reference_metadata(record) -> np.ndarray:
    """The paper's input definition written out plainly, for the real packets (no caller history)."""
    cand = record["candidate"]
    hist = [p for p in (record.get("prv_candidates") or []) if p.get("magpsf") is not None] + [cand]
    mags = [h["magpsf"] for h in hist]
    peak = hist[int(np.argmin(mags))]
    first = min(cand["jdstarthist"], min(h["jd"] for h in hist))
    feats = dict(cand)
    feats.update(age=cand["jd"] - first, days_since_peak=cand["jd"] - peak["jd"],
                 days_to_peak=peak["jd"] - first, peakmag_so_far=min(mags), maxmag_so_far=max(mags),
                 nnotdet=cand["ncovhist"] - cand["ndethist"])
    return np.array([feats[c] for c in METADATA_COLUMNS], np.float32)
