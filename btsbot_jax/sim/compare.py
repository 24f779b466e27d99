"""Simulated vs real: the 25 feature distributions side by side (quantiles) and a picture of triplets.

Real packets come from ../shared/data (the 36 Kowalski test alerts, the 611 Fink test alerts, and the 39 labelled
BTSbot examples with their published features); both sides go through the same ingestion code
(`btsbot_jax.ingest.features.prepare_batch`), so the comparison is of what the model would see.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from btsbot_jax.constants import METADATA_COLUMNS
from btsbot_jax.sim.generate import reference_light
from btsbot_jax.sim.population import TABLE1_CLEANED

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def real_packets(data_dir: str | os.PathLike) -> tuple[pd.DataFrame, np.ndarray, list[dict]]:
    """Features (25 + isdiffpos/objectId/candid), triplets and raw cutouts of the real avro packets under data_dir
    (ztf_alerts/ and ztf_alerts_fink/), duplicates (same candid) dropped."""
    from btsbot_jax.ingest.features import prepare_batch
    from btsbot_jax.ingest.readers import iter_alerts
    from btsbot_jax.ingest.stamps import read_stamp

    d = Path(data_dir)
    paths = [p for p in (d / "ztf_alerts", d / "ztf_alerts_fink" / "fink-broker") if p.exists()]
    if not paths:
        raise FileNotFoundError(f"no real alert packets under {d} (ztf_alerts/, ztf_alerts_fink/)")
    records, seen = [], set()
    for a in iter_alerts(paths):
        if a.record is None or a.record.get("candid") in seen:
            continue
        seen.add(a.record["candid"])
        records.append(a.record)
    prep = prepare_batch(records)
    table = pd.DataFrame(prep.metadata, columns=list(METADATA_COLUMNS))
    by = {r["candid"]: r for r in records}
    recs = [by[int(c)] for c in prep.info["candid"]]
    table.insert(0, "candid", prep.info["candid"].to_numpy())
    table.insert(0, "objectId", prep.info["objectId"].to_numpy())
    table["isdiffpos"] = [r["candidate"]["isdiffpos"] for r in recs]
    table["fid"] = [r["candidate"]["fid"] for r in recs]
    raw = [{k: read_stamp(r[k]["stampData"]) for k in ("cutoutScience", "cutoutTemplate", "cutoutDifference")}
           for r in recs]
    return table, prep.triplets, raw


def feature_quantiles(sim: pd.DataFrame, real: pd.DataFrame, columns: Sequence[str] = METADATA_COLUMNS,
                      quantiles: Sequence[float] = QUANTILES) -> pd.DataFrame:
    """One row per feature: quantiles of the simulated and the real values (-999 sentinels excluded and
    counted separately, as their share)."""
    rows = []
    for c in columns:
        row = {"feature": c}
        for name, t in (("sim", sim), ("real", real)):
            v = pd.to_numeric(t[c], errors="coerce").to_numpy(float)
            sentinel = v == -999
            good = v[~sentinel & np.isfinite(v)]
            qs = np.quantile(good, quantiles) if len(good) else [np.nan] * len(quantiles)
            for q, x in zip(quantiles, qs):
                row[f"{name} q{int(round(q * 100)):02d}"] = x
            row[f"{name} -999"] = float(sentinel.mean()) if len(v) else np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("feature")


def quantile_markdown(q: pd.DataFrame, digits: int = 3) -> str:
    """The quantile table as markdown: per feature, 'sim' and 'real' quantiles in one cell each."""
    qcols = sorted({c.split(" ", 1)[1] for c in q.columns if " q" in c})
    head = "| feature | " + " | ".join(f"{c} sim / real" for c in qcols) + " | -999 sim / real |"
    sep = "|---" * (len(qcols) + 2) + "|"
    lines = [head, sep]

    def fmt(x):
        if not np.isfinite(x):
            return "-"
        a = abs(x)
        return f"{x:.0f}" if a >= 100 else (f"{x:.2f}" if a >= 1 else f"{x:.{digits}f}")

    for f, r in q.iterrows():
        cells = [f"{fmt(r[f'sim {c}'])} / {fmt(r[f'real {c}'])}" for c in qcols]
        cells.append(f"{r['sim -999']:.0%} / {r['real -999']:.0%}")
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_triplets(sim_cutouts: list[dict], sim_titles: list[str], real_cutouts: list[dict], real_titles: list[str],
                  png: str | os.PathLike, columns: int = 2) -> Path:
    """Triplets (science / reference / difference, zscale) of simulated sources on the left, real on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.visualization import ZScaleInterval

    rows = max(len(sim_cutouts), len(real_cutouts))
    rows = -(-rows // columns)
    fig, axes = plt.subplots(rows, 6 * columns + 1, figsize=(1.6 * (6 * columns + 1), 1.75 * rows + 0.6),
                             squeeze=False, gridspec_kw={"width_ratios": [1] * (3 * columns) + [0.25]
                                                         + [1] * (3 * columns)})
    zs = ZScaleInterval()
    keys = ("cutoutScience", "cutoutTemplate", "cutoutDifference")
    for a in axes.ravel():
        a.set_axis_off()
    for side, (cuts, titles) in enumerate(((sim_cutouts, sim_titles), (real_cutouts, real_titles))):
        for k, (cut, title) in enumerate(zip(cuts, titles)):
            r, c = divmod(k, columns)
            for j, key in enumerate(keys):
                col = side * (3 * columns + 1) + c * 3 + j
                ax = axes[r, col]
                img = np.asarray(cut[key], float)
                fin = img[np.isfinite(img)]
                lo, hi = zs.get_limits(fin) if fin.size > 10 else (0.0, 1.0)
                ax.imshow(img, vmin=lo, vmax=hi, cmap="gray", origin="lower", interpolation="nearest")
                ax.set_axis_on()
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_title(title, fontsize=6, loc="left")
    fig.suptitle("simulated (left: science / reference / difference)  |  real ZTF packets from ../shared/data "
                 "(right)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out = Path(png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def _sim_table(sim_dir: str | os.PathLike) -> pd.DataFrame:
    return pd.read_parquet(Path(sim_dir) / "alerts.parquet")


def _sim_cutouts(sim_dir: Path, rows: pd.DataFrame) -> list[dict]:
    from btsbot_jax.ingest.readers import iter_alerts
    from btsbot_jax.ingest.stamps import read_stamp

    want = {int(c) for c in rows["candid"]}
    got = {}
    for f in sorted(set(rows["source_file"])):
        for a in iter_alerts([sim_dir / f]):
            c = a.record["candid"] if a.record else None
            if c in want:
                got[c] = {k: read_stamp(a.record[k]["stampData"])
                          for k in ("cutoutScience", "cutoutTemplate", "cutoutDifference")}
    return [got[int(c)] for c in rows["candid"]]


def pick_simulated(table: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """A fixed mix for the picture: bright and faint trues, dims, vars and rejects of several kinds."""
    rng = np.random.default_rng(seed)
    t = table[table["isdiffpos"] == "t"]
    wanted = [("trues", "magpsf < 18.0", 3), ("trues", "magpsf >= 18.0", 1), ("dims", "magpsf > 0", 2),
              ("vars", "subtype in ['AGN', 'QSO']", 1), ("vars", "subtype not in ['AGN', 'QSO']", 1),
              ("rejects", "subtype == 'dipole'", 1), ("rejects", "subtype == 'galaxy residual'", 1),
              ("rejects", "subtype in ['cosmic ray', 'hot pixel', 'bad column', 'ghost']", 1),
              ("rejects", "subtype in ['asteroid', 'stellar flare', 'nuclear flicker', 'unsaved SN']", 1)]
    picks = []
    for s, q, n in wanted:
        pool = t[t["source_set"] == s].query(q)
        pool = pool.drop_duplicates("objectId")
        if len(pool):
            picks.append(pool.iloc[rng.choice(len(pool), size=min(n, len(pool)), replace=False)])
    return pd.concat(picks) if picks else t.head(0)


def plot_compare(sim_dir: str | os.PathLike, real_dir: str | os.PathLike, png: str | os.PathLike, seed: int = 0,
                 n_real: int = 12) -> Path:
    """The picture: simulated triplets (a fixed mix of sets) beside real ones from the ../shared/data packets."""
    sim_dir = Path(sim_dir)
    rows = pick_simulated(_sim_table(sim_dir), seed)
    sim_cuts = _sim_cutouts(sim_dir, rows)
    sim_titles = [f"{r.source_set}/{r.subtype} m={r.magpsf:.1f} drb={r.drb:.2f}" for r in rows.itertuples()]
    real, _, raw = real_packets(real_dir)
    pos = np.flatnonzero((real["isdiffpos"] == "t").to_numpy())
    take = pos[np.linspace(0, len(pos) - 1, min(n_real, len(pos))).astype(int)]
    real_titles = [f"{real['objectId'].iloc[i]} m={real['magpsf'].iloc[i]:.1f} drb={real['drb'].iloc[i]:.2f}"
                   for i in take]
    return plot_triplets(sim_cuts, sim_titles, [raw[i] for i in take], real_titles, png)


def compare_features(sim_dir: str | os.PathLike, real_dir: str | os.PathLike) -> tuple[pd.DataFrame, int, int]:
    """Quantile table of the 25 features: simulated positive-subtraction g/r alerts vs the real packets (positive
    subtractions) plus the 39 labelled BTSbot examples. Returns (table, n_sim, n_real)."""
    sim = _sim_table(sim_dir)
    sim = sim[(sim["isdiffpos"] == "t") & sim["fid"].isin([1, 2])]
    real, _, _ = real_packets(real_dir)
    real = real[real["isdiffpos"] == "t"]
    ex = Path(real_dir) / "btsbot_examples" / "usage_candidates.csv"
    if ex.exists():
        u = pd.read_csv(ex)
        u["drb"] = u["new_drb"]
        real = pd.concat([real, u[list(METADATA_COLUMNS)]], ignore_index=True)
    return feature_quantiles(sim, real), len(sim), len(real)


def image_stat_table(cutouts: Sequence[dict], isdiffpos: Sequence[str], fwhm: Sequence[float] | None = None,
                     drb: Sequence[float] | None = None, flip_negative: bool = False) -> pd.DataFrame:
    """Difference-stamp statistics (`image_stats.difference_stats` + `realness_statistic`) of each alert, with
    `drb`, a column of it beside them. ZTF cuts the difference stamp of a negative subtraction (isdiffpos 'f')
    from the inverted difference, so the candidate is a positive blob either way; `isdiffpos` only names the
    alerts whose stamp is to be flipped when `flip_negative` is set (for stamps made the other way)."""
    from btsbot_jax.sim import image_stats

    rows = []
    for k, (cut, sign) in enumerate(zip(cutouts, isdiffpos)):
        d = np.asarray(cut["cutoutDifference"], np.float64)
        if flip_negative and str(sign) in ("f", "0"):
            d = -d
        w = float(fwhm[k]) if fwhm is not None and np.isfinite(fwhm[k]) and fwhm[k] > 0 else 2.2
        st = image_stats.difference_stats(d, w)
        st["realness_statistic"] = image_stats.realness_statistic(d, w)
        rows.append(st)
    out = pd.DataFrame(rows, columns=list(image_stats.STAT_NAMES) + ["realness_statistic"])
    if drb is not None:
        out["drb"] = np.asarray(drb, np.float64)
    return out


def drb_image_agreement(stats: pd.DataFrame) -> dict[str, float]:
    """How closely `drb` follows what the difference stamp shows: Spearman and Pearson correlation of drb with
    the image realness statistic, and the ROC AUC of the statistic for drb > 0.5 (NaN where one class is
    missing)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import roc_auc_score

    r, d = stats["realness_statistic"].to_numpy(float), stats["drb"].to_numpy(float)
    ok = np.isfinite(r) & np.isfinite(d)
    r, d = r[ok], d[ok]
    y = d > 0.5
    return {"alerts": int(ok.sum()), "drb_below_0.5": float(np.mean(~y)) if len(y) else np.nan,
            "spearman": float(spearmanr(r, d).statistic) if len(r) > 2 else np.nan,
            "pearson": float(pearsonr(r, d).statistic) if len(r) > 2 else np.nan,
            "auc_drb_above_0.5": float(roc_auc_score(y, r)) if np.unique(y).size == 2 else np.nan}


def image_stat_quantiles(sim: pd.DataFrame, real: pd.DataFrame) -> pd.DataFrame:
    """Quantiles of each difference-stamp statistic, simulated vs real (the layout of `feature_quantiles`)."""
    cols = [c for c in sim.columns if c in real.columns]
    return feature_quantiles(sim, real, columns=cols)


def simulated_image_stats(sim_dir: str | os.PathLike, max_alerts: int = 2000, seed: int = 0) -> pd.DataFrame:
    """`image_stat_table` of up to `max_alerts` simulated alerts (g/r, a seeded random subset), with their
    drb, subtype, source set, magpsf and scorr."""
    sim_dir = Path(sim_dir)
    t = _sim_table(sim_dir)
    t = t[t["fid"].isin([1, 2])]
    if len(t) > max_alerts:
        t = t.iloc[np.sort(np.random.default_rng(seed).choice(len(t), max_alerts, replace=False))]
    cuts = _sim_cutouts(sim_dir, t)
    out = image_stat_table(cuts, t["isdiffpos"].to_numpy(), None,
                           t["drb"].to_numpy())
    for c in ("subtype", "source_set", "magpsf", "scorr", "isdiffpos"):
        if c in t:
            out[c] = t[c].to_numpy()
    return out


def real_image_stats(real_dir: str | os.PathLike) -> pd.DataFrame:
    """`image_stat_table` of the real packets under real_dir (g/r), with drb, magpsf and scorr."""
    real, _, raw = real_packets(real_dir)
    keep = real["fid"].isin([1, 2]).to_numpy()
    real = real[keep]
    raw = [r for r, k in zip(raw, keep) if k]
    out = image_stat_table(raw, real["isdiffpos"].to_numpy(), None, real["drb"].to_numpy())
    for c in ("magpsf", "scorr", "isdiffpos"):
        out[c] = real[c].to_numpy()
    return out


def write_compare_table(sim_dir: str | os.PathLike, real_dir: str | os.PathLike, md: str | os.PathLike) -> Path:
    q, n_sim, n_real = compare_features(sim_dir, real_dir)
    text = (f"Quantiles (5/25/50/75/95%) of the 25 model features, simulated ({n_sim} positive g/r alerts of "
            f"{sim_dir}) / real ({n_real} alerts: ../shared/data ZTF packets with isdiffpos t and the 39 BTSbot "
            "examples); -999 = share of PS1 sentinels.\n\n" + quantile_markdown(q) + "\n")
    out = Path(md)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out



def _alerts_per_source(alerts: pd.DataFrame, by: str, keep=None,
                       order: list[str] | None = None) -> pd.DataFrame:
    """After the paper's cleaning cuts (`data.prepare.select_alerts`, no N_max): alerts, sources, alerts per source
    and share of the alerts of each value of column `by` (rows where `keep` holds; in `order`, zeros for the absent)."""
    from btsbot_jax.data.prepare import select_alerts

    kept, _ = select_alerts(alerts, n_max=None)
    if keep is not None:
        kept = kept[keep(kept)]
    g = kept.groupby(by)["objectId"].agg(alerts="size", sources="nunique")
    if order is not None:
        g = g.reindex(order).fillna(0)
    g = g.astype(int)
    g["per_source"] = g["alerts"] / g["sources"].where(g["sources"] > 0)
    g["alert_share"] = g["alerts"] / g["alerts"].sum()
    return g


def set_composition(alerts: pd.DataFrame) -> pd.DataFrame:
    """Sources, alerts and alerts per source of each set after the paper's cleaning cuts, beside Table 1's.

    The alert-level metrics weigh each set by its alerts, not its sources, so a simulated survey whose sets carry
    the paper's source mix but not its alerts per source is scored on a different mix of alerts than the paper's.
    `alerts` is the simulator's `alerts.parquet` (or any table `data.prepare.select_alerts` takes).
    """
    g = _alerts_per_source(alerts, "source_set", order=list(TABLE1_CLEANED))
    paper = pd.DataFrame(TABLE1_CLEANED, index=["paper_sources", "paper_alerts"]).T
    g["paper_per_source"] = paper["paper_alerts"] / paper["paper_sources"]
    g["paper_alert_share"] = paper["paper_alerts"] / paper["paper_alerts"].sum()
    g.index.name = "set"
    return g


def subtype_composition(alerts: pd.DataFrame, set_name: str = "trues") -> pd.DataFrame:
    """Sources, alerts and alerts per source of each sub-type of one set, after the paper's cleaning cuts.

    Table 1 gives one alerts-per-source figure per set; this says which sub-types (long-lived SNe II, IIn, TDEs
    against short SNe Ia and Ibc) make a simulated set carry more or fewer than that.
    """
    g = _alerts_per_source(alerts, "subtype", keep=lambda k: k["source_set"] == set_name)
    g["source_share"] = g["sources"] / g["sources"].sum()
    return g


def history_gaps(records, window: float = 30.0) -> np.ndarray:
    """Nights between consecutive exposures of one position, from each g/r packet's history (prv_candidates over
    the `window` days before it: detections and upper limits) and the alert itself: the survey's cadence as the
    packets show it, comparable between simulated and real packets (docs/sim_to_real.md, section 8)."""
    gaps = []
    for r in records:
        c = (r or {}).get("candidate") or {}
        if c.get("fid") not in (1, 2) or c.get("jd") is None:
            continue
        jd = [p["jd"] for p in (r.get("prv_candidates") or [])
              if p.get("jd") is not None and c["jd"] - window <= p["jd"] < c["jd"]]
        nights = np.unique(np.floor(np.asarray(jd + [c["jd"]], np.float64) - 0.5))
        gaps.append(np.diff(nights))
    return np.concatenate(gaps) if gaps else np.zeros(0)


def measurement_points(records) -> pd.DataFrame:
    """One row per detection (the alert's candidate and each prv_candidates detection, once per candid) with what
    the S/N measurement model relates (docs/sim_to_real.md, section 9): `scorr`, the PSF fit's S/N (1.0857 /
    `sigmapsf`), s = the S/N that `diffmaglim` (the image's 5-sigma limit) implies for `magpsf`, and h_ref = the
    nearest reference source's flux in the same units; `kind` is "alert" or "prv" (a detection that is both, an
    earlier alert in a later alert's history, has a row of each kind)."""
    rows, seen = [], set()
    for r in records:
        if not r:
            continue
        entries = [("alert", r.get("candidate") or {})]
        entries += [("prv", p) for p in (r.get("prv_candidates") or []) if p and p.get("magpsf") is not None]
        for kind, c in entries:
            vals = [c.get(k) for k in ("candid", "scorr", "sigmapsf", "magpsf", "diffmaglim", "magnr", "distnr")]
            if any(v is None for v in vals) or (kind, vals[0]) in seen or not vals[2] > 0:
                continue
            seen.add((kind, vals[0]))
            rows.append((kind, *vals, int(c.get("fid") or 0)))
    d = pd.DataFrame(rows, columns=["kind", "candid", "scorr", "sigmapsf", "magpsf", "diffmaglim", "magnr", "distnr",
                                    "fid"])
    d["snr_psf"] = 1.0857 / d["sigmapsf"]
    d["s"] = 5 * 10 ** (0.4 * (d["diffmaglim"] - d["magpsf"]))
    ok = (d["magnr"] > 0) & (d["distnr"] >= 0)
    d["h_ref"] = np.where(ok, reference_light(d["diffmaglim"], d["magnr"].where(ok, 99.0)), 0.0)
    d["distnr"] = d["distnr"].where(ok, 99.0)
    return d


SNR_BINS = (0, 10, 30, 100, np.inf)
HOST_BINS = (-1, 1, 10, 100, np.inf)


def snr_relation(points: pd.DataFrame) -> pd.DataFrame:
    """Median scorr / s and PSF S/N / s in bins of s and of the reference source's light at the position (h_ref
    tapered over 1.5 px): how far each S/N falls below what the image's depth alone implies."""
    h = points["h_ref"] * np.exp(-0.5 * (points["distnr"] / 1.5) ** 2)
    g = points.groupby([pd.cut(h, HOST_BINS), pd.cut(points["s"], SNR_BINS)], observed=True)
    out = pd.concat([g.size().rename("n"), (g["scorr"].median() / g["s"].median()).rename("scorr_over_s"),
                     (g["snr_psf"].median() / g["s"].median()).rename("psf_over_s")], axis=1)
    out.index.names = ["h_ref", "s"]
    return out
