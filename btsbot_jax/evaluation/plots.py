"""The report's figures (matplotlib's Agg canvas directly: no pyplot, no global backend switch, so this works
headless and does not disturb an interactive session that imports the library).

Each figure is a piece registered by name (`register_figure`): a function ``(evaluation, path, *,
training_metrics) -> None`` that writes one PNG, or returns the reason it cannot (the report records it under
``figures_skipped``). `Figures` runs them and yields ``files/<name>`` or ``figures_skipped/<name>`` into
``report.json``, like the evaluation pieces of `btsbot_jax.evaluation.evaluators`. The policy figures
(completeness/purity, timeliness, the policy lines of score vs magpsf) draw every evaluated policy, so a new policy
needs no change here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from btsbot_jax.evaluation.metrics import TIMELINESS_REFERENCES
from btsbot_jax.evaluation.policies import BRIGHT_LIMIT, Policy

if TYPE_CHECKING:
    from btsbot_jax.evaluation.report import Evaluation

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


def plot_score_vs_magpsf(alerts: pd.DataFrame, threshold: float, path: Path, policies: Sequence[Policy] = ()
                         ) -> str | None:
    """Every alert's score against its magnitude, with the decision threshold and the policies' score thresholds
    and magnitude limits (each line names the policies that use it)."""
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
    for k, (value, names) in enumerate(_policy_lines(policies, "score_threshold", exclude=threshold).items()):
        ax.axhline(value, color=f"C{5 + k}", ls=":", lw=1, label=f"score {value:g} ({'/'.join(names)} alert score)")
    peak = _policy_lines(policies, "bright_limit") or {BRIGHT_LIMIT: ["bts_p2"]}
    alert = _policy_lines(policies, "mag_limit") or {19.0: ["policy"]}
    for value, names in peak.items():
        ax.axvline(value, color="0.4", ls=":", lw=1, label=f"magpsf {value:g} ({'/'.join(names)} peak limit)")
    for value, names in alert.items():
        ax.axvline(value, color="0.4", ls="-.", lw=1, label=f"magpsf {value:g} ({'/'.join(names)} alert limit)")
    mag = alerts["magpsf"].to_numpy()
    lo, hi = np.quantile(mag, [0.0, 0.999]) if mag.size else (15.0, 21.0)
    # a few absurdly faint outliers do not set the axis
    ax.set_xlim(min(lo, *peak, *alert) - 0.3, max(hi, *peak, *alert) + 0.3)
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
    ncols = min(len(pols), 2)
    nrows = -(-len(pols) // ncols)
    fig, axes = _figure(5.4 * ncols, 4.6 * nrows, nrows=nrows, ncols=ncols)
    for ax in axes.flat[len(pols):]:
        ax.set_visible(False)
    x = np.arange(len(labels))
    for ax, (name, p) in zip(axes.flat, pols.items()):
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
    """Histograms of selection time minus human time over true positives, one line per policy."""
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



def _policy_lines(policies: Sequence[Policy], param: str, exclude: float | None = None) -> dict[float, list[str]]:
    """Distinct values of a policy constant (e.g. ``bright_limit``) -> the policies that use it, in order."""
    out: dict[float, list[str]] = {}
    for p in policies:
        v = (p.params or {}).get(param)
        if isinstance(v, (int, float)) and np.isfinite(v) and v != exclude:
            out.setdefault(float(v), []).append(p.name)
    return out


# ---- the figure pieces --------------------------------------------------------------------------------------------

FigureFn = Callable[..., "str | None"]
_FIGURES: dict[str, FigureFn] = {}


def register_figure(name: str, *, overwrite: bool = False) -> Callable[[FigureFn], FigureFn]:
    """Decorator: ``fn(ev, path, *, training_metrics=None) -> None | reason`` becomes the figure ``name``.png."""

    def deco(fn: FigureFn) -> FigureFn:
        if name in _FIGURES and not overwrite and _FIGURES[name] is not fn:
            raise ValueError(f"a figure named {name!r} is already registered (pass overwrite=True to replace it)")
        _FIGURES[name] = fn
        return fn

    return deco


def available_figures() -> list[str]:
    return list(_FIGURES)


register_figure("roc")(lambda ev, path, **_: plot_roc(ev.report["alert_level"], path, ev.roc))
register_figure("confusion_matrix")(lambda ev, path, **_: plot_confusion(ev.report["alert_level"], path))
register_figure("score_vs_magpsf")(lambda ev, path, **_: plot_score_vs_magpsf(
    ev.alerts, ev.report["alert_level"]["threshold"], path, ev.policies))
register_figure("completeness_purity")(lambda ev, path, **_: plot_completeness_purity(ev.report, path))
register_figure("timeliness")(lambda ev, path, **_: plot_timeliness(ev, path))


@register_figure("training_curves")
def _training_curves(ev: Evaluation, path: Path, *, training_metrics: str | os.PathLike | None = None) -> str | None:
    if training_metrics is None:
        return "no metrics.csv from a training workdir (pass training_metrics=...)"
    return plot_training_curves(training_metrics, path)


class Figures:
    """The figure pieces: each registered figure is drawn to ``out/<name>.png``."""

    name = "figures"

    def __init__(self, out: str | os.PathLike, training_metrics: str | os.PathLike | None = None,
                 names: Sequence[str] | None = None):
        self.out = Path(out)
        self.training_metrics = training_metrics
        self.names = list(_FIGURES) if names is None else list(names)

    def run(self, ev: Evaluation) -> Iterator[tuple[str, Any]]:
        """Yield ``files/<name>`` (the PNG's path) or ``figures_skipped/<name>`` (why not) for each figure."""
        for name in self.names:
            path = self.out / f"{name}.png"
            why = _FIGURES[name](ev, path, training_metrics=self.training_metrics)
            if why is None:
                yield f"files/{name}", path
            else:
                yield f"figures_skipped/{name}", why


def make_figures(ev: Evaluation, out: Path, training_metrics: str | os.PathLike | None = None
                 ) -> tuple[dict[str, Path], dict[str, str]]:
    """All figures of a report; returns (written paths, skipped figure -> reason)."""
    written, skipped = {}, {}
    for key, value in Figures(out, training_metrics).run(ev):
        kind, name = key.split("/", 1)
        (written if kind == "files" else skipped)[name] = value
    return written, skipped


__all__ = [
    "Figures", "available_figures", "make_figures", "plot_completeness_purity", "plot_confusion", "plot_roc",
    "plot_score_vs_magpsf", "plot_timeliness", "plot_training_curves", "register_figure",
]
