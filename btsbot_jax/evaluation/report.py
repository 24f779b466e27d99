"""Evaluation reports: a scores table (or a model + a dataset) -> report.json, per-source CSV and the paper's figures.

Two entry points, one code path:

- ``evaluate_scores(table)`` takes any table of ``objectId, jd, magpsf, score`` (+ ``label``, ``save_jd``,
  ``trigger_jd``), so a scanner's or another model's output is judged exactly like ours;
- ``evaluate_dataset(checkpoint, data, split)`` scores a split in the training-set format with ``load_scorer`` and
  hands the table to ``evaluate_scores``.

``write_report`` writes every number to ``report.json``, one row per source to ``sources.csv``, the rows that could
not be evaluated (with their reason) to ``rejected.csv``, in dataset mode the scored alerts to ``scores.csv`` (so
``btsbot-evaluate --scores=REPORT/scores.csv`` reproduces the report without the model), and PNG figures.

The numbers come from pieces (`btsbot_jax.evaluation.evaluators`: alert level, source selection, one per policy,
timeliness) and the figures from `btsbot_jax.evaluation.plots`; each piece yields named values into report.json.
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
from btsbot_jax.evaluation.evaluators import (
    ROC_POINTS_IN_REPORT,
    EvalContext,
    Evaluator,
    default_evaluators,
    put,
    run_evaluators,
)
from btsbot_jax.evaluation.metrics import (
    DEFAULT_BIN_EDGES,
    DEFAULT_THRESHOLD,
    MIN_ALERTS,
    TIMELINESS_REFERENCES,
    source_table,
)
from btsbot_jax.evaluation.plots import (
    Figures,
    make_figures,
    plot_completeness_purity,
    plot_confusion,
    plot_roc,
    plot_score_vs_magpsf,
    plot_timeliness,
    plot_training_curves,
)
from btsbot_jax.evaluation.policies import BRIGHT_LIMIT, DEFAULT_POLICIES, Policy, group_alerts, resolve_policies

REQUIRED_COLUMNS = ("objectId", "jd", "magpsf", "score")
OPTIONAL_COLUMNS = ("label", *TIMELINESS_REFERENCES)
PASSTHROUGH_COLUMNS = ("candid", "file", "row")  # kept in scores.csv / rejected.csv to name alerts when present
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
    extra_evaluators: Sequence[Evaluator] = (),
) -> Evaluation:
    """Alert-level metrics, per-source policy selections and source-level metrics of a scores table.

    The report's numbers come from `default_evaluators(policies)` then ``extra_evaluators`` (pieces yielding named
    values into the report, see `btsbot_jax.evaluation.evaluators`)."""
    t0 = time.perf_counter()
    pols = resolve_policies(policies)
    n_input = len(table) + (0 if already_rejected is None else len(already_rejected))
    alerts, rejected = check_scores_table(table)
    if already_rejected is not None and len(already_rejected):
        rejected = pd.concat([already_rejected, rejected], ignore_index=True)
    if len(alerts) == 0:
        raise EvaluationError(f"no alert left to evaluate ({len(rejected)} rejected)")
    alerts["predicted"] = (alerts["score"].to_numpy() > threshold).astype(np.int8)

    g = group_alerts(alerts["objectId"].to_numpy(dtype=object), alerts["jd"].to_numpy(),
                     alerts["magpsf"].to_numpy(), alerts["score"].to_numpy())
    o = g.order
    sources = source_table(
        g, pols, labels=alerts["label"].to_numpy()[o],
        save_jd=alerts["save_jd"].to_numpy(np.float64)[o], trigger_jd=alerts["trigger_jd"].to_numpy(np.float64)[o],
        min_alerts=min_alerts, bright_limit=bright_limit, bin_edges=bin_edges, threshold=threshold,
    )
    t_sources = time.perf_counter() - t0
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
    }
    ctx = EvalContext(alerts, g, sources, pols, threshold, bin_edges, min_alerts, bright_limit)
    seconds = run_evaluators([*default_evaluators(pols), *extra_evaluators], ctx, report)
    t_alert = sum(seconds.pop(k, 0.0) for k in ("alert_level", "source_bootstrap", "source_influence"))
    report["timings_s"] = {"alert_level": t_alert, "source_level": t_sources + sum(seconds.values())}
    return Evaluation(_jsonable(report), sources, alerts, rejected, pols, roc=ctx.tables.get("roc_curve"))


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
    ev.report["files"] = {k: p.name for k, p in files.items()}
    ev.report["figures_skipped"] = {}
    if figures:
        for name, value in Figures(out, training_metrics).run(ev):
            if name.startswith("files/"):
                files[name.removeprefix("files/")] = value
                value = value.name
            put(ev.report, name, value, piece="figures")
    ev.report["timings_s"]["writing"] = float(time.perf_counter() - t0)
    files["report"] = out / "report.json"
    files["report"].write_text(json.dumps(ev.report, indent=1, allow_nan=False) + "\n")
    return files


# ---- console ------------------------------------------------------------------------------------------------------

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
    b = a.get("roc_auc_source_bootstrap") or {}
    if b.get("interval"):
        lo, hi = b["interval"]
        lines.append(f"ROC AUC {100 * b['confidence']:.0f}% interval over resampled sources: {lo:.4f} - {hi:.4f} "
                     f"({b['n_sources_label_1']} label-1 and {b['n_sources_label_0']} label-0 sources, "
                     f"{b['n_resamples']} resamples)")
    top = (a.get("roc_auc_source_influence") or {}).get("largest") or []
    if top and top[0]["auc_change"] > 0:
        r = top[0]
        lines.append(f"the source that costs the AUC most: {r['objectId']} (label {r['label']}, {r['n_alerts']} "
                     f"alerts, mean score {r['mean_score']:.4f}); without it {r['roc_auc_without']:.4f} "
                     "(sources.csv: roc_auc_without, auc_change)")
    inc = report["source_level"]["inclusion"]
    lines.append(f"sources in the evaluation: {inc['n_included']} ({inc['n_included_label_1']} label 1, "
                 f"{inc['n_included_label_0']} label 0); excluded {inc['excluded_by_reason']}")
    for name, p in report["source_level"]["policies"].items():
        t = p["timeliness"]["save_jd"]
        tl = "" if not t.get("n") else f", median selection - save {t['median_hours']:+.2f} h over {t['n']} TPs"
        lines.append(f"{name}: completeness {pct(p['completeness'])} ({p['TP']}/{p['TP'] + p['FN']}), purity "
                     f"{pct(p['purity'])} ({p['TP']}/{p['n_selected']}){tl}")
    return lines


# The figures' functions stay importable from here, as before the split into report and plots.
__all__ = [
    "ROC_POINTS_IN_REPORT", "Evaluation", "EvaluationError", "check_scores_table", "evaluate_dataset",
    "evaluate_scores", "find_training_metrics", "load_data", "make_figures", "plot_completeness_purity",
    "plot_confusion", "plot_roc", "plot_score_vs_magpsf", "plot_timeliness", "plot_training_curves",
    "read_scores_table", "score_split", "summary_lines", "write_report",
]
