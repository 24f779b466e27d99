"""Source-level selection policies: per-alert scores -> per-source "select for follow-up" decisions
(Rehemtulla et al. 2024).

A policy sees each source's alerts in jd order and decides, at every alert, whether the source should be selected
given only the alerts so far (no peeking at the future: this is what a broker could have done live). The source is
selected at the FIRST alert where the policy holds; its jd and magpsf are the selection time and magnitude.

Built in (the papers' policies, exactly as the papers word them):

- ``bts_p1``: at least 2 alerts so far with ``score > 0.5`` AND ``magpsf < 19`` (both strict, the same alert must
  satisfy both);
- ``bts_p2``: ``bts_p1`` AND the brightest magpsf so far ``<= 18.5``. "Brightest so far" is the minimum magpsf over
  ALL alerts of the source so far, not only the positive ones: the paper says "the brightest magpsf so far", and
  it is the light-curve quantity a scanner would look at (a source may be bright in one alert and only get high
  scores later);
- ``prod_p1`` (the BTSbot v2 production policy; Rehemtulla et al. 2025, v2 ``val.py``): at least 1 alert so far with
  ``score > 0.85`` AND ``magpsf < 19`` (same conventions as ``bts_p1``: strict, one alert satisfies both);
- ``prod_p2``: ``prod_p1`` AND the brightest magpsf so far (over all alerts so far) ``<= 18.5``.

All four are the same rule with other constants (`make_bts_policy`); they judge scores, so they apply unchanged to
every model family (v1 CNNs, v2 ConvNeXt/MaxViT) and to any other scorer's table.

Everything is vectorised over all sources at once: one stable sort by (objectId, jd), group boundaries, and
segmented cumulative sums / minima / maxima (``group_cumsum`` etc.). There is no Python loop over alerts or sources,
so a million alerts take well under a second. Alerts of one source with the same jd keep their input order.

Pluggable: a policy is any function ``f(alerts: GroupedAlerts) -> np.ndarray[bool] (N,)`` telling, for every
alert in sorted order, whether the policy holds at that alert using only that alert and the ones before it (the
``group_*`` helpers are causal by construction). Register it under a name::

    from btsbot_jax.evaluation.policies import register_policy, group_cumsum

    @register_policy("three_bright", "3 alerts so far with score > 0.8 and magpsf < 18.5")
    def three_bright(a):
        return group_cumsum((a.score > 0.8) & (a.magpsf < 18.5), a) >= 3

and use it by name (``evaluate_scores(..., policies=["bts_p2", "three_bright"])``, or
``btsbot-evaluate --policy_module=my_policies --policies=bts_p2,three_bright``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

# The paper's constants, named so reports can quote them.
SCORE_THRESHOLD = 0.5  # an alert is "positive" when score > this (strict)
MAG_LIMIT = 19.0  # ... and magpsf < this (strict)
MIN_POSITIVE = 2  # bts_p1 needs at least this many positive alerts so far
BRIGHT_LIMIT = 18.5  # bts_p2: brightest magpsf so far <= this; also the BTS "bright" definition of label-1 sources


class PolicyError(ValueError):
    """An unknown policy name, or a policy function that does not return one boolean per alert."""


@dataclasses.dataclass(frozen=True)
class GroupedAlerts:
    """All alerts sorted by (source, jd), with the group structure the causal helpers need.

    ``order`` maps sorted position -> input row, so ``x_sorted = x_input[order]``. Sources are numbered
    0..n_sources-1 in sorted objectId order; ``group`` is that number per sorted alert, ``starts``/``counts`` the
    first sorted position and the alert count of each source. ``position`` is the 0-based index of an alert within
    its source (0 for the first alert). ``extra`` carries any other per-alert columns a custom policy needs (sorted).
    """

    object_ids: np.ndarray  # (S,) source names, sorted
    order: np.ndarray  # (N,) int64
    group: np.ndarray  # (N,) int64
    starts: np.ndarray  # (S,) int64
    counts: np.ndarray  # (S,) int64
    position: np.ndarray  # (N,) int64
    jd: np.ndarray  # (N,) float64
    magpsf: np.ndarray  # (N,) float64
    score: np.ndarray  # (N,) float64
    extra: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def n_alerts(self) -> int:
        return int(self.order.shape[0])

    @property
    def n_sources(self) -> int:
        return int(self.starts.shape[0])


def group_alerts(object_id: Any, jd: Any, magpsf: Any, score: Any, extra: Mapping[str, Any] | None = None
                 ) -> GroupedAlerts:
    """Sort alerts by (objectId, jd) (stable: equal jds keep input order) and find the source boundaries."""
    jd = np.asarray(jd, np.float64)
    magpsf = np.asarray(magpsf, np.float64)
    score = np.asarray(score, np.float64)
    n = jd.shape[0]
    if not (magpsf.shape == score.shape == (n,)) or len(object_id) != n:
        raise PolicyError(f"objectId, jd, magpsf and score must have the same length, got "
                          f"{len(object_id)}, {jd.shape}, {magpsf.shape}, {score.shape}")
    for name, v in (("jd", jd), ("magpsf", magpsf), ("score", score)):
        bad = ~np.isfinite(v)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise PolicyError(f"{name} is NaN/inf for {int(bad.sum())} alert(s); first: row {i} "
                              f"(objectId {np.asarray(object_id, dtype=object)[i]!r})")
    codes, uniques = pd.factorize(np.asarray(object_id, dtype=object), sort=True)
    if (codes < 0).any():
        i = int(np.flatnonzero(codes < 0)[0])
        raise PolicyError(f"objectId is missing for {int((codes < 0).sum())} alert(s); first: row {i}")
    order = np.lexsort((jd, codes))  # primary key codes, then jd; lexsort is stable
    group = codes[order].astype(np.int64)
    counts = np.bincount(group, minlength=len(uniques)).astype(np.int64)
    starts = np.zeros(len(uniques), np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    position = np.arange(n, dtype=np.int64) - starts[group]
    ex = {k: np.asarray(v)[order] for k, v in (extra or {}).items()}
    return GroupedAlerts(np.asarray(uniques, dtype=object), order, group, starts, counts, position,
                         jd[order], magpsf[order], score[order], ex)


# ---- causal segmented helpers (value at i uses only alerts 0..i of the same source) -------------------------------

def group_cumsum(values: Any, alerts: GroupedAlerts) -> np.ndarray:
    """Running sum within each source (inclusive of the current alert). Booleans count as 0/1, exactly."""
    v = np.asarray(values)
    if v.dtype == bool:
        v = v.astype(np.int64)
    c = np.cumsum(v)
    # subtract everything accumulated before the source's first alert
    before = c[alerts.starts] - v[alerts.starts]
    return c - before[alerts.group]


def group_cummin(values: Any, alerts: GroupedAlerts) -> np.ndarray:
    """Running minimum within each source, exact (no floating-point offsets).

    Values are replaced by their integer rank, and each source's ranks are lifted above those of every later
    source, so one global ``np.minimum.accumulate`` never carries a minimum across a source boundary.
    """
    v = np.asarray(values)
    if v.shape[0] == 0:
        return v.copy()
    uniq, rank = np.unique(v, return_inverse=True)
    n_u = np.int64(len(uniq))
    lift = (np.int64(alerts.n_sources - 1) - alerts.group) * n_u
    acc = np.minimum.accumulate(rank.astype(np.int64) + lift)
    return uniq[acc - lift]


def group_cummax(values: Any, alerts: GroupedAlerts) -> np.ndarray:
    """Running maximum within each source (see ``group_cummin``)."""
    v = np.asarray(values)
    if v.shape[0] == 0:
        return v.copy()
    uniq, rank = np.unique(v, return_inverse=True)
    n_u = np.int64(len(uniq))
    lift = alerts.group * n_u
    acc = np.maximum.accumulate(rank.astype(np.int64) + lift)
    return uniq[acc - lift]


def group_first_true(holds: np.ndarray, alerts: GroupedAlerts) -> np.ndarray:
    """Sorted position of the first alert of each source where ``holds`` is True; -1 where it never is."""
    out = np.full(alerts.n_sources, -1, np.int64)
    idx = np.flatnonzero(holds)
    if idx.size:
        g = alerts.group[idx]
        first = np.ones(idx.size, bool)
        first[1:] = g[1:] != g[:-1]  # idx is sorted, so the first hit of a source comes first
        out[g[first]] = idx[first]
    return out


# ---- registry -----------------------------------------------------------------------------------------------------

PolicyFn = Callable[[GroupedAlerts], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Policy:
    """A named, documented policy; ``params`` are echoed in reports so a number can always be traced to its rule."""

    name: str
    fn: PolicyFn
    description: str = ""
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def holds(self, alerts: GroupedAlerts) -> np.ndarray:
        out = np.asarray(self.fn(alerts))
        if out.shape != (alerts.n_alerts,):
            raise PolicyError(f"policy {self.name!r} returned shape {out.shape}, expected ({alerts.n_alerts},)")
        if out.dtype != bool:
            raise PolicyError(f"policy {self.name!r} returned dtype {out.dtype}, expected bool")
        return out


_REGISTRY: dict[str, Policy] = {}


def register_policy(name: str, description: str = "", params: Mapping[str, Any] | None = None,
                    *, overwrite: bool = False) -> Callable[[PolicyFn], PolicyFn]:
    """Decorator: make a policy function available by name to `evaluate_scores` and `btsbot-evaluate`."""

    def deco(fn: PolicyFn) -> PolicyFn:
        add_policy(Policy(name, fn, description or (fn.__doc__ or "").strip(), dict(params or {})),
                   overwrite=overwrite)
        return fn

    return deco


def add_policy(policy: Policy, *, overwrite: bool = False) -> Policy:
    if not overwrite and policy.name in _REGISTRY and _REGISTRY[policy.name].fn is not policy.fn:
        raise PolicyError(f"a policy named {policy.name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[policy.name] = policy
    return policy


def get_policy(policy: str | Policy) -> Policy:
    if isinstance(policy, Policy):
        return policy
    try:
        return _REGISTRY[policy]
    except KeyError:
        raise PolicyError(f"unknown policy {policy!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def available_policies() -> list[str]:
    return sorted(_REGISTRY)


def resolve_policies(policies: Iterable[str | Policy]) -> list[Policy]:
    out = [get_policy(p) for p in policies]
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise PolicyError(f"policy names must be unique, got {names}")
    return out


# ---- the paper's policies -----------------------------------------------------------------------------------------

def bts_holds(alerts: GroupedAlerts, *, score_threshold: float = SCORE_THRESHOLD, mag_limit: float = MAG_LIMIT,
              min_positive: int = MIN_POSITIVE, bright_limit: float | None = None) -> np.ndarray:
    """bts_p1 (``bright_limit=None``) or bts_p2 (``bright_limit=18.5``) at every alert, given the alerts so far."""
    positive = (alerts.score > score_threshold) & (alerts.magpsf < mag_limit)
    holds = group_cumsum(positive, alerts) >= min_positive
    if bright_limit is not None:
        holds &= group_cummin(alerts.magpsf, alerts) <= bright_limit
    return holds


def make_bts_policy(name: str, *, score_threshold: float = SCORE_THRESHOLD, mag_limit: float = MAG_LIMIT,
                    min_positive: int = MIN_POSITIVE, bright_limit: float | None = None) -> Policy:
    """A bts_p1/p2-style policy with other constants (e.g. a different score threshold for another model)."""
    desc = (f"at least {min_positive} alert{'' if min_positive == 1 else 's'} so far with score > "
            f"{score_threshold:g} and magpsf < {mag_limit:g}")
    if bright_limit is not None:
        desc += f", and brightest magpsf so far (over all alerts so far) <= {bright_limit:g}"
    params = {"score_threshold": score_threshold, "mag_limit": mag_limit, "min_positive": min_positive,
              "bright_limit": bright_limit}
    fn = functools.partial(bts_holds, score_threshold=score_threshold, mag_limit=mag_limit,
                           min_positive=min_positive, bright_limit=bright_limit)
    return Policy(name, fn, desc, params)


BTS_P1 = add_policy(make_bts_policy("bts_p1"))
BTS_P2 = add_policy(make_bts_policy("bts_p2", bright_limit=BRIGHT_LIMIT))

# BTSbot v2's production policies (Rehemtulla et al. 2025, v2 `val.py`): one confident alert is enough.
PROD_SCORE_THRESHOLD = 0.85
PROD_MIN_POSITIVE = 1
PROD_P1 = add_policy(make_bts_policy("prod_p1", score_threshold=PROD_SCORE_THRESHOLD, min_positive=PROD_MIN_POSITIVE))
PROD_P2 = add_policy(make_bts_policy("prod_p2", score_threshold=PROD_SCORE_THRESHOLD, min_positive=PROD_MIN_POSITIVE,
                                     bright_limit=BRIGHT_LIMIT))

# What a report shows unless told otherwise: the v1 paper's policies and v2's production policies, so one report
# answers both "as published" and "as brokers run it" for any model.
DEFAULT_POLICIES = ("bts_p1", "bts_p2", "prod_p1", "prod_p2")


# ---- applying policies --------------------------------------------------------------------------------------------

def select(alerts: GroupedAlerts, policy: str | Policy) -> pd.DataFrame:
    """Per source (sorted objectId order): selected, selection jd, selection magpsf, 1-based alert number."""
    pol = get_policy(policy)
    first = group_first_true(pol.holds(alerts), alerts)
    sel = first >= 0
    safe = np.where(sel, first, 0)
    nan = np.float64(np.nan)
    return pd.DataFrame({
        "objectId": alerts.object_ids,
        "selected": sel,
        "jd": np.where(sel, alerts.jd[safe] if alerts.n_alerts else nan, nan),
        "magpsf": np.where(sel, alerts.magpsf[safe] if alerts.n_alerts else nan, nan),
        "alert_number": np.where(sel, alerts.position[safe] + 1 if alerts.n_alerts else 0, 0),
    })




def load_policy_module(module: str) -> None:
    """Import a module (dotted name or path to a .py file) whose import registers extra policies."""
    import importlib
    import importlib.util
    from pathlib import Path

    if module.endswith(".py"):
        path = Path(module)
        if not path.is_file():
            raise PolicyError(f"policy module file {module!r} does not exist")
        spec = importlib.util.spec_from_file_location(f"btsbot_user_policies_{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    else:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise PolicyError(f"cannot import policy module {module!r}: {e}") from e


__all__ = [
    "BRIGHT_LIMIT", "BTS_P1", "BTS_P2", "DEFAULT_POLICIES", "GroupedAlerts", "MAG_LIMIT", "MIN_POSITIVE", "Policy",
    "PROD_MIN_POSITIVE", "PROD_P1", "PROD_P2", "PROD_SCORE_THRESHOLD",
    "PolicyError", "SCORE_THRESHOLD", "add_policy", "available_policies", "bts_holds", "get_policy", "group_alerts",
    "group_cummax", "group_cummin", "group_cumsum", "group_first_true", "load_policy_module", "make_bts_policy",
    "register_policy", "resolve_policies", "select",
]
