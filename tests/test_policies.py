"""Source-level policies: hand-built sources with answers worked out by hand, causal segmented helpers against
pandas, and the vectorised bts_p1/bts_p2/prod_p1/prod_p2 against a plain per-source loop on random data."""

import numpy as np
import pandas as pd
import pytest

from btsbot_jax.evaluation import policies as P
from btsbot_jax.evaluation.policies import (
    BTS_P1,
    BTS_P2,
    DEFAULT_POLICIES,
    PROD_P1,
    PROD_P2,
    Policy,
    PolicyError,
    group_alerts,
    group_cummax,
    group_cummin,
    group_cumsum,
    register_policy,
    select,
)

J0 = 2460000.0

# (objectId, day, magpsf, score); the expected selections below are worked out by hand from the paper's rules.
HAND = [
    # magpsf 19.0 is not < 19: the first alert does not count, so the 2nd positive is the 3rd alert
    ("tie19", 1, 19.0, 0.9), ("tie19", 2, 18.0, 0.9), ("tie19", 3, 18.9, 0.9),
    # peak exactly 18.5 counts as bright for bts_p2 (<= 18.5)
    ("tie185", 1, 18.5, 0.9), ("tie185", 2, 18.7, 0.8),
    # only one positive alert (the others have low scores): never selected
    ("onepos", 1, 18.0, 0.9), ("onepos", 2, 18.0, 0.2), ("onepos", 3, 17.5, 0.4),
    # eligible late: two faint positives early (p1), bright only at day 4 -- an alert with a LOW score. bts_p2 holds
    # there because "brightest so far" is over all alerts so far (over positives only it would be day 5).
    ("late", 1, 18.9, 0.9), ("late", 2, 18.8, 0.9), ("late", 3, 18.6, 0.3), ("late", 4, 18.4, 0.2),
    ("late", 5, 18.3, 0.7),
    # score exactly 0.5 is not > 0.5
    ("half", 1, 18.0, 0.5), ("half", 2, 18.0, 0.5), ("half", 3, 18.0, 0.51), ("half", 4, 18.1, 0.6),
    # one alert only: can never have 2 positives
    ("single", 1, 17.0, 0.99),
    # never bright: p1 selects, p2 never does
    ("faint", 1, 18.6, 0.9), ("faint", 2, 18.7, 0.9),
]
EXPECTED_P1 = {"tie19": (3, 18.9), "tie185": (2, 18.7), "onepos": None, "late": (2, 18.8), "half": (4, 18.1),
               "single": None, "faint": (2, 18.7)}
EXPECTED_P2 = {"tie19": (3, 18.9), "tie185": (2, 18.7), "onepos": None, "late": (4, 18.4), "half": (4, 18.1),
               "single": None, "faint": None}

# BTSbot v2's production policies (Rehemtulla et al. 2025): prod_p1 = 1 alert so far with score > 0.85 and
# magpsf < 19; prod_p2 = prod_p1 and brightest magpsf so far <= 18.5. Worked out by hand on HAND plus:
HAND_PROD = HAND + [
    # score exactly 0.85 is not > 0.85: selected at the 2nd alert
    ("edge85", 1, 18.0, 0.85), ("edge85", 2, 18.0, 0.86),
    # bright first with a low score, faint later with a high one: prod_p2 holds at day 2 (brightest over ALL alerts)
    ("bright_first", 1, 18.2, 0.1), ("bright_first", 2, 18.9, 0.9),
    # confident but never brighter than 19 (19.0 is not < 19): never selected
    ("mag19", 1, 19.0, 0.99), ("mag19", 2, 19.2, 0.95),
]
# tie19: day 1 is 19.0 (not < 19), day 2 qualifies (brightest 18.0); tie185: day 1 (0.9, 18.5, brightest 18.5);
# onepos and single: one confident alert is enough (bts_p1 never selects them); late: p1 at day 1, p2 waits for
# the first alert <= 18.5 (day 4); half: no score above 0.85; faint: p1 at day 1, never bright for p2.
EXPECTED_PROD_P1 = {"tie19": (2, 18.0), "tie185": (1, 18.5), "onepos": (1, 18.0), "late": (1, 18.9), "half": None,
                    "single": (1, 17.0), "faint": (1, 18.6), "edge85": (2, 18.0), "bright_first": (2, 18.9),
                    "mag19": None}
EXPECTED_PROD_P2 = {"tie19": (2, 18.0), "tie185": (1, 18.5), "onepos": (1, 18.0), "late": (4, 18.4), "half": None,
                    "single": (1, 17.0), "faint": None, "edge85": (2, 18.0), "bright_first": (2, 18.9),
                    "mag19": None}


def _grouped(rows, shuffle_seed=None):
    df = pd.DataFrame(rows, columns=["objectId", "day", "magpsf", "score"])
    if shuffle_seed is not None:
        df = df.sample(frac=1.0, random_state=shuffle_seed).reset_index(drop=True)
    return group_alerts(df["objectId"].to_numpy(object), J0 + df["day"].to_numpy(float), df["magpsf"], df["score"])


def _as_dict(sel):
    return {r.objectId: ((round(r.jd - J0), r.magpsf) if r.selected else None) for r in sel.itertuples()}


@pytest.mark.parametrize("shuffle_seed", [None, 0, 1])
def test_hand_built_sources(shuffle_seed):
    g = _grouped(HAND, shuffle_seed)  # input order must not matter
    assert _as_dict(select(g, "bts_p1")) == EXPECTED_P1
    assert _as_dict(select(g, "bts_p2")) == EXPECTED_P2
    s2 = select(g, BTS_P2).set_index("objectId")
    assert s2.loc["late", "alert_number"] == 4 and s2.loc["tie19", "alert_number"] == 3
    assert s2.loc["onepos", "alert_number"] == 0 and np.isnan(s2.loc["onepos", "jd"])


@pytest.mark.parametrize("shuffle_seed", [None, 0, 1])
def test_hand_built_sources_production_policies(shuffle_seed):
    g = _grouped(HAND_PROD, shuffle_seed)
    assert _as_dict(select(g, "prod_p1")) == EXPECTED_PROD_P1
    assert _as_dict(select(g, "prod_p2")) == EXPECTED_PROD_P2
    assert _as_dict(select(g, PROD_P2)) == EXPECTED_PROD_P2
    s2 = select(g, PROD_P2).set_index("objectId")
    assert s2.loc["late", "alert_number"] == 4 and s2.loc["single", "alert_number"] == 1
    assert PROD_P1.params == {"score_threshold": 0.85, "mag_limit": 19.0, "min_positive": 1, "bright_limit": None}
    assert PROD_P2.params["bright_limit"] == 18.5
    assert PROD_P1.description == "at least 1 alert so far with score > 0.85 and magpsf < 19"
    assert DEFAULT_POLICIES == ("bts_p1", "bts_p2", "prod_p1", "prod_p2")


def test_alerts_see_only_the_past():
    """Adding later alerts never changes an earlier selection; removing alerts after the selection neither."""
    for pol, rows in (("bts_p2", HAND), ("prod_p2", HAND_PROD)):
        full = _as_dict(select(_grouped(rows), pol))
        for name, sel in full.items():
            if sel is None:
                continue
            truncated = [r for r in rows if r[0] == name and r[1] <= sel[0]]
            assert _as_dict(select(_grouped(truncated), pol)) == {name: sel}
            before = [r for r in rows if r[0] == name and r[1] < sel[0]]
            if before:
                assert _as_dict(select(_grouped(before), pol)) == {name: None}


def test_equal_jd_keeps_input_order():
    rows = [("a", 1, 18.0, 0.9), ("a", 2, 18.2, 0.9), ("a", 2, 17.0, 0.9)]
    assert _as_dict(select(_grouped(rows), "bts_p1")) == {"a": (2, 18.2)}
    assert _as_dict(select(_grouped(rows[:1] + rows[2:] + rows[1:2]), "bts_p1")) == {"a": (2, 17.0)}


def test_grouping_structure():
    g = _grouped(HAND, shuffle_seed=3)
    assert list(g.object_ids) == sorted({r[0] for r in HAND})
    assert g.counts.sum() == len(HAND) and g.n_sources == 7
    for k in range(g.n_sources):
        sl = slice(g.starts[k], g.starts[k] + g.counts[k])
        assert (g.group[sl] == k).all()
        assert (np.diff(g.jd[sl]) >= 0).all()
        np.testing.assert_array_equal(g.position[sl], np.arange(g.counts[k]))


def test_missing_values_are_errors_that_name_the_alert():
    with pytest.raises(PolicyError, match=r"magpsf is NaN.*row 1 \(objectId 'b'\)"):
        group_alerts(np.array(["a", "b"], object), [1.0, 2.0], [18.0, np.nan], [0.1, 0.2])
    with pytest.raises(PolicyError, match="objectId is missing"):
        group_alerts(np.array(["a", None], object), [1.0, 2.0], [18.0, 18.0], [0.1, 0.2])


def _random_alerts(rng, n_sources, max_alerts):
    n = rng.integers(1, max_alerts + 1, n_sources)
    ids = np.repeat(np.array([f"ZTF{i:05d}" for i in range(n_sources)], object), n)
    N = len(ids)
    jd = J0 + rng.integers(0, 40, N) * 0.5  # coarse: equal jds within a source happen
    mag = rng.choice(np.array([16.9, 17.0, 18.0, 18.49, 18.5, 18.51, 18.9, 19.0, 19.01, 20.0]), N)
    mag = np.where(rng.random(N) < 0.5, mag, np.round(rng.uniform(16.5, 20.5, N), 2))
    score = np.where(rng.random(N) < 0.3, rng.choice([0.0, 0.5, 0.5000001, 0.85, 0.8500001, 1.0], N), rng.random(N))
    perm = rng.permutation(N)
    return ids[perm], jd[perm], mag[perm], score[perm]


def _loop_reference(ids, jd, mag, score, bright_limit, score_threshold=0.5, min_positive=2):
    """The papers' policy written as the obvious loop over each source's alerts in jd order (stable on ties)."""
    out = {}
    for o in dict.fromkeys(ids):
        rows = sorted((j, i) for i, (oo, j) in enumerate(zip(ids, jd)) if oo == o)
        n_pos, brightest, out[o] = 0, np.inf, None
        for j, i in rows:
            brightest = min(brightest, mag[i])
            n_pos += score[i] > score_threshold and mag[i] < 19
            if n_pos >= min_positive and (bright_limit is None or brightest <= bright_limit):
                out[o] = (j, mag[i])
                break
    return out


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_equals_loop_reference(seed):
    rng = np.random.default_rng(seed)
    ids, jd, mag, score = _random_alerts(rng, 300, 12)
    g = group_alerts(ids, jd, mag, score)
    for pol, bright, thr, k in ((BTS_P1, None, 0.5, 2), (BTS_P2, 18.5, 0.5, 2), (PROD_P1, None, 0.85, 1),
                                (PROD_P2, 18.5, 0.85, 1)):
        ref = _loop_reference(ids, jd, mag, score, bright, thr, k)
        got = {r.objectId: ((r.jd, r.magpsf) if r.selected else None) for r in select(g, pol).itertuples()}
        assert got == ref
        assert 0 < sum(v is not None for v in ref.values()) < len(ref)  # both outcomes occur


def test_segmented_helpers_match_pandas_groupby():
    rng = np.random.default_rng(7)
    ids, jd, mag, score = _random_alerts(rng, 200, 9)
    g = group_alerts(ids, jd, mag, score)
    df = pd.DataFrame({"o": g.object_ids[g.group], "m": g.magpsf, "pos": g.score > 0.5})
    np.testing.assert_array_equal(group_cummin(g.magpsf, g), df.groupby("o", sort=False)["m"].cummin().to_numpy())
    np.testing.assert_array_equal(group_cummax(g.magpsf, g), df.groupby("o", sort=False)["m"].cummax().to_numpy())
    np.testing.assert_array_equal(group_cumsum(g.score > 0.5, g),
                                  df.groupby("o", sort=False)["pos"].cumsum().to_numpy())


def test_custom_policy_registry():
    name = "test_three_bright"
    try:
        @register_policy(name, "3 alerts so far with score > 0.8 and magpsf < 18.5")
        def three_bright(a):
            return group_cumsum((a.score > 0.8) & (a.magpsf < 18.5), a) >= 3

        assert name in P.available_policies()
        rows = [("x", d, 18.0, 0.9) for d in range(1, 5)] + [("y", 1, 18.0, 0.9), ("y", 2, 18.6, 0.9)]
        assert _as_dict(select(_grouped(rows), name)) == {"x": (3, 18.0), "y": None}
        with pytest.raises(PolicyError, match="already registered"):
            register_policy(name)(lambda a: np.zeros(a.n_alerts, bool))
    finally:
        P._REGISTRY.pop(name, None)
    with pytest.raises(PolicyError, match="unknown policy 'nope'"):
        P.get_policy("nope")
    bad = Policy("bad", lambda a: np.zeros(a.n_alerts + 1, bool))
    with pytest.raises(PolicyError, match="returned shape"):
        select(_grouped(HAND), bad)


def test_make_bts_policy_parameters():
    pol = P.make_bts_policy("strict", score_threshold=0.95, bright_limit=18.5)
    rows = [("a", 1, 18.0, 0.9), ("a", 2, 18.0, 0.96), ("a", 3, 18.0, 0.97)]
    assert _as_dict(select(_grouped(rows), pol)) == {"a": (3, 18.0)}
    assert pol.params["score_threshold"] == 0.95 and "0.95" in pol.description
