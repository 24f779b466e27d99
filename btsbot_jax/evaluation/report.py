"""Evaluation reports: a scores table (or a model + a dataset) -> report.json, per-source CSV and the paper's figures.

Two entry points, one code path:

- ``evaluate_scores(table)`` takes any table of ``objectId, jd, magpsf, score`` (+ ``label``, ``save_jd``,
  ``trigger_jd``), so a scanner's or another model's output is judged exactly like ours;
- ``evaluate_dataset(checkpoint, data, split)`` scores a split in the training-set format with ``load_scorer`` and
  hands the table to ``evaluate_scores``.

``write_report`` writes every number to ``report.json``, one row per source to ``sources.csv``, the rows that could
not be evaluated (with their reason) to ``rejected.csv``, in dataset mode the scored alerts to ``scores.csv`` (so
``btsbot-evaluate --scores=REPORT/scores.csv`` reproduces the report without the model), and PNG figures.
Figures use matplotlib's Agg canvas directly (no pyplot, no global backend switch), so this works headless and does
not disturb an interactive session that imports the library.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from btsbot_jax import __version__
from btsbot_jax.evaluation.metrics import (
    DEFAULT_BIN_EDGES,
    DEFAULT_THRESHOLD,
    MIN_ALERTS,
    TIMELINESS_REFERENCES,
    alert_metrics,
    inclusion_summary,
    peak_bin_labels,
    policy_metrics,
    source_table,
)
from btsbot_jax.evaluation.policies import BRIGHT_LIMIT, DEFAULT_POLICIES, Policy, group_alerts, resolve_policies

REQUIRED_COLUMNS = ("objectId", "jd", "magpsf", "score")
OPTIONAL_COLUMNS = ("label", *TIMELINESS_REFERENCES)
PASSTHROUGH_COLUMNS = ("candid", "file", "row")  # kept in scores.csv / rejected.csv to name alerts when present
ROC_POINTS_IN_REPORT = 1001  # a million alerts give ~1e5 ROC points: all go to roc_curve.csv, a thinned copy to JSON
_CAND_NAME = re.compile(r"^(?P<split>[A-Za-z0-9]+)_cand_(?P<version>.+)_N(?P<n_max>\d+)\.csv$")


class EvaluationError(ValueError):
    """A scores table or data selection that cannot be evaluated; the message says which column/alert and why."""


@dataclasses.dataclass
class Evaluation:
    """Result of an evaluation: ``report`` (JSON-ready dict), ``sources`` (one row per source), ``alerts`` (the
    evaluated alerts in input order, with ``predicted``), ``rejected`` (input rows left out, with ``reason``)."""

    report: dict[str, Any]
    sources: pd.DataFrame
    alerts: pd.DataFrame
    rejected: pd.DataFrame
    policies: list[Policy]
    scored: bool = False  # True when the scores were computed here (dataset mode): write_report saves them
    roc: pd.DataFrame | None = None  # the full ROC curve (report.json keeps at most ROC_POINTS_IN_REPORT points)


# ---- scores tables ------------------------------------------------------------------------------------------------

def read_scores_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV (optionally compressed) or parquet scores table."""
    p = Path(path)
    if not p.is_file():
        raise EvaluationError(f"scores table {str(p)!r} does not exist")
    name = p.name.lower()
    if name.endswith((".parquet", ".pq")):
        return pd.read_parquet(p)
    if re.search(r"\.(csv|tsv|txt)(\.(gz|bz2|xz|zst))?$", name):
        return pd.read_csv(p, sep="\t" if ".tsv" in name else ",")
    raise EvaluationError(f"{p}: unknown scores table format (expected .csv, .csv.gz, .tsv or .parquet)")


def _name_rows(table: pd.DataFrame, rows: np.ndarray, k: int = 5) -> str:
    ids = table["objectId"].to_numpy(dtype=object)
    jd = table["jd"].to_numpy(dtype=object)
    return ", ".join(f"row {int(r)} (objectId {ids[r]!r}, jd {jd[r]})" for r in rows[:k])


def check_scores_table(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate a scores table; return (clean alerts, rejected rows with ``reason``).

    Missing columns and impossible labels are errors (the whole table is wrong); an alert with a missing objectId
    or a non-finite jd/magpsf/score is rejected with its reason, so every input row is accounted for.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise EvaluationError(
            f"scores table lacks column(s) {missing}; needs {list(REQUIRED_COLUMNS)} (+ optional "
            f"{list(OPTIONAL_COLUMNS)}), has {list(table.columns)[:20]}"
        )
    keep = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *PASSTHROUGH_COLUMNS) if c in table.columns]
    t = table[keep].reset_index(drop=True).copy()
    if "row" not in t.columns:  # dataset mode brings (file, row) of each alert; a scores table its own row number
        t.insert(0, "row", np.arange(len(t), dtype=np.int64))
    reasons = np.full(len(t), "", dtype=object)

    def flag(mask: np.ndarray, why: str) -> None:
        mask = np.asarray(mask, bool)
        reasons[mask] = np.where(reasons[mask] == "", why, reasons[mask] + "; " + why)

    oid = t["objectId"]
    flag((oid.isna() | (oid.astype(str).str.strip() == "")).to_numpy(), "objectId is missing")
    for c in ("jd", "magpsf", "score", *[r for r in TIMELINESS_REFERENCES if r in t.columns]):
        raw = t[c]
        num = pd.to_numeric(raw, errors="coerce").astype(np.float64)
        if c in TIMELINESS_REFERENCES:  # optional per source: NaN means "no human time known"
            flag((raw.notna() & num.isna()).to_numpy(), f"{c} is not a number")
        else:
            flag(raw.isna().to_numpy(), f"{c} is missing")
            flag((raw.notna() & num.isna()).to_numpy(), f"{c} is not a number")
            flag((num.notna() & ~np.isfinite(num)).to_numpy(), f"{c} is infinite")
        t[c] = num
    if "label" in t.columns:
        lab = pd.to_numeric(t["label"], errors="coerce").astype(np.float64)
        bad = (t["label"].notna() & lab.isna()) | (lab.notna() & ~lab.isin([0.0, 1.0]))
        if bad.any():
            rows = np.flatnonzero(bad.to_numpy())
            raise EvaluationError(
                f"label must be 0, 1 or empty (unlabelled); {len(rows)} alert(s) have other values, e.g. "
                f"{_name_rows(t, rows)}: {t['label'].to_numpy(dtype=object)[rows[:5]].tolist()}"
            )
        t["label"] = lab
    else:
        t["label"] = np.nan
    for c in TIMELINESS_REFERENCES:
        if c not in t.columns:
            t[c] = np.nan
    t["objectId"] = t["objectId"].astype(object)
    bad = reasons != ""
    rejected = t.loc[bad].assign(reason=reasons[bad]).reset_index(drop=True)
    return t.loc[~bad].reset_index(drop=True), rejected


# ---- evaluation ---------------------------------------------------------------------------------------------------

def _utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def evaluate_scores(
    table: pd.DataFrame,
    *,
    policies: Iterable[str | Policy] = DEFAULT_POLICIES,
    threshold: float = DEFAULT_THRESHOLD,
    bin_edges: Sequence[float] = DEFAULT_BIN_EDGES,
    min_alerts: int = MIN_ALERTS,
    bright_limit: float = BRIGHT_LIMIT,
    input_info: dict[str, Any] | None = None,
    already_rejected: pd.DataFrame | None = None,
) -> Evaluation:
    """Alert-level metrics, per-source policy selections and source-level metrics of a scores table."""
    t0 = time.perf_counter()
    pols = resolve_policies(policies)
    n_input = len(table) + (0 if already_rejected is None else len(already_rejected))
    alerts, rejected = check_scores_table(table)
    if already_rejected is not None and len(already_rejected):
        rejected = pd.concat([already_rejected, rejected], ignore_index=True)
    if len(alerts) == 0:
        raise EvaluationError(f"no alert left to evaluate ({len(rejected)} rejected)")
    alerts["predicted"] = (alerts["score"].to_numpy() > threshold).astype(np.int8)
    am = alert_metrics(alerts["label"].to_numpy(), alerts["score"].to_numpy(), threshold)
    roc = None
    if am["roc_curve"] is not None:
        c = am["roc_curve"]
        roc = pd.DataFrame({"fpr": c["fpr"], "tpr": c["tpr"],
                            "threshold": [np.inf if v is None else v for v in c["thresholds"]]})
        n = len(roc)
        if n > ROC_POINTS_IN_REPORT:
            idx = np.unique(np.round(np.linspace(0, n - 1, ROC_POINTS_IN_REPORT)).astype(np.int64))
            am["roc_curve"] = {k: [v[i] for i in idx] for k, v in c.items()}
        am["roc_curve"]["n_points"] = n
        am["roc_curve"]["n_points_in_report"] = len(am["roc_curve"]["fpr"])
    t_alert = time.perf_counter()

    g = group_alerts(alerts["objectId"].to_numpy(dtype=object), alerts["jd"].to_numpy(),
                     alerts["magpsf"].to_numpy(), alerts["score"].to_numpy())
    o = g.order
    sources = source_table(
        g, pols, labels=alerts["label"].to_numpy()[o],
        save_jd=alerts["save_jd"].to_numpy(np.float64)[o], trigger_jd=alerts["trigger_jd"].to_numpy(np.float64)[o],
        min_alerts=min_alerts, bright_limit=bright_limit, bin_edges=bin_edges, threshold=threshold,
    )
    t_source = time.perf_counter()
    report: dict[str, Any] = {
        "btsbot_jax_version": __version__,
        "created_utc": _utc_now(),
        "input": {
            **(input_info or {"mode": "scores"}),
            "n_input_alerts": int(n_input),
            "n_evaluated_alerts": int(len(alerts)),
            "n_rejected_alerts": int(len(rejected)),
            "rejected_by_reason": {str(k): int(v) for k, v in rejected["reason"].value_counts().items()}
            if len(rejected) else {},
            "n_sources": int(len(sources)),
            "n_labelled_alerts": int(np.isfinite(alerts["label"].to_numpy()).sum()),
            "sources_with_save_jd": int(np.isfinite(sources["save_jd"]).sum()),
            "sources_with_trigger_jd": int(np.isfinite(sources["trigger_jd"]).sum()),
        },
        "alert_level": am,
        "source_level": {
            "rules": {
                "order": "each source's alerts sorted by jd (ties keep input order); a policy at an alert sees only "
                         "that alert and the earlier ones",
                "selection": "a source is selected at the first alert where its policy holds (that alert's jd and "
                             "magpsf are recorded)",
                "inclusion": f"sources with >= {min_alerts} alerts and a label; label-1 sources whose brightest "
                             f"magpsf in the data is fainter than {bright_limit:g} are left out",
                "completeness": "TP / (TP + FN) over included sources",
                "purity": "TP / (TP + FP) over included sources",
                "timeliness": "selection jd - save_jd (or trigger_jd) in days over true positives; negative = "
                              "selected before the humans",
                "intervals": "68.27% Wilson binomial intervals",
            },
            "peak_bins": {
                "edges": [float(e) for e in bin_edges],
                "labels": peak_bin_labels(bin_edges),
                "convention": f"by the source's brightest magpsf in the data; [a, b) bins, the last one "
                              f"[{bin_edges[-2]:g}, {bin_edges[-1]:g}] closed; sources brighter than "
                              f"{bin_edges[0]:g} go to their own '<{bin_edges[0]:.2f}' bin, included sources fainter "
                              f"than {bin_edges[-1]:g} (label 0) to '>{bin_edges[-1]:.2f}'",
            },
            "inclusion": inclusion_summary(sources),
            "policies": {p.name: policy_metrics(sources, p, bin_edges) for p in pols},
        },
        "timings_s": {"alert_level": t_alert - t0, "source_level": t_source - t_alert},
    }
    return Evaluation(_jsonable(report), sources, alerts, rejected, pols, roc=roc)


def _jsonable(x: Any) -> Any:
    """Plain JSON types; NaN/inf become null (JSON has neither)."""
    if isinstance(x, list) and x and all(v is None or type(v) is float for v in x):  # long float lists (ROC)
        return [v if v is not None and math.isfinite(v) else None for v in x]
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


# ---- dataset mode -------------------------------------------------------------------------------------------------

def load_data(data: str | os.PathLike | Sequence[str | os.PathLike], split: str = "test", *,
              version: str | None = None, n_max: int | None = None) -> list:
    """Splits to evaluate: a data directory (its ``split``), or ``{split}_cand_*_N*.csv`` file(s) (comma-separated
    or a list), each with its triplets file beside it."""
    from btsbot_jax.data.training_set import load_split

    items = [s for s in str(data).split(",") if s] if isinstance(data, (str, os.PathLike)) else list(data)
    if not items:
        raise EvaluationError("no data given")
    out = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out.append(load_split(p, split, version=version, n_max=n_max))
        elif p.is_file():
            m = _CAND_NAME.match(p.name)
            if not m:
                raise EvaluationError(f"{p}: not a training-set file ({{split}}_cand_{{version}}_N{{n_max}}.csv)")
            out.append(load_split(p.parent, m["split"], version=m["version"], n_max=int(m["n_max"])))
        else:
            raise EvaluationError(f"data path {str(p)!r} does not exist")
    return out


def score_split(scorer, split, *, batch_size: int = 4096, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every alert of a split; (scores table, rejected rows). Rows whose inputs are NaN/inf are rejected with
    the reason instead of failing the whole run. Triplets are read from the memory map one chunk at a time."""
    cand = split.cand
    columns = getattr(scorer, "metadata_columns", None) or [f"column {j}" for j in range(split.metadata.shape[1])]
    keep = [c for c in ("objectId", *PASSTHROUGH_COLUMNS, "jd", "magpsf", "label", *TIMELINESS_REFERENCES)
            if c in cand.columns]
    table = cand[keep].reset_index(drop=True).copy()
    table.insert(0, "row", np.arange(len(table), dtype=np.int64))
    table.insert(0, "file", split.csv_path.name)
    scores = np.full(len(cand), np.nan, np.float64)
    reasons = np.full(len(cand), "", dtype=object)
    meta = split.metadata
    bad_meta = ~np.isfinite(meta)
    for i in np.flatnonzero(bad_meta.any(axis=1)):
        cols = [columns[j] for j in np.flatnonzero(bad_meta[i])]
        reasons[i] = f"metadata not finite: {', '.join(cols)}"
    chunks = range(0, len(cand), batch_size)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc=f"scoring {split.name}", unit="batch", leave=False)
    for start in chunks:
        stop = min(start + batch_size, len(cand))
        trip = np.asarray(split.triplets[start:stop], np.float32)
        bad_t = ~np.isfinite(trip).reshape(len(trip), -1).all(axis=1)
        for i in np.flatnonzero(bad_t):
            r = start + i
            reasons[r] = (reasons[r] + "; " if reasons[r] else "") + "triplet not finite"
        ok = reasons[start:stop] == ""
        if ok.any():
            scores[start:stop][ok] = scorer(trip[ok], meta[start:stop][ok])
    table["score"] = scores
    bad = reasons != ""
    rej = table.loc[bad].copy()
    rej["reason"] = reasons[bad]
    return table.loc[~bad].reset_index(drop=True), rej.reset_index(drop=True)


def find_training_metrics(checkpoint: str | os.PathLike) -> Path | None:
    """``metrics.csv`` of the training workdir a checkpoint came from, if any (workdir itself or ``WORKDIR/best``)."""
    p = Path(checkpoint)
    candidates = [p / "metrics.csv"]  # the workdir itself
    if p.name == "best":  # the workdir's best checkpoint given directly
        candidates.append(p.parent / "metrics.csv")
    for c in candidates:
        if c.is_file():
            return c
    return None


def evaluate_dataset(checkpoint, data, split: str = "test", *, version: str | None = None, n_max: int | None = None,
                     batch_size: int = 4096, progress: bool = True, **kwargs) -> Evaluation:
    """Score a split (training-set format) with a checkpoint (model dir, training workdir or export dir, or an
    already-loaded scorer) and evaluate it."""
    if callable(checkpoint) and not isinstance(checkpoint, (str, os.PathLike)):
        scorer, ckpt_path = checkpoint, None
    else:
        from btsbot_jax.inference.scorer import load_scorer

        scorer, ckpt_path = load_scorer(checkpoint), Path(checkpoint)
    t0 = time.perf_counter()
    splits = load_data(data, split, version=version, n_max=n_max)
    tables, rejected = [], []
    for s in splits:
        t, r = score_split(scorer, s, batch_size=batch_size, progress=progress)
        tables.append(t)
        rejected.append(r)
    table = pd.concat(tables, ignore_index=True)
    rej = pd.concat(rejected, ignore_index=True)
    t_score = time.perf_counter() - t0
    card = getattr(scorer, "card", None) or {}
    info = {
        "mode": "dataset",
        "data": [str(s.csv_path) for s in splits],
        "split": ",".join(dict.fromkeys(s.name for s in splits)),  # from the file names when files are given
        "model": {
            "checkpoint": None if ckpt_path is None else str(ckpt_path),
            "version": getattr(scorer, "version", card.get("version")),
            "architecture": getattr(scorer, "architecture", card.get("architecture")),
        },
    }
    ev = evaluate_scores(table, input_info=info, already_rejected=rej, **kwargs)
    ev.report["timings_s"]["scoring"] = float(t_score)
    ev.report["timings_s"]["scoring_alerts_per_s"] = float(len(table) / t_score) if t_score > 0 else None
    ev.scored = True
    if ckpt_path is not None:
        tm = find_training_metrics(ckpt_path)
        ev.report["input"]["training_metrics"] = None if tm is None else str(tm)
    return ev


# ---- output -------------------------------------------------------------------------------------------------------

def write_report(ev: Evaluation, out_dir: str | os.PathLike, *, training_metrics: str | os.PathLike | None = None,
                 figures: bool = True) -> dict[str, Path]:
    """Write report.json, sources.csv, rejected.csv, scores.csv (dataset mode) and the figures; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files: dict[str, Path] = {}
    files["sources"] = out / "sources.csv"
    ev.sources.to_csv(files["sources"], index=False)
    files["rejected"] = out / "rejected.csv"
    ev.rejected.to_csv(files["rejected"], index=False)
    if ev.roc is not None:
        files["roc_curve"] = out / "roc_curve.csv"
        ev.roc.to_csv(files["roc_curve"], index=False)
    if ev.scored:
        files["scores"] = out / "scores.csv"
        ev.alerts.drop(columns=["predicted"]).to_csv(files["scores"], index=False)
    if training_metrics is None:
        training_metrics = ev.report.get("input", {}).get("training_metrics")
    skipped: dict[str, str] = {}
    if figures:
        figs, skipped = make_figures(ev, out, training_metrics)
        files.update(figs)
    ev.report["files"] = {k: p.name for k, p in files.items()}
    ev.report["figures_skipped"] = dict(skipped)
    ev.report["timings_s"]["writing"] = float(time.perf_counter() - t0)
    files["report"] = out / "report.json"
    files["report"].write_text(json.dumps(ev.report, indent=1, allow_nan=False) + "\n")
    return files


# ---- figures ------------------------------------------------------------------------------------------------------

_LABEL_NAMES = {0: "label 0 (not BTS)", 1: "label 1 (BTS)"}
_MAX_SCATTER = 20000  # points per class in the score-vs-magpsf figure; beyond, a seeded random subsample


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1):
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state

    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def plot_roc(alert_level: dict[str, Any], path: Path, curve: pd.DataFrame | None = None) -> str | None:
    """ROC from the full curve when given (``Evaluation.roc``), else from the report's (possibly thinned) copy."""
    roc = alert_level.get("roc_curve") if curve is None else curve
    if roc is None or not len(roc["fpr"]):
        return "ROC needs labelled alerts of both classes"
    fig, ax = _figure(5.2, 5.0)
    ax = ax[0, 0]
    ax.plot(np.asarray(roc["fpr"]), np.asarray(roc["tpr"]), lw=2, label=f"ROC, AUC = {alert_level['roc_auc']:.4f}")
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance")
    (tn, fp), (fn, tp) = alert_level["confusion_matrix"]["counts"]
    ax.plot(fp / max(fp + tn, 1), tp / max(tp + fn, 1), "o", ms=8, color="C3",
            label=f"operating point ({alert_level['decision']})")
    ax.set_xlabel("false positive rate (label-0 alerts selected / all label-0)")
    ax.set_ylabel("true positive rate (label-1 alerts selected / all label-1)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_title(f"Alert-level ROC ({alert_level['n_alerts']} labelled alerts)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(path)
    return None


def plot_confusion(alert_level: dict[str, Any], path: Path) -> str | None:
    if not alert_level.get("confusion_matrix"):
        return "no labelled alerts"
    counts = np.asarray(alert_level["confusion_matrix"]["counts"])
    norm = np.asarray([[np.nan if v is None else v for v in row] for row in alert_level["confusion_matrix_normalized"]],
                      np.float64)
    fig, ax = _figure(6.2, 4.6)
    ax = ax[0, 0]
    im = ax.imshow(np.nan_to_num(norm), vmin=0, vmax=1, cmap="Blues")
    for i in range(2):
        for j in range(2):
            v = norm[i, j]
            txt = "n/a" if not np.isfinite(v) else f"{v:.3f}"
            ax.text(j, i, f"{txt}\n({counts[i, j]} alerts)", ha="center", va="center",
                    color="white" if np.isfinite(v) and v > 0.5 else "black", fontsize=11)
    ax.set_xticks([0, 1], ["0: not BTS", "1: BTS"])
    ax.set_yticks([0, 1], ["0: not BTS", "1: BTS"])
    ax.set_xlabel(f"predicted class ({alert_level['decision']})")
    ax.set_ylabel("true class (label)")
    ax.set_title("Confusion matrix, normalised by true class")
    fig.colorbar(im, ax=ax, label="fraction of the true class")
    fig.savefig(path)
    return None


def plot_score_vs_magpsf(alerts: pd.DataFrame, threshold: float, path: Path) -> str | None:
    fig, ax = _figure(7.0, 4.6)
    ax = ax[0, 0]
    rng = np.random.default_rng(0)
    lab = alerts["label"].to_numpy()
    groups = [(0, lab == 0, "C0", "o"), (1, lab == 1, "C1", "o"), (None, ~np.isfinite(lab), "0.3", "x")]
    note = ""
    for value, mask, color, marker in groups:
        idx = np.flatnonzero(mask)
        if not idx.size:
            continue
        name = _LABEL_NAMES.get(value, "unlabelled")
        if idx.size > _MAX_SCATTER:
            idx = np.sort(rng.choice(idx, _MAX_SCATTER, replace=False))
            note = f" (random {_MAX_SCATTER} per class shown)"
        ax.scatter(alerts["magpsf"].to_numpy()[idx], alerts["score"].to_numpy()[idx], s=6 if idx.size > 2000 else 14,
                   alpha=0.5 if idx.size > 2000 else 0.8, color=color, marker=marker, lw=0 if marker == "o" else 1,
                   label=f"{name}: {int(mask.sum())} alerts", rasterized=True)
    ax.axhline(threshold, color="C3", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.axvline(BRIGHT_LIMIT, color="0.4", ls=":", lw=1, label=f"magpsf {BRIGHT_LIMIT:g} (bts_p2 peak limit)")
    ax.axvline(19.0, color="0.4", ls="-.", lw=1, label="magpsf 19 (policy alert limit)")
    mag = alerts["magpsf"].to_numpy()
    lo, hi = np.quantile(mag, [0.0, 0.999]) if mag.size else (15.0, 21.0)
    ax.set_xlim(min(lo, BRIGHT_LIMIT) - 0.3, max(hi, 19.0) + 0.3)  # a few absurdly faint outliers do not set the axis
    ax.set_xlabel("alert magpsf [mag] (brighter to the left)")
    ax.set_ylabel("score")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title("Alert score vs PSF magnitude" + note)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.savefig(path)
    return None


def plot_completeness_purity(report: dict[str, Any], path: Path) -> str | None:
    pols = report["source_level"]["policies"]
    if not pols:
        return "no policy"
    labels = report["source_level"]["peak_bins"]["labels"]
    fig, axes = _figure(5.4 * len(pols), 4.6, ncols=len(pols))
    x = np.arange(len(labels))
    for ax, (name, p) in zip(axes[0], pols.items()):
        for key, color, marker, dx in (("completeness", "C2", "o", -0.06), ("purity", "C4", "s", 0.06)):
            y = np.array([np.nan if b[key] is None else b[key] for b in p["per_peak_bin"]], np.float64)
            lo = np.array([np.nan if b[f"{key}_interval68"] is None else b[f"{key}_interval68"][0]
                           for b in p["per_peak_bin"]])
            hi = np.array([np.nan if b[f"{key}_interval68"] is None else b[f"{key}_interval68"][1]
                           for b in p["per_peak_bin"]])
            overall = "n/a" if p[key] is None else f"{100 * p[key]:.1f}%"
            yerr = np.clip(np.nan_to_num([y - lo, hi - y]), 0, None)  # Wilson bounds can sit 1 ulp inside y
            ax.errorbar(x + dx, y, yerr=yerr, color=color, marker=marker, capsize=3,
                        label=f"{key} (overall {overall})")
        for xi, b in zip(x, p["per_peak_bin"]):
            ax.annotate(f"{b['TP'] + b['FN']}/{b['n_selected']}", (xi, 0.02), ha="center", fontsize=7, color="0.3")
        ax.set_xticks(x, labels, rotation=35, ha="right")
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_ylim(-0.02, 1.08)
        ax.set_xlabel("peak (brightest) magpsf of the source [mag]")
        ax.set_ylabel("fraction of sources")
        ax.set_title(f"{name}: {p['TP']} TP, {p['FP']} FP, {p['FN']} FN, {p['TN']} TN")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 0.06), fontsize=8)
    fig.suptitle("Source-level completeness and purity per peak-magnitude bin "
                 "(68% Wilson intervals; numbers: label-1 sources / selected)", fontsize=10)
    fig.savefig(path)
    return None


def plot_timeliness(ev: Evaluation, path: Path) -> str | None:
    refs = [r for r in TIMELINESS_REFERENCES
            if any(np.isfinite(ev.sources[f"{p.name}_minus_{r}_days"]).any() for p in ev.policies)]
    if not refs:
        return "no true positive has a save_jd or trigger_jd"
    fig, axes = _figure(5.6 * len(refs), 4.4, ncols=len(refs))
    for ax, ref in zip(axes[0], refs):
        data = {p.name: ev.sources[f"{p.name}_minus_{ref}_days"].to_numpy() for p in ev.policies}
        data = {k: v[np.isfinite(v)] for k, v in data.items()}
        allv = np.concatenate(list(data.values()))
        hours = np.abs(allv).max() <= 2.0  # show hours when everything is within two days
        scale, unit = (24.0, "hours") if hours else (1.0, "days")
        edges = np.histogram_bin_edges(allv * scale, bins="auto")
        if len(edges) > 61:
            edges = np.linspace(edges[0], edges[-1], 61)
        for i, (name, v) in enumerate(data.items()):
            if not v.size:
                continue
            med = np.median(v) * scale
            ax.hist(v * scale, bins=edges, histtype="step", lw=2, color=f"C{i}", ls=("-", "--", ":", "-.")[i % 4],
                    label=f"{name}: {v.size} TPs, median {med:+.2f} {unit}")
            ax.axvline(med, color=f"C{i}", ls="--", lw=1)
        ax.axvline(0, color="k", lw=1)
        ax.set_xlabel(f"selection jd - {ref} [{unit}] (negative = before the humans)")
        ax.set_ylabel("true-positive sources")
        ax.set_title(f"Timeliness vs human {ref.removesuffix('_jd')}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path)
    return None


def plot_training_curves(metrics_csv: str | os.PathLike, path: Path) -> str | None:
    m = pd.read_csv(metrics_csv)
    x = m["epoch"].to_numpy() if "epoch" in m.columns else np.arange(1, len(m) + 1)
    panels = [
        ("loss", [c for c in ("loss", "val_loss") if c in m.columns], "binary cross-entropy (class-weighted)", False),
        ("accuracy / AUC", [c for c in ("accuracy", "val_accuracy", "val_auc") if c in m.columns], "fraction", False),
        ("learning rate", [c for c in ("lr",) if c in m.columns], "learning rate", True),
    ]
    panels = [p for p in panels if p[1]]
    if not panels:
        return f"{metrics_csv} has none of loss, val_loss, accuracy, val_accuracy, val_auc, lr"
    fig, axes = _figure(4.8 * len(panels), 3.8, ncols=len(panels))
    for ax, (title, cols, ylabel, log) in zip(axes[0], panels):
        for c in cols:
            ax.plot(x, m[c].to_numpy(), label=c, lw=1.5, ls="--" if c.startswith("val_") else "-")
        if "val_loss" in cols:
            best = int(np.nanargmin(m["val_loss"].to_numpy()))
            ax.axvline(x[best], color="0.5", ls=":", label=f"best val_loss (epoch {x[best]})")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Training curves ({Path(metrics_csv).parent.name}/{Path(metrics_csv).name})", fontsize=10)
    fig.savefig(path)
    return None


def make_figures(ev: Evaluation, out: Path, training_metrics: str | os.PathLike | None = None
                 ) -> tuple[dict[str, Path], dict[str, str]]:
    """All figures of a report; returns (written paths, skipped figure -> reason)."""
    am = ev.report["alert_level"]
    jobs = {
        "roc": lambda p: plot_roc(am, p, ev.roc),
        "confusion_matrix": lambda p: plot_confusion(am, p),
        "score_vs_magpsf": lambda p: plot_score_vs_magpsf(ev.alerts, am["threshold"], p),
        "completeness_purity": lambda p: plot_completeness_purity(ev.report, p),
        "timeliness": lambda p: plot_timeliness(ev, p),
    }
    if training_metrics is not None:
        jobs["training_curves"] = lambda p: plot_training_curves(training_metrics, p)
    written, skipped = {}, {}
    for name, job in jobs.items():
        path = out / f"{name}.png"
        why = job(path)
        if why is None:
            written[name] = path
        else:
            skipped[name] = why
    if training_metrics is None:
        skipped["training_curves"] = "no metrics.csv from a training workdir (pass training_metrics=...)"
    return written, skipped



def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few human lines for the console."""
    a = report["alert_level"]
    inp = report["input"]

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    def num(x, f=".4f"):
        return "n/a" if x is None else format(x, f)

    lines = [
        f"alerts: {inp['n_evaluated_alerts']} evaluated, {inp['n_rejected_alerts']} rejected, "
        f"{inp['n_sources']} sources",
        f"alert level ({a['decision']}): accuracy {num(a['accuracy'])}, balanced accuracy "
        f"{num(a['balanced_accuracy'])}, ROC AUC {num(a['roc_auc'])}, precision {num(a['precision'])}, "
        f"recall {num(a['recall'])}, F1 {num(a['f1'])}",
    ]
    inc = report["source_level"]["inclusion"]
    lines.append(f"sources in the evaluation: {inc['n_included']} ({inc['n_included_label_1']} label 1, "
                 f"{inc['n_included_label_0']} label 0); excluded {inc['excluded_by_reason']}")
    for name, p in report["source_level"]["policies"].items():
        t = p["timeliness"]["save_jd"]
        tl = "" if not t.get("n") else f", median selection - save {t['median_hours']:+.2f} h over {t['n']} TPs"
        lines.append(f"{name}: completeness {pct(p['completeness'])} ({p['TP']}/{p['TP'] + p['FN']}), purity "
                     f"{pct(p['purity'])} ({p['TP']}/{p['n_selected']}){tl}")
    return lines


__all__ = [
    "Evaluation", "EvaluationError", "check_scores_table", "evaluate_dataset", "evaluate_scores",
    "find_training_metrics", "load_data", "make_figures", "plot_completeness_purity", "plot_confusion", "plot_roc",
    "plot_score_vs_magpsf", "plot_timeliness", "plot_training_curves", "read_scores_table", "score_split",
    "summary_lines", "write_report",
]
