"""Triplet and 25 features as the paper and Kowalski define them:
against the 39 labelled alerts, an independent astropy reference on
the real packets, and hand-made edge cases (ties, upper limits, sentinels, padding, bad values)."""

import copy
import io

import fastavro
import numpy as np
import pandas as pd
import pytest
from alert_corpus import avro_bytes, blob, stamp_bytes, synthetic_packet, synthetic_schema
from conftest import ZTF_ALERTS, ZTF_ALERTS_FINK, require
from reference_inputs import reference_metadata, reference_triplet

from btsbot_jax.constants import METADATA_COLUMNS, PAD_VALUE
from btsbot_jax.ingest.features import (
    CANDIDATE_FEATURES,
    CUSTOM_FEATURES,
    AlertError,
    custom_features,
    metadata_from_record,
    prepare_batch,
    triplet_from_record,
)
from btsbot_jax.ingest.readers import SCORING_PROJECTION, RawAlert, iter_alerts
from btsbot_jax.ingest.stamps import read_stamp_astropy

COL = {c: i for i, c in enumerate(METADATA_COLUMNS)}


@pytest.fixture()
def packet():
    """A valid synthetic packet as fastavro reads it back."""
    made = synthetic_packet()
    return next(fastavro.reader(io.BytesIO(avro_bytes(synthetic_schema(), [made]))))


@pytest.mark.slow
def test_real_packets_match_independent_reference():
    require(ZTF_ALERTS)
    require(ZTF_ALERTS_FINK)
    alerts = list(iter_alerts([ZTF_ALERTS, ZTF_ALERTS_FINK]))
    assert len(alerts) == 36 + 735
    prep = prepare_batch(alerts)
    assert prep.rejected == [] and len(prep) == 771
    assert prep.triplets.dtype == np.float32 and prep.triplets.shape == (771, 63, 63, 3)
    assert prep.metadata.dtype == np.float32 and prep.metadata.shape == (771, 25)
    assert np.isfinite(prep.triplets).all() and np.isfinite(prep.metadata).all()
    ref_t = np.stack([reference_triplet(a.record) for a in alerts])
    ref_m = np.stack([reference_metadata(a.record) for a in alerts])
    np.testing.assert_array_equal(prep.triplets, ref_t)  # bit-identical to Kowalski's float32 arithmetic
    np.testing.assert_array_equal(prep.metadata, ref_m)
    # unit L2 norm per channel over the real pixels; the 6 edge-of-CCD alerts are padded with 1e-9
    small = 0
    overflow = 0
    for i, a in enumerate(alerts):
        h, w = read_stamp_astropy(a.record["cutoutScience"]["stampData"]).shape
        norms = np.linalg.norm(prep.triplets[i, :h, :w].astype(np.float64), axis=(0, 1))
        for c, name in enumerate(("cutoutScience", "cutoutTemplate", "cutoutDifference")):
            raw = np.nan_to_num(read_stamp_astropy(a.record[name]["stampData"]).astype(np.float64))
            if (raw**2).sum() > np.finfo(np.float32).max:  # FLT_MAX bad-pixel markers: zeros, as in production
                overflow += 1
                assert norms[c] == 0 and name == "cutoutTemplate"
            else:
                assert abs(norms[c] - 1) < 1e-5
        if (h, w) != (63, 63):
            small += 1
            assert (prep.triplets[i, h:, :, :] == np.float32(PAD_VALUE)).all()
            assert (prep.triplets[i, :, w:, :] == np.float32(PAD_VALUE)).all()
    assert small == 6
    assert overflow == 4
    # the batch path equals the per-alert functions exactly, and the scoring projection changes nothing
    for i in (0, 5, 40, 700):
        np.testing.assert_array_equal(prep.triplets[i], triplet_from_record(alerts[i].record))
        np.testing.assert_array_equal(prep.metadata[i], metadata_from_record(alerts[i].record))
    proj = prepare_batch(list(iter_alerts([ZTF_ALERTS, ZTF_ALERTS_FINK], projection=SCORING_PROJECTION)))
    np.testing.assert_array_equal(proj.triplets, prep.triplets)
    np.testing.assert_array_equal(proj.metadata, prep.metadata)
    assert prep.info["candid"].tolist() == [a.record["candid"] for a in alerts]
    assert prep.info["source"].tolist() == [a.source for a in alerts]
    # sentinels go in unchanged (SOURCE.md: sgscore1 = -999 in 3 kowalski alerts, sgscore2 in 7)
    assert (prep.metadata[:36, COL["sgscore1"]] == -999).sum() == 3
    assert (prep.metadata[:36, COL["sgscore2"]] == -999).sum() == 7


def _usage_record(row: pd.Series) -> dict:
    cand = {c: row[c] for c in CANDIDATE_FEATURES if c != "drb"}
    cand.update(drb=row["new_drb"], jd=row["jd"], jdstarthist=row["jdstarthist"], ncovhist=row["ncovhist"],
                ndethist=row["ndethist"], fid=int(row["fid"]))
    return {"objectId": row["objectId"], "candid": int(row["candid"]), "candidate": cand, "prv_candidates": None}


def test_usage_examples_features_from_their_light_curves(usage_examples):
    """The 39 labelled alerts are the complete light curves of two sources: fed in order, with the earlier ones as
    caller history, the custom features equal the original pipeline's (to the CSV's 3-decimal jd rounding)."""
    table, _, metadata = usage_examples
    table = table.sort_values("jd", kind="stable")
    records = [_usage_record(r) for _, r in table.iterrows()]
    history: dict[str, list] = {}
    got = []
    for rec in records:
        got.append(metadata_from_record(rec, history=history.get(rec["objectId"], [])))
        history.setdefault(rec["objectId"], []).append(rec)
    got = np.stack(got)
    want = metadata[table.index.to_numpy()]
    straight = [COL[c] for c in CANDIDATE_FEATURES]
    np.testing.assert_array_equal(got[:, straight], want[:, straight])
    for c in ("peakmag_so_far", "maxmag_so_far", "nnotdet"):
        np.testing.assert_array_equal(got[:, COL[c]], want[:, COL[c]], err_msg=c)
    for c in ("age", "days_since_peak", "days_to_peak"):
        np.testing.assert_allclose(got[:, COL[c]], want[:, COL[c]], atol=2e-3, err_msg=c)
    # without the caller's history only the alert itself is known: age still comes from jdstarthist
    alone = np.stack([metadata_from_record(r) for r in records])
    np.testing.assert_allclose(alone[:, COL["age"]], want[:, COL["age"]], atol=2e-3)
    assert (alone[:, COL["days_since_peak"]] == 0).all()


def test_triplet_reproduces_usage_triplets_from_raw_stamps(usage_examples):
    """Stamps made from the published (normalised) triplets, rescaled and with NaN where they are 0, come back as
    the published triplets."""
    _, triplets, _ = usage_examples
    rng = np.random.default_rng(0)
    for i in range(0, 39, 4):
        rec = {}
        for c, name in enumerate(("cutoutScience", "cutoutTemplate", "cutoutDifference")):
            raw = (triplets[i, :, :, c] * rng.uniform(10, 5000)).astype(np.float32)
            raw[triplets[i, :, :, c] == 0] = np.nan
            rec[name] = {"fileName": "x", "stampData": stamp_bytes(raw)}
        np.testing.assert_allclose(triplet_from_record(rec), triplets[i], rtol=2e-6, atol=1e-9)


def test_custom_features_by_hand(packet):
    cand = packet["candidate"]
    jd = cand["jd"]
    cand.update(jdstarthist=jd - 20.0, ncovhist=50, ndethist=7, magpsf=18.0)
    packet["prv_candidates"] = [
        {"jd": jd - 10.0, "magpsf": 17.5},
        {"jd": jd - 9.0, "magpsf": None, "diffmaglim": 20.0},   # upper limit: not a detection
        {"jd": jd - 8.0, "magpsf": 17.5},                       # tie with the first: the first one wins
        {"jd": jd - 7.0, "magpsf": 19.25},
        {"jd": jd - 30.0, "magpsf": None},                      # an early upper limit does not move first_jd
    ]
    f = custom_features(packet)
    assert f["peakmag_so_far"] == 17.5 and f["maxmag_so_far"] == 19.25
    assert f["days_since_peak"] == pytest.approx(10.0) and f["days_to_peak"] == pytest.approx(10.0)
    assert f["age"] == pytest.approx(20.0)  # first_jd = jdstarthist, earlier than any detection here
    assert f["nnotdet"] == 43
    # a detection older than jdstarthist sets first_jd
    packet["prv_candidates"].append({"jd": jd - 25.0, "magpsf": 20.0})
    assert custom_features(packet)["age"] == pytest.approx(25.0)
    # the candidate itself can be the peak (and then days_since_peak = 0)
    cand["magpsf"] = 16.0
    f = custom_features(packet)
    assert f["peakmag_so_far"] == 16.0 and f["days_since_peak"] == 0.0 and f["days_to_peak"] == pytest.approx(25.0)


def test_caller_history_merges_dedups_and_ignores_the_future(packet):
    cand = packet["candidate"]
    jd = cand["jd"]
    cand.update(magpsf=18.0, jdstarthist=jd - 3.0)
    packet["prv_candidates"] = [{"jd": jd - 2.0, "magpsf": 18.5}]
    earlier_alert = {"candidate": {"jd": jd - 5.0, "magpsf": 17.0},
                     "prv_candidates": [{"jd": jd - 6.0, "magpsf": 17.2}, {"jd": jd - 2.0, "magpsf": 18.5}]}
    later = {"jd": jd + 1.0, "magpsf": 15.0}  # after the alert: not known at its time
    f = custom_features(packet, history=[earlier_alert, later])
    assert f["peakmag_so_far"] == 17.0 and f["maxmag_so_far"] == 18.5
    assert f["age"] == pytest.approx(6.0) and f["days_since_peak"] == pytest.approx(5.0)
    # via prepare_batch, history keyed by objectId
    prep = prepare_batch([packet], history={packet["objectId"]: [earlier_alert, later]})
    assert prep.metadata[0, COL["peakmag_so_far"]] == np.float32(17.0)
    assert prepare_batch([packet], history={"other": [earlier_alert]}).metadata[0, COL["peakmag_so_far"]] == 18.0


def test_drb_fallback_to_rb_only_when_asked(packet):
    packet["candidate"]["drb"] = None
    with pytest.raises(AlertError, match="null candidate.drb"):
        metadata_from_record(packet)
    m = metadata_from_record(packet, use_rb=True)
    assert m[COL["drb"]] == np.float32(packet["candidate"]["rb"])
    del packet["candidate"]["drb"]
    assert metadata_from_record(packet, use_rb=True)[COL["drb"]] == np.float32(packet["candidate"]["rb"])
    prep = prepare_batch([packet])
    assert len(prep) == 0 and "candidate.drb" in prep.rejected[0].reason


@pytest.mark.parametrize("field,value,fragment", [
    ("magpsf", None, "null candidate.magpsf"),
    ("jdstarthist", None, "null candidate.jdstarthist"),
    ("sky", float("inf"), "non-finite candidate.sky"),
    ("scorr", float("-inf"), "non-finite candidate.scorr"),
    ("fwhm", float("nan"), "non-finite candidate.fwhm"),
    ("ra", "12.3", "not a number"),
    ("chinr", 1e39, "does not fit in float32"),
])
def test_bad_candidate_values_rejected_with_reason(packet, field, value, fragment):
    packet["candidate"][field] = value
    good = copy.deepcopy(packet)
    good["candidate"][field] = 1.0
    good["candid"] += 1
    prep = prepare_batch([RawAlert("f.avro#3", packet), good])
    assert len(prep) == 1 and prep.info["candid"].tolist() == [good["candid"]]
    (r,) = prep.rejected
    assert fragment in r.reason
    assert r.candid == packet["candid"] and r.objectId == packet["objectId"] and r.source == "f.avro#3"
    assert str(packet["candid"]) in r.reason and packet["objectId"] in r.reason


def test_missing_field_and_bad_prv(packet):
    del packet["candidate"]["nmtchps"]
    with pytest.raises(AlertError, match="missing field candidate.nmtchps"):
        metadata_from_record(packet)
    packet["candidate"]["nmtchps"] = 3
    packet["prv_candidates"].append({"jd": None, "magpsf": 18.0})
    with pytest.raises(AlertError, match=r"prv_candidates\[\d+\].jd"):
        metadata_from_record(packet)


@pytest.mark.parametrize("image,fragment", [
    (np.zeros((63, 63), np.float32), "all pixels are zero"),
    (np.full((63, 63), np.nan, np.float32), "pixels are NaN"),
    (np.ones((64, 63), np.float32), "64x63"),
    (np.ones((63, 70), np.float32), "63x70"),
    (np.ones((3, 63, 63), np.float32), "3 dimensions"),
])
def test_bad_cutouts_rejected(packet, image, fragment):
    packet["cutoutTemplate"] = {"fileName": "t", "stampData": stamp_bytes(image)}
    prep = prepare_batch([packet])
    assert len(prep) == 0
    assert fragment in prep.rejected[0].reason and "cutoutTemplate" in prep.rejected[0].reason


def test_cutout_whose_float32_norm_overflows_becomes_zero_like_production(packet):
    img = blob(np.random.default_rng(6))
    img[:4, :] = np.finfo(np.float32).max  # ZTF marks bad template pixels like this
    packet["cutoutTemplate"] = {"fileName": "t", "stampData": stamp_bytes(img)}
    t = triplet_from_record(packet)
    assert (t[:, :, 1] == 0).all() and (t[:, :, 0] != 0).any()
    np.testing.assert_allclose(t, reference_triplet(packet), rtol=1e-6, atol=1e-9)  # Kowalski's float32 path


def test_nan_pixels_become_zero_and_small_cutouts_are_padded(packet):
    rng = np.random.default_rng(5)
    img = blob(rng, 40.0, (50, 63))
    img[0, :] = np.nan
    packet["cutoutScience"] = {"fileName": "s", "stampData": stamp_bytes(img)}
    t = triplet_from_record(packet)
    expect = np.nan_to_num(img.astype(np.float64))
    expect /= np.linalg.norm(expect)
    np.testing.assert_allclose(t[:50, :, 0], expect, rtol=1e-6)
    assert (t[0, :, 0] == 0).all() and (t[50:, :, 0] == np.float32(PAD_VALUE)).all()
    # the other channels were full-size: untouched by the padding
    assert (t[50:, :, 1] != np.float32(PAD_VALUE)).any()
    # vectorised batch path == single-alert path, for mixed sizes in one batch
    other = copy.deepcopy(packet)
    other["candid"] += 1
    other["cutoutScience"] = packet["cutoutTemplate"]
    prep = prepare_batch([other, packet, other])
    np.testing.assert_array_equal(prep.triplets[1], t)
    np.testing.assert_array_equal(prep.triplets[0], triplet_from_record(other))


def test_prepare_batch_accounts_for_every_input(packet):
    bad = copy.deepcopy(packet)
    bad["candidate"] = None
    noid = copy.deepcopy(packet)
    noid["candid"] = None
    noid["candidate"]["candid"] = None
    alerts = [packet, RawAlert("x.avro#0", None, "corrupt avro: boom"), bad, "not a dict", noid]
    prep = prepare_batch(alerts)
    assert len(prep) + len(prep.rejected) == len(alerts) and len(prep) == 1
    reasons = sorted(r.reason for r in prep.rejected)
    assert any("x.avro#0: corrupt avro: boom" == r for r in reasons)
    assert any("missing or null candidate" in r for r in reasons)
    assert any("missing or null candid" in r for r in reasons)
    assert list(prep.info.columns) == ["candid", "objectId", "jd", "magpsf", "fid", "source"]
    empty = prepare_batch([])
    assert empty.triplets.shape == (0, 63, 63, 3) and empty.metadata.shape == (0, 25)


def test_custom_feature_names_cover_the_model_columns():
    assert sorted(CANDIDATE_FEATURES + CUSTOM_FEATURES) == sorted(METADATA_COLUMNS)


def test_fast_metadata_path_equals_field_by_field_path(monkeypatch, packet):
    from btsbot_jax.ingest import features

    records = [packet]
    if ZTF_ALERTS.exists():
        records += [a.record for a in iter_alerts(ZTF_ALERTS)]
    fast = np.stack([metadata_from_record(r) for r in records])
    assert features._metadata_fast(records[-1], False) is not None  # the fast path is really taken
    monkeypatch.setattr(features, "_metadata_fast", lambda record, use_rb: None)
    slow = np.stack([metadata_from_record(r) for r in records])
    np.testing.assert_array_equal(fast, slow)
