"""Scoring on a real local Spark (local[2]): btsbot-spark-score / score_archive reproduce btsbot-score (counts,
duplicates across the whole job, rejected rows and reasons, scores <= 1e-6) on simulated packets with a corpus of
corrupt files and tarballs, and on the real packets of ../shared/data (avro and Fink parquet); add_scores on Fink
tables; the model is loaded once per Python worker; a task killed on its first attempt leaves the output exact."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from alert_corpus import build_corpus, synthetic_packet, synthetic_schema
from conftest import REPO, ZTF_ALERTS, ZTF_ALERTS_FINK, require

pytest.importorskip("pyspark")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("no Java on this machine (Spark needs Java 17+)", allow_module_level=True)

from btsbot_jax.inference.scorer import load_scorer  # noqa: E402
from btsbot_jax.models import create_model, default_model_config  # noqa: E402
from btsbot_jax.models.model_dir import make_model_card, save_model  # noqa: E402
from btsbot_jax.serve import spark as bspark  # noqa: E402
from btsbot_jax.serve.batch import REJECTED_COLUMNS, SCORE_COLUMNS, score_paths  # noqa: E402

FINK_PARQUET = ZTF_ALERTS_FINK / "fink-science" / "fink_science" / "data" / "alerts" / "datatest"
TEST_CONF = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
             "spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2"}


@pytest.fixture(scope="module")
def spark():
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    s = bspark.spark_session("local[2]", app_name="btsbot-tests", conf=TEST_CONF)
    s.sparkContext.setLogLevel("ERROR")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A randomly initialised mm_cnn (the v1 architecture) saved as a model directory."""
    cfg = default_model_config("mm_cnn")
    path = tmp_path_factory.mktemp("model") / "tiny"
    save_model(create_model(cfg, seed=0), path, make_model_card(cfg, version="test-0"))
    return path


@pytest.fixture(scope="module")
def sim_inputs(tmp_path_factory):
    """A small simulated survey (avro files, two of them also in a .tar.gz) and the bad-input corpus with a
    truncated tarball: [folder, tarball, corpus folder]."""
    from btsbot_jax.sim.pipeline import SimConfig, simulate

    root = tmp_path_factory.mktemp("sim")
    simulate(root / "run", SimConfig(num_sources=6, seed=11, workers=1, chunk_sources=2, training_set=False))
    alerts = root / "run" / "alerts"
    files = sorted(alerts.glob("*.avro"))
    assert len(files) >= 3
    tgz = root / "night.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:  # the first file again: its alerts are duplicates of the folder's
        for p in files[:2]:
            tf.add(p, arcname=f"night/{p.name}")
    corpus = root / "corpus"
    build_corpus(corpus, synthetic_schema(), synthetic_packet())
    # in a folder, as in an archive: a truncated tarball and a file that is not an alert file (skipped)
    (corpus / "broken.tar.gz").write_bytes(tgz.read_bytes()[: tgz.stat().st_size // 2])
    (corpus / "notes.txt").write_bytes(b"not an alert file" * 10)
    return [str(alerts), str(tgz), str(corpus)]


def _read_dataset(path: Path) -> pd.DataFrame:
    # numpy_nullable: a candid column with nulls stays Int64 (through float64 it would lose 19-digit candids)
    return pd.read_parquet(path, dtype_backend="numpy_nullable") if path.exists() else pd.DataFrame()


def _norm(col: pd.Series) -> list:
    return [None if pd.isna(v) else str(v) for v in col]


def assert_same_as_btsbot_score(out: Path, summary: dict, ref) -> None:
    """The Spark run's datasets and summary equal btsbot-score's result on the same inputs."""
    s = ref.summary
    for k in ("records_read", "scored", "rejected", "duplicates", "rejected_by_kind"):
        assert summary[k] == s[k], (k, summary[k], s[k])
    assert summary["records_read"] == summary["scored"] + summary["rejected"] + summary["duplicates"]
    scores = _read_dataset(out / "scores")
    assert len(scores) == len(ref.scores) and scores["candid"].is_unique
    m = ref.scores.merge(scores, on="candid", how="outer", suffixes=("_ref", "_spark"), indicator=True)
    assert (m["_merge"] == "both").all()
    for c in ("objectId", "source", "model_version"):
        assert _norm(m[f"{c}_ref"]) == _norm(m[f"{c}_spark"]), c
    for c in ("jd", "magpsf", "fid"):
        assert np.array_equal(m[f"{c}_ref"].to_numpy(float), m[f"{c}_spark"].to_numpy(float)), c
    err = np.abs(m["score_ref"].to_numpy(np.float64) - m["score_spark"].to_numpy(np.float64))
    assert err.max(initial=0.0) <= 1e-6
    assert set(scores.columns) >= set(SCORE_COLUMNS)
    rej = _read_dataset(out / "rejected")
    assert len(rej) == len(ref.rejected)
    if len(rej):
        key = ["source", "reason"]
        a = ref.rejected.sort_values(key).reset_index(drop=True)
        b = rej[list(REJECTED_COLUMNS)].sort_values(key).reset_index(drop=True)
        for c in REJECTED_COLUMNS:
            assert _norm(a[c]) == _norm(b[c]), c


@pytest.mark.slow
def test_simulated_archive_with_corrupt_files_matches_btsbot_score(spark, tiny_model, sim_inputs, tmp_path):
    ref = score_paths(load_scorer(tiny_model), sim_inputs, progress=False)
    s = ref.summary
    assert s["duplicates"] > 0 and s["rejected"] >= 15 and s["scored"] > 100  # the run means something
    summary = bspark.score_archive(spark, sim_inputs, str(tiny_model), str(tmp_path / "out"))
    assert_same_as_btsbot_score(tmp_path / "out", summary, ref)
    # a rerun into the same folder replaces the datasets (never appends)
    summary = bspark.score_archive(spark, sim_inputs, str(tiny_model), str(tmp_path / "out"))
    assert_same_as_btsbot_score(tmp_path / "out", summary, ref)
    kinds = summary["rejected_by_kind"]
    assert {"corrupt tarball", "truncated avro", "corrupt avro", "empty file"} <= set(kinds)  # corrupt files: rows
    # partitioned by night (UT date of candidate.jd)
    nights = sorted(p.name for p in (tmp_path / "out" / "scores").iterdir() if p.name.startswith("night="))
    assert nights and all(len(n) == len("night=20200101") for n in nights)


@pytest.mark.slow
def test_real_packets_avro_and_parquet_match_btsbot_score(spark, tiny_model, tmp_path):
    inputs = [str(require(ZTF_ALERTS)), str(require(ZTF_ALERTS_FINK))]
    ref = score_paths(load_scorer(tiny_model), inputs, progress=False)
    assert (ref.summary["records_read"], ref.summary["duplicates"]) == (771, 3)  # avro + parquet, 3 repeats
    summary = bspark.score_archive(spark, inputs, str(tiny_model), str(tmp_path / "out"), partition_by=())
    assert_same_as_btsbot_score(tmp_path / "out", summary, ref)


@pytest.mark.slow
def test_add_scores_on_a_fink_table(spark, tiny_model):
    path = require(FINK_PARQUET)
    ref = score_paths(load_scorer(tiny_model), [path], progress=False)
    df = spark.read.parquet(str(path))
    out = bspark.add_scores(df, str(tiny_model)).select("candid", "objectId", "rf_snia_vs_nonia",
                                                        bspark.SCORE_COL, bspark.REASON_COL).toPandas()
    assert len(out) == df.count() == ref.summary["records_read"]  # every row kept, Fink columns kept
    assert out[bspark.REASON_COL].isna().all() and out[bspark.SCORE_COL].notna().all()
    m = ref.scores.merge(out, on="candid")
    assert len(m) == len(ref.scores)
    assert np.abs(m["score"].to_numpy(float) - m[bspark.SCORE_COL].to_numpy(float)).max() <= 1e-6


@pytest.mark.slow
def test_add_scores_keeps_rejected_rows_with_reasons(spark, tiny_model, tmp_path):
    """A Fink-style table made from packets (no shared data needed): a good alert scores as btsbot-score scores
    it; an alert with a null jdstarthist keeps its row with a null score and the reason."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = synthetic_packet(candid=2000000000015015001, objectId="ZTF24good")
    bad = synthetic_packet(candid=2000000000015015002, objectId="ZTF24bad", seed=1)
    bad["candidate"]["jdstarthist"] = None
    from alert_corpus import avro_bytes

    (tmp_path / "good.avro").write_bytes(avro_bytes(synthetic_schema(), [good]))
    ref = score_paths(load_scorer(tiny_model), [tmp_path / "good.avro"], progress=False)
    table = pa.Table.from_pylist([good, bad])
    pq.write_table(table, tmp_path / "fink.parquet")
    df = spark.read.parquet(str(tmp_path / "fink.parquet"))
    out = bspark.add_scores(df, str(tiny_model)).toPandas().set_index("objectId")
    assert abs(float(out.loc["ZTF24good", bspark.SCORE_COL]) - float(ref.scores["score"].iloc[0])) <= 1e-6
    assert pd.isna(out.loc["ZTF24good", bspark.REASON_COL])
    assert pd.isna(out.loc["ZTF24bad", bspark.SCORE_COL])
    assert "ZTF24bad candid 2000000000015015002" in out.loc["ZTF24bad", bspark.REASON_COL]
    assert "jdstarthist" in out.loc["ZTF24bad", bspark.REASON_COL]


@pytest.mark.slow
def test_model_loaded_once_per_python_worker(spark, tiny_model):
    import pyarrow as pa

    path = str(tiny_model)

    def probe(batches):
        from btsbot_jax.serve.spark import get_scorer, load_count

        for b in batches:
            get_scorer(path)
            yield pa.RecordBatch.from_pylist([{"pid": os.getpid(), "loads": load_count(path)}] * b.num_rows)

    rows = spark.range(0, 12, numPartitions=12).mapInArrow(probe, "pid LONG, loads LONG").collect()
    assert len(rows) == 12
    assert {r["loads"] for r in rows} == {1}  # never reloaded in a worker
    assert len({r["pid"] for r in rows}) < 12  # workers serve many tasks: not loaded per task


@pytest.mark.slow
def test_cli_task_killed_once_output_still_exact(tiny_model, sim_inputs, tmp_path):
    """btsbot-spark-score where the first attempt of a scoring task kills its Python worker after sending a batch:
    Spark retries the task (local[2,2]: 2 cores, 2 attempts) and the datasets are exactly btsbot-score's."""
    inputs = sim_inputs[:2]  # the survey folder and the tarball that repeats two of its files
    ref = score_paths(load_scorer(tiny_model), inputs, progress=False)
    assert ref.summary["duplicates"] > 0
    out = tmp_path / "out"
    env = {**os.environ, bspark.FAIL_ENV: "1", "PYSPARK_PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "btsbot_jax.cli.spark_score", f"--checkpoint={tiny_model}",
           f"--input={','.join(inputs)}", f"--output={out}", "--master=local[2,2]", "--batch_size=64",
           "--spark_conf=spark.ui.enabled=false,spark.ui.showConsoleProgress=false,spark.sql.shuffle.partitions=2"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Lost task 0.0 in stage" in p.stderr  # the injected failure happened, and was retried
    summary = json.loads((out / "summary.json").read_text())
    assert f"read {ref.summary['records_read']} records" in p.stdout
    assert_same_as_btsbot_score(out, summary, ref)


def test_cli_bad_arguments_exit_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    base = [sys.executable, "-m", "btsbot_jax.cli.spark_score", f"--output={tmp_path / 'o'}"]
    p = subprocess.run(base + [f"--checkpoint={tmp_path / 'nope'}", f"--input={tmp_path}"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "cannot load checkpoint" in p.stderr
    p = subprocess.run(base + [f"--checkpoint={tmp_path}", f"--input={tmp_path}", "--spark_conf=novalue"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "not key=value" in p.stderr


@pytest.mark.slow
def test_file_bytes_in_file_key_order_read_as_btsbot_score_reads(sim_inputs, tmp_path):
    """What each Spark task decodes (iter_file_bytes on a file's bytes), taken in file_key order, is exactly the
    record stream of btsbot-score's reader: same sources, errors and records, in the same order; including names
    where a plain string sort of paths would differ from the sorted walk ("a-/x" < "a.b" < "a/x")."""
    from btsbot_jax.ingest.readers import SCORING_PROJECTION, iter_alerts, iter_file_bytes

    root = tmp_path / "tree"
    files = [p for p in sorted(Path(sim_inputs[2]).rglob("*")) if p.is_file()] + [Path(sim_inputs[1])]
    files += sorted(Path(sim_inputs[0]).glob("*.avro"))[:2]
    names = ["a/1.avro", "a-/2.avro", "a.b.avro", "a/c/3.avro", "a/c.tar.gz"]
    for i, f in enumerate(files):
        rel = names[i] if i < len(names) else f"z/{i:02d}_{f.name}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(f.read_bytes())
    ref = list(iter_alerts(root, projection=SCORING_PROJECTION))
    import re

    rx = re.compile(bspark.ALERT_FILE_REGEX)
    uris = [p.as_uri() for p in root.rglob("*") if p.is_file() and rx.search(p.name)]
    mine = [a for u in sorted(uris, key=bspark.file_key)
            for a in iter_file_bytes(Path(bspark.local_name(u)).read_bytes(), bspark.local_name(u),
                                     projection=SCORING_PROJECTION)]
    assert len(ref) == len(mine) > 20
    assert [(a.source, a.error) for a in ref] == [(a.source, a.error) for a in mine]
    assert [repr(a.record) for a in ref] == [repr(a.record) for a in mine]  # repr: NaN fields compare equal
    assert sum(a.error is not None for a in ref) >= 5
