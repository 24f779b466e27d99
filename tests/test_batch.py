"""btsbot-score: v1.0.1 parity with TF on every real packet, the bad-input corpus (nothing lost, every reason
names its alert), duplicates, sharding, output tables and the CLI's exit status."""

import re
import subprocess
import sys
import tarfile

import numpy as np
import pandas as pd
import pytest
from alert_corpus import build_corpus, real_packet, synthetic_packet, synthetic_schema
from conftest import REPO, ZTF_ALERTS, ZTF_ALERTS_FINK, require
from reference_inputs import reference_metadata, reference_triplet

import btsbot_jax
from btsbot_jax.inference.scorer import load_scorer
from btsbot_jax.ingest.readers import iter_alerts
from btsbot_jax.models import create_model, default_model_config
from btsbot_jax.models.model_dir import make_model_card, save_model
from btsbot_jax.serve.batch import (
    REJECTED_COLUMNS,
    SCORE_COLUMNS,
    format_summary,
    read_table,
    score_paths,
    write_table,
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A randomly initialised mm_cnn saved as a model directory: the scorer tests need no shared data."""
    cfg = default_model_config("mm_cnn")
    path = tmp_path_factory.mktemp("model") / "tiny"
    save_model(create_model(cfg, seed=0), path, make_model_card(cfg, version="test-0"))
    return path


@pytest.fixture(scope="module")
def tiny_scorer(tiny_model):
    return load_scorer(tiny_model, buckets=(32,))


def _corpus(tmp_path, variant):
    if variant == "real":
        schema, packet = real_packet(sorted(require(ZTF_ALERTS).rglob("*.avro"))[-1])
    else:
        schema, packet = synthetic_schema(), synthetic_packet()
    root = tmp_path / "corpus"
    return root, build_corpus(root, schema, packet)


@pytest.mark.slow
def test_v101_parity_on_all_real_packets(v101_checkpoint, tf_v101):
    require(ZTF_ALERTS)
    require(ZTF_ALERTS_FINK)
    scorer = load_scorer(v101_checkpoint, buckets=(256,))
    res = score_paths(scorer, [ZTF_ALERTS, ZTF_ALERTS_FINK], batch_size=256, progress=False)
    s = res.summary
    assert (s["records_read"], s["scored"], s["rejected"], s["duplicates"]) == (771, 768, 0, 3)
    assert res.scores["candid"].is_unique and res.scores["model_version"].eq("v1.0.1").all()
    # reference: the TF SavedModel on inputs made independently (astropy + numpy, the Kowalski way)
    alerts = {}
    for a in iter_alerts([ZTF_ALERTS, ZTF_ALERTS_FINK]):
        alerts.setdefault(a.record["candid"], a.record)
    order = res.scores["candid"].tolist()
    t = np.stack([reference_triplet(alerts[c]) for c in order])
    m = np.stack([reference_metadata(alerts[c]) for c in order])
    ref = tf_v101(t, m)
    err = np.abs(res.scores["score"].to_numpy() - ref)
    print(f"v1.0.1 parity on {len(order)} real alerts (btsbot-score vs TF SavedModel): max|diff| = {err.max():.2e}")
    assert err.max() < 1e-4
    assert 50 < (ref > 0.5).sum() < 718  # both classes occur, so the comparison means something


@pytest.mark.parametrize("variant", ["synthetic", "real"])
def test_bad_input_corpus_nothing_lost(tmp_path, tiny_scorer, variant):
    root, expected = _corpus(tmp_path, variant)
    res = score_paths(tiny_scorer, root, batch_size=8, progress=False)
    s = res.summary
    assert s["records_read"] == expected["records"] == s["scored"] + s["rejected"] + s["duplicates"]
    assert s["duplicates"] == expected["duplicates"] and s["skipped_files"] == expected["skipped_files"]
    assert sorted(res.scores["candid"]) == sorted(expected["good"])
    assert np.isfinite(res.scores["score"]).all() and res.scores["score"].between(0, 1).all()
    assert len(res.rejected) == len(expected["cases"])
    by_file = {src.split("#")[0].rsplit("/", 1)[-1]: row for src, row in zip(res.rejected["source"],
                                                                           res.rejected.itertuples())}
    for case in expected["cases"]:
        row = by_file[case.file]
        assert row.kind == case.kind, (case.file, row.reason)
        assert case.reason_has in row.reason, (case.file, row.reason)
        assert row.source == f"{root / case.file}#0"
        if case.candid is None:  # undecodable: the reason names the file and record index
            assert pd.isna(row.candid) and f"{case.file}#0" in row.reason
        else:                    # decodable: the reason names objectId and candid
            assert row.candid == case.candid and str(case.candid) in row.reason and row.objectId in row.reason
    kinds = s["rejected_by_kind"]
    assert sum(kinds.values()) == s["rejected"] and kinds["wrong image dimensions"] == 2
    line = format_summary(s)
    assert f"read {s['records_read']} records" in line and f"duplicates {s['duplicates']}" in line
    assert "alerts/s" in line and "corrupt gzip: 1" in line


def test_tarball_of_corpus_scores_like_the_folder(tmp_path, tiny_scorer):
    root, expected = _corpus(tmp_path, "synthetic")
    tar = tmp_path / "night.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(root, arcname="night")
    folder = score_paths(tiny_scorer, root, batch_size=8, progress=False)
    tarred = score_paths(tiny_scorer, tar, batch_size=8, progress=False)
    assert tarred.summary["records_read"] == expected["records"]
    np.testing.assert_array_equal(tarred.scores["score"], folder.scores["score"])
    assert sorted(tarred.rejected["kind"]) == sorted(folder.rejected["kind"])


def test_shards_together_score_everything_once(tmp_path, tiny_scorer):
    root, expected = _corpus(tmp_path, "synthetic")
    whole = score_paths(tiny_scorer, root, batch_size=8, progress=False)
    parts = [score_paths(tiny_scorer, root, batch_size=8, num_shards=3, shard_index=k, progress=False)
             for k in range(3)]
    assert sum(p.summary["records_read"] for p in parts) == whole.summary["records_read"]
    assert all(p.summary["other_shards"] == whole.summary["records_read"] - p.summary["records_read"]
               for p in parts)
    scores = pd.concat([p.scores for p in parts]).drop_duplicates("candid")  # the duplicate may land in 2 shards
    merged = scores.set_index("candid")["score"].sort_index()
    np.testing.assert_array_equal(merged.to_numpy(), whole.scores.set_index("candid")["score"].sort_index())
    rej = pd.concat([p.rejected for p in parts])
    assert sorted(rej["source"]) == sorted(whole.rejected["source"])


def test_duplicates_across_batches_scored_once(tmp_path, tiny_scorer):
    from alert_corpus import avro_bytes

    schema = synthetic_schema()
    packets = [synthetic_packet(candid=4000000000015015000 + i, objectId=f"ZTF24dup{i}", seed=i) for i in range(5)]
    (tmp_path / "a.avro").write_bytes(avro_bytes(schema, packets))
    (tmp_path / "b.avro").write_bytes(avro_bytes(schema, packets[::2] + packets[:1]))
    res = score_paths(tiny_scorer, tmp_path, batch_size=2, progress=False)
    assert res.summary["duplicates"] == 4 and res.summary["scored"] == 5 and res.summary["rejected"] == 0
    assert res.scores["candid"].tolist() == [p["candid"] for p in packets]
    assert (res.scores["source"].str.contains("a.avro")).all()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_tables_round_trip(tmp_path, tiny_scorer, suffix):
    root, _ = _corpus(tmp_path, "synthetic")
    res = score_paths(tiny_scorer, root, batch_size=8, progress=False)
    write_table(res.scores, tmp_path / "out" / f"s{suffix}")
    write_table(res.rejected, tmp_path / "out" / f"r{suffix}")
    s = read_table(tmp_path / "out" / f"s{suffix}")
    r = read_table(tmp_path / "out" / f"r{suffix}")
    assert list(s.columns) == list(SCORE_COLUMNS) and list(r.columns) == list(REJECTED_COLUMNS)
    assert s["candid"].tolist() == res.scores["candid"].tolist()  # 19-digit candids survive both formats
    np.testing.assert_allclose(s["score"], res.scores["score"], rtol=1e-6)
    assert r["reason"].tolist() == res.rejected["reason"].tolist()
    with pytest.raises(ValueError, match=".csv or .parquet"):
        write_table(res.scores, tmp_path / "s.txt")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "btsbot_jax.cli.score", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600)


@pytest.mark.slow
def test_cli_scores_folder_and_reports_unreadable_path(tmp_path, tiny_model):
    root, expected = _corpus(tmp_path, "synthetic")
    out = tmp_path / "out" / "scores.csv"
    p = _cli(f"--checkpoint={tiny_model}", f"--input={root},{tmp_path / 'missing.avro'}", f"--output={out}",
             f"--rejected={tmp_path / 'out' / 'rejected.parquet'}", "--batch_size=8",
             f"--summary_json={tmp_path / 'summary.json'}")
    assert p.returncode == 1, p.stderr[-2000:]  # one input path could not be read at all
    assert "cannot read input" in p.stderr and "missing.avro" in p.stderr
    scores = pd.read_csv(out)
    rejected = pd.read_parquet(tmp_path / "out" / "rejected.parquet")
    assert sorted(scores["candid"]) == sorted(expected["good"]) and (scores["model_version"] == "test-0").all()
    assert (scores["btsbot_jax_version"] == btsbot_jax.__version__).all()  # which code made the table
    assert len(rejected) == len(expected["cases"])
    m = re.search(r"read (\d+) records .*: scored (\d+), rejected (\d+) \((.*)\), duplicates (\d+); ([\d.]+) alerts/s",
                  p.stdout)
    assert m, p.stdout
    read, scored, rej, _, dup, _ = m.groups()
    assert (int(read), int(scored), int(rej), int(dup)) == (expected["records"], len(expected["good"]),
                                                            len(expected["cases"]), 1)
    assert "btsbot-score" in p.stderr  # the progress bar (the CLI turns it on)


@pytest.mark.slow
def test_cli_exit_zero_on_bad_alerts_and_two_on_bad_flags(tmp_path, tiny_model):
    root, expected = _corpus(tmp_path, "synthetic")
    out = tmp_path / "s.parquet"
    p = _cli(f"--checkpoint={tiny_model}", f"--input={root}", f"--output={out}", "--batch_size=8",
             "--num_shards=2", "--shard_index=1", "--noprogress")
    assert p.returncode == 0, p.stderr[-2000:]  # bad alerts are rejected rows, not a failure
    assert (tmp_path / "s_rejected.parquet").exists()
    assert "[shard 1/2]" in p.stdout
    bad = _cli(f"--checkpoint={tiny_model}", f"--input={root}", f"--output={tmp_path / 's.json'}")
    assert bad.returncode == 2 and ".csv or .parquet" in bad.stderr


@pytest.mark.slow
def test_decode_workers_give_the_same_results(tmp_path, tiny_scorer):
    root, expected = _corpus(tmp_path, "synthetic")
    one = score_paths(tiny_scorer, root, batch_size=4, progress=False)
    two = score_paths(tiny_scorer, root, batch_size=4, progress=False, workers=2)
    for key in ("records_read", "scored", "rejected", "duplicates", "files", "skipped_files", "rejected_by_kind"):
        assert two.summary[key] == one.summary[key], key
    a = one.scores.set_index("candid")["score"].sort_index()
    b = two.scores.set_index("candid")["score"].sort_index()
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    assert sorted(two.rejected["source"]) == sorted(one.rejected["source"])
    # with shards too: 2 shards x 2 workers still cover every record once
    halves = [score_paths(tiny_scorer, root, batch_size=4, progress=False, workers=2, num_shards=2, shard_index=k)
              for k in range(2)]
    assert sum(h.summary["records_read"] for h in halves) == expected["records"]
    assert all(h.summary["other_shards"] == expected["records"] - h.summary["records_read"] for h in halves)


@pytest.mark.slow
def test_workers_from_a_plain_script_without_main_guard(tmp_path, tiny_model):
    """The README's `score_paths(..., workers=N)` pasted into a script with no `if __name__ == "__main__":` guard:
    the decode processes must not re-run the script (issue 20 item 3), and a library call draws no progress bar."""
    root, expected = _corpus(tmp_path, "synthetic")
    script = tmp_path / "plain.py"
    script.write_text(
        "from btsbot_jax.inference.scorer import load_scorer\n"
        "from btsbot_jax.serve.batch import score_paths\n"
        "print('body')\n"
        f"res = score_paths(load_scorer({str(tiny_model)!r}), {str(root)!r}, batch_size=8, workers=2)\n"
        "print('read', res.summary['records_read'], 'scored', res.summary['scored'])\n")
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                       env={**__import__("os").environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("body") == 1
    assert f"read {expected['records']} scored {len(expected['good'])}" in p.stdout
    assert "btsbot-score" not in p.stderr and "alerts/s" not in p.stderr  # no progress bar


def test_table_paths_expand_home_and_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RUN", "r1")
    monkeypatch.chdir(tmp_path)
    df = pd.DataFrame({"candid": [1, 2], "score": [0.25, 0.75]})
    p = write_table(df, "~/out/$RUN/s.csv")
    assert p == tmp_path / "home" / "out" / "r1" / "s.csv" and p.is_file() and not (tmp_path / "~").exists()
    pd.testing.assert_frame_equal(read_table("~/out/$RUN/s.csv"), df)
