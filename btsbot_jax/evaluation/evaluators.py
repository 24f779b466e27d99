"""The pieces of an evaluation, each yielding named values into ``report.json`` (in the spirit of big_vision's
evaluators: a piece is an object whose ``run`` yields ``(name, value)`` pairs, and the report only collects them).

A name is a path into the report: ``"alert_level"``, ``"source_level/inclusion"``, or a tuple of keys such as
``("source_level", "policies", "bts_p1")`` when a key may itself contain a ``/`` (a user's policy name). Two pieces
may not write the same name. Built in, in report order:

- `AlertLevel`: ``alert_level`` (accuracy ... ROC, at ``score > threshold``), and the full ROC curve as the
  ``roc_curve`` table for ``roc_curve.csv``;
- `SourceBootstrap`: ``alert_level/roc_auc_source_bootstrap``, the AUC's 90% interval over resampled sources;
- `SourceInfluence`: ``alert_level/roc_auc_source_influence``, the sources whose removal moves the AUC most, and
  the columns ``roc_auc_without`` / ``auc_change`` of every source in ``sources.csv``;
- `SourceSelection`: ``source_level/rules``, ``source_level/peak_bins``, ``source_level/inclusion``;
- `PolicyMetrics(policy)`, one per policy: ``source_level/policies/<name>`` (completeness, purity, per peak bin);
- `Timeliness`: ``source_level/policies/<name>/timeliness`` for every policy.

The figures are pieces of the same kind, in `btsbot_jax.evaluation.plots`. A new policy needs no new piece: register
it (`btsbot_jax.evaluation.policies.register_policy`) and name it in ``policies=``; `default_evaluators` gives it
its `PolicyMetrics` and timeliness, and the figures a panel. A new kind of number is a small class with a ``name``
and a ``run(ctx)`` generator, passed as ``evaluate_scores(..., extra_evaluators=[...])``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from btsbot_jax.evaluation.metrics import (
    alert_metrics,
    inclusion_summary,
    largest_influence,
    peak_bin_labels,
    policy_metrics,
    policy_timeliness,
    source_bootstrap_auc,
    source_influence_auc,
)
from btsbot_jax.evaluation.policies import GroupedAlerts, Policy

ROC_POINTS_IN_REPORT = 1001  # a million alerts give ~1e5 ROC points: all go to roc_curve.csv, a thinned copy to JSON

Name = str | tuple[str, ...]


@dataclasses.dataclass
class EvalContext:
    """What every piece may read: the checked alerts (input order, with ``predicted``), the same alerts grouped by
    source in jd order, the per-source table with every policy's selection, and the settings. ``tables`` carries
    tables a piece leaves for `write_report` (``roc_curve``)."""

    alerts: pd.DataFrame
    grouped: GroupedAlerts
    sources: pd.DataFrame
    policies: list[Policy]
    threshold: float
    bin_edges: Sequence[float]
    min_alerts: int
    bright_limit: float
    tables: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)


class Evaluator(Protocol):
    """One piece of the evaluation: ``name`` (for timings and errors) and ``run(ctx)`` yielding (name, value)."""

    name: str

    def run(self, ctx: EvalContext) -> Iterator[tuple[Name, Any]]: ...


class AlertLevel:
    """Alert-level metrics at ``score > threshold`` over the labelled alerts (scikit-learn)."""

    name = "alert_level"

    def run(self, ctx: EvalContext) -> Iterator[tuple[Name, Any]]:
        am = alert_metrics(ctx.alerts["label"].to_numpy(), ctx.alerts["score"].to_numpy(), ctx.threshold)
        if am["roc_curve"] is not None:
            c = am["roc_curve"]
            ctx.tables["roc_curve"] = pd.DataFrame({"fpr": c["fpr"], "tpr": c["tpr"],
                                                    "threshold": [np.inf if v is None else v for v in c["thresholds"]]})
            n = len(c["fpr"])
            if n > ROC_POINTS_IN_REPORT:
                idx = np.unique(np.round(np.linspace(0, n - 1, ROC_POINTS_IN_REPORT)).astype(np.int64))
                am["roc_curve"] = {k: [v[i] for i in idx] for k, v in c.items()}
            am["roc_curve"]["n_points"] = n
            am["roc_curve"]["n_points_in_report"] = len(am["roc_curve"]["fpr"])
        yield "alert_level", am


class SourceBootstrap:
    """How far the alert-level ROC AUC moves when other sources had been drawn: a stratified source bootstrap
    (`source_bootstrap_auc`), because a small test split's AUC can hang on one source with a hundred alerts."""

    name = "source_bootstrap"

    def __init__(self, n_resamples: int = 1000, confidence: float = 0.90, seed: int = 0):
        self.n_resamples, self.confidence, self.seed = int(n_resamples), float(confidence), int(seed)

    def run(self, ctx: EvalContext) -> Iterator[tuple[Name, Any]]:
        yield ("alert_level", "roc_auc_source_bootstrap"), source_bootstrap_auc(
            ctx.alerts["label"].to_numpy(), ctx.alerts["score"].to_numpy(), ctx.alerts["objectId"].to_numpy(),
            n_resamples=self.n_resamples, confidence=self.confidence, seed=self.seed)


class SourceInfluence:
    """Which sources decide the alert-level AUC: each source's AUC-without-it (`source_influence_auc`), exact.

    A test split of a few dozen sources can lose several hundredths to one source with a hundred alerts; the
    bootstrap interval says that it can, this names the source. The full table goes into ``sources.csv``; the report
    keeps the `top` sources whose removal raises the AUC most."""

    name = "source_influence"

    def __init__(self, top: int = 5):
        self.top = int(top)

    def run(self, ctx: EvalContext) -> Iterator[tuple[Name, Any]]:
        a = ctx.alerts
        t = source_influence_auc(a["label"].to_numpy(), a["score"].to_numpy(), a["objectId"].to_numpy())
        by_id = t.set_index("objectId")
        ids = ctx.sources["objectId"].astype(str)
        for col in ("roc_auc_without", "auc_change"):
            ctx.sources[col] = ids.map(by_id[col]).to_numpy(np.float64)
        yield ("alert_level", "roc_auc_source_influence"), {
            "method": "exact alert-level ROC AUC with one source left out, for every labelled source "
                      "(sources.csv: roc_auc_without, auc_change = roc_auc_without - roc_auc)",
            "largest": [
                {"objectId": r.objectId, "label": int(r.label), "n_alerts": int(r.n_alerts),
                 "mean_score": float(r.mean_score), "roc_auc_without": float(r.roc_auc_without),
                 "auc_change": float(r.auc_change)}
                for r in largest_influence(t, self.top).itertuples()
            ],
        }


class SourceSelection:
    """The source-level rules as applied, the peak-magnitude bins, and which sources are in the evaluation."""

    name = "source_selection"

    def run(self, ctx: EvalContext) -> Iterator[tuple[Name, Any]]:
        edges, lim = ctx.bin_edges, ctx.bright_limit
        yield "source_level/rules", {
            "order": "each source's alerts sorted by jd (ties keep input order); a policy at an alert sees only "
                     "that alert and the earlier ones",
            "selection": "a source is selected at the first alert where its policy holds (that alert's jd and "
                         "magpsf are recorded)",
            "inclusion": f"sources with >= {ctx.min_alerts} alerts and a label; label-1 sources whose brightest "
                         f"magpsf in the data is fainter than {lim:g} are left out",
            "completeness": "TP / (TP + FN) over included sources",
            "purity": "TP / (TP + FP) over included sources",
            "timeliness": "selection jd - save_jd (or trigger_jd) in days over true positives; negative = "
                          "selected before the humans",
            "intervals": "68.27% Wilson binomial intervals",
        }
        yield "source_level/peak_bins", {
            "edges": [float(e) for e in edges],
            "labels": peak_bin_labels(edges),
            "convention": f"by the source's brightest magpsf in the data; [a, b) bins, the last one "
                          f"[{edges[-2]:g}, {edges[-1]:g}] closed; sources brighter than "
                          f"{edges[0]:g} go to their own '<{edges[0]:.2f}' bin, included sources fainter "
                          f"than {edges[-1]:g} (label 0) to '>{edges[-1]:.2f}'",
        }
        yield "source_level/inclusion", inclusion_summary(ctx.sources)
        # the policies' entries come in the order of `policies=`, whatever pieces write them
        yield "source_level/policies", {}


@dataclasses.dataclass
class PolicyMetrics:
    """Completeness and purity of one policy, overall and per peak bin, with its rule and constants."""

    policy: Policy

    @property
    def name(self) -> str:
        return f"policy:{self.policy.name}"

    def run(self, ctx: EvalContext) -> Iterator[tuple[Name, Any]]:
        yield (("source_level", "policies", self.policy.name),
               policy_metrics(ctx.sources, self.policy, ctx.bin_edges, include_timeliness=False))


class Timeliness:
    """Selection time minus the human save / trigger time over each policy's true positives."""

    name = "timeliness"

    def run(self, ctx: EvalContext) -> Iterator[tuple[Name, Any]]:
        for p in ctx.policies:
            yield ("source_level", "policies", p.name, "timeliness"), policy_timeliness(ctx.sources, p)


def default_evaluators(policies: Iterable[Policy]) -> list[Evaluator]:
    """The report's pieces: alert level (with its source bootstrap and influence), source selection, one
    `PolicyMetrics` per policy, timeliness."""
    return [AlertLevel(), SourceBootstrap(), SourceInfluence(), SourceSelection(),
            *(PolicyMetrics(p) for p in policies), Timeliness()]


class EvaluatorError(ValueError):
    """Two pieces wrote the same name, or a piece wrote below a value that is not a dict."""


def put(report: dict[str, Any], name: Name, value: Any, *, piece: str = "?") -> None:
    """Store ``value`` at ``name`` (a ``/`` path or a tuple of keys), creating the dicts on the way."""
    keys = tuple(name.split("/")) if isinstance(name, str) else tuple(name)
    node = report
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise EvaluatorError(f"piece {piece!r}: {'/'.join(keys)} lies below a value that is not a dict")
    last = keys[-1]
    if last in node and not (node[last] == {} and isinstance(value, dict)):
        raise EvaluatorError(f"piece {piece!r}: {'/'.join(keys)} is already in the report")
    if last in node:
        node[last].update(value)
    else:
        node[last] = value


def run_evaluators(evaluators: Iterable[Evaluator], ctx: EvalContext, report: dict[str, Any]
                   ) -> dict[str, float]:
    """Run each piece, storing what it yields in ``report``; return the seconds each piece took."""
    import time

    seconds: dict[str, float] = {}
    for ev in evaluators:
        t0 = time.perf_counter()
        for name, value in ev.run(ctx):
            put(report, name, value, piece=ev.name)
        seconds[ev.name] = time.perf_counter() - t0
    return seconds


__all__ = ["AlertLevel", "EvalContext", "Evaluator", "EvaluatorError", "PolicyMetrics", "ROC_POINTS_IN_REPORT",
           "SourceBootstrap", "SourceSelection", "Timeliness", "default_evaluators", "put", "run_evaluators"]
